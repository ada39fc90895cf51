import random

import numpy as np
import pytest
from amaranth import *
from amaranth.lib import memory, wiring
from amaranth.sim import Simulator

from fpdeep.rtl.conv import ConvEngine, ConvGeometry, RowLayout, pack_conv_weights, pack_rows
from fpdeep.rtl.numerics import DEFAULT_NUMERICS as N, FixedFormat, requantize_np
from fpdeep.sim.reference import conv_forward_acc, conv_backward_acc
from tests.memory_helpers import MemoryWriter
from tests.stream_helpers import StreamDriver


class EngineBench(Elaboratable):
    """An engine with one memory per read port: ``port_name=words`` (a list of initial
    words, or a depth for a memory that starts zeroed)."""

    def __init__(self, engine, **ports):
        self.engine = engine
        self.memories = {}
        for name, words in ports.items():
            depth, init = (words, []) if isinstance(words, int) else (len(words), words)
            self.memories[name] = memory.Memory(shape=getattr(engine, name).data.shape(),
                                                depth=depth, init=init)

    def elaborate(self, platform):
        m = Module()
        m.submodules.engine = self.engine
        for name, mem in self.memories.items():
            m.submodules[name] = mem
            wiring.connect(m, getattr(self.engine, name), mem.read_port())
        return m


class StreamingBench(EngineBench):
    """An :class:`EngineBench` whose ``written`` memory the testbench also writes
    (``self.writer``), as rows arrive while the engine runs."""

    def __init__(self, engine, written, **ports):
        super().__init__(engine, **ports)
        self.writer = MemoryWriter(self.memories[written])

    def elaborate(self, platform):
        m = super().elaborate(platform)
        self.writer.connect(m)
        return m


def run_engine(engine, weight_words, input_words, *, seed, stall=0.3, row_gap=None):
    """Run the engine; with ``row_gap``, its input rows arrive one per ``row_gap``
    cycles after ``start`` (the memory holds zeros until then)."""
    if row_gap is None:
        bench = EngineBench(engine, w_rd=weight_words, x_rd=input_words)
    else:
        bench = StreamingBench(engine, "x_rd", w_rd=weight_words, x_rd=len(input_words))
    g = engine._g
    out = np.zeros((g.cout, g.ho, g.wo), dtype=np.int64)
    seen = np.zeros((g.cout, g.ho), dtype=bool)
    stats = {"saturated": 0}
    driver = StreamDriver(random.Random(seed), stall=stall)

    async def tb(ctx):
        ctx.set(engine.start, 1)
        await ctx.tick()
        ctx.set(engine.start, 0)
        order = []
        for _ in range(g.cout * g.ho):
            beat = await driver.get(ctx, engine.o)
            order.append((beat.row, beat.channel))
            assert not seen[beat.channel, beat.row], "row delivered twice"
            seen[beat.channel, beat.row] = True
            out[beat.channel, beat.row] = [beat.values[c] for c in range(g.wo)]
            stats["saturated"] += beat.saturated
        assert order == sorted(order), "rows leave row by row, channels in order"
        ctx.set(engine.o.ready, 1)
        for _ in range(engine.array_shape[0] + engine.array_shape[1] + 8):
            assert not ctx.get(engine.o.valid), "extra row"
            await ctx.tick()
        assert not ctx.get(engine.busy)

    async def rows_arrive(ctx):
        # In stream order: row y of every channel, then row y + 1.
        ctx.set(engine.x_ready, 0)
        for channel, y in engine.in_layout.stream_order():
            for _ in range(row_gap):
                await ctx.tick()
            address = engine.in_layout.address(channel, y)
            await bench.writer.put(ctx, address, input_words[address])
            if channel == g.cin - 1:
                ctx.set(engine.x_ready, y + 1)

    sim = Simulator(bench)
    sim.add_clock(1e-6)
    sim.add_testbench(tb)
    if row_gap is not None:
        sim.add_testbench(rows_arrive, background=True)
    sim.run()
    return out, stats["saturated"]


CASES = [
    # cin, cout, h, w, kh, kw, ph, pw, rows, scale (large scale forces saturation)
    (1, 4, 8, 8, 3, 3, 1, 1, 4, 1.0),      # the digits conv
    (2, 3, 5, 7, 1, 1, 0, 0, 2, 1.0),      # 1x1 kernel, non-square, ragged lanes
    (3, 5, 6, 4, 3, 2, 1, 0, 3, 30.0),     # non-square kernel, saturating
    (4, 10, 4, 4, 4, 4, 0, 0, 10, 1.0),    # the digits FC as a full-map conv
]


@pytest.mark.parametrize("case", CASES)
def test_forward_matches_reference(case):
    cin, cout, h, w, kh, kw, ph, pw, rows, scale = case
    rng = np.random.default_rng(hash(case) % 2**32)
    g = ConvGeometry(cin=cin, cout=cout, h=h, w=w, kh=kh, kw=kw, ph=ph, pw=pw)
    x = N.act.from_float(rng.uniform(-2, 4, size=(cin, h, w)))
    wq = N.weight.from_float(rng.normal(0, 0.5 * scale, size=(cout, cin, kh, kw)))
    bq = N.weight.from_float(rng.normal(0, 0.5 * scale, size=cout))
    acc = conv_forward_acc(x, wq, bq, ph, pw, N.act.one)
    expect, expect_sat = requantize_np(acc, N.act.frac + N.weight.frac, N.act)
    engine = ConvEngine(geometry=g, rows=rows, in_fmt=N.act, weight_fmt=N.weight,
                        out_fmt=N.act)
    got, sat = run_engine(engine, pack_conv_weights(wq, bq, rows), pack_rows(x), seed=cin)
    np.testing.assert_array_equal(got, expect)
    assert sat == expect_sat
    if scale > 1:
        assert sat > 0


@pytest.mark.parametrize("case", CASES)
def test_forward_starts_on_rows_as_they_arrive(case):
    """With the input written a row at a time after start, the engine waits for each
    row it needs (rows not yet written read as zeros, which would show) and still
    computes the reference exactly."""
    cin, cout, h, w, kh, kw, ph, pw, rows, scale = case
    rng = np.random.default_rng(7 + hash(case) % 2**32)
    g = ConvGeometry(cin=cin, cout=cout, h=h, w=w, kh=kh, kw=kw, ph=ph, pw=pw)
    x = N.act.from_float(rng.uniform(0.5, 4, size=(cin, h, w)))
    wq = N.weight.from_float(rng.normal(0, 0.5 * scale, size=(cout, cin, kh, kw)))
    bq = N.weight.from_float(rng.normal(0, 0.5 * scale, size=cout))
    acc = conv_forward_acc(x, wq, bq, ph, pw, N.act.one)
    expect, _ = requantize_np(acc, N.act.frac + N.weight.frac, N.act)
    engine = ConvEngine(geometry=g, rows=rows, in_fmt=N.act, weight_fmt=N.weight,
                        out_fmt=N.act)
    got, _ = run_engine(engine, pack_conv_weights(wq, bq, rows), pack_rows(x), seed=cin,
                        row_gap=7)
    np.testing.assert_array_equal(got, expect)


@pytest.mark.parametrize("case", CASES[:3])
def test_transposed_matches_reference_backward(case):
    """BP: the same engine on the transposed geometry and a transposed, flipped weight copy."""
    cin, cout, h, w, kh, kw, ph, pw, rows, scale = case
    rng = np.random.default_rng(1 + hash(case) % 2**32)
    g = ConvGeometry(cin=cin, cout=cout, h=h, w=w, kh=kh, kw=kw, ph=ph, pw=pw)
    e = N.error.from_float(rng.normal(0, 0.5, size=(cout, g.ho, g.wo)))
    wq = N.weight.from_float(rng.normal(0, 0.5 * scale, size=(cout, cin, kh, kw)))
    acc = conv_backward_acc(e, wq, ph, pw)
    expect, expect_sat = requantize_np(acc, N.weight.frac + N.error.frac, N.error)
    flipped = wq[:, :, ::-1, ::-1].transpose(1, 0, 2, 3)
    engine = ConvEngine(geometry=g.transposed(), rows=rows, in_fmt=N.error,
                        weight_fmt=N.weight, out_fmt=N.error, bias=False)
    got, sat = run_engine(engine, pack_conv_weights(flipped, None, rows), pack_rows(e),
                          seed=cout)
    np.testing.assert_array_equal(got, expect)
    assert sat == expect_sat


def random_geometry(rng):
    """A seeded random layer: kernel, padding, map and channel counts, including 1s."""
    kh, kw = int(rng.integers(1, 4)), int(rng.integers(1, 4))
    return dict(cin=int(rng.integers(1, 4)), cout=int(rng.integers(1, 6)),
                h=int(rng.integers(kh, 7)), w=int(rng.integers(kw, 7)), kh=kh, kw=kw,
                ph=int(rng.integers(0, kh)), pw=int(rng.integers(0, kw)))


@pytest.mark.parametrize("seed", range(3))
def test_random_shapes_forward_and_backward(seed):
    """FP and BP on seeded random geometries, with weights large enough to saturate."""
    rng = np.random.default_rng(100 + seed)
    g = ConvGeometry(**random_geometry(rng))
    rows = int(rng.integers(1, g.cout + 2))
    x = N.act.from_float(rng.uniform(-8, 8, size=(g.cin, g.h, g.w)))
    wq = N.weight.from_float(rng.normal(0, 4, size=(g.cout, g.cin, g.kh, g.kw)))
    bq = N.weight.from_float(rng.normal(0, 4, size=g.cout))
    expect, expect_sat = requantize_np(conv_forward_acc(x, wq, bq, g.ph, g.pw, N.act.one),
                                       N.act.frac + N.weight.frac, N.act)
    engine = ConvEngine(geometry=g, rows=rows, in_fmt=N.act, weight_fmt=N.weight, out_fmt=N.act)
    got, sat = run_engine(engine, pack_conv_weights(wq, bq, rows), pack_rows(x), seed=seed)
    np.testing.assert_array_equal(got, expect)
    assert sat == expect_sat > 0

    e = N.error.from_float(rng.normal(0, 2, size=(g.cout, g.ho, g.wo)))
    expect, expect_sat = requantize_np(conv_backward_acc(e, wq, g.ph, g.pw),
                                       N.weight.frac + N.error.frac, N.error)
    bp_rows = int(rng.integers(1, g.cin + 2))
    flipped = wq[:, :, ::-1, ::-1].transpose(1, 0, 2, 3)
    engine = ConvEngine(geometry=g.transposed(), rows=bp_rows, in_fmt=N.error,
                        weight_fmt=N.weight, out_fmt=N.error, bias=False)
    got, sat = run_engine(engine, pack_conv_weights(flipped, None, bp_rows), pack_rows(e),
                          seed=seed)
    np.testing.assert_array_equal(got, expect)
    assert sat == expect_sat > 0


@pytest.mark.parametrize("seed", range(3))
def test_raw_outputs_are_exact_sums(seed):
    """With raw, the engine emits the exact accumulator sums (no rounding, no saturation)."""
    rng = np.random.default_rng(200 + seed)
    g = ConvGeometry(**random_geometry(rng))
    x = N.act.from_float(rng.uniform(-30, 30, size=(g.cin, g.h, g.w)))
    wq = N.weight.from_float(rng.normal(0, 6, size=(g.cout, g.cin, g.kh, g.kw)))
    bq = N.weight.from_float(rng.normal(0, 6, size=g.cout))
    if seed == 0:                      # the most negative operands: the largest products
        x[:], wq[:], bq[:] = N.act.min, N.weight.min, N.weight.min
    rows = int(rng.integers(1, g.cout + 2))
    engine = ConvEngine(geometry=g, rows=rows, in_fmt=N.act, weight_fmt=N.weight,
                        out_fmt=None, raw=True)
    assert engine.acc_fmt == FixedFormat(48, N.act.frac + N.weight.frac)
    assert engine.out_layout == RowLayout(g.cout, g.ho, g.wo, engine.acc_fmt)
    expect = conv_forward_acc(x, wq, bq, g.ph, g.pw, N.act.one)
    assert requantize_np(expect, engine.acc_fmt.frac, N.act)[1] > 0, "the sums do not fit"
    got, sat = run_engine(engine, pack_conv_weights(wq, bq, rows), pack_rows(x), seed=seed)
    np.testing.assert_array_equal(got, expect)
    assert sat == 0

    e = N.error.from_float(rng.normal(0, 4, size=(g.cout, g.ho, g.wo)))
    bp_rows = int(rng.integers(1, g.cin + 2))
    flipped = wq[:, :, ::-1, ::-1].transpose(1, 0, 2, 3)
    engine = ConvEngine(geometry=g.transposed(), rows=bp_rows, in_fmt=N.error,
                        weight_fmt=N.weight, out_fmt=N.error, bias=False, raw=True)
    got, sat = run_engine(engine, pack_conv_weights(flipped, None, bp_rows), pack_rows(e),
                          seed=seed)
    np.testing.assert_array_equal(got, conv_backward_acc(e, wq, g.ph, g.pw))
    assert sat == 0


def test_out_fmt_needed_without_raw():
    g = ConvGeometry(cin=1, cout=1, h=2, w=2, kh=1, kw=1)
    with pytest.raises(ValueError, match="out_fmt"):
        ConvEngine(geometry=g, rows=1, in_fmt=N.act, weight_fmt=N.weight, out_fmt=None)
