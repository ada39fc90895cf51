import random

import numpy as np
import pytest
from amaranth import *
from amaranth.lib import memory, wiring
from amaranth.sim import Simulator
from hypothesis import given, settings, strategies as st

from fpdeep.rtl.loss import ErrorBuffer, LossUnit
from fpdeep.rtl.numerics import (DEFAULT_NUMERICS as N, FixedFormat, LOSS_MAX, Numerics,
                                 cross_entropy_np, softmax_error_np)
from tests.stream_helpers import stream_get, stream_put


class LossBench(Elaboratable):
    def __init__(self, classes, numerics=N):
        self.unit = LossUnit(classes=classes, numerics=numerics)
        self.z_mem = memory.Memory(shape=self.unit.z_rd.data.shape(), depth=classes, init=[])

    def elaborate(self, platform):
        m = Module()
        m.submodules.unit = self.unit
        m.submodules.z_mem = self.z_mem
        wiring.connect(m, self.unit.z_rd, self.z_mem.read_port())
        return m


def run_samples(bench, cases, labels, rng, *, cycles=None):
    """Each sample through the unit with random ``ready`` stalls; returns the per-sample
    ``(errors, correct pulses, losses seen with loss_valid)``; ``cycles`` receives the
    cycles from ``start`` to ``busy`` falling."""
    unit = bench.unit
    classes = len(cases[0])
    results = []
    pulses = []         # (loss, busy) at every loss_valid

    async def monitor(ctx):
        while True:
            _, _, valid, loss, busy = await ctx.tick().sample(unit.loss_valid, unit.loss,
                                                              unit.busy)
            if valid:
                pulses.append((loss, busy))

    async def tb(ctx):
        for logits, label in zip(cases, labels):
            for k, z in enumerate(logits):
                ctx.set(bench.z_mem.data[k], [int(z)])
            seen = len(pulses)
            ctx.set(unit.label, label)
            ctx.set(unit.start, 1)
            await ctx.tick()
            ctx.set(unit.start, 0)
            correct = 0
            got = []
            elapsed = 1
            for k in range(classes):
                while True:
                    correct += ctx.get(unit.correct)
                    if ctx.get(unit.o.valid) and rng.random() > 0.3:
                        break
                    await ctx.tick()
                    elapsed += 1
                beat = ctx.get(unit.o.payload)
                assert beat.channel == k
                got.append(beat.values[0])
                ctx.set(unit.o.ready, 1)
                await ctx.tick()
                elapsed += 1
                ctx.set(unit.o.ready, 0)
            assert not ctx.get(unit.busy)
            if cycles is not None:
                cycles.append(elapsed)
            losses = [loss for loss, busy in pulses[seen:]]
            assert all(busy for _, busy in pulses[seen:])
            assert ctx.get(unit.loss) == losses[-1]          # held after busy falls
            results.append((got, correct, losses))
            await ctx.tick()

    sim = Simulator(bench)
    sim.add_clock(1e-6)
    sim.add_testbench(monitor, background=True)
    sim.add_testbench(tb)
    sim.run()
    return results


@pytest.mark.parametrize("classes,seed", [(10, 0), (2, 1), (7, 2)])
def test_errors_and_loss_match_reference(classes, seed):
    rng = np.random.default_rng(seed)
    cases = [
        rng.integers(-3000, 3000, size=classes),                   # ordinary logits
        np.full(classes, 1234),                                    # all tied: first wins
        np.array([N.act.max, N.act.min] + [0] * (classes - 2)),    # extremes
        rng.integers(N.act.min, N.act.max + 1, size=classes),
    ]
    labels = [int(rng.integers(classes)) for _ in cases]
    labels[2] = 1                                # the label's exponential underflows to 0
    results = run_samples(LossBench(classes), cases, labels, rng)
    for logits, label, (got, correct, losses) in zip(cases, labels, results):
        expect, predicted = softmax_error_np(logits, label, N)
        assert got == list(expect)
        assert correct == int(predicted == label)
        assert losses == [cross_entropy_np(logits, label, N)]    # one pulse per sample
    assert results[2][2] == [cross_entropy_np(cases[2], 1, N)] != [LOSS_MAX]


def test_loss_saturates_and_takes_no_extra_cycles():
    """With Q8.8 activations a logit gap of 511.99 is 738.6 bits: the loss clamps to
    LOSS_MAX. With ``ready`` held high, ``busy`` still falls 3 * classes + error.frac + 8
    cycles after ``start``, as it did before the unit had a loss output."""
    numerics = Numerics(act=FixedFormat(16, 8))
    classes = 3
    cases = [np.array([numerics.act.max, numerics.act.min, 0]),
             np.array([0, -1, 5]),
             np.array([-7, -7, -7])]
    labels = [1, 0, 2]

    class AlwaysReady:
        def random(self):
            return 1.0

    cycles = []
    results = run_samples(LossBench(classes, numerics), cases, labels, AlwaysReady(),
                          cycles=cycles)
    losses = [r[2] for r in results]
    # Three equal logits: log2(3) = 1.58496 bits = 405.75 LSBs of Q8.8, rounded to 406.
    assert losses == [[LOSS_MAX], [cross_entropy_np(cases[1], 0, numerics)], [406]]
    assert cross_entropy_np(cases[0], 1, numerics) == LOSS_MAX
    assert cycles == [3 * classes + N.error.frac + 8] * len(cases)


@settings(max_examples=8, deadline=None)
@given(classes=st.integers(2, 12), seed=st.integers(0, 2**16))
def test_error_buffer_replays_the_stored_errors_in_order(classes, seed):
    """What the loss wrote comes out again, class by class, under random ``ready``
    stalls, and nothing else: twice, the second time after new writes."""
    rng = random.Random(seed)
    buffer = ErrorBuffer(classes=classes, numerics=N)
    lo, hi = -N.error.one, N.error.one
    rounds = [[rng.randint(lo, hi) for _ in range(classes)] for _ in range(2)]
    got = []

    async def tb(ctx):
        for values in rounds:
            for channel in rng.sample(range(classes), classes):
                await stream_put(ctx, buffer.i, {"channel": channel, "row": 0,
                                                 "values": [values[channel]]},
                                 rng=rng, gap=0.3)
            ctx.set(buffer.start, 1)
            await ctx.tick()
            ctx.set(buffer.start, 0)
            out = []
            while len(out) < classes:
                payload = await stream_get(ctx, buffer.o, rng=rng, stall=0.4)
                out.append((payload.channel, payload.values[0]))
            for _ in range(3):
                assert not ctx.get(buffer.o.valid), "nothing extra"
                await ctx.tick()
            assert not ctx.get(buffer.busy)
            got.append(out)

    sim = Simulator(buffer)
    sim.add_clock(1e-6)
    sim.add_testbench(tb)
    sim.run()
    assert got == [list(enumerate(values)) for values in rounds]


def test_error_buffer_passes_words_through():
    """With ``through``, the loss's words go straight out, under the output's stalls,
    and are not stored: a replay afterwards returns what was stored before."""
    rng = random.Random(7)
    classes = 4
    buffer = ErrorBuffer(classes=classes, numerics=N)
    stored = [rng.randint(-N.error.one, N.error.one) for _ in range(classes)]
    passed = [rng.randint(-N.error.one, N.error.one) for _ in range(classes)]
    got = {}

    async def tb(ctx):
        for channel, value in enumerate(stored):
            await stream_put(ctx, buffer.i, {"channel": channel, "row": 0, "values": [value]})
        ctx.set(buffer.through, 1)

        async def sink():
            out = []
            while len(out) < classes:
                payload = await stream_get(ctx, buffer.o, rng=rng, stall=0.4)
                out.append((payload.channel, payload.values[0]))
            return out

        for channel, value in enumerate(passed):
            ctx.set(buffer.i.payload, {"channel": channel, "row": 0, "values": [value]})
            ctx.set(buffer.i.valid, 1)
            ctx.set(buffer.o.ready, rng.random() < 0.6)
            while True:
                moved = ctx.get(buffer.i.ready) and ctx.get(buffer.o.valid)
                assert ctx.get(buffer.o.payload.values[0]) == value
                await ctx.tick()
                if moved:
                    break
                ctx.set(buffer.o.ready, rng.random() < 0.6)
        ctx.set(buffer.i.valid, 0)
        ctx.set(buffer.through, 0)
        ctx.set(buffer.start, 1)
        await ctx.tick()
        ctx.set(buffer.start, 0)
        got["replayed"] = await sink()

    sim = Simulator(buffer)
    sim.add_clock(1e-6)
    sim.add_testbench(tb)
    sim.run()
    assert got["replayed"] == list(enumerate(stored))
