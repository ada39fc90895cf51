"""Feature-map rows as word streams, for the links between chips.

Activations go down the chain in the host's sample format (a label word, then the
map's words row-major; :class:`MapSender`), so a chip loads its input the same way
whether it comes from the host or from the chip in front. Errors come back as
they leave the BP engine, one framed row at a time (:class:`RowSerializer`:
channel, row, then the row's values; :class:`RowDeserializer` undoes it), because
the error derivative takes rows in any order.
"""

from amaranth import *
from amaranth.lib import wiring, stream, memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from .conv import RowLayout

__all__ = ["WORD", "RowSerializer", "RowDeserializer", "MapSender"]

#: The link word: one 16-bit fixed-point value, label or row header.
WORD = signed(16)



class RowSerializer(wiring.Component):
    """Rows in, words out: ``channel, row, values[0] ... values[w-1]`` per row.

    Throughput: one word per cycle, ``w + 2`` cycles per row.

    Members
    -------
    i : In(stream) of rows ``(channel, row, values)``.
    o : Out(stream.Signature(signed(16)))
    busy : Out(1)
    """

    def __init__(self, *, channels, h, w, fmt):
        self._w = w
        super().__init__({
            "i": In(RowLayout(channels, h, w, fmt).row_stream()),
            "o": Out(stream.Signature(WORD)),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        w = self._w
        held = Signal(self.i.payload.shape())
        full = Signal()
        index = Signal(range(w + 2))
        m.d.comb += self.i.ready.eq(~full)
        with m.If(self.i.valid & self.i.ready):
            m.d.sync += [held.eq(self.i.payload), full.eq(1), index.eq(0)]
        with m.Switch(index):
            with m.Case(0):
                m.d.comb += self.o.payload.eq(held.channel)
            with m.Case(1):
                m.d.comb += self.o.payload.eq(held.row)
            for x in range(w):
                with m.Case(x + 2):
                    m.d.comb += self.o.payload.eq(held.values[x])
        m.d.comb += [self.o.valid.eq(full), self.busy.eq(full)]
        with m.If(self.o.valid & self.o.ready):
            m.d.sync += index.eq(index + 1)
            with m.If(index == w + 1):
                m.d.sync += full.eq(0)
        return m


class RowDeserializer(wiring.Component):
    """Words in, rows out: the inverse of :class:`RowSerializer`.

    Members
    -------
    i : In(stream.Signature(signed(16)))
    o : Out(stream) of rows.
    busy : Out(1)
        A row is partly received or waiting to leave.
    """

    def __init__(self, *, channels, h, w, fmt):
        self._w = w
        super().__init__({
            "i": In(stream.Signature(WORD)),
            "o": Out(RowLayout(channels, h, w, fmt).row_stream()),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        w = self._w
        index = Signal(range(w + 2))
        full = Signal()
        m.d.comb += [self.i.ready.eq(~full), self.o.valid.eq(full),
                     self.busy.eq(full | (index != 0))]
        with m.If(self.i.valid & self.i.ready):
            with m.Switch(index):
                with m.Case(0):
                    m.d.sync += self.o.payload.channel.eq(self.i.payload)
                with m.Case(1):
                    m.d.sync += self.o.payload.row.eq(self.i.payload)
                for x in range(w):
                    with m.Case(x + 2):
                        m.d.sync += self.o.payload.values[x].eq(self.i.payload)
            m.d.sync += index.eq(Mux(index == w + 1, 0, index + 1))
            with m.If(index == w + 1):
                m.d.sync += full.eq(1)
        with m.If(self.o.valid & self.o.ready):
            m.d.sync += full.eq(0)
        return m


class MapSender(wiring.Component):
    """Sends a label, then a row-layout map's values row-major, as words.

    Members
    -------
    start : In(1)
    label : In(signed(16)), sampled at ``start``.
    busy : Out(1)
    rd : In(memory.ReadPort.Signature(...)) the map.
    o : Out(stream.Signature(signed(16)))

    Throughput: one word per cycle plus one cycle per row for the read.
    """

    def __init__(self, *, layout):
        self._layout = layout
        super().__init__({
            "start": In(1),
            "label": In(WORD),
            "busy": Out(1),
            "rd": In(memory.ReadPort.Signature(addr_width=ceil_log2(layout.depth),
                                               shape=layout.shape)),
            "o": Out(stream.Signature(WORD)),
        })

    def elaborate(self, platform):
        m = Module()
        layout = self._layout
        address = Signal(range(layout.depth + 1))
        x = Signal(range(layout.w))
        label = Signal(WORD)
        m.d.comb += self.rd.addr.eq(address)
        with m.FSM() as fsm:
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.sync += [label.eq(self.label), address.eq(0)]
                    m.next = "LABEL"
            with m.State("LABEL"):
                m.d.comb += [self.o.valid.eq(1), self.o.payload.eq(label)]
                with m.If(self.o.ready):
                    m.next = "ROW"          # the read of row 0 was issued this cycle
            with m.State("ROW"):
                m.d.comb += [self.rd.en.eq(0), self.o.valid.eq(1)]
                with m.Switch(x):
                    for xv in range(layout.w):
                        with m.Case(xv):
                            m.d.comb += self.o.payload.eq(self.rd.data[xv])
                with m.If(self.o.ready):
                    m.d.sync += x.eq(x + 1)
                    with m.If(x == layout.w - 1):
                        m.d.sync += [x.eq(0), address.eq(address + 1)]
                        with m.If(address == layout.depth - 1):
                            m.next = "IDLE"
                        with m.Else():
                            m.next = "READ"
            with m.State("READ"):
                m.next = "ROW"
        m.d.comb += self.busy.eq(~fsm.ongoing("IDLE"))
        return m
