import random

import numpy as np
import pytest
from amaranth import *
from amaranth.lib import memory, wiring
from amaranth.sim import Simulator

from fpdeep.plan.layers import ConvGeometry
from fpdeep.plan.model.engines import bp_run
from fpdeep.rtl.conv import pack_rows
from fpdeep.rtl.fc import FcBackpropEngine, MatVecArray, pack_fc_bp_weights
from fpdeep.rtl.numerics import DEFAULT_NUMERICS as N, requantize_np
from fpdeep.sim.reference import conv_backward_acc
from tests.stream_helpers import StreamDriver


class Bench(Elaboratable):
    def __init__(self, engine, w_words, x_words):
        self.engine = engine
        self.w = memory.Memory(shape=engine.w_rd.data.shape(), depth=len(w_words), init=w_words)
        self.x = memory.Memory(shape=engine.x_rd.data.shape(), depth=len(x_words), init=x_words)

    def elaborate(self, platform):
        m = Module()
        m.submodules.engine, m.submodules.w, m.submodules.x = self.engine, self.w, self.x
        wiring.connect(m, self.engine.w_rd, self.w.read_port())
        wiring.connect(m, self.engine.x_rd, self.x.read_port())
        return m


def run(engine, g, w_words, x_words, *, seed, stall):
    """Run one sample; returns the map, the saturations and the busy cycles."""
    out = np.zeros((g.cin, g.h, g.w), dtype=np.int64)
    seen = np.zeros((g.cin, g.h), dtype=bool)
    stats = {"saturated": 0, "busy": 0}
    driver = StreamDriver(random.Random(seed), stall=stall)

    async def tb(ctx):
        ctx.set(engine.start, 1)
        await ctx.tick()
        ctx.set(engine.start, 0)
        order = []
        for _ in range(g.cin * g.h):
            beat = await driver.get(ctx, engine.o)
            order.append((beat.row, beat.channel))
            assert not seen[beat.channel, beat.row], "row delivered twice"
            seen[beat.channel, beat.row] = True
            out[beat.channel, beat.row] = [beat.values[c] for c in range(g.w)]
            stats["saturated"] += beat.saturated
        assert order == sorted(order), "rows leave row by row, channels in order"
        ctx.set(engine.o.ready, 1)
        for _ in range(8):
            assert not ctx.get(engine.o.valid), "extra row"
            await ctx.tick()
        assert not ctx.get(engine.busy)

    async def count(ctx):
        async for _, _, busy in ctx.tick().sample(engine.busy):
            stats["busy"] += busy

    sim = Simulator(Bench(engine, w_words, x_words))
    sim.add_clock(1e-6)
    sim.add_testbench(tb)
    sim.add_process(count)
    sim.run()
    return out, stats["saturated"], stats["busy"]


CASES = [  # cin, cout, h, w, rows, scale
    (4, 10, 4, 4, 4, 1.0), (4, 10, 4, 4, 3, 4.0), (5, 3, 2, 3, 2, 1.0), (7, 1, 1, 1, 4, 1.0),
    (3, 6, 1, 2, 1, 8.0),
]


@pytest.mark.parametrize("raw", [False, True])
@pytest.mark.parametrize("case", CASES)
def test_matches_reference_backward(case, raw):
    """Bit-exact with the reference's BP of an FC layer (a full-kernel transposed conv),
    saturations included, under random output stalls."""
    cin, cout, h, w, rows, scale = case
    rng = np.random.default_rng(sum(case[:5]) + raw)
    g = ConvGeometry(cin=cin, cout=cout, h=h, w=w, kh=h, kw=w)
    e = N.error.from_float(rng.normal(0, 0.5 * scale, size=(cout, 1, 1)))
    wq = N.weight.from_float(rng.normal(0, 0.5 * scale, size=(cout, cin, h, w)))
    acc = conv_backward_acc(e, wq, 0, 0)
    expect, expect_sat = requantize_np(acc, N.weight.frac + N.error.frac, N.error)
    engine = FcBackpropEngine(geometry=g, rows=rows, in_fmt=N.error, weight_fmt=N.weight,
                              out_fmt=N.error, acc_width=N.acc_width, raw=raw)
    got, sat, _ = run(engine, g, pack_fc_bp_weights(wq, rows), pack_rows(e), seed=cin,
                      stall=0.3)
    if raw:
        np.testing.assert_array_equal(got, acc)
        assert sat == 0
    else:
        np.testing.assert_array_equal(got, expect)
        assert sat == expect_sat


@pytest.mark.parametrize("case", CASES)
def test_busy_cycles_match_model(case):
    """The model's bp_run gives the engine's busy cycles exactly (sink always ready)."""
    cin, cout, h, w, rows, _ = case
    g = ConvGeometry(cin=cin, cout=cout, h=h, w=w, kh=h, kw=w)
    wq = np.zeros((cout, cin, h, w), dtype=np.int64)
    e = np.zeros((cout, 1, 1), dtype=np.int64)
    engine = FcBackpropEngine(geometry=g, rows=rows, in_fmt=N.error, weight_fmt=N.weight,
                              out_fmt=N.error, acc_width=N.acc_width)
    _, _, busy = run(engine, g, pack_fc_bp_weights(wq, rows), pack_rows(e), seed=0, stall=0)
    assert busy == bp_run(g, rows).busy


def test_every_pe_busy():
    """A tile of ``rows x w`` values takes ``cout`` steps: the steps are the MACs over the PEs."""
    g = ConvGeometry(cin=4, cout=10, h=4, w=4, kh=4, kw=4)
    run_ = bp_run(g, 4)
    assert run_.steps * 4 * 4 == g.macs


@pytest.mark.parametrize("kwargs", [dict(rows=0), dict(rows=2, geometry=ConvGeometry(
    cin=1, cout=1, h=3, w=3, kh=3, kw=3, ph=1, pw=1))])
def test_rejects(kwargs):
    args = dict(geometry=ConvGeometry(cin=2, cout=2, h=2, w=2, kh=2, kw=2), rows=1,
                in_fmt=N.error, weight_fmt=N.weight, out_fmt=N.error)
    args.update(kwargs)
    with pytest.raises(ValueError):
        FcBackpropEngine(**args)


def test_array_rejects_bad_shape():
    with pytest.raises(ValueError, match="cols"):
        MatVecArray(rows=1, cols=0)
