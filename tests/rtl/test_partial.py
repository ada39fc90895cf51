import random

import numpy as np
import pytest
from amaranth import *
from amaranth.lib import memory, wiring
from amaranth.sim import Simulator

from fpdeep.rtl.conv import ConvEngine, ConvGeometry, RowLayout, pack_conv_weights, pack_rows
from fpdeep.rtl.numerics import DEFAULT_NUMERICS as N, FixedFormat, requantize_np
from fpdeep.rtl.partial import PartialSum
from fpdeep.sim.reference import conv_backward_acc
from tests.rtl.test_conv import run_engine
from tests.memory_helpers import MemoryWriter
from tests.stream_helpers import StreamDriver

ACC = FixedFormat(48, N.weight.frac + N.error.frac)


class PartialBench(Elaboratable):
    """A PartialSum, its incoming memory (``incoming`` words, or none) and optionally a
    raw BP engine with its weight and input memories feeding ``i``."""

    def __init__(self, partial, incoming=None, engine=None, weights=None, inputs=None):
        self.partial, self.engine = partial, engine
        self.memories = {}
        if incoming is not None:
            self.memories["rd"] = (partial.rd, incoming)
        if engine is not None:
            self.memories["w_rd"] = (engine.w_rd, weights)
            self.memories["x_rd"] = (engine.x_rd, inputs)

    def elaborate(self, platform):
        m = Module()
        m.submodules.partial = self.partial
        for name, (port, words) in self.memories.items():
            mem = memory.Memory(shape=port.data.shape(), depth=len(words), init=words)
            m.submodules[name] = mem
            wiring.connect(m, port, mem.read_port())
        if self.engine is not None:
            source, sink = self.engine.o, self.partial.i
            m.submodules.engine = self.engine
            m.d.comb += [
                sink.valid.eq(source.valid),
                sink.payload.channel.eq(source.payload.channel),
                sink.payload.row.eq(source.payload.row),
                sink.payload.values.eq(source.payload.values),
                source.ready.eq(sink.ready),
            ]
        return m


async def collect(ctx, dut, layout, count, driver):
    """Receive ``count`` rows from ``dut.o``: a (channels, h, w) array and the saturations."""
    out = np.zeros((layout.channels, layout.h, layout.w), dtype=np.int64)
    seen = np.zeros((layout.channels, layout.h), dtype=bool)
    saturated = 0
    for _ in range(count):
        beat = await driver.get(ctx, dut.o)
        assert not seen[beat.channel, beat.row], "row delivered twice"
        seen[beat.channel, beat.row] = True
        out[beat.channel, beat.row] = [beat.values[x] for x in range(layout.w)]
        if hasattr(beat, "saturated"):
            saturated += beat.saturated
    ctx.set(dut.o.ready, 1)
    for _ in range(40):
        assert not ctx.get(dut.o.valid), "extra row"
        await ctx.tick()
    assert not ctx.get(dut.busy)
    return out, saturated


def run_rows(partial, rows, incoming, *, seed):
    """Feed ``rows`` (``(channel, row, values)``) with gaps and stalls; return the output."""
    layout = partial._layout
    bench = PartialBench(partial, incoming)
    driver = StreamDriver(random.Random(seed), gap=0.3, stall=0.4)
    result = []

    async def producer(ctx):
        for channel, row, values in rows:
            await driver.put(ctx, partial.i, {"channel": channel, "row": row,
                                              "values": [int(v) for v in values]})

    async def consumer(ctx):
        result.append(await collect(ctx, partial, layout, len(rows), driver))

    sim = Simulator(bench)
    sim.add_clock(1e-6)
    sim.add_testbench(producer)
    sim.add_testbench(consumer)
    sim.run()
    return result[0]


def random_sums(rng, shape, bits):
    """Sums of up to ``bits`` bits, with the extremes of that range mixed in."""
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    x = rng.integers(lo, hi, size=shape, endpoint=True)
    x = x >> rng.integers(0, bits - 1, size=shape)          # all magnitudes
    corners = rng.random(size=shape) < 0.15
    return np.where(corners, rng.choice([lo, hi, -1, 0], size=shape), x)


@pytest.mark.parametrize("incoming,requantize", [(False, False), (True, False),
                                                 (False, True), (True, True)])
def test_sums_of_random_rows(incoming, requantize):
    rng = np.random.default_rng(incoming * 2 + requantize)
    layout = RowLayout(int(rng.integers(1, 5)), int(rng.integers(1, 5)),
                       int(rng.integers(1, 5)), ACC)
    shape = (layout.channels, layout.h, layout.w)
    # Raw sums must fit 48 bits (the caller's proof); requantized ones may use all 49.
    bits = 48 if requantize else 47
    own = random_sums(rng, shape, bits)
    came = random_sums(rng, shape, bits) if incoming else np.zeros(shape, dtype=np.int64)
    order = [(c, y) for c in range(layout.channels) for y in range(layout.h)]
    rng.shuffle(order)
    rows = [(c, y, own[c, y]) for c, y in order]
    partial = PartialSum(layout=layout, incoming=incoming, requantize=requantize,
                         out_fmt=N.error if requantize else None)
    got, sat = run_rows(partial, rows, pack_rows(came) if incoming else None,
                        seed=len(order))
    total = own + came
    if requantize:
        expect, expect_sat = requantize_np(total, ACC.frac, N.error)
        assert expect_sat > 0
    else:
        expect, expect_sat = total, 0
    np.testing.assert_array_equal(got, expect)
    assert sat == expect_sat


def test_one_row_per_cycle_two_cycles_latency():
    layout = RowLayout(2, 3, 2, ACC)
    rng = np.random.default_rng(9)
    own = random_sums(rng, (2, 3, 2), 47)
    came = random_sums(rng, (2, 3, 2), 47)
    partial = PartialSum(layout=layout, incoming=True, requantize=False)
    bench = PartialBench(partial, pack_rows(came))
    order = [(c, y) for c in range(2) for y in range(3)][::-1]

    async def tb(ctx):
        ctx.set(partial.o.ready, 1)
        offered = []
        for cycle in range(len(order) + 2):
            if cycle < len(order):
                c, y = order[cycle]
                ctx.set(partial.i.valid, 1)
                ctx.set(partial.i.payload, {"channel": c, "row": y,
                                            "values": [int(v) for v in own[c, y]]})
                assert ctx.get(partial.i.ready)
            else:
                ctx.set(partial.i.valid, 0)
            if ctx.get(partial.o.valid):
                beat = ctx.get(partial.o.payload)
                offered.append((cycle, beat.channel, beat.row,
                                [beat.values[x] for x in range(2)]))
            await ctx.tick()
        assert offered == [(n + 2, c, y, list(own[c, y] + came[c, y]))
                           for n, (c, y) in enumerate(order)]

    sim = Simulator(bench)
    sim.add_clock(1e-6)
    sim.add_testbench(tb)
    sim.run()


def split_channels(rng, count, parts):
    cuts = sorted(rng.choice(np.arange(1, count), size=parts - 1, replace=False))
    bounds = [0, *map(int, cuts), count]
    return [slice(a, b) for a, b in zip(bounds, bounds[1:])]


def run_stage(geometry, wq, e, incoming, *, out_fmt, seed):
    """One chip: a raw BP engine over a slice of the layer's output channels (``wq``,
    ``e``), whose rows a PartialSum adds to ``incoming`` (or not, if ``None``)."""
    rows = int(np.random.default_rng(seed).integers(1, geometry.cin + 2))
    bp = geometry.transposed()
    engine = ConvEngine(geometry=bp, rows=rows, in_fmt=N.error, weight_fmt=N.weight,
                        out_fmt=None, bias=False, raw=True)
    partial = PartialSum(layout=engine.out_layout, incoming=incoming is not None,
                         requantize=out_fmt is not None, out_fmt=out_fmt)
    flipped = wq[:, :, ::-1, ::-1].transpose(1, 0, 2, 3)
    bench = PartialBench(partial, None if incoming is None else pack_rows(incoming), engine,
                         pack_conv_weights(flipped, None, rows), pack_rows(e))
    driver = StreamDriver(random.Random(seed), stall=0.3)
    result = []

    async def tb(ctx):
        ctx.set(engine.start, 1)
        await ctx.tick()
        ctx.set(engine.start, 0)
        layout = engine.out_layout
        result.append(await collect(ctx, partial, layout, layout.depth, driver))
        assert not ctx.get(engine.busy)

    sim = Simulator(bench)
    sim.add_clock(1e-6)
    sim.add_testbench(tb)
    sim.run()
    return result[0]


CHAINS = [
    # seed, chips, weight scale (a large scale saturates the requantized error)
    (0, 2, 0.5),
    (1, 3, 0.5),
    (2, 3, 6.0),
    (3, 2, 6.0),
]


@pytest.mark.parametrize("seed,chips,scale", CHAINS)
def test_split_layer_equals_unsplit_engine(seed, chips, scale):
    """A layer split by output channels over ``chips`` chips: raw engines and PartialSums
    chained from the last chip up give the unsplit engine's errors bit for bit."""
    rng = np.random.default_rng(300 + seed)
    kh, kw = int(rng.integers(1, 4)), int(rng.integers(1, 4))
    g = ConvGeometry(cin=int(rng.integers(1, 4)), cout=int(rng.integers(chips, chips + 4)),
                     h=int(rng.integers(kh, 6)), w=int(rng.integers(kw, 6)), kh=kh, kw=kw,
                     ph=int(rng.integers(0, kh)), pw=int(rng.integers(0, kw)))
    wq = N.weight.from_float(rng.normal(0, scale, size=(g.cout, g.cin, g.kh, g.kw)))
    e = N.error.from_float(rng.normal(0, 2, size=(g.cout, g.ho, g.wo)))
    slices = split_channels(rng, g.cout, chips)

    def part_geometry(s):
        return ConvGeometry(cin=g.cin, cout=s.stop - s.start, h=g.h, w=g.w, kh=g.kh,
                            kw=g.kw, ph=g.ph, pw=g.pw)

    # From the last chip up: each adds its slice's sums to the ones that came from below.
    came, sat = None, 0
    for k in reversed(range(chips)):
        s = slices[k]
        first = k == 0
        came, sat = run_stage(part_geometry(s), wq[s], e[s], came,
                              out_fmt=N.error if first else None, seed=seed * 10 + k)
        if not first:
            exact = sum(conv_backward_acc(e[t], wq[t], g.ph, g.pw) for t in slices[k:])
            np.testing.assert_array_equal(came, exact)
            assert sat == 0

    expect, expect_sat = requantize_np(conv_backward_acc(e, wq, g.ph, g.pw),
                                       N.weight.frac + N.error.frac, N.error)
    np.testing.assert_array_equal(came, expect)
    assert sat == expect_sat
    rows = int(rng.integers(1, g.cin + 2))
    engine = ConvEngine(geometry=g.transposed(), rows=rows, in_fmt=N.error,
                        weight_fmt=N.weight, out_fmt=N.error, bias=False)
    flipped = wq[:, :, ::-1, ::-1].transpose(1, 0, 2, 3)
    full, full_sat = run_engine(engine, pack_conv_weights(flipped, None, rows), pack_rows(e),
                                seed=seed)
    np.testing.assert_array_equal(came, full)
    assert sat == full_sat
    if scale > 1:
        assert sat > 0


def test_parameters_are_checked():
    layout = RowLayout(2, 2, 2, ACC)
    with pytest.raises(TypeError, match="layout"):
        PartialSum(layout=(2, 2, 2), incoming=True, requantize=False)
    with pytest.raises(TypeError, match="out_fmt"):
        PartialSum(layout=layout, incoming=True, requantize=True)
    with pytest.raises(ValueError, match="out_fmt"):
        PartialSum(layout=layout, incoming=True, requantize=False, out_fmt=N.error)


class ArrivingBench(Elaboratable):
    """A PartialSum whose incoming memory starts empty; the testbench writes it
    (``self.writer``) and raises ``rows_in``."""

    def __init__(self, partial):
        layout = partial._layout
        self.partial = partial
        self.mem = memory.Memory(shape=layout.shape, depth=layout.depth, init=[])
        self.writer = MemoryWriter(self.mem)

    def elaborate(self, platform):
        m = Module()
        m.submodules.partial, m.submodules.mem = self.partial, self.mem
        wiring.connect(m, self.partial.rd, self.mem.read_port())
        self.writer.connect(m)
        return m


@pytest.mark.parametrize("seed", range(2))
def test_rows_wait_for_incoming_rows(seed):
    """Two maps in stream order on ``i`` at full speed while the incoming sums arrive
    slowly, row by row: every row waits for its incoming row, so the sums are exact
    (a row added too early would add the previous map's, or zeros)."""
    rng = random.Random(seed)
    layout = RowLayout(rng.randint(1, 3), rng.randint(1, 3), rng.randint(1, 3), ACC)
    partial = PartialSum(layout=layout, incoming=True, requantize=False)
    bench = ArrivingBench(partial)
    order = layout.stream_order()
    maps = [[[rng.randint(-2**40, 2**40) for _ in range(layout.w)] for _ in order]
            for _ in range(2)]
    sums = [[[rng.randint(-2**40, 2**40) for _ in range(layout.w)] for _ in order]
            for _ in range(2)]
    got = []

    async def incoming(ctx):
        for k in range(2):
            ctx.set(partial.rows_in, 0)
            for n, (channel, row) in enumerate(order):
                for _ in range(rng.randint(2, 8)):
                    await ctx.tick()
                await bench.writer.put(ctx, layout.address(channel, row), sums[k][n])
                ctx.set(partial.rows_in, n + 1)
            while len(got) < (k + 1) * len(order):
                await ctx.tick()

    async def own(ctx):
        for k in range(2):
            for n, (channel, row) in enumerate(order):
                ctx.set(partial.i.valid, 1)
                ctx.set(partial.i.payload.channel, channel)
                ctx.set(partial.i.payload.row, row)
                for x in range(layout.w):
                    ctx.set(partial.i.payload.values[x], maps[k][n][x])
                await ctx.tick().until(partial.i.ready)
            ctx.set(partial.i.valid, 0)
            while len(got) < (k + 1) * len(order):
                await ctx.tick()

    async def sink(ctx):
        ctx.set(partial.o.ready, 1)
        while len(got) < 2 * len(order):
            beat, = await ctx.tick().sample(partial.o.payload).until(partial.o.valid)
            got.append([beat.values[x] for x in range(layout.w)])

    sim = Simulator(bench)
    sim.add_clock(1e-6)
    sim.add_testbench(incoming, background=True)
    sim.add_testbench(own, background=True)
    sim.add_testbench(sink)
    sim.run()
    assert got == [[a + b for a, b in zip(maps[k][n], sums[k][n])]
                   for k in range(2) for n in range(len(order))]
