"""Weight balancing: a neighbour chip holds a layer's masters and velocities and steps SGD."""

import numbers

from amaranth import *
from amaranth.lib import wiring, stream, data, fifo
from amaranth.lib.wiring import In, Out

from .numerics import check_accumulator
from .weight_update import (EXCHANGE_WIDTH, ExchangeOp, MasterStore, WeightWalk,
                            gradient_index_count, gradient_words, _check_exchange, _check_rates,
                            _host_members, _pass_host)

__all__ = ["WeightHolder"]


class WeightHolder(wiring.Component):
    """Keeps the master and velocity words of a layer whose owner is short of memory.

    The owner is a :class:`~fpdeep.rtl.weight_update.WeightUpdateUnit` built with
    ``remote=True``: it keeps the gradient sums and the 16-bit copies its engines read,
    and once per mini-batch exchanges words with this holder over the link's WGT
    virtual channel (the word formats are in that class's docstring). For each
    exchange the holder takes an :class:`~fpdeep.rtl.weight_update.ExchangeOp` word
    on ``grads_in``:

    * ``UPDATE``: per weight, in master-address order
      (:class:`~fpdeep.rtl.weight_update.WeightWalk`), its saturated batch sum in
      :func:`~fpdeep.rtl.weight_update.gradient_words` words, least significant first.
      As each sum completes, the weight goes through the same
      :class:`~fpdeep.rtl.weight_update.MasterStore` as a local unit's (the SGD step and
      its write-back of the master and velocity), and its new 16-bit copy leaves on
      ``copies_out``.
    * ``REFRESH``: no more words; the copy of every master, unchanged, leaves on
      ``copies_out`` (after the host wrote masters here).

    Any op word other than ``REFRESH`` starts an update.

    Together the owner and the holder compute exactly what a local
    :class:`~fpdeep.rtl.weight_update.WeightUpdateUnit` computes, and
    :func:`~fpdeep.rtl.numerics.sgd_step_np`.

    Timing: a weight enters the pipeline in the cycle its last gradient word is taken,
    so ``grads_in`` is taken at one word per cycle (with one-word sums, one weight
    every other cycle, the read latency of the masters). Its copy is offered on
    ``copies_out`` 6 cycles later (4 of pipeline, 2 of the output FIFO). A refresh
    sends a copy every other cycle. The output FIFO holds :attr:`COPY_FIFO_DEPTH`
    copies; when ``copies_out`` stalls, ``grads_in`` stops before it overflows.

    Parameters
    ----------
    geometry : ConvGeometry
    numerics : Numerics
    masters : (W, b)
        Initial int64 masters, ``W`` shaped ``(cout, cin, kh, kw)``: the same as the
        owner's, whose initial copies are rounded from them.
    rate_q, momentum_q : int
        Unsigned 16-bit fractions (``numerics.rate_frac`` fraction bits); no velocity
        memory when ``momentum_q`` is 0.
    batch_size : int
        Samples per mini-batch; the sums the owner sends are exact only if they cannot
        overflow, which is checked as in the owner.

    Members
    -------
    grads_in : In(stream.Signature(signed(16)))
        The owner's ``grads_out``, over the link.
    copies_out : Out(stream.Signature(signed(16)))
        To the owner's ``copies_in``, over the link: one word per weight, the weight
        format sign-extended to 16 bits.
    busy : Out(1)
        From the ``ExchangeOp`` word until the last copy has left; host accesses are
        ignored meanwhile.
    saturations : Out(32)
        Velocity, master and copy saturations of the steps (and refreshes) done here;
        the owner counts the gradient saturations.
    host_addr : In(range(host_span))
        ``word << kx_bits | kx`` with ``kx_bits = ceil_log2(kw)``, the address map of
        :class:`~fpdeep.rtl.weight_update.WeightUpdateUnit`.
    host_read, host_write : In(1)
    host_wdata : In(signed(32))
    host_rdata : Out(signed(32))
    host_rvalid : Out(1)
        One cycle after ``host_read`` (data of the read issued then).

    Raises
    ------
    ValueError
        If the masters are misshapen, the rates not unsigned 16-bit ints, the batch
        size not positive, or the weight copy wider than 16 bits.
    """

    #: Copies the output FIFO holds.
    COPY_FIFO_DEPTH = 8

    def __init__(self, *, geometry, numerics, masters, rate_q, momentum_q, batch_size):
        rate_q, momentum_q = _check_rates(rate_q, momentum_q)
        if not isinstance(batch_size, numbers.Integral) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, not {batch_size!r}")
        _check_exchange(numerics)
        g = geometry
        self._g, self._n = g, numerics
        self._batch_size = batch_size
        self.master_store = MasterStore(geometry=g, numerics=numerics, masters=masters,
                                        rate_q=rate_q, momentum_q=momentum_q)
        self.words_per_channel = gradient_index_count(g)
        self.words = self.master_store.words
        self.kx_bits = self.master_store.kx_bits
        self.host_span = self.master_store.host_span
        self.master = self.master_store.master
        self.velocity = self.master_store.velocity
        super().__init__({
            "grads_in": In(stream.Signature(signed(EXCHANGE_WIDTH))),
            "copies_out": Out(stream.Signature(signed(EXCHANGE_WIDTH))),
            "busy": Out(1),
            "saturations": Out(32),
            **_host_members(self.host_span),
        })

    def elaborate(self, platform):
        m = Module()
        g, n = self._g, self._n
        check_accumulator(self._batch_size * g.ho * g.wo,
                          max(n.act.width, n.error.width), n.acc_width,
                          what=f"gradient sum of {self._batch_size} samples of {g}")
        parts = gradient_words(n)
        depth = self.COPY_FIFO_DEPTH

        m.submodules.masters = store = self.master_store
        m.submodules.walk = walk = WeightWalk(g)
        position = walk.position
        m.submodules.copies = copies = fifo.SyncFIFOBuffered(width=EXCHANGE_WIDTH, depth=depth)

        active = Signal()           # between the op word and the last weight's entry
        refresh = Signal()
        part = Signal(range(max(2, parts)))
        low_words = Signal(data.ArrayLayout(EXCHANGE_WIDTH, max(1, parts - 1)))
        # The master read data belongs to the walk's position from the second cycle
        # after the walk moved (the read ports are addressed from it, and read every cycle).
        fresh = Signal()
        # Weights in the pipeline; with the FIFO's level they never exceed its room
        # (one entry short of it, as SyncFIFOBuffered's last entry is its output register).
        in_flight = Signal(range(depth + 1))
        room = (copies.level + in_flight) < depth - 1
        feed = Signal()

        with m.If(~active):
            m.d.comb += self.grads_in.ready.eq(1)
            with m.If(self.grads_in.valid):
                m.d.comb += walk.restart.eq(1)
                m.d.sync += [active.eq(1), part.eq(0),
                             refresh.eq(self.grads_in.payload == ExchangeOp.REFRESH)]
        with m.Elif(refresh):
            m.d.comb += feed.eq(fresh & room)
        with m.Else():
            last_part = part == parts - 1
            m.d.comb += self.grads_in.ready.eq(~last_part | (fresh & room))
            with m.If(self.grads_in.valid & self.grads_in.ready):
                with m.If(last_part):
                    m.d.comb += feed.eq(1)
                    m.d.sync += part.eq(0)
                with m.Else():
                    m.d.sync += [low_words[part].eq(self.grads_in.payload),
                                 part.eq(part + 1)]
        with m.If(feed):
            m.d.comb += walk.next.eq(1)
            with m.If(walk.last):
                m.d.sync += active.eq(0)
        m.d.sync += fresh.eq(~walk.next & ~walk.restart)

        grad = Signal(signed(EXCHANGE_WIDTH * parts))
        if parts > 1:
            m.d.comb += grad.eq(Cat(low_words, self.grads_in.payload))
        else:
            m.d.comb += grad.eq(self.grads_in.payload)
        # The masters are read at the walk's position every cycle while busy.
        m.d.comb += [
            store.read_word.eq(position.word),
            store.walking.eq(self.busy),
            store.owner_busy.eq(self.busy),
            store.i.valid.eq(feed),
            store.i.payload.grad.eq(Mux(refresh, 0, grad)),
            store.i.payload.refresh.eq(refresh),
            store.i.payload.tag.eq(position),
            self.saturations.eq(store.saturations),
        ]
        _pass_host(m, self, store)
        m.d.sync += in_flight.eq(in_flight + feed - store.o.valid)

        m.d.comb += [
            copies.w_data.eq(store.o.payload.weight),
            copies.w_en.eq(store.o.valid),
            self.copies_out.valid.eq(copies.r_rdy),
            self.copies_out.payload.eq(copies.r_data),
            copies.r_en.eq(self.copies_out.ready),
            self.busy.eq(active | (in_flight != 0) | (copies.level != 0)),
        ]
        return m
