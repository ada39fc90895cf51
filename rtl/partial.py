"""Adding the partial sums of a layer split by output channels across chips.

When a layer's output channels are split over consecutive chips ``g_0 .. g_{m-1}``,
each chip's BP engine (a raw :class:`~fpdeep.rtl.conv.ConvEngine` on the transposed
geometry) sums over its own slice only. The error at the layer's input is the
requantized sum of all the slices' sums, so the slices travel up the chain as exact
accumulator rows and are added before the one requantization, on ``g_0``:
``g_{m-1}`` sends its raw rows; each chip in between adds its raw rows to the ones
that arrived and sends the sums on; ``g_0`` adds and requantizes
(:class:`PartialSum`). Since a sum is exact whatever the order of its terms, the
result equals the unsplit engine's bit for bit.
"""

from amaranth import *
from amaranth.lib import wiring, stream, data, memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from .conv import RowLayout
from .numerics import FixedFormat, requantize_hw

__all__ = ["PartialSum"]


class PartialSum(wiring.Component):
    """Adds this chip's raw partial rows to those that came from downstream.

    For each row on ``i`` (channel ``c``, row ``y``) the block reads the incoming
    partial sums at address ``c * h + y`` of a :class:`RowLayout` memory, adds them
    value by value, and emits the row either raw, to be sent further up, or
    requantized into ``out_fmt`` exactly as :class:`~fpdeep.rtl.conv.ConvEngine` would
    (:func:`~fpdeep.rtl.numerics.requantize_hw` with ``layout.fmt.frac`` fraction bits
    of the sum).

    Rows come in stream order (:meth:`RowLayout.stream_order`), on ``i`` and in the
    memory alike, map after map: the ``n``-th row on ``i`` waits until ``rows_in``
    shows the ``n``-th incoming row written, so this chip's BP can run while the
    chip behind is still sending its sums.

    The raw sum is exact if the whole layer's sum fits ``layout.fmt.width`` bits, which
    :func:`~fpdeep.rtl.numerics.check_accumulator` over the unsplit layer proves (each
    chip's engine only checks its own slice). The requantized sum is exact regardless:
    it is formed one bit wider.

    Throughput and latency
    ----------------------
    One row per cycle. A row accepted on ``i`` in cycle ``n`` is offered on ``o``
    in cycle ``n + 2``: the memory is read in cycle ``n`` (the read port's ``en`` is
    driven, so its data holds while the pipeline stalls), the sum is registered in
    cycle ``n + 1`` and requantized combinationally from that register. While ``o``
    is stalled with a row waiting, ``i`` is not ready.

    Parameters
    ----------
    layout : RowLayout
        The raw rows: channels, ``h``, ``w`` and the accumulator format (the width
        of the sums and their fraction bits; :attr:`ConvEngine.acc_fmt`).
    incoming : bool
        Add the rows of the ``rd`` memory. Without it ``o`` passes ``i`` on (requantized
        if asked), two cycles later.
    requantize : bool
        Emit rows in ``out_fmt`` with a saturation count, instead of raw sums.
    out_fmt : FixedFormat or None
        The output format with ``requantize``; must be ``None`` without.

    Members
    -------
    i : In(stream.Signature(StructLayout({"channel": range(channels), "row": range(h), "values": ArrayLayout(layout.fmt.shape, w)})))
        This chip's raw rows (``layout.row_stream()``).
    rd : In(memory.ReadPort.Signature(addr_width=ceil_log2(channels * h), shape=layout.shape))
        The incoming partial sums, only with ``incoming``.
    rows_in : In(range(channels * h + 1)), all by default; only with ``incoming``
        Incoming rows written so far in this map, in stream order (0 as a map begins).
    o : Out(stream.Signature(StructLayout({"channel", "row", "values"})))
        Raw sums as ``layout.row_stream()``, or with ``requantize`` rows of
        ``values: ArrayLayout(out_fmt.shape, w)`` and ``saturated: range(w + 1)``, the
        layout of :class:`ConvEngine`'s output.
    busy : Out(1)
        A row is in the pipeline.

    Raises
    ------
    TypeError
        If ``layout`` is not a :class:`RowLayout` or ``out_fmt`` not a :class:`FixedFormat`.
    ValueError
        If ``out_fmt`` is given without ``requantize`` or missing with it.
    """

    def __init__(self, *, layout, incoming, requantize, out_fmt=None):
        if not isinstance(layout, RowLayout):
            raise TypeError(f"layout must be a RowLayout, not {layout!r}")
        if requantize and not isinstance(out_fmt, FixedFormat):
            raise TypeError(f"out_fmt must be a FixedFormat with requantize, not {out_fmt!r}")
        if not requantize and out_fmt is not None:
            raise ValueError("out_fmt is only used with requantize")
        self._layout, self._incoming = layout, bool(incoming)
        self._requantize, self._out_fmt = bool(requantize), out_fmt
        members = {"i": In(layout.row_stream())}
        if self._incoming:
            members["rd"] = In(memory.ReadPort.Signature(
                addr_width=ceil_log2(layout.depth), shape=layout.shape))
            members["rows_in"] = In(range(layout.depth + 1), init=layout.depth)
        if self._requantize:
            members["o"] = Out(stream.Signature(data.StructLayout({
                "channel": range(layout.channels),
                "row": range(layout.h),
                "values": data.ArrayLayout(out_fmt.shape, layout.w),
                "saturated": range(layout.w + 1),
            })))
        else:
            members["o"] = Out(layout.row_stream())
        members["busy"] = Out(1)
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        layout = self._layout
        width = layout.fmt.width

        # One stall signal for both stages: everything moves when o has room.
        s1_valid, s2_valid = Signal(), Signal()
        s1 = Signal(self.i.payload.shape())
        s2_channel, s2_row = Signal.like(s1.channel), Signal.like(s1.row)
        s2_sums = Signal(data.ArrayLayout(signed(width + 1), layout.w))
        advance = ~s2_valid | self.o.ready
        take = Signal()
        m.d.comb += [self.i.ready.eq(advance), take.eq(self.i.valid)]

        if self._incoming:
            # The n-th row of a map waits for the n-th incoming row.
            taken = Signal(range(layout.depth))
            m.d.comb += [self.i.ready.eq(advance & (taken < self.rows_in)),
                         take.eq(self.i.valid & (taken < self.rows_in))]
            with m.If(self.i.valid & self.i.ready):
                m.d.sync += taken.eq(Mux(taken == layout.depth - 1, 0, taken + 1))
            m.d.comb += [
                self.rd.addr.eq(self.i.payload.channel * layout.h + self.i.payload.row),
                self.rd.en.eq(advance),
            ]
        with m.If(advance):
            m.d.sync += [
                s1_valid.eq(take),
                s1.eq(self.i.payload),
                s2_valid.eq(s1_valid),
                s2_channel.eq(s1.channel),
                s2_row.eq(s1.row),
            ]
            for x in range(layout.w):
                incoming = self.rd.data[x] if self._incoming else 0
                m.d.sync += s2_sums[x].eq(s1.values[x] + incoming)

        m.d.comb += [
            self.o.valid.eq(s2_valid),
            self.o.payload.channel.eq(s2_channel),
            self.o.payload.row.eq(s2_row),
            self.busy.eq(s1_valid | s2_valid),
        ]
        if self._requantize:
            saturated = []
            for x in range(layout.w):
                value, sat = requantize_hw(s2_sums[x], layout.fmt.frac, self._out_fmt)
                m.d.comb += self.o.payload.values[x].eq(value)
                saturated.append(sat)
            m.d.comb += self.o.payload.saturated.eq(sum(saturated))
        else:
            for x in range(layout.w):
                m.d.comb += self.o.payload.values[x].eq(s2_sums[x])
        return m
