import random

import pytest
from amaranth import *
from amaranth.lib import memory, wiring
from amaranth.sim import Simulator

from fpdeep.rtl.conv import RowLayout
from fpdeep.rtl.numerics import DEFAULT_NUMERICS as N, FixedFormat
from fpdeep.rtl.rowlink import (PARTIAL_WORDS, MapReceiver, MapSender, RowDeserializer,
                                RowSerializer)
from fpdeep.plan.model.timing import row_header_words
from tests.memory_helpers import MemoryWriter
from tests.stream_helpers import StreamDriver

ACC = FixedFormat(48, N.weight.frac + N.error.frac)


def signed16(word):
    word &= 0xffff
    return word - 0x10000 if word & 0x8000 else word


def encode_row(channel, row, values, *, partial, header=(False, 0)):
    """The words of one row frame, as the module docstring defines them; ``header`` is
    ``(one_word, row_bits)`` of the link's error rows (:func:`error_header`)."""
    one_word, row_bits = header
    if one_word and not partial:
        words = [channel << row_bits | row]
    else:
        words = [channel | (partial << 15), row]
    for v in values:
        if partial:
            words += [(v >> (16 * k)) & 0xffff for k in range(PARTIAL_WORDS)]
        else:
            words.append(v)
    return [signed16(w) for w in words]


def error_header(layout, map_channels=None):
    """``(one_word, row_bits)`` of the error rows of ``layout``'s map, by the rule both
    ends of a link share."""
    channels = layout.channels if map_channels is None else map_channels
    return row_header_words(channels, layout.h) == 1, (layout.h - 1).bit_length()


def random_rows(rng, layout, count):
    """Rows with random headers up to the layout's bounds and extreme values mixed in."""
    fmt = layout.fmt
    extremes = [fmt.min, fmt.max, -1, 0, 1]
    rows = []
    for n in range(count):
        channel = layout.channels - 1 if n == 0 else rng.randrange(layout.channels)
        row = layout.h - 1 if n == 0 else rng.randrange(layout.h)
        values = []
        for _ in range(layout.w):
            if rng.random() < 0.3:
                values.append(rng.choice(extremes))
            else:
                bits = rng.randrange(1, fmt.width)
                values.append(rng.randrange(-(1 << (bits - 1)), 1 << (bits - 1)))
        rows.append((channel, row, values))
    return rows


def row_payload(channel, row, values):
    return {"channel": channel, "row": row, "values": values}


def beat_row(beat, w):
    return (beat.channel, beat.row, [beat.values[x] for x in range(w)])


class LinkBench(Elaboratable):
    def __init__(self, *parts):
        self.parts = parts

    def elaborate(self, platform):
        m = Module()
        for n, part in enumerate(self.parts):
            m.submodules[f"part{n}"] = part
        return m


async def expect_quiet(ctx, ports, cycles):
    for _ in range(cycles):
        for port in ports:
            assert not ctx.get(port.valid), "something extra arrived"
        await ctx.tick()


@pytest.mark.parametrize("partial,fmt,seed,map_channels", [
    (False, N.error, 0, None),            # a one-word header: 9 + 5 bits
    (False, N.error, 3, 1 << 12),         # a slice of a map too large for one word
    (True, ACC, 1, None),
    (True, FixedFormat(40, 20), 2, None),  # narrower sums are sign-extended to 48 bits
])
def test_serializer_frames(partial, fmt, seed, map_channels):
    rng = random.Random(seed)
    layout = RowLayout(300, 21, 3, fmt)   # channel numbers above 8 bits
    rows = random_rows(rng, layout, 12)
    dut = RowSerializer(channels=layout.channels, h=layout.h, w=layout.w, fmt=fmt,
                        partial=partial, map_channels=map_channels)
    header = error_header(layout, map_channels)
    assert dut.header_words == (1 if header[0] and not partial else 2)
    driver = StreamDriver(rng, gap=0.3, stall=0.3)
    expect = [w for r in rows for w in encode_row(*r, partial=partial, header=header)]
    got = []

    async def producer(ctx):
        for r in rows:
            await driver.put(ctx, dut.i, row_payload(*r))

    async def consumer(ctx):
        for _ in expect:
            got.append(await driver.get(ctx, dut.o))
        ctx.set(dut.o.ready, 1)
        await expect_quiet(ctx, [dut.o], 20)
        assert not ctx.get(dut.busy)

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(producer)
    sim.add_testbench(consumer)
    sim.run()
    assert got == expect


@pytest.mark.parametrize("partial", [False, True])
def test_serializer_back_to_back(partial):
    """Rows that wait leave with no idle word between their frames, so the link's packer
    fills whole frames with them."""
    fmt = ACC if partial else N.error
    layout = RowLayout(4, 3, 2, fmt)
    rows = random_rows(random.Random(9), layout, 5)
    dut = RowSerializer(channels=4, h=3, w=2, fmt=fmt, partial=partial)
    expect = [w for r in rows for w in encode_row(*r, partial=partial,
                                                  header=error_header(layout))]
    got = []

    async def producer(ctx):
        for r in rows:
            ctx.set(dut.i.valid, 1)
            ctx.set(dut.i.payload, row_payload(*r))
            await ctx.tick().until(dut.i.ready)
        ctx.set(dut.i.valid, 0)

    async def consumer(ctx):
        ctx.set(dut.o.ready, 1)
        while not ctx.get(dut.o.valid):
            await ctx.tick()
        for _ in expect:
            assert ctx.get(dut.o.valid), "an idle word between frames"
            got.append(signed16(ctx.get(dut.o.payload)))
            await ctx.tick()
        assert not ctx.get(dut.o.valid)

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(producer)
    sim.add_testbench(consumer)
    sim.run()
    assert got == expect


def run_deserializer(dut, words, counts, *, seed, stall=0.4):
    """Feed words; return the rows that left on ``o`` and (if present) ``partial``."""
    driver = StreamDriver(random.Random(seed), gap=0.3, stall=stall)
    outputs = {"o": dut.o}
    if hasattr(dut, "partial"):
        outputs["partial"] = dut.partial
    got = {name: [] for name in outputs}

    async def producer(ctx):
        for word in words:
            await driver.put(ctx, dut.i, word)

    def consumer(name):
        port = outputs[name]
        w = len(port.payload.values)

        async def tb(ctx):
            for _ in range(counts[name]):
                got[name].append(beat_row(await driver.get(ctx, port), w))
            ctx.set(port.ready, 1)
            await expect_quiet(ctx, [port], 4 * PARTIAL_WORDS * w + 20)
        return tb

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(producer)
    for name in outputs:
        sim.add_testbench(consumer(name))
    sim.run()
    return got


@pytest.mark.parametrize("seed,stall", [(0, 0.4), (1, 0.4), (2, 0.9)])
def test_deserializer_both_kinds(seed, stall):
    """Error and partial frames, of different geometries, interleaved on one stream; with
    long stalls the next frame of a kind must wait for the row before it to leave."""
    rng = random.Random(10 + seed)
    err = RowLayout(rng.randint(1, 40), rng.randint(1, 9), rng.randint(1, 5), N.error)
    part = RowLayout(rng.randint(1, 300), rng.randint(1, 9), rng.randint(1, 5), ACC)
    kinds = [rng.random() < 0.5 for _ in range(14)]
    kinds[4:8] = [False, False, True, True]       # back to back frames of one kind
    err_rows = random_rows(rng, err, kinds.count(False))
    part_rows = random_rows(rng, part, kinds.count(True))
    map_channels = err.channels if seed != 1 else 1 << 13      # seed 1: two-word headers
    header = error_header(err, map_channels)
    words, e, p = [], iter(err_rows), iter(part_rows)
    for kind in kinds:
        words += encode_row(*next(p if kind else e), partial=kind, header=header)
    dut = RowDeserializer(channels=err.channels, h=err.h, w=err.w, fmt=err.fmt, partial=part,
                          map_channels=map_channels)
    got = run_deserializer(dut, words, {"o": len(err_rows), "partial": len(part_rows)},
                           seed=seed, stall=stall)
    assert got == {"o": err_rows, "partial": part_rows}


def test_deserializer_without_partial():
    rng = random.Random(5)
    err = RowLayout(7, 5, 6, N.error)
    rows = random_rows(rng, err, 10)
    words = [w for r in rows for w in encode_row(*r, partial=False, header=error_header(err))]
    dut = RowDeserializer(channels=err.channels, h=err.h, w=err.w, fmt=err.fmt)
    assert not hasattr(dut, "partial")
    assert run_deserializer(dut, words, {"o": len(rows)}, seed=5) == {"o": rows}


@pytest.mark.parametrize("seed", range(2))
def test_round_trip_interleaved(seed):
    """Two serializers share one word stream frame by frame into one deserializer."""
    rng = random.Random(20 + seed)
    err = RowLayout(rng.randint(1, 20), rng.randint(1, 6), rng.randint(1, 4), N.error)
    part = RowLayout(rng.randint(1, 20), rng.randint(1, 6), rng.randint(1, 4), ACC)
    kinds = [rng.random() < 0.5 for _ in range(12)]
    err_rows = random_rows(rng, err, kinds.count(False))
    part_rows = random_rows(rng, part, kinds.count(True))
    ser_e = RowSerializer(channels=err.channels, h=err.h, w=err.w, fmt=err.fmt)
    ser_p = RowSerializer(channels=part.channels, h=part.h, w=part.w, fmt=part.fmt,
                          partial=True)
    des = RowDeserializer(channels=err.channels, h=err.h, w=err.w, fmt=err.fmt, partial=part)
    driver = StreamDriver(rng, gap=0.3, stall=0.3)
    got = {"o": [], "partial": []}
    finished = []

    def producer(port, rows):
        async def tb(ctx):
            for r in rows:
                await driver.put(ctx, port, row_payload(*r))
        return tb

    async def link(ctx):
        for kind in kinds:
            source, length = ((ser_p, PARTIAL_WORDS * part.w + 2) if kind else
                              (ser_e, err.w + ser_e.header_words))
            for _ in range(length):
                await driver.put(ctx, des.i, await driver.get(ctx, source.o))
        await expect_quiet(ctx, [ser_e.o, ser_p.o], 10)
        while len(finished) < 2:
            await ctx.tick()
        assert not ctx.get(des.busy)

    def consumer(name, port, count, w):
        async def tb(ctx):
            for _ in range(count):
                got[name].append(beat_row(await driver.get(ctx, port), w))
            ctx.set(port.ready, 1)
            finished.append(name)
            await expect_quiet(ctx, [port], 4 * PARTIAL_WORDS * w + 20)
        return tb

    sim = Simulator(LinkBench(ser_e, ser_p, des))
    sim.add_clock(1e-6)
    sim.add_testbench(producer(ser_e.i, err_rows))
    sim.add_testbench(producer(ser_p.i, part_rows))
    sim.add_testbench(link)
    sim.add_testbench(consumer("o", des.o, len(err_rows), err.w))
    sim.add_testbench(consumer("partial", des.partial, len(part_rows), part.w))
    sim.run()
    assert got == {"o": err_rows, "partial": part_rows}


def test_deserializer_full_throughput():
    """With words always valid and rows always taken, one word is taken every cycle."""
    err = RowLayout(4, 3, 2, N.error)
    part = RowLayout(5, 3, 2, ACC)
    rng = random.Random(7)
    frames = [(kind, row) for kind in (False, True, True, False, True)
              for row in random_rows(rng, part if kind else err, 1)]
    words = [w for kind, row in frames
             for w in encode_row(*row, partial=kind, header=error_header(err))]
    dut = RowDeserializer(channels=err.channels, h=err.h, w=err.w, fmt=err.fmt, partial=part)
    got = []

    async def tb(ctx):
        ctx.set(dut.o.ready, 1)
        ctx.set(dut.partial.ready, 1)
        for cycle in range(len(words) + 3):
            ctx.set(dut.i.valid, cycle < len(words))
            if cycle < len(words):
                ctx.set(dut.i.payload, words[cycle])
                assert ctx.get(dut.i.ready)
            for port in (dut.o, dut.partial):        # a transfer at this tick
                if ctx.get(port.valid):
                    got.append(beat_row(ctx.get(port.payload), 2))
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(tb)
    sim.run()
    assert got == [row for _, row in frames]


def test_deserializer_waits_for_a_full_output_of_the_same_kind():
    """While an error row waits on ``o``, the next error frame's header words are taken
    and its values wait; a partial frame passes meanwhile."""
    err = RowLayout(4, 3, 2, N.error)
    part = RowLayout(5, 3, 2, ACC)
    rng = random.Random(8)
    first, second = random_rows(rng, err, 2)
    between, = random_rows(rng, part, 1)
    dut = RowDeserializer(channels=err.channels, h=err.h, w=err.w, fmt=err.fmt, partial=part)

    async def send(ctx, words):
        ctx.set(dut.i.valid, 1)
        for word in words:
            ctx.set(dut.i.payload, word)
            assert ctx.get(dut.i.ready)
            await ctx.tick()
        ctx.set(dut.i.valid, 0)

    header = error_header(err)
    assert header[0]                                # the header is one word

    async def tb(ctx):
        await send(ctx, encode_row(*first, partial=False, header=header))
        assert ctx.get(dut.o.valid)
        await send(ctx, encode_row(*between, partial=True, header=header))
        ctx.set(dut.partial.ready, 1)
        assert ctx.get(dut.partial.valid)
        assert beat_row(ctx.get(dut.partial.payload), 2) == between
        await ctx.tick()
        ctx.set(dut.partial.ready, 0)
        words = encode_row(*second, partial=False, header=header)
        await send(ctx, words[:1])                  # the header goes to its own registers
        ctx.set(dut.i.valid, 1)
        ctx.set(dut.i.payload, words[1])
        for _ in range(5):
            assert not ctx.get(dut.i.ready) and not ctx.get(dut.partial.valid)
            assert beat_row(ctx.get(dut.o.payload), 2) == first
            await ctx.tick()
        ctx.set(dut.o.ready, 1)
        assert ctx.get(dut.o.valid) and not ctx.get(dut.i.ready)
        await ctx.tick()
        ctx.set(dut.o.ready, 0)
        ctx.set(dut.i.valid, 0)
        await send(ctx, words[1:])
        assert ctx.get(dut.o.valid)
        assert beat_row(ctx.get(dut.o.payload), 2) == second

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(tb)
    sim.run()


def test_frame_limits():
    with pytest.raises(ValueError, match="h"):
        RowSerializer(channels=2, h=1 << 16 | 1, w=1, fmt=N.error)
    with pytest.raises(ValueError, match="channels"):
        RowSerializer(channels=(1 << 15) + 1, h=2, w=1, fmt=N.error)
    with pytest.raises(ValueError, match="map_channels"):
        RowSerializer(channels=4, h=2, w=1, fmt=N.error, map_channels=3)
    with pytest.raises(ValueError, match="map_channels"):
        RowDeserializer(channels=4, h=2, w=1, fmt=N.error, map_channels=(1 << 15) + 1)
    with pytest.raises(ValueError, match="fmt"):
        RowSerializer(channels=2, h=2, w=1, fmt=ACC)
    with pytest.raises(ValueError, match="fmt"):
        RowSerializer(channels=2, h=2, w=1, fmt=FixedFormat(49, 0), partial=True)
    with pytest.raises(TypeError, match="partial"):
        RowDeserializer(channels=2, h=2, w=1, fmt=N.error, partial=True)


class MapBench(Elaboratable):
    """A MapSender reading one memory and a MapReceiver writing another. The
    testbench may write the source too (``self.writer``)."""

    def __init__(self, sender, receiver, src, dst):
        self.sender, self.receiver = sender, receiver
        self.src = memory.Memory(shape=sender.rd.data.shape(), depth=len(src), init=src)
        self.dst = memory.Memory(shape=receiver.wr.data.shape(), depth=len(dst), init=dst)
        self.writer = MemoryWriter(self.src)

    def elaborate(self, platform):
        m = Module()
        m.submodules.sender, m.submodules.receiver = self.sender, self.receiver
        m.submodules.src, m.submodules.dst = self.src, self.dst
        wiring.connect(m, self.sender.rd, self.src.read_port())
        wiring.connect(m, self.receiver.wr, self.dst.write_port())
        self.writer.connect(m)
        return m


def random_map(rng, layout):
    fmt = layout.fmt
    return [[rng.choice([fmt.min, fmt.max, rng.randint(fmt.min, fmt.max)])
             for _ in range(layout.w)] for _ in range(layout.depth)]


def stream_words(layout, rows):
    """The words of a row-layout map (a list of rows by address) in stream order."""
    return [v for c, y in layout.stream_order() for v in rows[layout.address(c, y)]]


@pytest.mark.parametrize("label", [True, False])
def test_map_sender_words(label):
    rng = random.Random(30)
    layout = RowLayout(2, 3, 4, N.act)
    words = random_map(rng, layout)
    sender = MapSender(layout=layout, label=label)
    assert hasattr(sender, "label") == label
    receiver = MapReceiver(layout=layout)
    bench = MapBench(sender, receiver, words, [[0] * layout.w] * layout.depth)
    driver = StreamDriver(rng, stall=0.3)
    expect = ([-7] if label else []) + stream_words(layout, words)

    async def tb(ctx):
        if label:
            ctx.set(sender.label, -7)
        ctx.set(sender.start, 1)
        await ctx.tick()
        ctx.set(sender.start, 0)
        got = [await driver.get(ctx, sender.o) for _ in expect]
        assert got == expect
        ctx.set(sender.o.ready, 1)
        await expect_quiet(ctx, [sender.o], 10)
        assert not ctx.get(sender.busy)

    sim = Simulator(bench)
    sim.add_clock(1e-6)
    sim.add_testbench(tb)
    sim.run()


def test_map_sender_one_word_per_cycle():
    """With every row ready and the sink always ready, no cycle is lost between rows."""
    layout = RowLayout(3, 2, 2, N.act)
    words = random_map(random.Random(31), layout)
    sender = MapSender(layout=layout)
    bench = MapBench(sender, MapReceiver(layout=layout), words, words)

    async def tb(ctx):
        ctx.set(sender.label, 1)
        ctx.set(sender.o.ready, 1)
        ctx.set(sender.start, 1)
        await ctx.tick()
        ctx.set(sender.start, 0)
        got = []
        for _ in range(1 + layout.depth * layout.w):
            assert ctx.get(sender.o.valid)
            got.append(ctx.get(sender.o.payload))
            await ctx.tick()
        assert got == [1] + stream_words(layout, words)
        assert not ctx.get(sender.o.valid)

    sim = Simulator(bench)
    sim.add_clock(1e-6)
    sim.add_testbench(tb)
    sim.run()


@pytest.mark.parametrize("seed", range(3))
def test_map_sender_waits_for_rows(seed):
    """The map is written row by row (every channel of a row, then ``rows_ready``) while
    the sender runs; rows it read too early would hold the zeros written before."""
    rng = random.Random(60 + seed)
    layout = RowLayout(rng.randint(1, 3), rng.randint(2, 4), rng.randint(1, 3), N.act)
    words = random_map(rng, layout)
    for row in words:
        row[0] = row[0] or 1             # no row is all zeros
    sender = MapSender(layout=layout, label=False)
    zeros = [[0] * layout.w] * layout.depth
    bench = MapBench(sender, MapReceiver(layout=layout), zeros, zeros)
    driver = StreamDriver(rng, stall=0.2)

    async def writer(ctx):
        ctx.set(sender.rows_ready, 0)
        for c, y in layout.stream_order():
            for _ in range(rng.randint(0, 6)):
                await ctx.tick()
            await bench.writer.put(ctx, layout.address(c, y), words[layout.address(c, y)])
            if c == layout.channels - 1:
                ctx.set(sender.rows_ready, y + 1)

    async def tb(ctx):
        ctx.set(sender.start, 1)
        await ctx.tick()
        ctx.set(sender.start, 0)
        got = [await driver.get(ctx, sender.o) for _ in range(layout.depth * layout.w)]
        assert got == stream_words(layout, words)

    sim = Simulator(bench)
    sim.add_clock(1e-6)
    sim.add_testbench(writer, background=True)
    sim.add_testbench(tb)
    sim.run()


@pytest.mark.parametrize("seed", range(3))
def test_map_round_trip_into_leading_channels(seed):
    """MapSender(label=False) of a few channels into the first channels of a larger map."""
    rng = random.Random(40 + seed)
    w, h = rng.randint(1, 4), rng.randint(1, 3)
    src_layout = RowLayout(rng.randint(1, 3), h, w, N.act)
    dst_layout = RowLayout(src_layout.channels + rng.randint(0, 3), h, w, N.act)
    src = random_map(rng, src_layout)
    before = random_map(rng, dst_layout)
    sender = MapSender(layout=src_layout, label=False)
    receiver = MapReceiver(layout=dst_layout, channels=src_layout.channels)
    bench = MapBench(sender, receiver, src, before)
    driver = StreamDriver(rng, gap=0.3, stall=0.3)
    done = []

    async def tb(ctx):
        ctx.set(receiver.start, 1)
        ctx.set(sender.start, 1)
        await ctx.tick()
        ctx.set(receiver.start, 0)
        ctx.set(sender.start, 0)
        for n in range(src_layout.depth * w):
            assert ctx.get(receiver.busy)
            # Rows complete in every channel received so far.
            assert ctx.get(receiver.rows_ready) == n // (w * src_layout.channels)
            await driver.put(ctx, receiver.i, await driver.get(ctx, sender.o))
        assert not ctx.get(receiver.busy) and ctx.get(receiver.done)
        assert ctx.get(receiver.rows_ready) == h
        await ctx.tick()
        assert not ctx.get(receiver.done)
        expect = src + before[len(src):]
        assert [list(ctx.get(bench.dst.data[a])) for a in range(dst_layout.depth)] == expect
        done.append(True)

    sim = Simulator(bench)
    sim.add_clock(1e-6)
    sim.add_testbench(tb)
    sim.run()
    assert done


def test_map_receiver_one_word_per_cycle():
    layout = RowLayout(3, 2, 3, N.act)
    rng = random.Random(50)
    words = random_map(rng, layout)
    receiver = MapReceiver(layout=layout, channels=2)
    dst = memory.Memory(shape=layout.shape, depth=layout.depth, init=[])
    bench = Module()
    bench.submodules.receiver, bench.submodules.dst = receiver, dst
    wiring.connect(bench, receiver.wr, dst.write_port())
    sent = RowLayout(2, 2, 3, N.act)

    async def tb(ctx):
        assert not ctx.get(receiver.i.ready), "nothing taken before start"
        ctx.set(receiver.start, 1)
        await ctx.tick()
        ctx.set(receiver.start, 0)
        ctx.set(receiver.i.valid, 1)
        for value in stream_words(sent, words[:4]):
            assert ctx.get(receiver.i.ready) and not ctx.get(receiver.done)
            ctx.set(receiver.i.payload, value)
            await ctx.tick()
        ctx.set(receiver.i.valid, 0)
        assert ctx.get(receiver.done) and not ctx.get(receiver.i.ready)
        assert [list(ctx.get(dst.data[a])) for a in range(layout.depth)] == \
            words[:4] + [[0] * layout.w] * 2

    sim = Simulator(bench)
    sim.add_clock(1e-6)
    sim.add_testbench(tb)
    sim.run()


def test_map_receiver_channels_checked():
    with pytest.raises(ValueError, match="channels"):
        MapReceiver(layout=RowLayout(2, 2, 2, N.act), channels=3)
