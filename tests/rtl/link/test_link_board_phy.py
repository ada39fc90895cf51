"""BoardPhy at the bit level: two PHYs through the channel model (pins_sim), on clocks
±200 ppm apart with random phases, per-lane skew and bit errors.

- lock from seeded starts within LOCK_CYCLES;
- loss of lock when a wire is cut, and retraining, with the counters;
- symbols after lock: none lost, repeated or reordered, frames (bursts) kept whole,
  under a clock offset large enough to make the elastic buffer drop and insert idles;
- the full link stack (LinkEndpoint on both sides) over the PHYs: every word once,
  in order, intact, at BER 0 and 1e-4.
"""

import random
import time

import pytest
from amaranth.sim import Simulator

from fpdeep.rtl.link.board_phy import BoardPhy, BoardPhyCoding
from fpdeep.rtl.link.frame import LinkConfig
from fpdeep.rtl.link.pins_sim import (BoardPhyPair, BoardLinkPair, ChannelModel, SimPins,
                                      board_clocks)
from fpdeep.rtl.link.traffic import run_traffic


#: Core cycles (of the later board) from reset to both PHYs locked, at most.
LOCK_CYCLES = 80
STATUS = ("locked", "lock_losses", "realignments", "training_words", "underruns")


def _random_pair(rng, lanes=4, lane_width=4):
    skew = lambda: [rng.randrange(2) for _ in range(lanes)]
    return BoardPhyPair(lanes=lanes, lane_width=lane_width, skew_ab=skew(), skew_ba=skew(),
                        latency=rng.randrange(4))


def _simulator(pair, rng, ppm):
    sim = Simulator(pair)
    for period, domain, phase in board_clocks(pair.link_ratio, ppm=ppm, rng=rng):
        sim.add_clock(period, domain=domain, phase=phase)
    return sim


def _status(ctx, port):
    return {name: ctx.get(getattr(port, name)) for name in STATUS}


async def _wait_locked(ctx, pair, limit):
    """Core cycles (sync) until both PHYs are locked, or None after ``limit``."""
    for n in range(limit):
        if ctx.get(pair.a_status.locked) and ctx.get(pair.b_status.locked):
            return n
        await ctx.tick()
    return None


@pytest.mark.parametrize("seed", range(4))
def test_lock_from_seeded_starts(seed):
    # Seeds cover phase, skew, wire delay, both ppm signs and two geometries.
    rng = random.Random(seed)
    lanes, lane_width = [(4, 4), (2, 8)][seed % 2]
    pair = _random_pair(rng, lanes, lane_width)
    ppm = 200 if seed % 4 < 2 else -200
    result = {}

    async def tb(ctx):
        result["cycles"] = await _wait_locked(ctx, pair, 4 * LOCK_CYCLES)
        await ctx.tick().repeat(100)      # and stays locked
        result["a"], result["b"] = _status(ctx, pair.a_status), _status(ctx, pair.b_status)

    sim = _simulator(pair, rng, ppm)
    sim.add_testbench(tb)
    sim.run()
    print(f"seed {seed}: locked after {result['cycles']} cycles; {result}")
    assert result["cycles"] is not None and result["cycles"] <= LOCK_CYCLES
    for side in "ab":
        assert result[side]["locked"] == 1
        assert result[side]["lock_losses"] == 0
        assert result[side]["training_words"] > 0


def test_cut_wire_loses_lock_and_retrains():
    rng = random.Random(7)
    pair = _random_pair(rng)
    log = {}

    async def tb(ctx):
        assert await _wait_locked(ctx, pair, LOCK_CYCLES) is not None
        await ctx.tick().repeat(50)
        before = _status(ctx, pair.b_status)
        ctx.set(pair.cut_ab, 1)
        for n in range(50):
            await ctx.tick()
            if not ctx.get(pair.b_status.locked):
                log["lost_after"] = n
                break
        await ctx.tick().repeat(100)
        log["cut"] = _status(ctx, pair.b_status)
        ctx.set(pair.cut_ab, 0)
        log["relocked_after"] = await _wait_locked(ctx, pair, 4 * LOCK_CYCLES)
        await ctx.tick().repeat(50)
        log["before"], log["after"] = before, _status(ctx, pair.b_status)
        log["a"] = _status(ctx, pair.a_status)

    sim = _simulator(pair, rng, -200)
    sim.add_testbench(tb)
    sim.run()
    print(log)
    assert log["lost_after"] <= 8                   # 4 bad symbols, plus synchronisers
    assert log["cut"]["locked"] == 0
    assert log["cut"]["realignments"] > log["before"]["realignments"]    # searching
    assert log["relocked_after"] is not None and log["relocked_after"] <= LOCK_CYCLES
    assert log["after"]["lock_losses"] == log["before"]["lock_losses"] + 1 == 1
    assert log["after"]["training_words"] > log["cut"]["training_words"]
    # The other direction never lost lock: it only trained its peer.
    assert log["a"]["locked"] == 1 and log["a"]["lock_losses"] == 0


def test_corrupted_training_delays_lock_until_clean():
    # Heavy errors on one wire during training: that side cannot lock; once the wire is
    # clean it locks within the bound.
    rng = random.Random(3)
    pair = _random_pair(rng)
    log = {}

    async def noise(ctx):
        noisy = random.Random(1)
        for _ in range(600):
            ctx.set(pair.err_ab, noisy.getrandbits(len(pair.err_ab)))
            await ctx.tick("a_link")
        ctx.set(pair.err_ab, 0)
        log["clean"] = True

    async def tb(ctx):
        assert await _wait_locked(ctx, pair, 150) is None
        log["noisy"] = _status(ctx, pair.b_status)
        while "clean" not in log:
            await ctx.tick()
        log["locked_after"] = await _wait_locked(ctx, pair, 4 * LOCK_CYCLES)

    sim = _simulator(pair, rng, 200)
    sim.add_testbench(noise, background=True)
    sim.add_testbench(tb)
    sim.run()
    print(log)
    assert log["noisy"]["locked"] == 0 and log["noisy"]["realignments"] > 20
    assert log["locked_after"] is not None and log["locked_after"] <= LOCK_CYCLES


@pytest.mark.parametrize("ppm", [+20_000, -20_000])
def test_symbols_kept_in_order_across_clock_offset(ppm):
    # 2 % (100 times the boards' worst case) so that a short run slips 20 symbols, more
    # than the elastic buffer holds: it must insert and drop idles, between bursts only.
    rng = random.Random(ppm)
    pair = _random_pair(rng)
    width = len(pair.a_i.payload.as_value())
    sent, got = [], []          # bursts of symbols, after lock
    cycles = 1000
    done = {}

    async def send(ctx):
        assert await _wait_locked(ctx, pair, LOCK_CYCLES) is not None
        await ctx.tick().repeat(40)     # the trainer's hold, then data
        since_double = 0
        for _ in range(cycles // 8):
            burst = [rng.getrandbits(width) for _ in range(rng.randrange(1, 16))]
            sent.append(burst)
            for word in burst:
                ctx.set(pair.a_i.valid, 1)
                ctx.set(pair.a_i.payload.as_value(), word)
                await ctx.tick()
            # One idle, or two at least every 20 cycles (the sender's cc_interval).
            idles = 2 if since_double > 20 or rng.random() < 0.1 else 1
            since_double = 0 if idles == 2 else since_double + len(burst) + 1
            ctx.set(pair.a_i.valid, 0)
            await ctx.tick().repeat(idles)
        done["sent"] = True

    async def receive(ctx):
        burst = []
        while True:
            _, _, valid, payload = await ctx.tick("b").sample(pair.b_o.valid,
                                                               pair.b_o.payload.as_value())
            if valid:
                burst.append(payload)
            elif burst:
                got.append(burst)
                burst = []

    async def supervise(ctx):
        while "sent" not in done:
            await ctx.tick()
        await ctx.tick().repeat(60)
        done["a"], done["b"] = _status(ctx, pair.a_status), _status(ctx, pair.b_status)

    sim = _simulator(pair, rng, ppm)
    sim.add_testbench(send, background=True)
    sim.add_testbench(receive, background=True)
    sim.add_testbench(supervise)
    start = time.perf_counter()
    sim.run()
    print(f"{ppm:+} ppm: {sum(map(len, sent))} symbols in {len(sent)} bursts, "
          f"{time.perf_counter() - start:.1f} s, {done}")
    assert got == sent
    for side in "ab":
        assert done[side]["lock_losses"] == 0 and done[side]["underruns"] == 0


def _board_traffic(words, ber, seed, ppm):
    rng = random.Random(seed)
    skew = lambda: [rng.randrange(2) for _ in range(4)]
    pair = BoardLinkPair(LinkConfig(cc_interval=1024), lanes=4, skew_ab=skew(),
                         skew_ba=skew(), latency=rng.randrange(4))
    result = run_traffic(pair.config, words=words, directions=("ab", "ba"), ber=ber,
                         seed=seed, gap=0.3, stall=0.3, pair=pair,
                         clocks=board_clocks(pair.link_ratio, ppm=ppm, rng=rng))
    print(f"ber={ber} ppm={ppm:+}: {result.words} words in {result.cycles} cycles, "
          f"{result.seconds:.0f} s, {result.bit_errors} bit errors, status {result.status}")
    return result


@pytest.mark.parametrize("ber,words,ppm", [(0.0, 60, +200), (1e-4, 125, -200)])
def test_words_over_link_stack(ber, words, ppm):
    # 4 VCs x 2 directions: 480 words at BER 0, 1,000 at 1e-4, random gaps and stalls
    # (pysim runs this about 2.5 times slower than over SimPhy).
    result = _board_traffic(words, ber, seed=int(ber * 1e5) + 1, ppm=ppm)
    result.check()
    assert result.words == 8 * words


@pytest.mark.slow
@pytest.mark.parametrize("ber,ppm", [(0.0, +200), (1e-4, -200)])
def test_many_words_over_link_stack(ber, ppm):
    # 3,200 words each (about 85 s): pysim runs the two board PHYs with their
    # endpoints at about 50 core cycles/s, so 100,000 words (12_500 per VC and
    # direction) would take about 45 minutes each, over CI's budget for slow tests.
    result = _board_traffic(400, ber, seed=100, ppm=ppm)
    result.check()
    assert result.words == 3_200
    # Only the start-up (frames sent before lock) waits for the replay timer: a bit
    # error must not make a locked PHY train its peer (control words differ in 2 bits
    # and a training request takes 4 words in a row).
    assert result.status["a"]["timeouts"] <= 2 and result.status["b"]["timeouts"] <= 2


def test_coding_words_are_unambiguous():
    for lane_width in range(1, 17):
        c = BoardPhyCoding(lane_width)
        assert c.word_bits % 2 == 0 and c.word_bits >= lane_width + 2
        codes = {c.control(t) for t in c.training}
        assert len(codes) == 3 and c.IDLE not in c.training and c.FILL not in c.training
        for t in codes:
            for k in range(1, c.word_bits):
                assert c._rotate(t, k) not in codes
        # No single bit error turns one control word into another.
        bodies = [c.IDLE, c.FILL, *c.training]
        assert all(bin(x ^ y).count("1") >= 2 for x in bodies for y in bodies if x != y)


def test_channel_model_skew_and_cut():
    lanes = 2
    dut = ChannelModel(lanes=lanes, skew=[0, 1], latency=1)
    rng = random.Random(0)
    stream = [rng.getrandbits(2 * lanes) for _ in range(40)]
    seen = []

    async def tb(ctx):
        for n, bits in enumerate(stream):
            ctx.set(dut.i, bits)
            ctx.set(dut.cut, n >= 30)
            seen.append(ctx.get(dut.o))
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()
    serial = lambda lane, words: [w >> (2 * lane + j) & 1 for w in words for j in range(2)]
    assert serial(0, seen[1:30]) == serial(0, stream[:29])          # one cycle late
    assert serial(1, seen[1:30])[1:] == serial(1, stream[:29])[:-1]  # and one bit more
    assert all(w == 0 for w in seen[30:])


def test_parameters_are_validated():
    pins = SimPins(4, "x")
    with pytest.raises(ValueError, match="lanes"):
        BoardPhy(lanes=0, lane_width=4, pins=pins)
    with pytest.raises(TypeError, match="search_timeout"):
        BoardPhy(lanes=4, lane_width=4, pins=pins, search_timeout=1.5)
    with pytest.raises(ValueError, match="search_timeout"):
        BoardPhy(lanes=4, lane_width=4, pins=pins, search_timeout=10)
    with pytest.raises(TypeError, match="pins"):
        BoardPhy(lanes=4, lane_width=4, pins=object())
    with pytest.raises(ValueError, match="skew"):
        ChannelModel(lanes=2, skew=[0, 2], latency=0)
    with pytest.raises(ValueError, match="cc_interval"):
        BoardLinkPair(LinkConfig())
    with pytest.raises(ValueError, match="cc_interval"):
        LinkConfig(cc_interval=1)
