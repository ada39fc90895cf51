"""LinkEndpoint/LinkPair: seeded random traffic with a scoreboard, at several bit-error rates.

Every word sent on every VC must come out of the peer exactly once, in order and
unchanged, and nothing else may come out (``TrafficResult.check``).
"""

import pytest

from fpdeep.rtl.link.endpoint import LinkEndpoint, LinkPair
from fpdeep.rtl.link.frame import LinkConfig
from fpdeep.rtl.link.traffic import run_traffic


BERS = [0.0, 1e-4, 1e-3]


@pytest.mark.parametrize("ber", BERS)
def test_all_vcs_both_directions(ber):
    # 4 VCs x 2 directions x 300 words = 2,400 words, with random gaps and stalls.
    result = run_traffic(words=300, directions=("ab", "ba"), ber=ber, seed=11,
                         gap=0.3, stall=0.3)
    result.check()
    assert result.words == 2400
    if ber == 0:
        assert result.status["a"]["bad_frames"] == result.status["b"]["bad_frames"] == 0
        assert result.status["a"]["replays"] == result.status["b"]["replays"] == 0


def test_go_back_n_all_vcs_both_directions():
    # The go-back-N scheme kept for comparison is scored the same way.
    result = run_traffic(LinkConfig(retransmit="go-back-n"), words=300,
                         directions=("ab", "ba"), ber=1e-3, seed=11, gap=0.3, stall=0.3)
    result.check()
    assert result.words == 2400


def test_wide_words_two_lanes():
    config = LinkConfig(word_width=32, max_payload=8, rx_depth=32)
    result = run_traffic(config, words=150, vcs=[0, 3], directions=("ab", "ba"), ber=1e-3,
                         seed=5, gap=0.2, stall=0.4, lanes=2, latency=7)
    result.check()


def test_full_rate_without_errors():
    # Always-valid sources and always-ready sinks reach the framing bound within 5 %.
    config = LinkConfig()
    result = run_traffic(config, words=400, seed=2)
    result.check()
    assert result.efficiency > 0.95 * config.efficiency()


@pytest.mark.slow
@pytest.mark.parametrize("ber", BERS)
def test_100k_words(ber):
    # 4 VCs x 2 directions x 12,500 words = 100,000 words.
    result = run_traffic(words=12_500, directions=("ab", "ba"), ber=ber, seed=100,
                         gap=0.3, stall=0.3)
    result.check()
    assert result.words == 100_000
    print(f"ber={ber}: {result.words} words in {result.cycles} cycles, "
          f"{result.seconds:.0f} s, status {result.status}")


def test_parameters_are_validated():
    with pytest.raises(ValueError, match="lane_width"):
        LinkEndpoint(LinkConfig(), lanes=2, lane_width=4)
    with pytest.raises(ValueError, match="lanes"):
        LinkEndpoint(LinkConfig(), lanes=3)
    with pytest.raises(TypeError, match="config"):
        LinkEndpoint("fast")
    with pytest.raises(ValueError, match="latency"):
        LinkPair(LinkConfig(), latency=0)
