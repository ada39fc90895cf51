"""The sample loader: a chip's input words into the input map's feature slots."""

from amaranth import *
from amaranth.lib import wiring, stream
from amaranth.lib.wiring import In, Out

from .conv import RowLayout
from .rowlink import WORD
from .sequencer import LoaderControlSignature
from .slots import FeatureMapSignature, FeatureMemory, FeaturePort, SlotSignature

__all__ = ["SampleLoader"]


class SampleLoader(wiring.Component):
    """Takes a sample (or the chip in front's map) and writes it to its feature slot.

    A sample is a label word, then the map's values in stream order
    (:meth:`RowLayout.stream_order`: row ``y`` of each channel in turn, then row
    ``y + 1``, :func:`~fpdeep.rtl.rowlink.map_words`), as the host and
    :class:`~fpdeep.rtl.rowlink.MapSender` send it. The loader assembles each
    channel's row and writes it, in the cycle of its last word, to the forward path's
    copy of the input map (:class:`~fpdeep.rtl.slots.FeatureMemory`), and counts the
    rows of every channel written (``rows_loaded``).

    It takes words while the sequencer lets it (``control.take``) and, once the sample
    is accepted, while rows are still to come (``control.filling``). The sequencer
    accepts the sample at its label, and the first layer's FP starts on the rows as
    they arrive (``o_act.rows_ready``); or, with ``relay``, at its last word, as a chip
    that sends its input on sends it whole first.

    Throughput: one word per cycle.

    Parameters
    ----------
    layout : RowLayout
        The input map.
    slots : int
    classes : int
        Labels are ``range(classes)``.
    relay : bool
        The chip sends its input on (``relay``): accept a sample at its last word.

    Members
    -------
    i : In(stream.Signature(signed(16)))
        The chip's input words. ``ready`` is the loader's state (taking words or not);
        it does not depend on ``valid``.
    slot : In(SlotSignature(slots))
    control : In(LoaderControlSignature(classes))
    o_act : Out(FeatureMapSignature(layout))
        The input map for the first layer: ``rows_ready`` counts the rows loaded while
        the sample fills, and is ``h`` otherwise.
    relay : Out(memory.ReadPort.Signature(...))
        The forward slot's input map, for the sender that relays it; only with ``relay``.

    Raises
    ------
    TypeError
        If ``layout`` is not a :class:`RowLayout`.
    ValueError
        If ``classes`` is not an int of at least 2.
    """

    def __init__(self, *, layout, slots, classes, relay=False):
        if not isinstance(layout, RowLayout):
            raise TypeError(f"layout must be a RowLayout, not {layout!r}")
        if not isinstance(classes, int) or classes < 2:
            raise ValueError(f"classes must be an int of at least 2, not {classes!r}")
        self._layout, self._slots, self._relay = layout, slots, bool(relay)
        self._ports = {
            "forward": FeaturePort(write=False, side="forward", layout=layout),
            "backward": FeaturePort(write=False, side="backward", layout=layout),
        }
        if self._relay:
            self._ports["relay"] = FeaturePort(write=False, side="forward", layout=layout)
        self._ports["load"] = FeaturePort(write=True, side="forward", layout=layout)
        members = {
            "i": In(stream.Signature(WORD)),
            "slot": In(SlotSignature(slots)),
            "control": In(LoaderControlSignature(classes)),
            "o_act": Out(FeatureMapSignature(layout)),
        }
        if self._relay:
            members["relay"] = Out(self._ports["relay"].signature())
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        c0, h0, w0 = self._layout.channels, self._layout.h, self._layout.w
        m.submodules.sample = sample = FeatureMemory(layout=self._layout, slots=self._slots,
                                                     ports=self._ports)
        wiring.connect(m, wiring.flipped(self.slot), sample.slot)
        wiring.connect(m, sample.forward, wiring.flipped(self.o_act.forward))
        wiring.connect(m, sample.backward, wiring.flipped(self.o_act.backward))
        if self._relay:
            wiring.connect(m, sample.relay, wiring.flipped(self.relay))
        load = sample.load

        word = self.i.payload
        control = self.control
        label = Signal.like(control.label)
        have_label = Signal()
        pixel_x = Signal(range(w0))
        pixel_c = Signal(range(c0))
        rows_loaded = Signal(range(h0 + 1))     # rows of every channel written so far
        row_buffer = Signal(self._layout.shape)
        filling = Signal()                      # accepted, rows still to come
        taking = control.take | filling
        last_word = (have_label & (pixel_x == w0 - 1) & (pixel_c == c0 - 1) &
                     (rows_loaded == h0 - 1))
        m.d.comb += [
            self.i.ready.eq(taking),
            self.o_act.rows_ready.eq(Mux(filling, rows_loaded, h0)),
            control.offered.eq(self.i.valid),
            control.pending.eq(have_label),
            control.filling.eq(filling),
        ]
        if self._relay:
            m.d.comb += [control.accepted.eq(self.i.valid & control.take & last_word),
                         control.label.eq(label)]
        else:
            m.d.comb += [control.accepted.eq(self.i.valid & control.take),
                         control.label.eq(word)]

        with m.If(self.i.valid & taking):
            with m.If(~have_label):
                m.d.sync += [label.eq(word), have_label.eq(1)]
            with m.Else():
                with m.Switch(pixel_x):
                    for x in range(w0):
                        with m.Case(x):
                            m.d.sync += row_buffer[x].eq(word)
                m.d.sync += pixel_x.eq(Mux(pixel_x == w0 - 1, 0, pixel_x + 1))
                with m.If(pixel_x == w0 - 1):
                    m.d.comb += [load.addr.eq(pixel_c * h0 + rows_loaded), load.en.eq(1)]
                    for x in range(w0 - 1):
                        m.d.comb += load.data[x].eq(row_buffer[x])
                    m.d.comb += load.data[w0 - 1].eq(word)
                    m.d.sync += pixel_c.eq(Mux(pixel_c == c0 - 1, 0, pixel_c + 1))
                    with m.If(pixel_c == c0 - 1):
                        m.d.sync += rows_loaded.eq(rows_loaded + 1)
            with m.If(last_word):
                m.d.sync += [rows_loaded.eq(0), have_label.eq(0), filling.eq(0)]
        if not self._relay:
            # Accepted at its label: FP takes the rows as they come.
            with m.If(self.i.valid & control.take):
                m.d.sync += filling.eq(1)
        return m
