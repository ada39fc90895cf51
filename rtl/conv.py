"""The systolic convolution engine: FP of conv and FC layers, and (transposed) BP."""

from dataclasses import dataclass

from amaranth import *
from amaranth.lib import wiring, stream, data, memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from ..plan.layers import ConvGeometry
from .numerics import FixedFormat, check_accumulator, requantize_hw
from .systolic import SystolicArray

__all__ = ["ConvGeometry", "ConvEngine", "RowLayout", "pack_conv_weights", "pack_rows"]


@dataclass(frozen=True)
class RowLayout:
    """A feature map stored one row per memory word: address ``channel * h + y``."""
    channels: int
    h: int
    w: int
    fmt: FixedFormat

    @property
    def depth(self):
        return self.channels * self.h

    @property
    def shape(self):
        return data.ArrayLayout(self.fmt.shape, self.w)

    def address(self, channel, y):
        return channel * self.h + y

    def stream_order(self):
        """``(channel, y)`` of every row in stream order: row ``y`` of each channel in
        turn, then row ``y + 1``. Maps travel in this order (host samples, links),
        and engines produce them in it, so a consumer can start on the rows so far."""
        return [(c, y) for y in range(self.h) for c in range(self.channels)]

    def row_stream(self):
        """The stream of this map's rows, one per beat, in any order."""
        return stream.Signature(data.StructLayout({
            "channel": range(self.channels),
            "row": range(self.h),
            "values": data.ArrayLayout(self.fmt.shape, self.w),
        }))


class ConvEngine(wiring.Component):
    """Computes ``out[o, y, :] = requantize(sum W[o, i, ky, kx] * in[i, y+ky-ph, x+kx-pw] (+ b[o]))``.

    The engine is a :class:`SystolicArray` of ``rows`` × ``wo`` PEs: rows are
    output channels (a tile of ``rows`` of them), columns are the pixels of one
    output row. Each step feeds one weight word (``rows`` output channels at one
    tap ``(i, ky, kx)``) down the rows and one input row, shifted by ``kx - pw`` with
    zero padding, across the columns. Taps that fall wholly in the vertical padding
    are not stepped through: for output row ``y`` only ``ky`` with an input row in
    range are visited, so a tile takes ``cin * (valid ky) * kw (+1 for the bias)`` steps.

    The same engine back-propagates errors as the transposed convolution
    (:meth:`ConvGeometry.transposed`) over a transposed weight copy; see
    :class:`~fpdeep.rtl.backprop.BackpropUnit`.

    Weight memory: word ``t * taps + (i * kh + ky) * kw + kx`` holds ``rows`` lanes
    (output channels ``t*rows ...``); the bias of the tile is at tap ``cin*kh*kw``.

    Parameters
    ----------
    geometry : ConvGeometry
    rows : int
        Output channels computed at once.
    in_fmt, weight_fmt : FixedFormat
    out_fmt : FixedFormat or None
        Format of the requantized output; unused (and may be ``None``) with ``raw``.
    acc_width : int
    bias : bool
        Add a bias step whose input is 1.0 in ``in_fmt``.
    raw : bool
        Emit the exact accumulator sums (:attr:`acc_fmt`, ``acc_width`` bits with
        ``in_fmt.frac + weight_fmt.frac`` fraction bits) instead of requantizing them,
        with ``saturated`` always 0: a partial sum over a slice of the input channels,
        to be added to the other slices' before one requantization
        (:class:`~fpdeep.rtl.partial.PartialSum`). Timing is the same either way.

    Members
    -------
    start : In(1)
        Pulse to compute one whole output map.
    busy : Out(1)
    step : Out(1)
        A step enters the array this cycle (a performance counter input).
    w_rd : In(memory.ReadPort.Signature(shape=ArrayLayout(weight, rows)))
    x_rd : In(memory.ReadPort.Signature(shape=ArrayLayout(in, w)))
    x_ready : In(range(h + 1)), all rows by default
        Rows ``0 .. x_ready - 1`` of every input channel are written: a step whose
        row is not waits, so the engine can start on an input still arriving, row
        after row (the order :class:`RowLayout` streams in).
    starved : Out(1)
        A step waits for its input row this cycle (busy, but not for lack of work).
    o : Out(stream.Signature(StructLayout({"channel", "row", "values": ArrayLayout(out, wo), "saturated"})))
        Requantized output rows (``values`` in ``out_fmt``, or in :attr:`acc_fmt` with
        ``raw``), in order of (row, tile, lane): output row ``y`` of every channel
        leaves before any of row ``y + 1``, so the next layer can start on it.
        ``saturated`` counts the row's saturated values.

    Raises
    ------
    ValueError
        If ``rows`` is not a positive int, or ``out_fmt`` is missing without ``raw``.
    """

    def __init__(self, *, geometry, rows, in_fmt, weight_fmt, out_fmt, acc_width=48, bias=True,
                 raw=False):
        if not isinstance(rows, int) or rows < 1:
            raise ValueError(f"rows must be a positive int, not {rows!r}")
        if out_fmt is None and not raw:
            raise ValueError("out_fmt is required unless raw is set")
        self._g, self._rows, self._bias, self._raw = geometry, rows, bias, bool(raw)
        self._in_fmt, self._weight_fmt, self._out_fmt = in_fmt, weight_fmt, out_fmt
        self._acc_width = acc_width
        g = geometry
        self.tiles = -(-g.cout // rows)
        self.taps = g.cin * g.kh * g.kw + (1 if bias else 0)
        self.in_layout = RowLayout(g.cin, g.h, g.w, in_fmt)
        super().__init__({
            "start": In(1),
            "busy": Out(1),
            "step": Out(1),
            "w_rd": In(memory.ReadPort.Signature(
                addr_width=ceil_log2(self.tiles * self.taps),
                shape=data.ArrayLayout(weight_fmt.shape, rows))),
            "x_rd": In(memory.ReadPort.Signature(
                addr_width=ceil_log2(self.in_layout.depth), shape=self.in_layout.shape)),
            "x_ready": In(range(g.h + 1), init=g.h),
            "starved": Out(1),
            "o": Out(stream.Signature(data.StructLayout({
                "channel": range(g.cout),
                "row": range(g.ho),
                "values": data.ArrayLayout(self.out_layout.fmt.shape, g.wo),
                "saturated": range(g.wo + 1),
            }))),
        })

    @property
    def array_shape(self):
        return (self._rows, self._g.wo)

    @property
    def acc_fmt(self):
        """The format of the exact sums: ``acc_width`` bits, ``in.frac + weight.frac`` fraction."""
        return FixedFormat(self._acc_width, self._in_fmt.frac + self._weight_fmt.frac)

    @property
    def out_layout(self):
        """The :class:`RowLayout` of the output map (in :attr:`acc_fmt` with ``raw``)."""
        g = self._g
        return RowLayout(g.cout, g.ho, g.wo, self.acc_fmt if self._raw else self._out_fmt)

    def elaborate(self, platform):
        m = Module()
        g, rows = self._g, self._rows
        check_accumulator(g.cin * g.kh * g.kw + 1,
                          max(self._in_fmt.width, self._weight_fmt.width), self._acc_width,
                          what=f"conv engine {g}")
        tag = data.StructLayout({"t": range(max(2, self.tiles)), "y": range(max(2, g.ho))})
        m.submodules.array = array = SystolicArray(
            rows=rows, cols=g.wo, a_shape=self._weight_fmt.shape, b_shape=self._in_fmt.shape,
            acc_width=self._acc_width, tag_shape=tag)

        # Loop counters, outermost first: output row y, tile t, kernel row ky, input
        # channel i, column kx; the bias step follows the last tap of a tile-row. Rows
        # outermost make the output a row stream, and kernel rows before channels take
        # the input in the order it streams in (row by row, every channel of a row):
        # a tile-row needs its last input row only for its last kernel row. The
        # weights are read at every step anyway, so the order costs nothing.
        t = Signal(range(max(2, self.tiles)))
        y = Signal(range(max(2, g.ho)))
        i = Signal(range(max(2, g.cin)))
        ky = Signal(range(max(2, g.kh)))
        kx = Signal(range(max(2, g.kw)))
        at_bias = Signal()
        running = Signal()

        # Valid kernel rows for output row y: y + ky - ph within [0, h).
        ky_lo = Signal.like(ky)
        ky_hi = Signal.like(ky)
        m.d.comb += [
            ky_lo.eq(Mux(y < g.ph, g.ph - y, 0)),
            ky_hi.eq(Mux(y + g.kh - 1 - g.ph > g.h - 1, g.h - 1 + g.ph - y, g.kh - 1)),
        ]
        last_tap = (i == g.cin - 1) & (ky == ky_hi) & (kx == g.kw - 1)
        step_last = at_bias if self._bias else last_tap

        # Stage 1: the memory words of the step issued last cycle, with its tags.
        s1_valid = Signal()
        s1_bias = Signal()
        s1_kx = Signal.like(kx)
        s1_last = Signal()
        advance = ~s1_valid | array.i.ready
        m.d.comb += [self.w_rd.en.eq(advance), self.x_rd.en.eq(advance)]

        tap = Mux(at_bias, g.cin * g.kh * g.kw, (i * g.kh + ky) * g.kw + kx)
        m.d.comb += [
            self.w_rd.addr.eq(t * self.taps + tap),
            self.x_rd.addr.eq(i * g.h + y + ky - g.ph),
        ]

        # A step waits for its input row: rows below ``x_ready`` are written in every
        # channel (the input may still be arriving, row after row).
        issue = running & (at_bias | (y + ky - g.ph < self.x_ready))
        m.d.comb += self.starved.eq(running & advance & ~issue)
        with m.If(advance):
            m.d.sync += [
                s1_valid.eq(issue),
                s1_bias.eq(at_bias),
                s1_kx.eq(kx),
                s1_last.eq(step_last),
            ]
            with m.If(issue):
                with m.If(at_bias if self._bias else last_tap):
                    m.d.sync += [at_bias.eq(0), i.eq(0), kx.eq(0)]
                    next_y_lo = Mux(y + 1 < g.ph, g.ph - (y + 1), 0)
                    with m.If(t != self.tiles - 1):
                        m.d.sync += [t.eq(t + 1), ky.eq(ky_lo)]
                    with m.Elif(y == g.ho - 1):
                        m.d.sync += [t.eq(0), y.eq(0), ky.eq(g.ph), running.eq(0)]
                    with m.Else():
                        m.d.sync += [t.eq(0), y.eq(y + 1), ky.eq(next_y_lo)]
                with m.Elif(last_tap):
                    m.d.sync += at_bias.eq(1)
                with m.Elif(kx == g.kw - 1):
                    m.d.sync += kx.eq(0)
                    with m.If(i == g.cin - 1):
                        m.d.sync += [i.eq(0), ky.eq(ky + 1)]
                    with m.Else():
                        m.d.sync += i.eq(i + 1)
                with m.Else():
                    m.d.sync += kx.eq(kx + 1)
        with m.If(self.start & ~self.busy):
            m.d.sync += [running.eq(1), t.eq(0), y.eq(0), i.eq(0), kx.eq(0), ky.eq(g.ph),
                         at_bias.eq(0)]

        # Stage 1 -> array: the input row shifted by kx - pw with zero padding.
        x_row = self.x_rd.data
        with m.Switch(s1_kx):
            for shift in range(g.kw):
                with m.Case(shift):
                    for c in range(g.wo):
                        src = c + shift - g.pw
                        m.d.comb += array.i.payload.b[c].eq(
                            x_row[src] if 0 <= src < g.w else 0)
        with m.If(s1_bias):
            for c in range(g.wo):
                m.d.comb += array.i.payload.b[c].eq(self._in_fmt.one)
        m.d.comb += [
            array.i.payload.a.eq(self.w_rd.data),
            array.i.payload.last.eq(s1_last),
            array.i.valid.eq(s1_valid),
        ]
        # The tile's (t, y) travels through the array with it.
        with m.If(advance):
            m.d.sync += [array.i.payload.tag.t.eq(t), array.i.payload.tag.y.eq(y)]

        # Array -> output: requantize one row per beat (or pass the exact sums with raw);
        # lanes past cout are dropped.
        channel = array.o.payload.tag.t * rows + array.o.payload.row
        lane_used = channel < g.cout
        saturated = []
        for c in range(g.wo):
            if self._raw:
                m.d.comb += self.o.payload.values[c].eq(array.o.payload.sums[c])
                continue
            value, sat = requantize_hw(array.o.payload.sums[c], self.acc_fmt.frac, self._out_fmt)
            m.d.comb += self.o.payload.values[c].eq(value)
            saturated.append(sat)
        m.d.comb += [
            self.o.payload.channel.eq(channel),
            self.o.payload.row.eq(array.o.payload.tag.y),
            self.o.payload.saturated.eq(sum(saturated)),
            self.o.valid.eq(array.o.valid & lane_used),
            array.o.ready.eq(self.o.ready | ~lane_used),
        ]

        m.d.comb += [
            self.busy.eq(running | s1_valid | array.busy),
            self.step.eq(array.i.valid & array.i.ready),
        ]
        return m



def pack_conv_weights(weights, bias, rows):
    """Weight-memory words of :class:`ConvEngine`: ``weights`` is ``(cout, cin, kh, kw)``.

    Word ``t * taps + (i * kh + ky) * kw + kx`` holds lanes ``W[t*rows + r, i, ky, kx]``;
    with a ``bias``, tap ``cin*kh*kw`` holds ``b[t*rows + r]``. Missing lanes are zero.
    """
    cout, cin, kh, kw = weights.shape
    tiles = -(-cout // rows)
    taps = cin * kh * kw + (0 if bias is None else 1)
    words = []
    for t in range(tiles):
        lanes = range(t * rows, t * rows + rows)
        for tap in range(taps):
            word = []
            for o in lanes:
                if o >= cout:
                    word.append(0)
                elif tap == cin * kh * kw:
                    word.append(int(bias[o]))
                else:
                    word.append(int(weights[o].reshape(-1)[tap]))
            words.append(word)
    return words


def pack_rows(feature_map):
    """Row-layout memory words (:class:`RowLayout`) of a ``(channels, h, w)`` map."""
    c, h, w = feature_map.shape
    return [[int(v) for v in feature_map[ch, y]] for ch in range(c) for y in range(h)]
