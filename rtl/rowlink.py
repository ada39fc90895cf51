"""Feature-map rows as word streams, for the links between chips.

Activations go down the chain in the host's sample format (a label word, then the
map's words in stream order, :func:`map_words`; :class:`MapSender`), so a chip
loads its input the same way whether it comes from the host or from the chip in
front; :class:`MapReceiver` stores a map sent without its label. Stream order is
row by row, every channel of a row in turn (:meth:`RowLayout.stream_order`), the
order the engines produce rows in: a chip sends a map's rows as they are computed
and the next starts on them as they arrive. Errors come back as they leave the BP engine,
one framed row at a time (:class:`RowSerializer`; :class:`RowDeserializer` undoes
it), because the error derivative takes rows in any order.

Row frames
----------
A frame is a header, then the row's values in order. The header's first word has
the ``partial`` kind flag in bit 15 (:data:`ROW_HEADER`):

* an **error row** (``partial`` clear) carries one word per value. Its header is one
  word, the row number in the low bits and the channel number above it, when both
  fit in 15 bits (:func:`~fpdeep.plan.model.timing.row_header_words`, from the map's
  size: the rule both ends of a link share); else a channel word and a row word.
* a **partial row** (``partial`` set) carries the exact accumulator sums of a layer
  split across chips (:mod:`fpdeep.rtl.partial`), each value sign-extended to 48
  bits and sent as :data:`PARTIAL_WORDS` words, low word first. Its header is a
  channel word and a row word.

A row is 4 to 28 values in the networks we plan, so a second header word costs a
link 4 to 25 % of an error row's words.

The two kinds may follow each other frame by frame on one word stream, and each
kind has its own channel count and row size, so one link channel carries the
forwarded errors of a layer's output and the partial sums at its input.
"""

import numpy as np
from amaranth import *
from amaranth.lib import wiring, stream, data, memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from ..plan.model.timing import row_header_words
from .conv import RowLayout
from .numerics import FixedFormat

__all__ = ["WORD", "ROW_HEADER", "PARTIAL_WORDS", "RowSerializer", "RowDeserializer",
           "MapSender", "MapReceiver", "map_words"]

#: The link word: one 16-bit fixed-point value, label or row header.
WORD = signed(16)

#: The first word of a row frame: the frame's kind above 15 bits of channel, or of
#: row and channel (an error row's one-word header, :func:`_header_fields`).
ROW_HEADER = data.StructLayout({"fields": 15, "partial": 1})

#: Words per value of a partial row: a 48-bit sum, low word first.
PARTIAL_WORDS = 3


def map_words(feature_map):
    """The words of a ``(channels, h, w)`` map in stream order, as the host sends a
    sample (after its label) and :class:`MapSender` sends a map."""
    return [int(v) for v in np.asarray(feature_map).transpose(1, 0, 2).reshape(-1)]


def _header_fields(map_channels, h):
    """``(one_word, row_bits)``: whether an error row's header is one word on a link
    whose error rows are those of a ``map_channels`` x ``h`` map, and the bits of its
    row field (the channel lies above them)."""
    return row_header_words(map_channels, h) == 1, (h - 1).bit_length()


def _check_map_channels(map_channels, channels):
    if map_channels is None:
        return channels
    if not isinstance(map_channels, int) or map_channels < channels:
        raise ValueError(f"map_channels must be an int of at least channels = {channels}, "
                         f"not {map_channels!r}")
    if map_channels > 1 << 15:
        raise ValueError(f"map_channels {map_channels} do not fit the 15-bit channel field")
    return map_channels


def _check_frame(channels, h, w, fmt, *, partial, name="fmt"):
    """Validate one row kind's geometry against the frame's header fields."""
    for pname, value in (("channels", channels), ("h", h), ("w", w)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{pname} must be a positive int, not {value!r}")
    if channels > 1 << 15:
        raise ValueError(f"channels {channels} do not fit the 15-bit channel field")
    if h > 1 << 16:
        raise ValueError(f"h {h} does not fit the 16-bit row word")
    if not isinstance(fmt, FixedFormat):
        raise TypeError(f"{name} must be a FixedFormat, not {fmt!r}")
    limit = PARTIAL_WORDS * WORD.width if partial else WORD.width
    if fmt.width > limit:
        raise ValueError(f"{name} {fmt} is wider than the {limit} bits of a "
                         f"{'partial' if partial else 'error'} row's value")


class RowSerializer(wiring.Component):
    """Rows in, words out: one row frame per row (see the module's *Row frames*).

    Throughput: one word per cycle, ``w`` plus the header's words per error row and
    ``PARTIAL_WORDS * w + 2`` per partial row. The next row is taken in the cycle the
    last word of the one before leaves, so rows that wait leave back to back, with no
    idle word between frames: the link's packer fills whole frames with them.

    Parameters
    ----------
    channels, h, w : int
        The map's size; ``channels`` bounds the channel numbers only, which are the
        map's own (global).
    fmt : FixedFormat
        Format of the values: at most 16 bits, or with ``partial`` at most 48 (the
        accumulator format, e.g. :attr:`ConvEngine.acc_fmt`).
    partial : bool
        Send partial rows (kind flag set, 3 words per value) instead of error rows.
    map_channels : int, optional
        All the channels of the map whose error rows this link carries (``channels``
        by default; more when ``channels`` is a slice's): with ``h`` it sets the
        error rows' header (:func:`~fpdeep.plan.model.timing.row_header_words`), as it
        does on the receiving :class:`RowDeserializer`.

    Members
    -------
    i : In(stream) of rows ``RowLayout(channels, h, w, fmt).row_stream()``.
    o : Out(stream.Signature(signed(16)))
    busy : Out(1)

    Raises
    ------
    ValueError, TypeError
        If the map does not fit the frame's fields or ``fmt`` is too wide.
    """

    def __init__(self, *, channels, h, w, fmt, partial=False, map_channels=None):
        _check_frame(channels, h, w, fmt, partial=partial)
        map_channels = _check_map_channels(map_channels, channels)
        self._w, self._partial = w, bool(partial)
        one_word, self._row_bits = _header_fields(map_channels, h)
        self._one_word = one_word and not self._partial
        super().__init__({
            "i": In(RowLayout(channels, h, w, fmt).row_stream()),
            "o": Out(stream.Signature(WORD)),
            "busy": Out(1),
        })

    @property
    def header_words(self):
        """Words of a frame's header."""
        return 1 if self._one_word else 2

    def elaborate(self, platform):
        m = Module()
        w = self._w
        per_value = PARTIAL_WORDS if self._partial else 1
        # Word ``index`` of the frame: the header at 0 (and 1), value k at k + 2; a
        # one-word header goes from 0 straight to 2.
        last = per_value * w + 1
        held = Signal(self.i.payload.shape())
        full = Signal()
        index = Signal(range(last + 1))
        sent = self.o.valid & self.o.ready
        m.d.comb += self.i.ready.eq(~full | (sent & (index == last)))
        with m.If(sent):
            m.d.sync += index.eq(Mux(index == 0, 3 - self.header_words, index + 1))
            with m.If(index == last):
                m.d.sync += full.eq(0)
        with m.If(self.i.valid & self.i.ready):
            m.d.sync += [held.eq(self.i.payload), full.eq(1), index.eq(0)]

        header = Signal(ROW_HEADER)
        m.d.comb += header.partial.eq(self._partial)
        if self._one_word:
            m.d.comb += header.fields.eq(Cat(held.row[:self._row_bits], held.channel))
        else:
            m.d.comb += header.fields.eq(held.channel)
        if self._partial:
            wide = Signal(data.ArrayLayout(signed(PARTIAL_WORDS * WORD.width), w))
            for x in range(w):
                m.d.comb += wide[x].eq(held.values[x])      # sign-extends
            words = data.View(data.ArrayLayout(WORD, PARTIAL_WORDS * w), wide.as_value())
        else:
            words = held.values
        with m.Switch(index):
            with m.Case(0):
                m.d.comb += self.o.payload.eq(header.as_value())
            with m.Case(1):
                m.d.comb += self.o.payload.eq(held.row)
            for k in range(per_value * w):
                with m.Case(k + 2):
                    m.d.comb += self.o.payload.eq(words[k])
        m.d.comb += [self.o.valid.eq(full), self.busy.eq(full)]
        return m


class RowDeserializer(wiring.Component):
    """Words in, rows out: the inverse of :class:`RowSerializer`, for one or both kinds.

    Without ``partial`` every frame is taken as an error row (the kind flag is not
    looked at). With ``partial``, frames of either kind may follow each other: error
    rows leave on ``o``, partial rows on ``partial``.

    Throughput: one word per cycle. The header words of a frame are taken even
    while the previous row of either kind waits to leave; the values of a frame
    wait until the previous row of the same kind has left. A row is offered the
    cycle after its last word is taken.

    Parameters
    ----------
    channels, h, w : int
    fmt : FixedFormat
        The error rows (at most 16 bits).
    partial : RowLayout or None
        The partial rows (channels, size and accumulator format, at most 48 bits),
        which need not match the error rows'.
    map_channels : int, optional
        All the channels of the error rows' map (``channels`` by default): with ``h``
        it sets their header, as on the sending :class:`RowSerializer`.

    Members
    -------
    i : In(stream.Signature(signed(16)))
    o : Out(stream) of error rows, ``RowLayout(channels, h, w, fmt).row_stream()``.
    partial : Out(stream) of partial rows, ``partial.row_stream()``; only with ``partial``.
    busy : Out(1)
        A row is partly received or waiting to leave.

    Raises
    ------
    ValueError, TypeError
        If a map does not fit the frame's fields, a format is too wide or ``partial``
        is not a :class:`RowLayout`.
    """

    def __init__(self, *, channels, h, w, fmt, partial=None, map_channels=None):
        _check_frame(channels, h, w, fmt, partial=False)
        self._one_word, self._row_bits = _header_fields(
            _check_map_channels(map_channels, channels), h)
        if partial is not None:
            if not isinstance(partial, RowLayout):
                raise TypeError(f"partial must be a RowLayout or None, not {partial!r}")
            _check_frame(partial.channels, partial.h, partial.w, partial.fmt, partial=True,
                         name="partial.fmt")
        self._layout, self._partial = RowLayout(channels, h, w, fmt), partial
        members = {
            "i": In(stream.Signature(WORD)),
            "o": Out(self._layout.row_stream()),
        }
        if partial is not None:
            members["partial"] = Out(partial.row_stream())
        members["busy"] = Out(1)
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        layout, partial = self._layout, self._partial
        w = layout.w
        pw = partial.w if partial is not None else 0
        index = Signal(range(max(w, PARTIAL_WORDS * pw) + 2))
        kinds = [layout] if partial is None else [layout, partial]
        channel = Signal(range(max(k.channels for k in kinds)))
        row = Signal(range(max(k.h for k in kinds)))
        kind = Signal()                 # of the frame being received: 1 for partial
        o_full, p_full = Signal(), Signal()

        word = self.i.payload
        take = self.i.valid & self.i.ready
        header = data.View(ROW_HEADER, word)
        m.d.comb += [
            self.i.ready.eq((index < 2) | ~Mux(kind, p_full, o_full)),
            self.o.valid.eq(o_full),
            self.busy.eq(o_full | p_full | (index != 0)),
        ]
        with m.If(self.o.valid & self.o.ready):
            m.d.sync += o_full.eq(0)

        # Word ``index`` of the frame as RowSerializer numbers them: a one-word header
        # goes from 0 straight to the first value, at 2.
        header_partial = header.partial if partial is not None else C(0)
        one_word = C(self._one_word) & ~header_partial
        last = Mux(kind, PARTIAL_WORDS * pw + 1, w + 1)
        with m.If(take):
            m.d.sync += index.eq(Mux(index == last, 0, Mux((index == 0) & one_word, 2,
                                                           index + 1)))
            with m.If(index == 0):
                m.d.sync += kind.eq(header_partial)
                with m.If(one_word):
                    m.d.sync += [row.eq(header.fields[:self._row_bits]),
                                 channel.eq(header.fields[self._row_bits:])]
                with m.Else():
                    m.d.sync += channel.eq(header.fields)
            with m.If(index == 1):
                m.d.sync += row.eq(word.as_unsigned())
            with m.If(~kind):
                with m.Switch(index):
                    for x in range(w):
                        with m.Case(x + 2):
                            m.d.sync += self.o.payload.values[x].eq(word)
                with m.If(index == w + 1):
                    m.d.sync += [self.o.payload.channel.eq(channel),
                                 self.o.payload.row.eq(row), o_full.eq(1)]

        if partial is not None:
            words = Signal(data.ArrayLayout(WORD, PARTIAL_WORDS * pw))
            sums = data.View(data.ArrayLayout(signed(PARTIAL_WORDS * WORD.width), pw),
                             words.as_value())
            p_channel = Signal.like(self.partial.payload.channel)
            p_row = Signal.like(self.partial.payload.row)
            with m.If(self.partial.valid & self.partial.ready):
                m.d.sync += p_full.eq(0)
            with m.If(take & kind):
                with m.Switch(index):
                    for k in range(PARTIAL_WORDS * pw):
                        with m.Case(k + 2):
                            m.d.sync += words[k].eq(word)
                with m.If(index == PARTIAL_WORDS * pw + 1):
                    m.d.sync += [p_channel.eq(channel), p_row.eq(row), p_full.eq(1)]
            m.d.comb += [
                self.partial.valid.eq(p_full),
                self.partial.payload.channel.eq(p_channel),
                self.partial.payload.row.eq(p_row),
            ]
            for x in range(pw):
                m.d.comb += self.partial.payload.values[x].eq(sums[x])
        return m


class MapSender(wiring.Component):
    """Sends a label, then a row-layout map's values in stream order, as words.

    Rows go in :meth:`RowLayout.stream_order` (row ``y`` of each channel, then row
    ``y + 1``), each row's values in order. A row is read only once ``rows_ready``
    shows it written, so the sender may start while the map is still being computed.
    With its rows ready it sends one word per cycle: the next row's read overlaps the
    last word of the row before.

    Parameters
    ----------
    layout : RowLayout
        The map (values of at most 16 bits).
    label : bool
        Send the ``label`` word first. Without it the words are the map's only, and
        the ``label`` port is absent (the inverse is :class:`MapReceiver`).

    Members
    -------
    start : In(1)
    label : In(signed(16)), sampled at ``start``; only with ``label``.
    rows_ready : In(range(h + 1)), all rows by default
        Rows ``0 .. rows_ready - 1`` of every channel are written (in the memory, as of
        this cycle's read).
    busy : Out(1)
    rd : In(memory.ReadPort.Signature(...)) the map.
    o : Out(stream.Signature(signed(16)))
    """

    def __init__(self, *, layout, label=True):
        _check_frame(layout.channels, layout.h, layout.w, layout.fmt, partial=False,
                     name="layout.fmt")
        self._layout, self._label = layout, bool(label)
        members = {"start": In(1)}
        if self._label:
            members["label"] = In(WORD)
        members.update({
            "rows_ready": In(range(layout.h + 1), init=layout.h),
            "busy": Out(1),
            "rd": In(memory.ReadPort.Signature(addr_width=ceil_log2(layout.depth),
                                               shape=layout.shape)),
            "o": Out(stream.Signature(WORD)),
        })
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        layout = self._layout
        channels, h, w = layout.channels, layout.h, layout.w
        c = Signal(range(channels))
        y = Signal(range(h))
        x = Signal(range(w))
        last_channel = c == channels - 1
        next_c = Mux(last_channel, 0, c + 1)
        next_y = Mux(last_channel, y + 1, y)
        last_row = last_channel & (y == h - 1)
        next_ready = next_y < self.rows_ready
        m.d.comb += self.rd.en.eq(0)
        with m.FSM() as fsm:
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.sync += [c.eq(0), y.eq(0), x.eq(0)]
                    if self._label:
                        label = Signal(WORD)
                        m.d.sync += label.eq(self.label)
                        m.next = "LABEL"
                    else:
                        m.next = "WAIT"
            if self._label:
                with m.State("LABEL"):
                    # Read row 0 as the label leaves, if it is there.
                    m.d.comb += [self.o.valid.eq(1), self.o.payload.eq(label),
                                 self.rd.addr.eq(c * h + y), self.rd.en.eq(1)]
                    with m.If(self.o.ready):
                        with m.If(y < self.rows_ready):
                            m.next = "ROW"
                        with m.Else():
                            m.next = "WAIT"
            with m.State("WAIT"):
                m.d.comb += [self.rd.addr.eq(c * h + y), self.rd.en.eq(1)]
                with m.If(y < self.rows_ready):
                    m.next = "ROW"
            with m.State("ROW"):
                m.d.comb += [self.o.valid.eq(1), self.rd.addr.eq(next_c * h + next_y)]
                with m.Switch(x):
                    for xv in range(w):
                        with m.Case(xv):
                            m.d.comb += self.o.payload.eq(self.rd.data[xv])
                with m.If(self.o.ready):
                    m.d.sync += x.eq(Mux(x == w - 1, 0, x + 1))
                    with m.If(x == w - 1):
                        m.d.sync += [c.eq(next_c), y.eq(next_y)]
                        with m.If(last_row):
                            m.next = "IDLE"
                        with m.Elif(next_ready):
                            m.d.comb += self.rd.en.eq(1)
                        with m.Else():
                            m.next = "WAIT"
        m.d.comb += self.busy.eq(~fsm.ongoing("IDLE"))
        return m


class MapReceiver(wiring.Component):
    """Words in, rows of a row-layout memory out: a map sent by ``MapSender(label=False)``.

    After ``start``, takes channels ``0 .. channels - 1`` of the map in stream order
    (:meth:`RowLayout.stream_order`), ``w`` words per row, and writes each row to
    its address in the cycle its last word is taken. Throughput: one word per
    cycle, ``i`` is ready in every cycle while busy.

    Parameters
    ----------
    layout : RowLayout
        The memory's map (values of at most 16 bits; words are truncated to them).
    channels : int or None
        The channels sent, from channel 0; all of the layout's by default.

    Members
    -------
    start : In(1)
        Pulse to receive one map; ignored while busy.
    busy : Out(1)
        From the cycle after ``start`` to the cycle of the last row's write.
    done : Out(1)
        One cycle, the cycle after the last row's write (its data is readable then).
    rows_ready : Out(range(h + 1))
        Rows ``0 .. rows_ready - 1`` of every channel received are written and
        readable; 0 from the cycle after ``start`` (``h`` before the first map).
    i : In(stream.Signature(signed(16)))
        Taken only while busy.
    wr : In(memory.WritePort.Signature(addr_width=ceil_log2(layout.depth), shape=layout.shape))

    Raises
    ------
    ValueError
        If ``channels`` is not from 1 to ``layout.channels``.
    """

    def __init__(self, *, layout, channels=None):
        _check_frame(layout.channels, layout.h, layout.w, layout.fmt, partial=False,
                     name="layout.fmt")
        channels = layout.channels if channels is None else channels
        if not isinstance(channels, int) or not 1 <= channels <= layout.channels:
            raise ValueError(f"channels must be an int from 1 to {layout.channels}, "
                             f"not {channels!r}")
        self._layout, self._channels = layout, channels
        super().__init__({
            "start": In(1),
            "busy": Out(1),
            "done": Out(1),
            "rows_ready": Out(range(layout.h + 1)),
            "i": In(stream.Signature(WORD)),
            "wr": In(memory.WritePort.Signature(addr_width=ceil_log2(layout.depth),
                                                shape=layout.shape)),
        })

    def elaborate(self, platform):
        m = Module()
        layout, channels = self._layout, self._channels
        h, w = layout.h, layout.w
        c = Signal(range(channels))
        y = Signal(range(h + 1), init=h)       # h: idle
        x = Signal(range(w))
        buffer = Signal(layout.shape)
        take = self.i.valid & self.i.ready
        last_channel = c == channels - 1

        # Rows complete in every channel: the row counter itself.
        m.d.comb += [self.busy.eq(y != h), self.i.ready.eq(self.busy),
                     self.rows_ready.eq(y)]
        m.d.sync += self.done.eq(0)
        with m.If(self.start & ~self.busy):
            m.d.sync += [c.eq(0), y.eq(0), x.eq(0)]
        with m.If(take):
            m.d.sync += x.eq(Mux(x == w - 1, 0, x + 1))
            with m.Switch(x):
                for xv in range(w - 1):
                    with m.Case(xv):
                        m.d.sync += buffer[xv].eq(self.i.payload)
        m.d.comb += [self.wr.addr.eq(c * h + y), self.wr.en.eq(take & (x == w - 1))]
        for xv in range(w - 1):
            m.d.comb += self.wr.data[xv].eq(buffer[xv])
        m.d.comb += self.wr.data[w - 1].eq(self.i.payload)
        with m.If(self.wr.en):
            m.d.sync += c.eq(Mux(last_channel, 0, c + 1))
            with m.If(last_channel):
                m.d.sync += y.eq(y + 1)
                with m.If(y == h - 1):
                    m.d.sync += self.done.eq(1)
        return m
