"""FP post-ops of a conv engine: ReLU and 2x2 max-pool on output rows as they stream out."""

from amaranth import *
from amaranth.lib import wiring, data, memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from .conv import RowLayout

__all__ = ["ActivationWriter"]


class ActivationWriter(wiring.Component):
    """Stores a layer's output rows, applying ReLU and 2x2 max-pool on the way.

    Every row is written to the ``full`` map (post-ReLU), which BP later reads for
    the ReLU derivative and the max-pool routing. With ``pool``, an odd row ``y`` is
    paired with row ``y - 1`` read back from ``full`` and the pooled row
    ``y // 2`` is written to ``pooled``: the next layer's input. Without ``pool``,
    ``full`` itself is the next layer's input.

    Throughput one row per cycle; a pooled row is written one cycle after its odd row.

    Parameters
    ----------
    channels, h, w : int
        The layer's output map.
    fmt : FixedFormat
    relu, pool : bool

    Members
    -------
    i : In(stream.Signature(StructLayout({"channel", "row", "values": ArrayLayout(fmt, w)})))
    full_wr : In(memory.WritePort.Signature(...))
        Row-layout ``(channels, h, w)``.
    full_rd : In(memory.ReadPort.Signature(...))
        Same memory, to pair rows for pooling (unused without ``pool``).
    pooled_wr : In(memory.WritePort.Signature(...))
        Row-layout ``(channels, h/2, w/2)``; only with ``pool``.
    clear : In(1)
        Pulse as a new map begins: :attr:`rows_ready` returns to 0.
    rows_ready : Out(range(rows + 1))
        Rows ``0 .. rows_ready - 1`` of every channel of the next layer's input (the
        pooled map with ``pool``, else ``full``) are written, and readable from the
        cycle this shows them. Rows arrive row by row, channels in order
        (:meth:`RowLayout.stream_order`, as :class:`~fpdeep.rtl.conv.ConvEngine`
        emits them), so a row is complete once its last channel is written.
    """

    def __init__(self, *, channels, h, w, fmt, relu, pool):
        self._c, self._h, self._w, self._fmt = channels, h, w, fmt
        self._relu, self._pool = relu, pool
        self.full_layout = RowLayout(channels, h, w, fmt)
        members = {
            "i": In(self.full_layout.row_stream()),
            "full_wr": In(memory.WritePort.Signature(
                addr_width=ceil_log2(self.full_layout.depth), shape=self.full_layout.shape)),
        }
        if pool:
            if h % 2 or w % 2:
                raise ValueError(f"2x2 max-pool needs an even map, not {h}x{w}")
            self.pooled_layout = RowLayout(channels, h // 2, w // 2, fmt)
            members["full_rd"] = In(memory.ReadPort.Signature(
                addr_width=ceil_log2(self.full_layout.depth), shape=self.full_layout.shape))
            members["pooled_wr"] = In(memory.WritePort.Signature(
                addr_width=ceil_log2(self.pooled_layout.depth), shape=self.pooled_layout.shape))
        else:
            self.pooled_layout = None
        rows = h // 2 if pool else h
        members["clear"] = In(1)
        members["rows_ready"] = Out(range(rows + 1))
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        w = self._w
        m.d.comb += self.i.ready.eq(1)
        take = self.i.valid
        values = [Mux((self.i.payload.values[x] < 0) if self._relu else 0, 0,
                      self.i.payload.values[x]) for x in range(w)]
        m.d.comb += [
            self.full_wr.addr.eq(self.i.payload.channel * self._h + self.i.payload.row),
            self.full_wr.en.eq(take),
        ]
        for x in range(w):
            m.d.comb += self.full_wr.data[x].eq(values[x])
        last_channel = self.i.payload.channel == self._c - 1
        if not self._pool:
            with m.If(self.clear):
                m.d.sync += self.rows_ready.eq(0)
            with m.Elif(take & last_channel):
                m.d.sync += self.rows_ready.eq(self.i.payload.row + 1)
            return m

        # Pair an odd row with the even row above it, read back from `full`.
        m.d.comb += self.full_rd.addr.eq(self.i.payload.channel * self._h + self.i.payload.row - 1)
        pending = Signal()
        pending_last = Signal()         # ... of the row's last channel
        below = Signal(data.ArrayLayout(self._fmt.shape, w))
        pooled_row = Signal(range(self._h // 2))
        pooled_addr = Signal.like(self.pooled_wr.addr)
        m.d.sync += [pending.eq(take & self.i.payload.row[0]),
                     pending_last.eq(take & self.i.payload.row[0] & last_channel),
                     pooled_row.eq(self.i.payload.row >> 1),
                     pooled_addr.eq(self.i.payload.channel * (self._h // 2)
                                    + (self.i.payload.row >> 1))]
        with m.If(self.clear):
            m.d.sync += self.rows_ready.eq(0)
        with m.Elif(pending_last):
            m.d.sync += self.rows_ready.eq(pooled_row + 1)
        for x in range(w):
            m.d.sync += below[x].eq(values[x])
        above = self.full_rd.data
        m.d.comb += [self.pooled_wr.addr.eq(pooled_addr), self.pooled_wr.en.eq(pending)]
        for x in range(w // 2):
            candidates = [above[2 * x], above[2 * x + 1], below[2 * x], below[2 * x + 1]]
            best = candidates[0]
            for value in candidates[1:]:
                best = Mux(value > best, value, best)
            m.d.comb += self.pooled_wr.data[x].eq(best)
        return m
