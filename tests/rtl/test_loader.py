import random

import numpy as np
import pytest
from amaranth.sim import Simulator
from hypothesis import given, settings, strategies as st

from fpdeep.rtl.conv import RowLayout
from fpdeep.rtl.loader import SampleLoader
from fpdeep.rtl.numerics import DEFAULT_NUMERICS as N
from fpdeep.rtl.rowlink import map_words
from tests.stream_helpers import StreamDriver


@settings(max_examples=12, deadline=None)
@given(c=st.integers(1, 3), h=st.integers(1, 3), w=st.integers(1, 3), slots=st.integers(1, 3),
       relay=st.booleans(), seed=st.integers(0, 2**16))
def test_loads_samples_into_their_slots(c, h, w, slots, relay, seed):
    """Two samples, words at random gaps, each into a slot of its own. A sample is
    accepted once, at its label (or, relaying, at its last word), with that label;
    while its rows stream in, ``rows_ready`` counts the rows written in every channel;
    and each slot then holds its map, for the backward path and the relay alike."""
    rng = np.random.default_rng(seed)
    driver = StreamDriver(random.Random(seed), gap=0.3)
    layout = RowLayout(c, h, w, N.act)
    loader = SampleLoader(layout=layout, slots=slots, classes=10, relay=relay)
    maps = [rng.integers(-3000, 3000, size=(c, h, w)) for _ in range(2)]
    labels = [int(v) for v in rng.integers(0, 10, size=2)]
    slot_of = [slots - 1, 0]
    words = [[label] + map_words(x) for label, x in zip(labels, maps)]
    control = loader.control
    accepted = []

    async def producer(ctx):
        for sample in words:
            for word in sample:
                await driver.put(ctx, loader.i, word)

    async def sequencer(ctx):
        # Plays the forward sequencer: a slot is free for each sample in turn; it stops
        # offering the loader new words once the sample is accepted.
        sample, taken = 0, 0
        ctx.set(loader.slot.forward, slot_of[0])
        ctx.set(control.take, 1)
        async for _, _, valid, ready, word, acc, label, rows_ready, filling in \
                ctx.tick().sample(loader.i.valid, loader.i.ready, loader.i.payload,
                                  control.accepted, control.label,
                                  loader.o_act.rows_ready, control.filling):
            pixels = max(0, taken - 1)
            assert rows_ready == (pixels // (c * w) if filling else h)
            if valid and ready:
                assert word == words[sample][taken]
                taken += 1
            if acc:
                assert taken == (len(words[sample]) if relay else 1)
                accepted.append(label)
                ctx.set(control.take, 0)
            if taken == len(words[sample]) and not filling and accepted[sample:]:
                sample, taken = sample + 1, 0
                if sample == 2:
                    return
                ctx.set(loader.slot.forward, slot_of[sample])
                ctx.set(control.take, 1)

    async def readback(ctx):
        await ctx.tick().until(control.take == 0)
        while len(accepted) < 2 or ctx.get(control.pending):
            await ctx.tick()
        held = dict(zip(slot_of, maps))          # with one slot, the second overwrote it
        for slot, x in held.items():
            ctx.set(loader.slot.backward, slot)
            ctx.set(loader.slot.forward, slot)
            for a in range(layout.depth):
                ctx.set(loader.o_act.backward.addr, a)
                if relay:
                    ctx.set(loader.relay.addr, a)
                await ctx.tick()
                expected = list(x[a // h, a % h])
                assert list(ctx.get(loader.o_act.backward.data)) == expected, a
                if relay:
                    assert list(ctx.get(loader.relay.data)) == expected, a

    sim = Simulator(loader)
    sim.add_clock(1e-6)
    sim.add_testbench(producer, background=True)
    sim.add_testbench(sequencer)
    sim.add_testbench(readback)
    sim.run()
    assert accepted == labels


def test_refuses_bad_parameters():
    with pytest.raises(TypeError, match="layout"):
        SampleLoader(layout=(1, 2, 2), slots=1, classes=10)
    with pytest.raises(ValueError, match="classes"):
        SampleLoader(layout=RowLayout(1, 2, 2, N.act), slots=1, classes=1)
    with pytest.raises(ValueError, match="slots"):
        SampleLoader(layout=RowLayout(1, 2, 2, N.act), slots=0, classes=10)
