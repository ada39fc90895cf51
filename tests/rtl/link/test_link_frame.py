"""LinkConfig: the header fits the symbols the planner counts, and the planner's link
efficiency is the RTL's limit."""

import pytest

from fpdeep.plan.model.timing import TIMING, link_efficiency
from fpdeep.rtl.link.frame import LinkConfig


@pytest.mark.parametrize("mode", ["selective", "go-back-n"])
def test_defaults_match_the_planner(mode):
    c = LinkConfig(retransmit=mode)
    assert c.header_symbols + c.trailer_symbols + 1 == TIMING.frame_overhead
    assert (c.max_payload, c.replay_slots, c.rx_depth) == \
        (TIMING.max_payload, TIMING.replay_slots, TIMING.rx_depth)


@pytest.mark.parametrize("ber", [0.0, 1e-5, 1e-4, 1e-3, 1e-2])
def test_planner_efficiency_is_the_limit(ber):
    assert link_efficiency(ber) == pytest.approx(LinkConfig().limit(ber), rel=1e-12)


def test_limit_figures():
    c = LinkConfig()
    assert c.limit(0) == c.efficiency() == 16 / 21
    assert round(c.limit(1e-4), 3) == 0.738
    assert round(c.limit(1e-3), 3) == 0.553
    with pytest.raises(ValueError, match="ber"):
        link_efficiency(1.5)
