"""LinkTransmitter replay: after a NAK, after a timeout (ACKs lost), clock-compensation
idles, and its validation."""

import pytest
from amaranth import Module
from amaranth.lib import wiring
from amaranth.sim import Simulator

from fpdeep.rtl.link.endpoint import LinkEndpoint
from fpdeep.rtl.link.frame import LinkConfig
from fpdeep.rtl.link.phy import SimPhy
from fpdeep.rtl.link.transmitter import LinkTransmitter
from fpdeep.rtl.link.traffic import run_traffic


def burst(signal, start, cycles):
    """Background error testbench: all bits of ``signal`` wrong for ``cycles`` from ``start``."""
    async def errors(ctx, pair):
        port = getattr(pair, signal)
        await ctx.tick().repeat(start)
        ctx.set(port, (1 << len(port)) - 1)
        await ctx.tick().repeat(cycles)
        ctx.set(port, 0)
    return errors


def test_replay_after_nak():
    # Three corrupted symbols mid-stream hit at least one DATA frame from a to b.
    result = run_traffic(words=300, vcs=[0], seed=1, errors=burst("err_ab", 150, 3))
    result.check()
    a, b = result.status["a"], result.status["b"]
    assert b["bad_frames"] >= 1
    assert a["replays"] >= 1 and a["timeouts"] == 0


def test_selective_repeat_resends_only_lost_frames():
    # The same corrupted symbols: selective repeat resends the frames that were hit
    # (a CTRL frame hit needs nothing), go-back-N also the good frames sent after them,
    # which b receives twice, and it finishes later.
    results = {}
    for mode in ("selective", "go-back-n"):
        results[mode] = run_traffic(LinkConfig(retransmit=mode), words=300, vcs=[0], seed=1,
                                    errors=burst("err_ab", 150, 3))
        results[mode].check()
    a, b = results["selective"].status["a"], results["selective"].status["b"]
    assert 1 <= a["replays"] <= b["bad_frames"]
    assert b["duplicates"] == 0 and a["timeouts"] == 0
    gbn = results["go-back-n"]
    assert gbn.status["b"]["frames"] > b["frames"]
    assert gbn.cycles > results["selective"].cycles


def test_lone_lost_frame_is_resent_on_nak():
    # Request-response traffic (tests/rtl/test_control.py): one short frame, hit on the
    # wire, and nothing sent after it whose SACK could show the loss. The receiver's NAK
    # must get it resent at once, as go-back-N does, not after the replay timeout.
    results = {mode: run_traffic(LinkConfig(retransmit=mode), words=3, vcs=[0], seed=1,
                                 errors=burst("err_ab", 6, 1), drain=50)
               for mode in ("selective", "go-back-n")}
    for result in results.values():
        result.check()
    sr = results["selective"]
    assert sr.status["b"]["bad_frames"] == 1
    assert sr.status["a"]["replays"] == 1 and sr.status["a"]["timeouts"] == 0
    assert sr.cycles < LinkConfig().replay_timeout
    assert sr.cycles <= results["go-back-n"].cycles


@pytest.mark.parametrize("mode", ["selective", "go-back-n"])
def test_replay_after_timeout(mode):
    # Every frame from b to a is lost for 400 cycles, ACKs included: a must time out
    # and replay, and b must drop the replayed frames it already has.
    config = LinkConfig(retransmit=mode)
    result = run_traffic(config, words=400, vcs=[0, 1], seed=2,
                         errors=burst("err_ba", 100, 400))
    result.check()
    a, b = result.status["a"], result.status["b"]
    assert a["timeouts"] >= 1
    assert b["duplicates"] >= 1


def test_config_is_validated():
    with pytest.raises(TypeError, match="config"):
        LinkTransmitter(None)
    with pytest.raises(ValueError, match="max_payload"):
        LinkConfig(max_payload=12)
    with pytest.raises(ValueError, match="replay_slots"):
        LinkConfig(replay_slots=0)
    with pytest.raises(ValueError, match="replay_timeout"):
        LinkConfig(replay_timeout=64, refresh_interval=64)
    with pytest.raises(TypeError, match="crc"):
        LinkConfig(crc="crc32")


@pytest.mark.parametrize("kwargs, name", [
    (dict(replay_slots=16, seq_width=4), "replay_slots"),   # window over half the space
    (dict(replay_slots=8, seq_width=3), "replay_slots"),
    (dict(max_payload=32, rx_depth=16), "max_payload"),     # a frame longer than the FIFO
    (dict(rx_depth=0), "rx_depth"),                          # no credits
    (dict(rx_depth=1, max_payload=1), "rx_depth"),
    (dict(retransmit="stop-and-wait"), "retransmit"),
])
def test_configurations_that_cannot_work_are_refused(kwargs, name):
    with pytest.raises(ValueError, match=name):
        LinkConfig(**kwargs)


def test_smallest_working_configurations():
    assert LinkConfig(replay_slots=16, seq_width=5).seq_width == 5
    assert LinkConfig(max_payload=16, rx_depth=16).rx_depth == 16
    assert LinkConfig(rx_depth=2, max_payload=2).selective
    assert not LinkConfig(retransmit="go-back-n").selective


@pytest.mark.parametrize("cc_interval", [None, 64])
def test_clock_compensation_double_idles(cc_interval):
    # Saturated: always-valid sources on every VC, always-ready sinks. Without
    # cc_interval the frames go back to back with single idles; with it, two idles
    # in a row come at least every cc_interval + one frame, at nearly the same rate.
    config = LinkConfig(cc_interval=cc_interval)
    m = Module()
    m.submodules.a = a = LinkEndpoint(config)
    m.submodules.b = b = LinkEndpoint(config)
    m.submodules.ab = ab = SimPhy()
    m.submodules.ba = ba = SimPhy()
    wiring.connect(m, a.phy_tx, ab.i)
    wiring.connect(m, ab.o, b.phy_rx)
    wiring.connect(m, b.phy_tx, ba.i)
    wiring.connect(m, ba.o, a.phy_rx)
    wire = []

    async def tb(ctx):
        for v in range(config.vcs):
            ctx.set(a.i[v].valid, 1)
            ctx.set(b.o[v].ready, 1)
        for _ in range(800):
            wire.append(ctx.get(a.phy_tx.valid))
            await ctx.tick()

    sim = Simulator(m)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()
    doubles = [n for n in range(200, len(wire)) if not wire[n] and not wire[n - 1]]
    if cc_interval is None:
        assert not doubles
    else:
        frame = config.frame_symbols(config.max_payload)
        gaps = [q - p for p, q in zip([200] + doubles, doubles + [len(wire)])]
        assert max(gaps) <= cc_interval + frame
    assert sum(wire[200:]) > 0.9 * (len(wire) - 200)      # saturated either way
