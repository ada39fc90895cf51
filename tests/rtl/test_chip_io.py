import random

import numpy as np
import pytest
from amaranth import *
from amaranth.lib import memory, wiring
from amaranth.sim import Simulator

from fpdeep.plan.model.timing import row_header_words
from fpdeep.rtl.chip_io import ActivationLink, ChannelSlice, ErrorLink
from fpdeep.rtl.conv import RowLayout, pack_rows
from fpdeep.rtl.numerics import DEFAULT_NUMERICS as N
from fpdeep.rtl.rowlink import map_words
from tests.stream_helpers import StreamDriver, stream_get, stream_put


def frame(channel, row, values, *, channels, h):
    """An error row's words (:mod:`fpdeep.rtl.rowlink`) on a link whose error rows are
    those of a ``channels`` x ``h`` map."""
    if row_header_words(channels, h) == 1:
        return [channel << (h - 1).bit_length() | row] + list(values)
    return [channel, row] + list(values)


def test_channel_slice():
    whole, middle = ChannelSlice(0, 4, 4), ChannelSlice(1, 3, 4)
    assert (whole.split, whole.first, whole.last) == (False, True, True)
    assert (middle.split, middle.first, middle.last) == (True, False, False)
    for lo, hi in [(2, 2), (-1, 2), (0, 5)]:
        with pytest.raises(ValueError, match="not a range"):
            ChannelSlice(lo, hi, 4)


class MapBench(Elaboratable):
    """An :class:`ActivationLink` with its input and output maps in plain memories."""

    def __init__(self, link, input_map, output_map):
        self.link = link
        self.input = memory.Memory(shape=link._input.shape, depth=link._input.depth,
                                   init=pack_rows(input_map))
        self.output = memory.Memory(shape=link._output.shape, depth=link._output.depth,
                                    init=pack_rows(output_map))

    def elaborate(self, platform):
        m = Module()
        m.submodules.link, m.submodules.input, m.submodules.output = \
            self.link, self.input, self.output
        if self.link.relays:
            wiring.connect(m, self.link.relay_rd, self.input.read_port())
        if "i_map" in self.link.signature.members:
            wiring.connect(m, self.link.i_map.forward, self.output.read_port())
        if "gather_wr" in self.link.signature.members:
            wiring.connect(m, self.link.gather_wr, self.output.write_port())
        return m


def run_maps(channels, *, sends=True, seed=0):
    """A sample's words into the link, the loader taking the first of them; returns the
    words sent on, and what should have been: label, input map relayed when channels
    lie behind, then the output map's channels ``0 .. hi`` (gathered ones from the link)."""
    rng = np.random.default_rng(seed)
    driver = StreamDriver(random.Random(seed), gap=0.3, stall=0.3)
    x = rng.integers(-500, 500, size=(1, 2, 3))
    y = rng.integers(-500, 500, size=(channels.hi, 2, 2))
    gathered = rng.integers(-500, 500, size=(channels.lo, 2, 2))
    link = ActivationLink(channels=channels, in_layout=RowLayout(1, 2, 3, N.act),
                          out_layout=RowLayout(channels.hi, 2, 2, N.act), classes=10,
                          sends=sends)
    mapped = y.copy()
    mapped[:channels.lo] = 0                    # to be gathered
    bench = MapBench(link, x, mapped)
    sample = [7] + map_words(x)
    incoming = sample + map_words(gathered)
    y[:channels.lo] = gathered
    want = (sample if link.relays else [7]) + map_words(y)
    sent = []

    async def chip_in_front(ctx):
        for word in incoming:
            await driver.put(ctx, link.i, word)

    async def loader(ctx):
        # Takes the sample's words, then lets the rest pass to the gatherer.
        ctx.set(link.o_sample.ready, 1)
        taken = 0
        async for _, _, valid in ctx.tick().sample(link.o_sample.valid):
            taken += valid
            if taken == len(sample):
                break
        ctx.set(link.o_sample.ready, 0)

    async def tb(ctx):
        ctx.set(link.control.start, 1)
        ctx.set(link.control.label, 7)
        await ctx.tick()
        ctx.set(link.control.start, 0)
        if sends:
            while len(sent) < len(want):
                sent.append(await driver.get(ctx, link.act_out))
        while ctx.get(link.control.busy):
            await ctx.tick()

    sim = Simulator(bench)
    sim.add_clock(1e-6)
    sim.add_testbench(chip_in_front, background=True)
    sim.add_testbench(loader, background=True)
    sim.add_testbench(tb)
    sim.run()
    return sent, want


def test_relays_the_input_then_sends_the_channels_so_far():
    """The first slice of a split layer sends the input on, then its channels."""
    sent, want = run_maps(ChannelSlice(0, 2, 4))
    assert sent == want


def test_gathers_the_channels_in_front_and_sends_the_whole_map():
    """The last slice takes the channels in front after the input, and sends them all
    with a label once they are in."""
    sent, want = run_maps(ChannelSlice(2, 4, 4), seed=1)
    assert sent == want


def test_passes_the_errors_of_channels_in_front_up_and_keeps_its_own():
    """From the loss: the rows of channels below ``lo`` leave framed on ``err_out``,
    in order, while the rest go to the last layer renumbered from 0."""
    rng = random.Random(4)
    driver = StreamDriver(rng, stall=0.4)
    link = ErrorLink(channels=ChannelSlice(2, 5, 5), errors=RowLayout(5, 1, 1, N.error),
                     loss=True, bp=None)
    values = [rng.randrange(-4000, 4000) for _ in range(5)]
    own, up = [], []

    async def loss(ctx):
        for c, v in enumerate(values):
            await stream_put(ctx, link.i_loss, {"channel": c, "row": 0, "values": [v]})

    async def layer(ctx):
        while len(own) < 3:
            beat = await stream_get(ctx, link.o_err)
            own.append((beat.channel, beat.values[0]))

    async def tb(ctx):
        relayed = False
        while len(up) < 2 * 2:
            up.append(await driver.get(ctx, link.err_out))
            relayed |= bool(ctx.get(link.control.relaying))
        assert relayed
        for _ in range(4):
            await ctx.tick()
        assert not ctx.get(link.control.relaying) and not ctx.get(link.control.busy)

    sim = Simulator(link)
    sim.add_clock(1e-6)
    sim.add_testbench(loss, background=True)
    sim.add_testbench(layer, background=True)
    sim.add_testbench(tb)
    sim.run()
    assert own == [(c - 2, values[c]) for c in range(2, 5)]
    assert up == (frame(0, 0, values[:1], channels=5, h=1) +
                  frame(1, 0, values[1:2], channels=5, h=1))


def test_takes_one_samples_errors_from_the_link_at_a_time():
    """Two samples' rows arrive back to back; only the sample the backward path is on
    is taken, and the link is busy until all its rows are in and BP's rows are out."""
    rng = random.Random(5)
    errors = RowLayout(3, 2, 2, N.error)
    bp = RowLayout(2, 2, 3, N.error)
    link = ErrorLink(channels=ChannelSlice(0, 3, 3), errors=errors, loss=False, bp=bp)
    samples = [[(c, y, [rng.randrange(-99, 99) for _ in range(2)]) for y in range(2)
                for c in range(3)] for _ in range(2)]
    bp_rows = [(c, y, [rng.randrange(-99, 99) for _ in range(3)]) for y in range(2)
               for c in range(2)]
    taken = []

    async def chip_behind(ctx):
        for rows in samples:
            for c, y, values in rows:
                for word in frame(c, y, values, channels=3, h=2):
                    await stream_put(ctx, link.err_in, word)

    async def layer(ctx):
        ctx.set(link.o_err.ready, 1)
        async for _, _, valid, beat in ctx.tick().sample(link.o_err.valid, link.o_err.payload):
            if valid:
                taken.append((beat.channel, beat.row, list(beat.values)))

    async def tb(ctx):
        sent = []
        for sample in range(2):
            ctx.set(link.control.begin, 1)
            await ctx.tick()
            ctx.set(link.control.begin, 0)
            ctx.set(link.control.take, 1)
            for c, y, values in bp_rows:
                await stream_put(ctx, link.i_bp, {"channel": c, "row": y, "values": values})
                for _ in range(1 + 3):          # a one-word header, 3 values
                    sent.append(await stream_get(ctx, link.err_out))
            while ctx.get(link.control.busy):
                await ctx.tick()
            ctx.set(link.control.take, 0)
            for _ in range(30):
                await ctx.tick()
            assert taken == [row for rows in samples[:sample + 1] for row in rows]
        assert sent == 2 * [w for c, y, values in bp_rows
                            for w in frame(c, y, values, channels=2, h=2)]

    sim = Simulator(link)
    sim.add_clock(1e-6)
    sim.add_testbench(chip_behind, background=True)
    sim.add_testbench(layer, background=True)
    sim.add_testbench(tb)
    sim.run()


def test_refuses_bad_parameters():
    with pytest.raises(TypeError, match="channels"):
        ActivationLink(channels=(0, 2, 2), in_layout=RowLayout(1, 2, 2, N.act),
                       out_layout=RowLayout(2, 1, 1, N.act), classes=10, sends=True)
    with pytest.raises(ValueError, match="out_layout has 3 channels"):
        ActivationLink(channels=ChannelSlice(0, 2, 4), in_layout=RowLayout(1, 2, 2, N.act),
                       out_layout=RowLayout(3, 1, 1, N.act), classes=10, sends=True)
    with pytest.raises(TypeError, match="errors"):
        ErrorLink(channels=ChannelSlice(0, 2, 2), errors=None, loss=True, bp=None)
    with pytest.raises(ValueError, match="errors has 1 channels"):
        ErrorLink(channels=ChannelSlice(0, 2, 2), errors=RowLayout(1, 1, 1, N.error), loss=True,
                  bp=None)
