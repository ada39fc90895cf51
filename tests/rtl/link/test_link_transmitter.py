"""LinkTransmitter replay: after a NAK, after a timeout (ACKs lost), and its validation."""

import pytest

from fpdeep.rtl.link.frame import LinkConfig
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


def test_replay_after_timeout():
    # Every frame from b to a is lost for 400 cycles, ACKs included: a must time out
    # and replay, and b must drop the replayed frames it already has.
    config = LinkConfig()
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
