import random

import pytest
from amaranth import Const
from amaranth.sim import Simulator
from hypothesis import given, settings, strategies as st

from fpdeep.rtl.sequencer import Sequencer


def run_sequencer(*, layers, slots, batch_size, loss, samples, seed, refresh_after=None):
    """The sequencer against models of the blocks it starts, each busy for a random
    number of cycles after its ``start``; returns the log of what it started, in order."""
    rng = random.Random(seed)
    seq = Sequencer(layers=layers, slots=slots, batch_size=batch_size, classes=10, loss=loss)
    labels = [rng.randrange(10) for _ in range(samples)]
    log = []

    def task(port):
        async def model(ctx):
            while True:
                _, _, start = await ctx.tick().sample(port.start)
                if start:
                    ctx.set(port.busy, 1)
                    for _ in range(rng.randrange(1, 6)):
                        await ctx.tick()
                    ctx.set(port.busy, 0)
        return model

    async def loader(ctx):
        # Accepts a word in every cycle the sequencer takes one (one-word samples).
        given = 0
        ctx.set(seq.loader.offered, 1)
        while given < samples:
            take = ctx.get(seq.loader.take)
            ctx.set(seq.loader.accepted, take)
            ctx.set(seq.loader.label, labels[given])
            given += take
            await ctx.tick()
        ctx.set(seq.loader.accepted, 0)
        ctx.set(seq.loader.offered, 0)

    async def errors(ctx):
        async for _, _, take in ctx.tick().sample(seq.errors.take):
            ctx.set(seq.errors.busy, take and rng.random() < 0.7)

    async def watch(ctx):
        fp = bp = 0
        async for _, _, fstart, flabel, fslot, bstart, bslot, update, refresh, batches, \
                done, lstart, llabel, *starts in ctx.tick().sample(
                    seq.layers[0].forward.start, seq.send.label, seq.slot.forward,
                    seq.layers[0].backward.start, seq.slot.backward,
                    seq.layers[0].update.start, seq.layers[0].update.refresh,
                    seq.batches, seq.samples,
                    *((seq.loss.start, seq.loss.label) if loss else (Const(0), Const(0))),
                    *[layer.forward.start for layer in seq.layers],
                    *[layer.backward.start for layer in seq.layers]):
            assert starts == [fstart] * layers + [bstart] * layers, \
                "every layer's FP (BP) starts at once"
            if fstart:
                log.append(("fp", fp, fslot, flabel, batches, done))
                fp += 1
            if lstart:
                log.append(("loss", bp, llabel))
            if bstart:
                log.append(("bp", bp, bslot))
                bp += 1
            if update:
                log.append(("update", done))
            if refresh:
                log.append(("refresh", fp, bp))

    async def tb(ctx):
        if refresh_after is not None:
            await ctx.tick().until(seq.samples == refresh_after)
            ctx.set(seq.weights_written, 1)
            await ctx.tick()
            ctx.set(seq.weights_written, 0)
        await ctx.tick().until(seq.samples == samples)
        while ctx.get(seq.busy):
            await ctx.tick()
        assert ctx.get(seq.batches) == samples // batch_size
        assert 1 <= ctx.get(seq.slots_peak) <= slots

    sim = Simulator(seq)
    sim.add_clock(1e-6)
    for k, layer in enumerate(seq.layers):
        for kind in ("forward", "backward", "update"):
            sim.add_testbench(task(getattr(layer, kind)), background=True)
    sim.add_testbench(task(seq.send), background=True)
    if loss:
        sim.add_testbench(task(seq.loss), background=True)
    sim.add_testbench(loader, background=True)
    sim.add_testbench(errors, background=True)
    sim.add_testbench(watch, background=True)
    sim.add_testbench(tb)
    sim.run()
    return log, labels


@settings(max_examples=10, deadline=None)
@given(layers=st.integers(1, 3), slots=st.integers(1, 3), batch_size=st.integers(1, 3),
       loss=st.booleans(), seed=st.integers(0, 2**16))
def test_samples_walk_the_slots_in_order_within_the_batch_barrier(layers, slots, batch_size,
                                                                  loss, seed):
    """Forward and backward walk the samples in order, each through the slots in turn,
    with the sample's label; forward runs at most ``slots`` samples ahead, and a batch's
    FP waits for the previous batch's SGD step."""
    samples = 2 * batch_size + 1
    log, labels = run_sequencer(layers=layers, slots=slots, batch_size=batch_size, loss=loss,
                                samples=samples, seed=seed)
    fps = [e for e in log if e[0] == "fp"]
    bps = [e for e in log if e[0] == "bp"]
    assert [e[1] for e in fps] == [e[1] for e in bps] == list(range(samples))
    for _, k, slot, label, batches, done in fps:
        assert slot == k % slots and label == labels[k]
        assert done >= k + 1 - slots, "no more than `slots` samples ahead"
        assert batches >= k // batch_size, "a batch's FP waits for the last SGD step"
    for _, k, slot in bps:
        assert slot == k % slots
        assert log.index(next(e for e in fps if e[1] == k)) < log.index(("bp", k, slot))
    if loss:
        assert [e[1:] for e in log if e[0] == "loss"] == list(zip(range(samples), labels))
    updates = [e[1] for e in log if e[0] == "update"]
    # With the batch's last sample done (the count moves on as the step starts).
    assert updates == [batch_size * (j + 1) - 1 for j in range(samples // batch_size)]


def test_host_writes_refresh_the_copies_before_the_next_sample():
    log, _ = run_sequencer(layers=2, slots=2, batch_size=2, loss=True, samples=5, seed=3,
                           refresh_after=2)
    refreshes = [e for e in log if e[0] == "refresh"]
    assert len(refreshes) == 1
    _, fp, bp = refreshes[0]
    assert fp == bp >= 2, "with nothing in flight, before the next sample's FP"


def test_refuses_bad_parameters():
    for name in ("layers", "slots", "batch_size"):
        args = dict(layers=1, slots=1, batch_size=1, classes=10, loss=True)
        args[name] = 0
        with pytest.raises(ValueError, match=name):
            Sequencer(**args)
