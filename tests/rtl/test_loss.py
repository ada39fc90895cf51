import numpy as np
import pytest
from amaranth import *
from amaranth.lib import memory, wiring
from amaranth.sim import Simulator

from fpdeep.rtl.loss import LossUnit
from fpdeep.rtl.numerics import DEFAULT_NUMERICS as N, softmax_error_np


class LossBench(Elaboratable):
    def __init__(self, classes):
        self.unit = LossUnit(classes=classes, numerics=N)
        self.z_mem = memory.Memory(shape=self.unit.z_rd.data.shape(), depth=classes, init=[])

    def elaborate(self, platform):
        m = Module()
        m.submodules.unit = self.unit
        m.submodules.z_mem = self.z_mem
        wiring.connect(m, self.unit.z_rd, self.z_mem.read_port())
        return m


@pytest.mark.parametrize("classes,seed", [(10, 0), (2, 1), (7, 2)])
def test_errors_match_reference(classes, seed):
    rng = np.random.default_rng(seed)
    cases = [
        rng.integers(-3000, 3000, size=classes),                   # ordinary logits
        np.full(classes, 1234),                                    # all tied: first wins
        np.array([N.act.max, N.act.min] + [0] * (classes - 2)),    # extremes
        rng.integers(N.act.min, N.act.max + 1, size=classes),
    ]
    labels = [int(rng.integers(classes)) for _ in cases]
    bench = LossBench(classes)
    unit = bench.unit

    async def tb(ctx):
        for logits, label in zip(cases, labels):
            for k, z in enumerate(logits):
                ctx.set(bench.z_mem.data[k], [int(z)])
            expect, predicted = softmax_error_np(logits, label, N)
            ctx.set(unit.label, label)
            ctx.set(unit.start, 1)
            await ctx.tick()
            ctx.set(unit.start, 0)
            correct = 0
            got = []
            for k in range(classes):
                while True:
                    correct += ctx.get(unit.correct)
                    if ctx.get(unit.o.valid) and rng.random() > 0.3:
                        break
                    await ctx.tick()
                beat = ctx.get(unit.o.payload)
                assert beat.channel == k
                got.append(beat.values[0])
                ctx.set(unit.o.ready, 1)
                await ctx.tick()
                ctx.set(unit.o.ready, 0)
            assert got == list(expect)
            assert correct == int(predicted == label)
            await ctx.tick()
            assert not ctx.get(unit.busy)

    sim = Simulator(bench)
    sim.add_clock(1e-6)
    sim.add_testbench(tb)
    sim.run()
