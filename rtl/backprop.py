"""Error back-propagation: the transposed-convolution engine and the post-op derivatives.

BP of a conv or FC layer is the convolution of its output errors with the
transposed, flipped kernel (:meth:`ConvGeometry.transposed`). It runs on its own
:class:`~fpdeep.rtl.conv.ConvEngine` rather than time-sharing the FP array: the
chip's engines are sized by the planner to take equal cycles per sample so
that, pipelined, FP of one sample overlaps BP and WU of others. The BP engine
reads a transposed 16-bit weight copy that the
:class:`~fpdeep.rtl.weight_update.WeightUpdateUnit` rewrites after every SGD step,
so neither engine needs a second port or a transposing crossbar on the same memory.

The errors then pass back through the post-ops of the layer in front:
:class:`ErrorDerivative` routes each pooled error to the winner of its 2x2 window
(recomputed from the stored activations, first maximum wins) and multiplies by
the ReLU derivative; :class:`ErrorStore` writes the result in the two layouts
its consumers read.
"""

from amaranth import *
from amaranth.lib import wiring, data, memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from .conv import RowLayout
from .weight_update import LaneLayout

__all__ = ["ErrorDerivative", "ErrorStore"]



class ErrorDerivative(wiring.Component):
    """Takes errors at a layer's post-op output back to its conv output.

    Parameters
    ----------
    channels, h, w : int
        The conv output map (before pooling).
    act_fmt, error_fmt : FixedFormat
    relu, pool : bool

    Members
    -------
    i : In(stream) rows of the error after the post-ops (``h/2 x w/2`` with ``pool``).
    o : Out(stream) rows of the error at the conv output, ``h x w``.
    full_rd0, full_rd1 : In(memory.ReadPort.Signature(...))
        The stored post-ReLU activations (:class:`~fpdeep.rtl.activation.ActivationWriter`);
        ``full_rd1`` only with ``pool``. Not present when there are no post-ops.

    Throughput: one input row per ``1 + output rows`` cycles at most.
    """

    def __init__(self, *, channels, h, w, act_fmt, error_fmt, relu, pool):
        self._c, self._h, self._w = channels, h, w
        self._act_fmt, self._error_fmt, self._relu, self._pool = act_fmt, error_fmt, relu, pool
        ih, iw = (h // 2, w // 2) if pool else (h, w)
        self.full_layout = RowLayout(channels, h, w, act_fmt)
        members = {
            "i": In(RowLayout(channels, ih, iw, error_fmt).row_stream()),
            "o": Out(RowLayout(channels, h, w, error_fmt).row_stream()),
        }
        port = memory.ReadPort.Signature(addr_width=ceil_log2(self.full_layout.depth),
                                         shape=self.full_layout.shape)
        if relu or pool:
            members["full_rd0"] = In(port)
        if pool:
            members["full_rd1"] = In(port)
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        w, h = self._w, self._h
        if not (self._relu or self._pool):
            wiring.connect(m, wiring.flipped(self.i), wiring.flipped(self.o))
            return m

        rows_out = 2 if self._pool else 1
        # Stage: a taken input row waits one cycle for the activation rows, then its
        # output rows leave one per transfer.
        loaded = Signal()
        emitting = Signal()
        out_index = Signal(range(2))
        channel = Signal(range(self._c))
        in_row = Signal(range(h))
        errors = Signal(self.i.payload.values.shape())
        m.d.comb += self.i.ready.eq(~loaded & ~emitting)
        first_full_row = self.i.payload.row * rows_out
        m.d.comb += [
            self.full_rd0.addr.eq(self.i.payload.channel * h + first_full_row),
            self.full_rd0.en.eq(self.i.ready),
        ]
        if self._pool:
            m.d.comb += [
                self.full_rd1.addr.eq(self.i.payload.channel * h + first_full_row + 1),
                self.full_rd1.en.eq(self.i.ready),
            ]
        with m.If(self.i.valid & self.i.ready):
            m.d.sync += [loaded.eq(1), channel.eq(self.i.payload.channel),
                         in_row.eq(self.i.payload.row), errors.eq(self.i.payload.values)]

        # Output rows, computed from the held activation rows.
        acts = [self.full_rd0.data] + ([self.full_rd1.data] if self._pool else [])
        out_rows = [Signal(data.ArrayLayout(self._error_fmt.shape, w), name=f"out_row{k}")
                    for k in range(rows_out)]
        result = [Signal(data.ArrayLayout(self._error_fmt.shape, w), name=f"held_row{k}")
                  for k in range(rows_out)]
        if self._pool:
            for x in range(w // 2):
                window = [acts[0][2 * x], acts[0][2 * x + 1], acts[1][2 * x], acts[1][2 * x + 1]]
                # Strict > keeps the first of equal maxima, as the reference does.
                best, winner = window[0], C(0, 2)
                for k in range(1, 4):
                    better = window[k] > best
                    best = Mux(better, window[k], best)
                    winner = Mux(better, k, winner)
                for k, (dy, dx) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
                    keep = (winner == k) & ((window[k] > 0) if self._relu else 1)
                    m.d.comb += out_rows[dy][2 * x + dx].eq(Mux(keep, errors[x], 0))
        else:
            for x in range(w):
                m.d.comb += out_rows[0][x].eq(Mux(acts[0][x] > 0, errors[x], 0))

        with m.If(loaded):
            m.d.sync += [loaded.eq(0), emitting.eq(1), out_index.eq(0)]
            for k in range(rows_out):
                m.d.sync += result[k].eq(out_rows[k])
        m.d.comb += [
            self.o.valid.eq(emitting),
            self.o.payload.channel.eq(channel),
            self.o.payload.row.eq(in_row * rows_out + out_index),
            self.o.payload.values.eq(result[0] if rows_out == 1
                                     else Mux(out_index, result[1], result[0])),
        ]
        with m.If(self.o.valid & self.o.ready):
            m.d.sync += out_index.eq(out_index + 1)
            with m.If(out_index == rows_out - 1):
                m.d.sync += emitting.eq(0)
        return m


class ErrorStore(wiring.Component):
    """Writes error rows in a row layout (for BP) and a lane layout (for WU).

    Each row goes to both memories in the cycle it arrives: the :class:`RowLayout`
    word of its channel and row (if there is one), and its lane of the
    :class:`LaneLayout` word of its row. Throughput one row per cycle, never stalls.

    Parameters
    ----------
    channels, h, w : int
    fmt : FixedFormat
    lanes : int
        Lanes of the WU engine that reads the lane layout.
    rows : bool
        Also keep the row layout (layers that have BP).

    Members
    -------
    i : In(stream) error rows.
    lane_wr : In(memory.WritePort.Signature(..., granularity=w))
    row_wr : In(memory.WritePort.Signature(...)), only with ``rows``.
    clear : In(1)
        Pulse before a new map: :attr:`rows_ready` returns to 0.
    rows_ready : Out(range(h + 1))
        Rows ``0 .. rows_ready - 1`` of every channel are written (readable from
        this cycle on). Rows come row by row, each channel's in order (BP engines
        emit stream order; a max-pool derivative turns a row into two), so a row
        is complete once the last channel's is written.
    """

    def __init__(self, *, channels, h, w, fmt, lanes, rows):
        self._c, self._h, self._w, self._lanes = channels, h, w, lanes
        self.lane_layout = LaneLayout(channels, h, w, lanes, fmt)
        self.row_layout = RowLayout(channels, h, w, fmt)
        members = {
            "i": In(RowLayout(channels, h, w, fmt).row_stream()),
            "lane_wr": In(memory.WritePort.Signature(
                addr_width=ceil_log2(self.lane_layout.depth), shape=self.lane_layout.shape,
                granularity=w)),
        }
        if rows:
            members["row_wr"] = In(memory.WritePort.Signature(
                addr_width=ceil_log2(self.row_layout.depth), shape=self.row_layout.shape))
        self._rows = rows
        members["clear"] = In(1)
        members["rows_ready"] = Out(range(h + 1))
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        w, h, lanes = self._w, self._h, self._lanes
        take = self.i.valid
        channel, row = self.i.payload.channel, self.i.payload.row
        m.d.comb += self.i.ready.eq(1)
        if self._rows:
            m.d.comb += [
                self.row_wr.addr.eq(channel * h + row),
                self.row_wr.en.eq(take),
                self.row_wr.data.eq(self.i.payload.values),
            ]
        m.d.comb += [
            self.lane_wr.addr.eq((channel // lanes) * h + row),
            self.lane_wr.en.eq(Mux(take, 1 << (channel % lanes), 0)),
        ]
        for r in range(lanes):
            for x in range(w):
                m.d.comb += self.lane_wr.data[r * w + x].eq(self.i.payload.values[x])
        with m.If(self.clear):
            m.d.sync += self.rows_ready.eq(0)
        with m.Elif(take & (channel == self._c - 1)):
            m.d.sync += self.rows_ready.eq(row + 1)
        return m
