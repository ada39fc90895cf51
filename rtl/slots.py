"""Feature slots: the copies of a feature map that let samples overlap.

A chip's forward path (load, FP, send) and backward path (loss or receive, BP, WU)
work on different samples at once (:class:`~fpdeep.rtl.sequencer.Sequencer`). What the
forward path writes and the backward path reads again (the input map, and each
layer's activations) therefore has ``slots`` copies, one per sample in flight: the
forward path fills copy :attr:`SlotSignature` ``forward`` while the backward path
reads copy ``backward``. :class:`FeatureMemory` is that memory, and the one place that
maps a port's address within its map to the word of its slot's copy.
"""

from dataclasses import dataclass

from amaranth import *
from amaranth.lib import wiring, memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from .conv import RowLayout

__all__ = ["SlotSignature", "FeatureMapSignature", "FeaturePort", "FeatureMemory"]


class SlotSignature(wiring.Signature):
    """The copy of the feature maps each path works on, from the sequencer's side.

    Parameters
    ----------
    slots : int

    Members
    -------
    forward : Out(range(slots))
        The copy the forward path fills (loader, FP, activation writers, senders).
    backward : Out(range(slots))
        The copy the backward path reads (error derivatives, WU).
    loss : Out(range(slots))
        The copy the loss reads the logits from: a stage of its own on the chip that
        ends the chain, a sample ahead of the backward path; ``backward`` elsewhere.

    Raises
    ------
    ValueError
        If ``slots`` is not a positive int.
    """

    def __init__(self, slots):
        if not isinstance(slots, int) or slots < 1:
            raise ValueError(f"slots must be a positive int, not {slots!r}")
        self.slots = slots
        super().__init__({"forward": Out(range(slots)), "backward": Out(range(slots)),
                          "loss": Out(range(slots))})


class FeatureMapSignature(wiring.Signature):
    """A map in a :class:`FeatureMemory`, as the block that writes it offers it to the
    layer that reads it next; members from the writer's side.

    The reader's FP engine takes the map as it is written (``forward``, ``rows_ready``);
    its WU engine reads it again, a few samples later, in the backward path's copy.

    Parameters
    ----------
    layout : RowLayout

    Members
    -------
    forward : Out(memory.ReadPort.Signature(addr_width=ceil_log2(layout.depth), shape=layout.shape))
        The map in the forward path's slot.
    backward : Out(memory.ReadPort.Signature(...))
        The same map in the backward path's slot.
    rows_ready : Out(range(layout.h + 1)), ``h`` initially
        Rows ``0 .. rows_ready - 1`` of every channel of the forward slot's map are
        written, and readable from the cycle this shows them.
    """

    def __init__(self, layout):
        port = memory.ReadPort.Signature(addr_width=ceil_log2(layout.depth), shape=layout.shape)
        self.layout = layout
        super().__init__({
            "forward": Out(port),
            "backward": Out(port),
            "rows_ready": Out(range(layout.h + 1), init=layout.h),
        })


@dataclass(frozen=True)
class FeaturePort:
    """A port of a :class:`FeatureMemory`.

    Parameters
    ----------
    write : bool
        A write port (else a read port).
    side : str
        ``"forward"``, ``"backward"`` or ``"loss"``: whose slot it reaches.
    layout : RowLayout
        The map as the port's user sees it (its address width): the whole map, or the
        channels from ``base`` on.
    base : int
        The word of the map at which the user's address 0 lies.
    """
    write: bool
    side: str
    layout: RowLayout
    base: int = 0

    def signature(self):
        cls = memory.WritePort if self.write else memory.ReadPort
        return cls.Signature(addr_width=ceil_log2(self.layout.depth), shape=self.layout.shape)


class FeatureMemory(wiring.Component):
    """``slots`` copies of a row-layout feature map, one per sample in flight.

    Copy ``s`` is words ``s * depth .. (s + 1) * depth - 1`` of one memory
    (``depth = layout.depth``). Each port reaches the copy of its side's slot: word
    ``addr`` of a port is word ``slot * depth + base + addr`` of the memory. Reads have
    one cycle of latency and are not transparent (as :meth:`memory.Memory.read_port`).

    Parameters
    ----------
    layout : RowLayout
        One copy of the map.
    slots : int
    ports : dict of str to FeaturePort
        The ports, by member name, in the order the memory's ports are made.

    Members
    -------
    slot : In(SlotSignature(slots))
    <name> : Out(memory.ReadPort.Signature(...)) or Out(memory.WritePort.Signature(...))
        One per entry of ``ports``, from the memory's side (a user declares it ``In``).

    Raises
    ------
    TypeError
        If ``layout`` is not a :class:`RowLayout` or a port not a :class:`FeaturePort`.
    ValueError
        If a port's side is unknown or its map does not fit the copy from its ``base``.
    """

    def __init__(self, *, layout, slots, ports):
        if not isinstance(layout, RowLayout):
            raise TypeError(f"layout must be a RowLayout, not {layout!r}")
        members = {"slot": In(SlotSignature(slots))}
        for name, port in ports.items():
            if not isinstance(port, FeaturePort):
                raise TypeError(f"port {name!r} must be a FeaturePort, not {port!r}")
            if port.side not in ("forward", "backward", "loss"):
                raise ValueError(f"port {name!r}: side must be 'forward', 'backward' or 'loss', "
                                 f"not {port.side!r}")
            if port.layout.shape != layout.shape or \
                    not 0 <= port.base <= layout.depth - port.layout.depth:
                raise ValueError(f"port {name!r}: its map {port.layout} does not fit the "
                                 f"copy of {layout} from word {port.base}")
            members[name] = Out(port.signature())
        self._layout, self._slots, self._ports = layout, slots, dict(ports)
        super().__init__(members)

    @property
    def depth(self):
        """Words of one copy."""
        return self._layout.depth

    def elaborate(self, platform):
        m = Module()
        depth = self._layout.depth
        m.submodules.memory = mem = memory.Memory(shape=self._layout.shape,
                                                  depth=depth * self._slots, init=[])
        for name, port in self._ports.items():
            user = getattr(self, name)
            offset = getattr(self.slot, port.side) * depth + port.base
            mem_port = mem.write_port() if port.write else mem.read_port()
            m.d.comb += [mem_port.addr.eq(user.addr + offset), mem_port.en.eq(user.en)]
            if port.write:
                m.d.comb += mem_port.data.eq(user.data)
            else:
                m.d.comb += user.data.eq(mem_port.data)
        return m
