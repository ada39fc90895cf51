"""Virtual channels: round-robin arbitration, per-channel credits and receive FIFOs.

Each virtual channel (VC) has its own credit counter at the sender and its own
receive FIFO at the receiver. The sender only picks a VC that has both a word waiting
and a credit, so a VC whose consumer stalls runs out of credits and simply stops
being picked; it never holds up another VC, and no receive FIFO can overflow.
"""

import enum

from amaranth import *
from amaranth.lib import wiring, stream, data, fifo
from amaranth.lib.wiring import In, Out

__all__ = ["VirtualChannel", "RoundRobin", "CreditCounter", "ReceiveBuffers"]


class VirtualChannel(enum.IntEnum):
    """The chip's virtual channels, by index."""
    ACT = 0     #: activations, forward
    ERR = 1     #: errors (gradients w.r.t. activations), backward
    WGT = 2     #: weights streamed from a neighbour's spare memory, and their updates
    CTL = 3     #: control and host traffic


class RoundRobin(wiring.Component):
    """Combinational round-robin choice among ``count`` requesters.

    ``grant`` is the first requester after the one last taken, in cyclic order.

    Parameters
    ----------
    count : int
        Number of requesters, at least 1.

    Members
    -------
    requests : In(count)
        One bit per requester.
    grant : Out(range(count))
        The chosen requester, valid when ``valid``.
    valid : Out(1)
        Some requester is asking.
    take : In(1)
        The grant is used this cycle; the next choice starts after it.

    Zero latency; one grant per cycle.
    """

    def __init__(self, count):
        if not isinstance(count, int) or count < 1:
            raise ValueError(f"count must be a positive integer, not {count!r}")
        self._count = count
        super().__init__({
            "requests": In(count),
            "grant": Out(range(count)),
            "valid": Out(1),
            "take": In(1),
        })

    def elaborate(self, platform):
        m = Module()
        n = self._count
        last = Signal(range(n), init=n - 1)
        m.d.comb += self.valid.eq(self.requests.any())
        # Scan from the highest priority down, so the highest-priority hit is assigned last.
        with m.Switch(last):
            for prev in range(n):
                with m.Case(prev):
                    for step in reversed(range(1, n + 1)):
                        candidate = (prev + step) % n
                        with m.If(self.requests[candidate]):
                            m.d.comb += self.grant.eq(candidate)
        with m.If(self.take & self.valid):
            m.d.sync += last.eq(self.grant)
        return m


class CreditCounter(wiring.Component):
    """Sender-side credit account for one virtual channel.

    Counts words sent (``consume``) and the receiver's cumulative count of words freed
    (``update``/``freed``), both modulo ``2**width``. Their difference, the words the
    receiver may still hold, never exceeds ``depth``, so the receive FIFO of that
    depth never overflows. An update that would move ``freed`` backwards or past the
    words sent is ignored: it can only be stale.

    Parameters
    ----------
    depth : int
        Receiver FIFO depth in words (the initial credit), at least 1.
    width : int
        Counter width; needs ``2**width > depth``.

    Members
    -------
    consume : In(1)
        One word is sent this cycle. Only assert while ``available``.
    update : In(1)
        ``freed`` carries a new report from the receiver.
    freed : In(width)
        Words the receiver has freed since reset, modulo ``2**width``.
    available : Out(1)
        At least one credit is left. Registered: not affected by this cycle's inputs.
    credits : Out(range(depth + 1))
        Credits left.
    sent : Out(width)
        Words sent since reset, modulo ``2**width`` (for observation and formal checks).
    returned : Out(width)
        The freed count last accepted from the receiver (ditto).
    """

    def __init__(self, *, depth, width):
        if not isinstance(depth, int) or depth < 1:
            raise ValueError(f"depth must be a positive integer, not {depth!r}")
        if not isinstance(width, int) or (1 << width) <= depth:
            raise ValueError(f"width must satisfy 2**width > depth ({depth}), not {width!r}")
        self._depth, self._width = depth, width
        super().__init__({
            "consume": In(1),
            "update": In(1),
            "freed": In(width),
            "available": Out(1),
            "credits": Out(range(depth + 1)),
            "sent": Out(width),
            "returned": Out(width),
        })

    def elaborate(self, platform):
        m = Module()
        sent, freed = self.sent, self.returned
        outstanding = Signal(self._width)
        m.d.comb += [
            outstanding.eq(sent - freed),
            self.credits.eq(self._depth - outstanding),
            self.available.eq(outstanding < self._depth),
        ]
        with m.If(self.consume):
            m.d.sync += sent.eq(sent + 1)
        # (sent - new) <= (sent - freed): the new report lies in [freed, sent].
        with m.If(self.update & ((sent - self.freed)[:self._width] <= outstanding)):
            m.d.sync += freed.eq(self.freed)
        return m


class ReceiveBuffers(wiring.Component):
    """Per-VC receive FIFOs behind the link receiver, with freed-word counters for credits.

    Parameters
    ----------
    vcs : int
        Number of virtual channels.
    word_width : int
        Payload word width.
    depth : int
        FIFO depth per VC, in words (equal to the sender's credits).
    credit_width : int
        Width of the ``freed`` counters.

    Members
    -------
    i : In(stream.Signature(StructLayout({"vc", "word"})))
        In-order, checked words from the link receiver. ``ready`` is that VC's FIFO
        having room, which credit flow control guarantees; ``overflow`` latches if a
        word is ever offered to a full FIFO.
    o : Out(stream.Signature(word_width)).array(vcs)
        One output stream per VC.
    freed : Out(data.ArrayLayout(credit_width, vcs))
        Words taken from each FIFO since reset, modulo ``2**credit_width``.
    overflow : Out(1)
        Sticky: a word arrived for a full FIFO (a protocol bug; never expected).

    Latency is one cycle from ``i`` to ``o`` (``SyncFIFOBuffered``); each FIFO moves one
    word per cycle in and out, all VCs in parallel on the output side.
    """

    def __init__(self, *, vcs, word_width, depth, credit_width):
        if not isinstance(vcs, int) or vcs < 1:
            raise ValueError(f"vcs must be a positive integer, not {vcs!r}")
        if not isinstance(depth, int) or depth < 2:
            raise ValueError(f"depth must be an integer of at least 2, not {depth!r}")
        self._vcs, self._word_width, self._depth = vcs, word_width, depth
        self._credit_width = credit_width
        super().__init__({
            "i": In(stream.Signature(self.entry_layout(vcs, word_width))),
            "o": Out(stream.Signature(word_width)).array(vcs),
            "freed": Out(data.ArrayLayout(credit_width, vcs)),
            "overflow": Out(1),
        })

    @staticmethod
    def entry_layout(vcs, word_width):
        """Layout of one received word tagged with its VC."""
        return data.StructLayout({
            "vc": unsigned(max(1, (vcs - 1).bit_length())),
            "word": unsigned(word_width),
        })

    def elaborate(self, platform):
        m = Module()
        for v in range(self._vcs):
            buf = m.submodules[f"fifo{v}"] = fifo.SyncFIFOBuffered(
                width=self._word_width, depth=self._depth)
            selected = self.i.p.vc == v
            m.d.comb += [
                buf.w_data.eq(self.i.p.word),
                buf.w_en.eq(self.i.valid & selected),
                self.o[v].payload.eq(buf.r_data),
                self.o[v].valid.eq(buf.r_rdy),
                buf.r_en.eq(self.o[v].ready),
            ]
            with m.If(selected):
                m.d.comb += self.i.ready.eq(buf.w_rdy)
            with m.If(self.o[v].valid & self.o[v].ready):
                m.d.sync += self.freed[v].eq(self.freed[v] + 1)
        with m.If(self.i.valid & ~self.i.ready):
            m.d.sync += self.overflow.eq(1)
        return m
