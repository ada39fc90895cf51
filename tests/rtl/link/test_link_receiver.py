"""LinkReceiver against frames built in Python from the documented frame format."""

import random

import pytest
from amaranth.sim import Simulator

from fpdeep.rtl.link.frame import FrameKind, LinkConfig
from fpdeep.rtl.link.receiver import LinkReceiver

GBN = dict(retransmit="go-back-n")


def encode(config, kind=FrameKind.DATA, *, vc=0, seq=0, payload=(), ack=0, nak=0, sack=0,
           credit_vc=0, credit=0):
    """Symbols of one frame, per the format in ``fpdeep.rtl.link.frame`` (idle not included)."""
    w, mask = config.word_width, (1 << config.word_width) - 1
    fields = {"kind": kind, "vc": vc, "seq": seq, "length": len(payload), "ack": ack,
              "credit_vc": credit_vc, "credit": credit}
    fields.update({"sack": sack} if config.selective else {"nak": nak})
    header = config.header_layout.const(fields).as_value().value
    symbols = [(header >> (w * n)) & mask for n in range(config.header_symbols)]
    symbols += list(payload)
    fcs = config.crc(w).compute(symbols)
    return symbols + [(fcs >> (w * n)) & mask for n in range(config.trailer_symbols)]


def simulate(config, frames, *, tail=40):
    """Feed ``frames`` (lists of symbols), one idle after each; return what came out."""
    dut = LinkReceiver(config)
    out = {"words": [], "nak": 0, "ack_now": 0, "peer": [], "ack": None, "sack": None,
           "status": None}

    async def feed(ctx):
        ctx.set(dut.o.ready, 1)
        for symbols in frames:
            for s in symbols:
                ctx.set(dut.i.valid, 1)
                ctx.set(dut.i.payload, s)
                await ctx.tick()
            ctx.set(dut.i.valid, 0)
            await ctx.tick()
        await ctx.tick().repeat(tail)
        out["ack"] = ctx.get(dut.ack)
        out["sack"] = ctx.get(dut.sack)
        out["status"] = (ctx.get(dut.frames), ctx.get(dut.bad_frames), ctx.get(dut.duplicates))

    async def watch(ctx):
        async for _, _, valid, word, vc, nak, ack_now, peer_valid, peer_ack in ctx.tick().sample(
                dut.o.valid, dut.o.p.word, dut.o.p.vc, dut.nak, dut.ack_now,
                dut.peer_valid, dut.peer.ack):
            if valid:
                out["words"].append((vc, word))
            out["nak"] += nak
            out["ack_now"] += ack_now
            if peer_valid:
                out["peer"].append(peer_ack)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(feed)
    sim.add_testbench(watch, background=True)
    sim.run()
    return out


@pytest.mark.parametrize("mode", [{}, GBN], ids=["selective", "go-back-n"])
def test_good_frames_in_order(mode):
    c = LinkConfig(**mode)
    frames = [encode(c, vc=1, seq=0, payload=[1, 2, 3], ack=5),
              encode(c, FrameKind.CTRL, ack=6, credit_vc=2, credit=9),
              encode(c, vc=3, seq=1, payload=list(range(100, 116)), ack=7)]
    out = simulate(c, frames)
    assert out["words"] == [(1, 1), (1, 2), (1, 3)] + [(3, w) for w in range(100, 116)]
    assert out["peer"] == [5, 6, 7]
    assert out["ack"] == 2 and out["nak"] == 0
    assert out["status"] == (3, 0, 0)


@pytest.mark.parametrize("mode", [{}, GBN], ids=["selective", "go-back-n"])
@pytest.mark.parametrize("seed", range(6))
def test_crc_detects_injected_errors(seed, mode):
    # CRC-32 catches any 1-3 bit error in frames this short; a hit frame must deliver
    # nothing, count as bad and raise exactly one NAK, and the next good
    # frame with the same sequence number must then be accepted.
    rng = random.Random(seed)
    c = LinkConfig(max_payload=8, **mode)
    payload = [rng.getrandbits(16) for _ in range(rng.randrange(1, 9))]
    good = encode(c, vc=2, seq=0, payload=payload)
    bad = list(good)
    for _ in range(rng.randrange(1, 4)):
        n = rng.randrange(len(bad))
        bad[n] ^= 1 << rng.randrange(16)
    if bad == good:     # two flips cancelled out
        bad[0] ^= 1
    out = simulate(c, [bad, good])
    assert out["words"] == [(2, w) for w in payload]
    assert out["nak"] == 1      # selective repeat too: the frame might be a tail
    assert out["status"] == (1, 1, 0)


@pytest.mark.parametrize("mode", [{}, GBN], ids=["selective", "go-back-n"])
def test_truncated_and_overlong_bursts_are_dropped(mode):
    c = LinkConfig(**mode)
    good = encode(c, seq=0, payload=[7, 8])
    out = simulate(c, [good[:-1], good + [0], good])
    assert out["words"] == [(0, 7), (0, 8)]
    assert out["status"] == (1, 2, 0)


@pytest.mark.parametrize("mode", [{}, GBN], ids=["selective", "go-back-n"])
def test_duplicate_dropped_and_acked(mode):
    c = LinkConfig(**mode)
    f0 = encode(c, seq=0, payload=[10, 11])
    f1 = encode(c, seq=1, payload=[12])
    out = simulate(c, [f0, f0, f1, f0, f1])
    assert out["words"] == [(0, 10), (0, 11), (0, 12)]
    assert out["ack_now"] == 3 and out["nak"] == 0
    assert out["status"] == (5, 0, 3)
    assert out["ack"] == 2


def test_frame_from_the_future_is_naked():
    c = LinkConfig(**GBN)
    out = simulate(c, [encode(c, seq=1, payload=[1]), encode(c, seq=2, payload=[2]),
                       encode(c, seq=0, payload=[0]), encode(c, seq=1, payload=[1])])
    assert out["words"] == [(0, 0), (0, 1)]
    assert out["nak"] == 1          # one NAK per loss, not one per dropped frame
    assert out["ack"] == 2


def test_frames_after_a_gap_are_kept():
    # Selective repeat: frames 1 and 2 arrive before 0; all three are kept, delivered
    # in order once 0 arrives, the ACK jumps to 3, and the SACK names the last one held.
    # A second copy of 1, ahead of the ACK but already held, is a duplicate.
    c = LinkConfig()
    out = simulate(c, [encode(c, seq=1, payload=[10, 11]), encode(c, seq=2, payload=[20]),
                       encode(c, seq=1, payload=[10, 11]), encode(c, seq=0, payload=[0]),
                       encode(c, seq=3, payload=[30])])
    assert out["words"] == [(0, 0), (0, 10), (0, 11), (0, 20), (0, 30)]
    assert out["nak"] == 0
    assert out["ack"] == 4 and out["sack"] == 3
    assert out["status"] == (5, 0, 1)


def test_window_is_respected():
    # With 4 slots the sequence space is 8: a frame 4 ahead of the ACK is the same as one
    # 4 behind it, a duplicate a sender can have on the wire, and is dropped, never held.
    c = LinkConfig(replay_slots=4)
    out = simulate(c, [encode(c, seq=4, payload=[4]), encode(c, seq=0, payload=[0]),
                       encode(c, seq=5, payload=[5]), encode(c, seq=1, payload=[1])])
    assert out["words"] == [(0, 0), (0, 1)]
    assert out["ack"] == 2
    assert out["status"] == (4, 0, 2)
