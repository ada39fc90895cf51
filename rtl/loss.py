"""The softmax cross-entropy loss unit: logits in, errors ``p - onehot(label)`` out."""

from amaranth import *
from amaranth.lib import wiring, stream, data, memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from .numerics import (EXP2_LUT, EXP2_LUT_BITS, EXP2_LUT_FRAC, LOG2E_FRAC, LOG2E_Q,
                       LOG2_LUT, LOG2_LUT_FRAC, LOSS_WIDTH, cross_entropy_hw, log2_parts_hw,
                       shift_round_hw)

__all__ = ["LossUnit", "ErrorBuffer"]


class LossUnit(wiring.Component):
    """Computes :func:`fpdeep.rtl.numerics.softmax_error_np` over the stored logits,
    and the sample's loss, :func:`fpdeep.rtl.numerics.cross_entropy_np`.

    Three passes over the ``classes`` logits, one class per cycle each: find the
    first largest logit; compute the base-2 exponentials of ``z - max`` from a
    256-entry table and sum them; then divide each by the sum and emit the error.
    The division is a restoring divider unrolled into a pipeline of ``error.frac +
    2`` stages, one quotient bit each, that takes a class per cycle: the classes'
    divisions overlap, so the loss is not a long serial step in the backward path.
    With ``o.ready`` held high, ``busy`` falls ``3 * classes + error.frac + 8``
    cycles after ``start``; each cycle ``o.ready`` is low adds one (the whole
    pipeline holds).

    The loss takes no cycles of its own: the exponential pass also keeps the
    label's exponent argument, and while the first division runs, a priority
    encoder and a 257-entry table take ``log2`` of the sum (one cycle to the
    table address, one to ``loss``). ``loss_valid`` pulses three cycles after the
    exponential pass, always while ``busy`` is still high.

    Parameters
    ----------
    classes : int
    numerics : Numerics

    Members
    -------
    start : In(1)
    label : In(range(classes))
        Held from ``start`` until ``busy`` falls.
    busy : Out(1)
    z_rd : In(memory.ReadPort.Signature(shape=ArrayLayout(act, 1)))
        The logits, one per word (the last layer's row-layout output, ``1x1`` maps).
    o : Out(stream.Signature(StructLayout({"channel", "row", "values": ArrayLayout(error, 1)})))
        The error of each class, as 1x1 rows.
    correct : Out(1)
        Pulses when the first largest logit is the label's.
    loss : Out(unsigned(LOSS_WIDTH))
        The sample's softmax cross-entropy in bits, unsigned Q8.8
        (:func:`~fpdeep.rtl.numerics.cross_entropy_np`). Valid from the cycle
        ``loss_valid`` is high and held until the next sample's ``loss_valid``.
    loss_valid : Out(1)
        Pulses once per sample, while ``busy`` is high.
    """

    def __init__(self, *, classes, numerics):
        if classes < 2:
            raise ValueError(f"classes must be at least 2, not {classes}")
        self._classes, self._n = classes, numerics
        if numerics.act.frac < EXP2_LUT_BITS:
            raise ValueError(f"the loss needs at least {EXP2_LUT_BITS} activation fraction bits")
        super().__init__({
            "start": In(1),
            "label": In(range(classes)),
            "busy": Out(1),
            "z_rd": In(memory.ReadPort.Signature(addr_width=ceil_log2(classes),
                                                 shape=data.ArrayLayout(numerics.act.shape, 1))),
            "o": Out(stream.Signature(data.StructLayout({
                "channel": range(classes),
                "row": range(1),
                "values": data.ArrayLayout(numerics.error.shape, 1),
            }))),
            "correct": Out(1),
            "loss": Out(unsigned(LOSS_WIDTH)),
            "loss_valid": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        n, classes = self._n, self._classes
        frac = n.act.frac
        one = n.error.one
        m.submodules.lut = lut = memory.Memory(shape=unsigned(EXP2_LUT_FRAC + 1),
                                               depth=len(EXP2_LUT), init=EXP2_LUT)
        lut_rd = lut.read_port()
        m.submodules.exps = exps = memory.Memory(shape=unsigned(EXP2_LUT_FRAC + 1),
                                                 depth=classes, init=[])
        exps_rd = exps.read_port()
        exps_wr = exps.write_port()
        m.submodules.log2_lut = log2_lut = memory.Memory(
            shape=unsigned(LOG2_LUT_FRAC + 1), depth=len(LOG2_LUT), init=LOG2_LUT)
        log2_rd = log2_lut.read_port()

        index = Signal(range(classes + 1))
        z_max = Signal(n.act.shape)
        arg_max = Signal(range(classes))
        total_bits = EXP2_LUT_FRAC + 1 + ceil_log2(classes)
        total = Signal(total_bits)
        # The quotient is at most one (2**error.frac), so error.frac + 1 bits suffice and
        # the division starts from the numerator's top bits.
        q_bits = n.error.frac + 2
        numerator_bits = EXP2_LUT_FRAC + 1 + n.error.frac + 1 + 1
        z = self.z_rd.data[0]
        m.d.comb += self.z_rd.addr.eq(index)
        dividing = Signal()
        stage_layout = data.StructLayout({
            "valid": 1, "index": range(classes), "numerator": numerator_bits,
            "remainder": total_bits + 2, "quotient": q_bits})
        stages = [Signal(stage_layout, name=f"div{k}") for k in range(q_bits + 1)]

        # Pipeline registers of the exponential pass.
        t_shift = Signal(range(64))
        t_valid = Signal()
        t_index = Signal(range(classes))
        e_valid = Signal()

        # The loss: the label's exponent argument, then log2 of the final sum.
        t_label = Signal(signed(n.act.width + 2))
        log2_k = Signal(range(total_bits))
        log2_start = Signal()               # the cycle after the exponential pass
        log2_ready = Signal()               # the table data is log2_rd's
        k, log2_index = log2_parts_hw(total)
        m.d.comb += log2_rd.addr.eq(log2_index)
        m.d.sync += [log2_k.eq(k), log2_ready.eq(log2_start), log2_start.eq(0),
                     self.loss_valid.eq(log2_ready)]
        with m.If(log2_ready):
            m.d.sync += self.loss.eq(cross_entropy_hw(log2_k, log2_rd.data, t_label, n))

        m.d.sync += self.correct.eq(0)      # a one-cycle pulse, set below
        with m.FSM() as fsm:
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.sync += [index.eq(0), arg_max.eq(0)]
                    m.next = "MAX_READ"
            with m.State("MAX_READ"):           # z_rd data appears one cycle after its address
                m.d.sync += index.eq(1)
                m.next = "MAX"
            with m.State("MAX"):
                # `z` is the logit at index - 1.
                with m.If((index == 1) | (z > z_max)):
                    m.d.sync += [z_max.eq(z), arg_max.eq(index - 1)]
                with m.If(index == classes):
                    m.d.sync += [index.eq(0), total.eq(0), t_valid.eq(0), e_valid.eq(0)]
                    m.next = "EXP_READ"
                with m.Else():
                    m.d.sync += index.eq(index + 1)
            with m.State("EXP_READ"):
                m.d.sync += [self.correct.eq(arg_max == self.label), index.eq(1)]
                m.next = "EXP"
            with m.State("EXP"):
                # Stage 1 (class index-1): t = round((z - max) * log2 e), table index and shift.
                d = z - z_max
                t = Signal(signed(n.act.width + 2))
                m.d.comb += t.eq(shift_round_hw(d * LOG2E_Q, LOG2E_FRAC))
                m.d.comb += lut_rd.addr.eq((t[:frac]) >> (frac - EXP2_LUT_BITS))
                with m.If(index == self.label + 1):
                    m.d.sync += t_label.eq(t)
                neg_int = Signal(signed(n.act.width + 2))
                m.d.comb += neg_int.eq(-(t >> frac))
                m.d.sync += [
                    t_valid.eq(index <= classes),
                    t_index.eq(index - 1),
                    t_shift.eq(Mux(neg_int > EXP2_LUT_FRAC + 1, 63, neg_int)),
                ]
                # Stage 2: the table value, shifted down.
                e = Signal(EXP2_LUT_FRAC + 1)
                m.d.comb += e.eq(Mux(t_shift > EXP2_LUT_FRAC + 1, 0, lut_rd.data >> t_shift))
                with m.If(t_valid):
                    m.d.comb += [exps_wr.addr.eq(t_index), exps_wr.en.eq(1),
                                 exps_wr.data.eq(e)]
                    m.d.sync += total.eq(total + e)
                m.d.sync += index.eq(index + 1)
                with m.If(t_valid & (t_index == classes - 1)):
                    m.d.sync += [index.eq(0), log2_start.eq(1)]
                    m.next = "DIVIDE"
            with m.State("DIVIDE"):
                m.d.comb += dividing.eq(1)
                with m.If(self.o.valid & self.o.ready & (stages[-1].index == classes - 1)):
                    m.next = "IDLE"

        # The division pipeline: the exponentials are read one per cycle; stage 0 forms
        # numerator = e * 2**(frac+1) + total (divided by 2 * total: round(e / total),
        # ties up) and its top bits; stage k brings down numerator bit q_bits - k and
        # decides quotient bit q_bits - k. The whole pipeline holds while the output
        # waits for ``o.ready``.
        advance = ~self.o.valid | self.o.ready
        feed = Signal(range(classes + 1))
        read_valid = Signal()
        read_index = Signal(range(classes))
        m.d.comb += [exps_rd.addr.eq(feed), exps_rd.en.eq(advance)]
        divisor = total << 1
        with m.If(advance):
            m.d.sync += [read_valid.eq(dividing & (feed < classes)), read_index.eq(feed)]
            with m.If(dividing & (feed < classes)):
                m.d.sync += feed.eq(feed + 1)
            full = (exps_rd.data << (n.error.frac + 1)) + total
            m.d.sync += [stages[0].valid.eq(read_valid), stages[0].index.eq(read_index),
                         stages[0].numerator.eq(full), stages[0].remainder.eq(full >> q_bits),
                         stages[0].quotient.eq(0)]
            for k in range(1, q_bits + 1):
                prev, cur = stages[k - 1], stages[k]
                shifted = Cat(prev.numerator[q_bits - k], prev.remainder)
                fits = shifted >= divisor
                m.d.sync += [cur.valid.eq(prev.valid), cur.index.eq(prev.index),
                             cur.numerator.eq(prev.numerator),
                             cur.remainder.eq(Mux(fits, shifted - divisor, shifted)),
                             cur.quotient.eq(Cat(fits, prev.quotient))]
        with m.If(~dividing):
            m.d.sync += feed.eq(0)
        done = stages[-1]
        m.d.comb += [
            self.o.valid.eq(done.valid),
            self.o.payload.channel.eq(done.index),
            self.o.payload.values[0].eq(done.quotient - Mux(done.index == self.label, one, 0)),
        ]
        m.d.comb += self.busy.eq(~fsm.ongoing("IDLE"))
        return m


class ErrorBuffer(wiring.Component):
    """Holds one sample's output errors from the :class:`LossUnit` and replays them.

    The loss is a pipeline stage of its own: it fills this buffer for the next sample
    while the backward path runs BP and WU on the errors already copied into the last
    layer's error store, the second of the two buffers. ``replay`` then streams the
    words out again, in the order and with the payloads they came in (classes ``0 ..
    classes - 1``), so what the error store receives is the loss's own stream.

    With ``through`` high the words pass straight from ``i`` to ``o`` (the last
    layer's store is free: the backward path waits for them) and nothing is stored.
    Otherwise writes are always accepted (``i.ready`` is high). With ``o.ready`` held high,
    ``busy`` is high for ``classes + 1`` cycles after ``start``, and class ``k``
    leaves in cycle ``k + 2`` after it; each cycle ``o.ready`` is low adds one.

    Parameters
    ----------
    classes : int
    numerics : Numerics

    Members
    -------
    i : In(stream.Signature(StructLayout({"channel", "row", "values": ArrayLayout(error, 1)})))
        The loss unit's errors.
    through : In(1)
        Pass ``i`` to ``o``; never while replaying.
    start : In(1)
        Pulse to replay the stored errors.
    busy : Out(1)
    o : Out(stream.Signature(...))
        The stored errors, as they came in.
    """

    def __init__(self, *, classes, numerics):
        if classes < 2:
            raise ValueError(f"classes must be at least 2, not {classes}")
        self._classes = classes
        self._values = data.ArrayLayout(numerics.error.shape, 1)
        layout = data.StructLayout({
            "channel": range(classes),
            "row": range(1),
            "values": self._values,
        })
        super().__init__({
            "i": In(stream.Signature(layout)),
            "through": In(1),
            "start": In(1),
            "busy": Out(1),
            "o": Out(stream.Signature(layout)),
        })

    def elaborate(self, platform):
        m = Module()
        classes = self._classes
        m.submodules.words = words = memory.Memory(shape=self._values,
                                                   depth=classes, init=[])
        wr = words.write_port()
        rd = words.read_port()
        m.d.comb += [wr.addr.eq(self.i.payload.channel), wr.data.eq(self.i.payload.values)]

        # One word read per cycle the output moves; the read port holds its data (en
        # low) while the output waits, so the payload is held until the transfer.
        feed = Signal(range(classes))
        replaying = Signal()
        channel = Signal(range(classes))
        replay_valid = Signal()
        advance = ~replay_valid | self.o.ready
        m.d.comb += [rd.addr.eq(feed), rd.en.eq(advance)]
        with m.If(self.start):
            m.d.sync += [feed.eq(0), replaying.eq(1)]
        with m.Elif(advance & replaying):
            m.d.sync += [feed.eq(feed + 1), replaying.eq(feed != classes - 1)]
        with m.If(advance):
            m.d.sync += [replay_valid.eq(replaying), channel.eq(feed)]
        with m.If(self.through):
            m.d.comb += [self.o.valid.eq(self.i.valid), self.o.payload.eq(self.i.payload),
                         self.i.ready.eq(self.o.ready)]
        with m.Else():
            m.d.comb += [self.o.valid.eq(replay_valid),
                         self.o.payload.channel.eq(channel),
                         self.o.payload.values.eq(rd.data),
                         self.i.ready.eq(1), wr.en.eq(self.i.valid)]
        m.d.comb += self.busy.eq(replaying | replay_valid)
        return m
