"""A chip's ends of the chain: activations down, errors up, and how a split layer is shared.

A chip of a :class:`~fpdeep.rtl.cluster.Cluster` takes its input map from the chip in
front and sends its output map to the chip behind (:class:`ActivationLink`); it takes
the errors of its output map from the chip behind, or from its loss, and sends the
errors at its input to the chip in front (:class:`ErrorLink`). The word formats are
:mod:`fpdeep.rtl.rowlink`'s.

These two are the only blocks that know how a layer is split across chips
(:class:`ChannelSlice`). A chip holding output channels ``lo .. hi`` of a layer, when
more of the layer lies behind it, sends its *input* map on (the chips behind need it
too), then the channels ``0 .. hi`` gathered so far; the chip in front sends it
channels ``0 .. lo`` after the input. Of the errors coming back, the rows of channels
below ``lo`` belong to the chips in front and are passed on up; the errors at the
layer's input are exact partial sums, added chip by chip up the split
(:class:`~fpdeep.rtl.partial.PartialSum`) and requantized once, on the first slice's chip.
"""

from dataclasses import dataclass

from amaranth import *
from amaranth.lib import wiring, stream, memory
from amaranth.lib.wiring import In, Out

from .conv import RowLayout
from .partial import PartialSum
from .rowlink import WORD, MapReceiver, MapSender, RowDeserializer, RowSerializer
from .sequencer import ErrorControlSignature, LabelledTaskSignature
from .slots import FeatureMapSignature, FeaturePort

__all__ = ["ChannelSlice", "ActivationLink", "ErrorLink"]


@dataclass(frozen=True)
class ChannelSlice:
    """Output channels ``lo .. hi - 1`` of a chip's last layer, of its ``channels``.

    A chip that holds a layer whole has the slice ``(0, channels)``.
    """
    lo: int
    hi: int
    channels: int

    def __post_init__(self):
        if not (isinstance(self.lo, int) and isinstance(self.hi, int) and
                isinstance(self.channels, int) and 0 <= self.lo < self.hi <= self.channels):
            raise ValueError(f"channels {self.lo}..{self.hi} are not a range of "
                             f"{self.channels!r} output channels")

    @property
    def split(self):
        """The layer is split across chips."""
        return (self.lo, self.hi) != (0, self.channels)

    @property
    def first(self):
        """No channels lie in front (on the chips before)."""
        return self.lo == 0

    @property
    def last(self):
        """No channels lie behind (on the chips after)."""
        return self.hi == self.channels


def _check_slice(channels):
    if not isinstance(channels, ChannelSlice):
        raise TypeError(f"channels must be a ChannelSlice, not {channels!r}")


def _check_layout(name, layout):
    if not isinstance(layout, RowLayout):
        raise TypeError(f"{name} must be a RowLayout, not {layout!r}")


class ActivationLink(wiring.Component):
    """The chip's activation words: the input coming in, the output map going out.

    In: the words of a sample (or of the chip in front's map, the same format) go to
    the sample loader (``o_sample``) while it takes them; the words that follow, on a
    slice with channels in front, are those channels of the output map, which it
    writes to the output map's forward slot as they come (``gather_wr``).

    Out, unless the chip ends the chain: from ``control.start`` on, the label and the
    output map (``i_map``) in stream order, each row as soon as it is written (this
    layer's, ``i_map.rows_ready``, and the gathered channels'); or on a slice with
    channels behind, the label and the input map first (``relay_rd``, the whole map is
    in when FP starts), then channels ``0 .. hi`` without a label. The link starts on
    the first rows while the chip computes the rest. Throughput one word per cycle.

    Parameters
    ----------
    channels : ChannelSlice
        The chip's output channels ``lo .. hi`` of its last layer.
    in_layout : RowLayout
        The chip's input map.
    out_layout : RowLayout
        Its output map, channels ``0 .. hi``.
    classes : int
    sends : bool
        The chip sends its output on (it does not end the chain).

    Members
    -------
    i : In(stream.Signature(signed(16)))
    o_sample : Out(stream.Signature(signed(16)))
        To the loader, whose ``ready`` says it takes words.
    control : In(LabelledTaskSignature(classes))
        Send one sample's map (and receive its gathered channels); ``busy`` until done.
    i_map : In(FeatureMapSignature(out_layout))
        The output map; only with ``sends`` (its backward slot is not read).
    gather_wr : In(memory.WritePort.Signature(...))
        The output map's forward slot; only with channels in front (``channels.lo > 0``).
    relay_rd : In(memory.ReadPort.Signature(...))
        The input map's forward slot; only when relaying (``sends`` and channels behind).
    act_out : Out(stream.Signature(signed(16)))
        Only with ``sends``.

    Raises
    ------
    TypeError
        If ``channels`` is not a :class:`ChannelSlice` or a layout not a :class:`RowLayout`.
    ValueError
        If the output map does not hold channels ``0 .. hi``.
    """

    def __init__(self, *, channels, in_layout, out_layout, classes, sends):
        _check_slice(channels)
        _check_layout("in_layout", in_layout)
        _check_layout("out_layout", out_layout)
        if out_layout.channels != channels.hi:
            raise ValueError(f"out_layout has {out_layout.channels} channels, not the "
                             f"{channels.hi} of channels 0 .. {channels.hi}")
        self._channels, self._input, self._output = channels, in_layout, out_layout
        self._sends = bool(sends)
        self.relays = self._sends and not channels.last
        members = {
            "i": In(stream.Signature(WORD)),
            "o_sample": Out(stream.Signature(WORD)),
            "control": In(LabelledTaskSignature(classes)),
        }
        if self._sends:
            members["i_map"] = In(FeatureMapSignature(out_layout))
        if channels.lo:
            members["gather_wr"] = In(FeaturePort(True, "forward", out_layout).signature())
        if self.relays:
            members["relay_rd"] = In(FeaturePort(False, "forward", in_layout).signature())
        if self._sends:
            members["act_out"] = Out(stream.Signature(WORD))
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        lo = self._channels.lo
        control = self.control

        act_sender = input_sender = None
        if self._sends:
            m.submodules.act_out = act_sender = MapSender(layout=self._output,
                                                          label=not self.relays)
            wiring.connect(m, act_sender.rd, wiring.flipped(self.i_map.forward))
            m.d.comb += act_sender.start.eq(control.start)
        if self.relays:
            # The chips behind in the split need this input too: it goes first.
            m.submodules.input_out = input_sender = MapSender(layout=self._input)
            wiring.connect(m, input_sender.rd, wiring.flipped(self.relay_rd))
            m.d.comb += [input_sender.start.eq(control.start),
                         input_sender.label.eq(control.label)]
            first_out = input_sender.busy
            m.d.comb += [
                self.act_out.valid.eq(Mux(first_out, input_sender.o.valid,
                                          act_sender.o.valid)),
                self.act_out.payload.eq(Mux(first_out, input_sender.o.payload,
                                            act_sender.o.payload)),
                input_sender.o.ready.eq(first_out & self.act_out.ready),
                act_sender.o.ready.eq(~first_out & self.act_out.ready),
            ]
        elif act_sender is not None:
            m.d.comb += act_sender.label.eq(control.label)
            wiring.connect(m, act_sender.o, wiring.flipped(self.act_out))

        # The slices in front send their channels after the input map.
        taking = self.o_sample.ready
        m.d.comb += [self.o_sample.valid.eq(self.i.valid),
                     self.o_sample.payload.eq(self.i.payload)]
        gatherer = None
        if lo:
            m.submodules.gather = gatherer = MapReceiver(layout=self._output, channels=lo)
            wiring.connect(m, gatherer.wr, wiring.flipped(self.gather_wr))
            m.d.comb += [gatherer.start.eq(control.start),
                         gatherer.i.valid.eq(self.i.valid & ~taking),
                         gatherer.i.payload.eq(self.i.payload),
                         self.i.ready.eq(taking | gatherer.i.ready)]
        else:
            m.d.comb += self.i.ready.eq(taking)

        # The map leaves as its rows, this layer's and the gathered ones, are written.
        if act_sender is not None:
            rows_ready = self.i_map.rows_ready
            if gatherer is not None:
                rows_ready = Mux(gatherer.rows_ready < rows_ready, gatherer.rows_ready,
                                 rows_ready)
            m.d.comb += act_sender.rows_ready.eq(rows_ready)
        parts = [part for part in (input_sender, gatherer, act_sender) if part is not None]
        m.d.comb += control.busy.eq(Cat(*[part.busy for part in parts], C(0, 1)).any())
        return m


class ErrorLink(wiring.Component):
    """The chip's error rows: those of its output map in, those at its input out.

    In: the errors of the output map's channels ``0 .. hi``, from the chip behind
    (``err_in``, framed rows) or from the loss (``i_loss``). This slice's rows go to its
    last layer (``o_err``, channels renumbered from 0); the rows of channels below ``lo``
    are passed on up (``err_out``). Only one sample's rows are taken from the link, and
    only while the backward path takes them (``control.take``): the chip behind may
    already be sending the next sample's. On a slice with channels behind, the partial
    sums of the chip behind arrive too and are kept for this chip's own.

    Out: the errors at the input that the first layer's BP emits (``i_bp``), framed on
    ``err_out``; on a split layer, exact partial sums added to those of the chip
    behind, requantized on the first slice's chip. The rows passed up and these share
    ``err_out`` frame by frame.

    ``control.busy`` is high until the sample's rows are all taken (with the partial
    sums and the rows passed up) and the rows at the input have all left.

    Parameters
    ----------
    channels : ChannelSlice
        The chip's output channels ``lo .. hi`` of its last layer.
    errors : RowLayout
        The output map's errors, channels ``0 .. hi`` (the error format).
    loss : bool
        The errors come from the loss (the chip ends the chain), not from a link.
    bp : RowLayout or None
        The rows the first layer's BP emits (in the accumulator format on a split
        layer); ``None`` if it has no BP (the network's first layer).

    Members
    -------
    control : In(ErrorControlSignature())
    err_in : In(stream.Signature(signed(16)))
        Without ``loss``.
    i_loss : In(errors.row_stream())
        With ``loss``.
    o_err : Out(RowLayout(hi - lo, h, w, error).row_stream())
        This slice's rows, to its last layer.
    i_bp : In(bp.row_stream())
        Only with ``bp``.
    err_out : Out(stream.Signature(signed(16)))
        With ``bp``, or channels in front.
    saturated : Out(range(bp.w + 1))
        Values saturated by the requantization of the summed partial rows, in the row
        sent the cycle before; only on the first slice's chip of a split layer.

    Raises
    ------
    TypeError
        If ``channels`` is not a :class:`ChannelSlice` or a layout not a :class:`RowLayout`.
    ValueError
        If ``errors`` does not hold channels ``0 .. hi``.
    """

    def __init__(self, *, channels, errors, loss, bp):
        _check_slice(channels)
        _check_layout("errors", errors)
        if bp is not None:
            _check_layout("bp", bp)
        if errors.channels != channels.hi:
            raise ValueError(f"errors has {errors.channels} channels, not the "
                             f"{channels.hi} of channels 0 .. {channels.hi}")
        self._channels, self._errors, self._loss, self._bp = channels, errors, bool(loss), bp
        own = RowLayout(channels.hi - channels.lo, errors.h, errors.w, errors.fmt)
        #: The partial sums of the chip behind (its BP rows, raw), or ``None``.
        self.partial_rows = (bp if bp is not None and channels.split and not channels.last
                             else None)
        members = {"control": In(ErrorControlSignature())}
        if self._loss:
            members["i_loss"] = In(errors.row_stream())
        else:
            members["err_in"] = In(stream.Signature(WORD))
        members["o_err"] = Out(own.row_stream())
        if bp is not None:
            members["i_bp"] = In(bp.row_stream())
        if bp is not None or channels.lo:
            members["err_out"] = Out(stream.Signature(WORD))
        if bp is not None and channels.split and channels.first:
            members["saturated"] = Out(range(bp.w + 1))
        super().__init__(members)

    def _route(self, m, source, passed_up, gate=C(1)):
        """Rows at the output: this chip's channels (from ``lo``) to ``o_err``, renumbered
        from 0; those below ``lo`` to ``passed_up``."""
        lo, own = self._channels.lo, self.o_err
        mine = source.payload.channel >= lo
        m.d.comb += [own.valid.eq(source.valid & gate & mine),
                     own.payload.channel.eq(source.payload.channel - lo),
                     own.payload.row.eq(source.payload.row),
                     own.payload.values.eq(source.payload.values)]
        if passed_up is None:
            m.d.comb += source.ready.eq(gate & own.ready)
            return
        m.d.comb += [passed_up.i.valid.eq(source.valid & gate & ~mine),
                     passed_up.i.payload.channel.eq(source.payload.channel),
                     passed_up.i.payload.row.eq(source.payload.row),
                     passed_up.i.payload.values.eq(source.payload.values),
                     source.ready.eq(gate & Mux(mine, own.ready, passed_up.i.ready))]

    def elaborate(self, platform):
        m = Module()
        part, errors, bp = self._channels, self._errors, self._bp
        control = self.control
        error_fmt = errors.fmt

        passed_up = None
        if part.lo:
            m.submodules.errors_up = passed_up = RowSerializer(
                channels=part.hi, h=errors.h, w=errors.w, fmt=error_fmt,
                map_channels=part.channels)

        # Up the chain, the first layer's BP rows: on a split layer, exact partial sums
        # over this slice's channels, to which the chip behind's are added first; the
        # first slice's chip requantizes the total.
        busy = []
        err_sink = partial_sum = partial_mem = None
        if bp is not None:
            rows = self.i_bp
            if part.split:
                m.submodules.partial_sum = partial_sum = PartialSum(
                    layout=bp, incoming=not part.last, requantize=part.first,
                    out_fmt=error_fmt if part.first else None)
                wiring.connect(m, wiring.flipped(self.i_bp), partial_sum.i)
                rows = partial_sum.o
                if not part.last:
                    m.submodules.partial_in = partial_mem = memory.Memory(
                        shape=bp.shape, depth=bp.depth, init=[])
                    wiring.connect(m, partial_sum.rd, partial_mem.read_port())
            raw = part.split and not part.first
            m.submodules.err_out = err_sink = RowSerializer(
                channels=bp.channels, h=bp.h, w=bp.w, fmt=bp.fmt if raw else error_fmt,
                partial=raw)
            if part.split and part.first:
                m.d.comb += [err_sink.i.valid.eq(rows.valid),
                             err_sink.i.payload.channel.eq(rows.payload.channel),
                             err_sink.i.payload.row.eq(rows.payload.row),
                             err_sink.i.payload.values.eq(rows.payload.values),
                             rows.ready.eq(err_sink.i.ready)]
                m.d.sync += self.saturated.eq(Mux(rows.valid & rows.ready,
                                                  rows.payload.saturated, 0))
            elif part.split:
                wiring.connect(m, rows, err_sink.i)
            else:
                wiring.connect(m, wiring.flipped(rows), err_sink.i)
            busy.append(err_sink.busy)
            if partial_sum is not None:
                busy.append(partial_sum.busy)

        if passed_up is not None and err_sink is not None:
            # Both run at once (BP takes the errors as they pass): whole frames from
            # one or the other. A serializer offers a frame's words exactly while it
            # is busy, and is idle only between frames, so the link changes hands only
            # when its holder is between frames, and the other's frame starts whole.
            passed_owns = Signal()
            keep = Mux(passed_owns, passed_up.busy, err_sink.busy)
            choose_passed = Mux(keep, passed_owns, passed_up.busy)
            m.d.sync += passed_owns.eq(choose_passed)
            m.d.comb += [self.err_out.valid.eq(Mux(choose_passed, passed_up.o.valid,
                                                   err_sink.o.valid)),
                         self.err_out.payload.eq(Mux(choose_passed, passed_up.o.payload,
                                                     err_sink.o.payload)),
                         passed_up.o.ready.eq(choose_passed & self.err_out.ready),
                         err_sink.o.ready.eq(~choose_passed & self.err_out.ready)]
        elif passed_up is not None or err_sink is not None:
            source = passed_up if passed_up is not None else err_sink
            wiring.connect(m, source.o, wiring.flipped(self.err_out))
        m.d.comb += control.relaying.eq(passed_up.busy if passed_up is not None else 0)

        if self._loss:
            self._route(m, self.i_loss, passed_up)
            m.d.comb += control.busy.eq(Cat(*busy, C(0, 1)).any())
            return m

        # Down the chain: rows of errors (own and passed up) and partial sums, as the
        # chip behind sends them per sample; only this sample's rows are taken.
        partial_rows = self.partial_rows
        m.submodules.err_in = err_source = RowDeserializer(
            channels=part.hi, h=errors.h, w=errors.w, fmt=error_fmt, partial=partial_rows,
            map_channels=part.channels)
        wiring.connect(m, wiring.flipped(self.err_in), err_source.i)
        receiving = Signal()            # the backward path takes error rows from the link
        receiving_partials = Signal()   # ... and partial-sum rows
        self._route(m, err_source.o, passed_up, gate=receiving)
        err_rows_expected = part.hi * errors.h
        err_rows = Signal(range(err_rows_expected + 1))
        partial_expected = partial_rows.depth if partial_rows is not None else 0
        partial_count = Signal(range(partial_expected + 1))
        if partial_rows is not None:
            partial_wr = partial_mem.write_port()
            p = err_source.partial
            m.d.comb += [p.ready.eq(receiving_partials),
                         partial_wr.en.eq(p.valid & receiving_partials),
                         partial_wr.addr.eq(p.payload.channel * partial_rows.h +
                                            p.payload.row),
                         partial_wr.data.eq(p.payload.values),
                         partial_sum.rows_in.eq(partial_count)]
            with m.If(p.valid & p.ready):
                m.d.sync += partial_count.eq(partial_count + 1)
        m.d.comb += [receiving.eq(control.take & (err_rows != err_rows_expected)),
                     receiving_partials.eq(control.take & (partial_count != partial_expected))]
        with m.If(control.begin):
            m.d.sync += [err_rows.eq(0), partial_count.eq(0)]
        with m.If(err_source.o.valid & err_source.o.ready):
            m.d.sync += err_rows.eq(err_rows + 1)
        # Counted rows have left the deserializer, which may already hold the next
        # sample's.
        received = ((err_rows == err_rows_expected) & self.o_err.ready &
                    (partial_count == partial_expected) &
                    (~passed_up.busy if passed_up is not None else 1))
        m.d.comb += control.busy.eq(Cat(~received, *busy).any())
        return m
