"""Weight update: per-sample weight gradients, their batch sums, and the SGD step."""

from dataclasses import dataclass

from amaranth import *
from amaranth.lib import wiring, stream, data, memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from .conv import ConvGeometry, RowLayout
from .numerics import FixedFormat, check_accumulator, saturate_hw, shift_round_hw, requantize_hw
from .systolic import SystolicArray

__all__ = ["LaneLayout", "WeightGradientEngine", "WeightUpdateUnit", "pack_lanes",
           "gradient_index_count"]


@dataclass(frozen=True)
class LaneLayout:
    """A feature map stored pixel-major, ``lanes`` channels per word.

    Word ``(t * h + y) * w + x`` holds channels ``t*lanes ... t*lanes + lanes - 1``
    of pixel ``(y, x)``: one word is one step's row operand of the WU array.
    """
    channels: int
    h: int
    w: int
    lanes: int
    fmt: FixedFormat

    @property
    def tiles(self):
        return -(-self.channels // self.lanes)

    @property
    def depth(self):
        return self.tiles * self.h * self.w

    @property
    def shape(self):
        return data.ArrayLayout(self.fmt.shape, self.lanes)

    def address(self, tile, y, x):
        return (tile * self.h + y) * self.w + x


def pack_lanes(feature_map, lanes):
    """Words of a :class:`LaneLayout` memory holding a ``(channels, h, w)`` map."""
    c, h, w = feature_map.shape
    tiles = -(-c // lanes)
    words = []
    for t in range(tiles):
        for y in range(h):
            for x in range(w):
                words.append([int(feature_map[t * lanes + r, y, x]) if t * lanes + r < c else 0
                              for r in range(lanes)])
    return words


def gradient_index_count(geometry):
    """Gradient rows per output channel: ``(i, ky)`` pairs plus one for the bias."""
    return geometry.cin * geometry.kh + 1


class WeightGradientEngine(wiring.Component):
    """Computes one sample's weight and bias gradient sums of a conv (or FC) layer.

    ``grad[o, i, ky, kx] = sum_{y, x} e[o, y, x] * in[i, y+ky-ph, x+kx-pw]`` and
    ``grad_b[o] = sum e[o, y, x] * 1.0``, exactly.

    The engine is a :class:`SystolicArray` of ``rows`` × ``kw`` PEs: rows are
    output channels, columns are the kernel columns ``kx``. A tile is one
    ``(i, ky)`` (or the bias) for ``rows`` output channels; its steps walk the
    output pixels ``(y, x)`` whose input row is in range. Each step feeds the
    errors of ``rows`` channels at one pixel (one word of a :class:`LaneLayout`
    memory) down the rows and ``kw`` neighbouring input pixels across the columns.
    A tile of ``valid_rows * wo`` steps thus yields ``rows * kw`` gradient sums.

    Members
    -------
    start : In(1)
    busy : Out(1)
    e_rd : In(memory.ReadPort.Signature(shape=ArrayLayout(error, rows)))
        Errors at the layer's output, :class:`LaneLayout`.
    x_rd : In(memory.ReadPort.Signature(shape=ArrayLayout(act, w)))
        The layer's input, :class:`RowLayout`.
    o : Out(stream.Signature(StructLayout({"channel", "index", "sums": ArrayLayout(signed(acc), kw)})))
        Gradient sums of output channel ``channel`` and row ``index = i * kh + ky``
        (``cin * kh`` for the bias, in ``sums[0]``).
    """

    def __init__(self, *, geometry, rows, act_fmt, error_fmt, acc_width=48):
        if not isinstance(rows, int) or rows < 1:
            raise ValueError(f"rows must be a positive int, not {rows!r}")
        self._g, self._rows = geometry, rows
        self._act_fmt, self._error_fmt, self._acc_width = act_fmt, error_fmt, acc_width
        g = geometry
        self.e_layout = LaneLayout(g.cout, g.ho, g.wo, rows, error_fmt)
        self.x_layout = RowLayout(g.cin, g.h, g.w, act_fmt)
        self.tiles = self.e_layout.tiles
        super().__init__({
            "start": In(1),
            "busy": Out(1),
            "e_rd": In(memory.ReadPort.Signature(
                addr_width=ceil_log2(self.e_layout.depth), shape=self.e_layout.shape)),
            "x_rd": In(memory.ReadPort.Signature(
                addr_width=ceil_log2(self.x_layout.depth), shape=self.x_layout.shape)),
            "o": Out(stream.Signature(data.StructLayout({
                "channel": range(g.cout),
                "index": range(gradient_index_count(g)),
                "sums": data.ArrayLayout(signed(acc_width), g.kw),
            }))),
        })

    @property
    def array_shape(self):
        return (self._rows, self._g.kw)

    def elaborate(self, platform):
        m = Module()
        g, rows = self._g, self._rows
        check_accumulator(g.ho * g.wo, max(self._act_fmt.width, self._error_fmt.width),
                          self._acc_width, what=f"weight-gradient engine {g}")
        m.submodules.array = array = SystolicArray(
            rows=rows, cols=g.kw, a_shape=self._error_fmt.shape, b_shape=self._act_fmt.shape,
            acc_width=self._acc_width)

        bias_index = g.cin * g.kh
        t = Signal(range(max(2, self.tiles)))
        i = Signal(range(max(2, g.cin + 1)))
        ky = Signal(range(max(2, g.kh)))
        y = Signal(range(max(2, g.ho)))
        x = Signal(range(max(2, g.wo)))
        at_bias = Signal()
        running = Signal()

        # Output rows whose input row y + ky - ph is in range (all rows for the bias).
        y_lo = Signal.like(y)
        y_hi = Signal.like(y)
        m.d.comb += [
            y_lo.eq(Mux(at_bias | (ky >= g.ph), 0, g.ph - ky)),
            y_hi.eq(Mux(at_bias | (g.h - 1 + g.ph - ky >= g.ho - 1), g.ho - 1,
                        g.h - 1 + g.ph - ky)),
        ]
        tile_last = (y == y_hi) & (x == g.wo - 1)

        s1_valid = Signal()
        s1_bias = Signal()
        s1_x = Signal.like(x)
        s1_last = Signal()
        advance = ~s1_valid | array.i.ready
        m.d.comb += [
            self.e_rd.en.eq(advance),
            self.x_rd.en.eq(advance),
            self.e_rd.addr.eq((t * g.ho + y) * g.wo + x),
            self.x_rd.addr.eq(i * g.h + y + ky - g.ph),
        ]

        index = Mux(at_bias, bias_index, i * g.kh + ky)
        issue_t = Signal.like(t)
        issue_index = Signal(range(bias_index + 1))
        drain_t = Signal.like(t)
        drain_index = Signal.like(issue_index)

        def first_row(ky_value):
            return max(0, g.ph - ky_value)

        with m.If(advance):
            m.d.sync += [
                s1_valid.eq(running),
                s1_bias.eq(at_bias),
                s1_x.eq(x),
                s1_last.eq(tile_last),
                issue_t.eq(t),
                issue_index.eq(index),
            ]
            with m.If(running):
                with m.If(tile_last):
                    m.d.sync += x.eq(0)
                    with m.If(at_bias):
                        m.d.sync += [at_bias.eq(0), i.eq(0), ky.eq(0), y.eq(first_row(0))]
                        with m.If(t == self.tiles - 1):
                            m.d.sync += [t.eq(0), running.eq(0)]
                        with m.Else():
                            m.d.sync += t.eq(t + 1)
                    with m.Elif(ky == g.kh - 1):
                        m.d.sync += [ky.eq(0), i.eq(i + 1), y.eq(first_row(0))]
                        with m.If(i == g.cin - 1):
                            m.d.sync += [at_bias.eq(1), y.eq(0)]
                    with m.Else():
                        m.d.sync += ky.eq(ky + 1)
                        with m.Switch(ky):
                            for value in range(g.kh - 1):
                                with m.Case(value):
                                    m.d.sync += y.eq(first_row(value + 1))
                with m.Elif(x == g.wo - 1):
                    m.d.sync += [x.eq(0), y.eq(y + 1)]
                with m.Else():
                    m.d.sync += x.eq(x + 1)
        with m.If(self.start & ~self.busy):
            m.d.sync += [running.eq(1), t.eq(0), i.eq(0), ky.eq(0), y.eq(first_row(0)),
                         x.eq(0), at_bias.eq(0)]

        # The kw input pixels x - pw ... x - pw + kw - 1 of the row, zero outside.
        x_row = self.x_rd.data
        with m.Switch(s1_x):
            for xv in range(g.wo):
                with m.Case(xv):
                    for c in range(g.kw):
                        src = xv + c - g.pw
                        m.d.comb += array.i.payload.b[c].eq(x_row[src] if 0 <= src < g.w else 0)
        with m.If(s1_bias):
            for c in range(g.kw):
                m.d.comb += array.i.payload.b[c].eq(self._act_fmt.one if c == 0 else 0)
        m.d.comb += [
            array.i.payload.a.eq(self.e_rd.data),
            array.i.payload.last.eq(s1_last),
            array.i.valid.eq(s1_valid),
        ]
        with m.If(array.i.valid & array.i.ready & s1_last):
            m.d.sync += [drain_t.eq(issue_t), drain_index.eq(issue_index)]

        channel = drain_t * rows + array.o.payload.row
        lane_used = channel < g.cout
        m.d.comb += [
            self.o.payload.channel.eq(channel),
            self.o.payload.index.eq(drain_index),
            self.o.payload.sums.eq(array.o.payload.sums),
            self.o.valid.eq(array.o.valid & lane_used),
            array.o.ready.eq(self.o.ready | ~lane_used),
        ]
        m.d.comb += self.busy.eq(running | s1_valid | array.busy)
        return m
