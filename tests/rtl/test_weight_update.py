import random

import numpy as np
import pytest
from amaranth import *
from amaranth.lib import memory, wiring
from amaranth.sim import Simulator

from fpdeep.rtl.conv import ConvGeometry, pack_rows
from fpdeep.rtl.numerics import DEFAULT_NUMERICS as N
from fpdeep.rtl.weight_update import WeightGradientEngine, pack_lanes, gradient_index_count
from fpdeep.sim.reference import conv_weight_grad_acc
from tests.stream_helpers import StreamDriver


class GradientBench(Elaboratable):
    def __init__(self, engine, error_words, input_words):
        self.engine = engine
        self.e_mem = memory.Memory(shape=engine.e_rd.data.shape(), depth=len(error_words),
                                   init=error_words)
        self.x_mem = memory.Memory(shape=engine.x_rd.data.shape(), depth=len(input_words),
                                   init=input_words)

    def elaborate(self, platform):
        m = Module()
        m.submodules.engine = self.engine
        m.submodules.e_mem = self.e_mem
        m.submodules.x_mem = self.x_mem
        wiring.connect(m, self.engine.e_rd, self.e_mem.read_port())
        wiring.connect(m, self.engine.x_rd, self.x_mem.read_port())
        return m


CASES = [
    (1, 4, 8, 8, 3, 3, 1, 1, 4),       # digits conv
    (2, 3, 5, 7, 1, 1, 0, 0, 2),       # 1x1, non-square, ragged lanes
    (3, 5, 6, 4, 3, 2, 1, 0, 3),       # non-square kernel
    (4, 10, 4, 4, 4, 4, 0, 0, 10),     # digits FC
]


@pytest.mark.parametrize("case", CASES)
def test_gradients_match_reference(case):
    cin, cout, h, w, kh, kw, ph, pw, rows = case
    rng = np.random.default_rng(sum(case))
    g = ConvGeometry(cin=cin, cout=cout, h=h, w=w, kh=kh, kw=kw, ph=ph, pw=pw)
    x = rng.integers(N.act.min, N.act.max + 1, size=(cin, h, w))     # full range: large sums
    e = rng.integers(N.error.min, N.error.max + 1, size=(cout, g.ho, g.wo))
    gw, gb = conv_weight_grad_acc(x, e, kh, kw, ph, pw, N.act.one)
    engine = WeightGradientEngine(geometry=g, rows=rows, act_fmt=N.act, error_fmt=N.error)
    bench = GradientBench(engine, pack_lanes(e, rows), pack_rows(x))
    got_w = np.zeros_like(gw)
    got_b = np.zeros_like(gb)
    count = cout * gradient_index_count(g)
    driver = StreamDriver(random.Random(cin), stall=0.3)

    async def tb(ctx):
        ctx.set(engine.start, 1)
        await ctx.tick()
        ctx.set(engine.start, 0)
        seen = set()
        for _ in range(count):
            beat = await driver.get(ctx, engine.o)
            key = (beat.channel, beat.index)
            assert key not in seen
            seen.add(key)
            sums = [beat.sums[c] for c in range(kw)]
            if beat.index == cin * kh:
                got_b[beat.channel] = sums[0]
                assert sums[1:] == [0] * (kw - 1)
            else:
                got_w[beat.channel, beat.index // kh, beat.index % kh] = sums
        ctx.set(engine.o.ready, 1)
        for _ in range(rows + kw + 8):
            assert not ctx.get(engine.o.valid)
            await ctx.tick()
        assert not ctx.get(engine.busy)

    sim = Simulator(bench)
    sim.add_clock(1e-6)
    sim.add_testbench(tb)
    sim.run()
    np.testing.assert_array_equal(got_w, gw)
    np.testing.assert_array_equal(got_b, gb)
