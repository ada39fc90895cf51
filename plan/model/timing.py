"""Every timing and storage-independent constant of the machine the gateware builds.

The model (:mod:`fpdeep.plan.model`) reads these and nothing else; each says which RTL
behaviour it mirrors, so that a measurement corrects it in one place."""

from dataclasses import dataclass

from ..errors import FpdeepError

__all__ = ["GatewareTiming", "TIMING", "link_efficiency", "row_header_words"]


@dataclass(frozen=True)
class GatewareTiming:
    """Every timing constant of the gateware model, and the RTL behaviour it mirrors.

    Engines (``rtl/systolic.py``, ``rtl/conv.py``, ``rtl/weight_update.py``)
        first_step
            Cycles from an engine's ``start`` pulse to its first step entering the
            array: one cycle to issue the memory addresses, one in the ``s1`` register.
        drain_delay
            A tile's first result row is offered ``rows + cols + 1`` cycles (the
            array's ``tile_latency``) plus this after its last step (the
            ``ready_tiles`` register). The array has two result banks: a tile's
            last step waits until the tile two before it has drained.
        matvec_latency
            :class:`~fpdeep.rtl.fc.MatVecArray` (FC back-propagation) lands a tile's
            sums this many cycles after its last step (its ``tile_latency``; the
            systolic array's is ``rows + cols + 1``); ``drain_delay`` follows as there.
        rmw_tail
            :class:`WeightUpdateUnit` stays busy this long after its engine (the
            read-modify-write of the last gradient row).
    Rows in flight (``rtl/activation.py``, ``rtl/core.py``, ``rtl/rowlink.py``)
        row_visible
            A row written in cycle ``n`` (its engine row leaving into the
            :class:`ActivationWriter`, or its last word taken by a loader or
            :class:`MapReceiver`) counts in the writer's ``rows_ready`` from cycle
            ``n + row_visible``; an engine step reading it is issued then and enters
            the array a cycle later, and a :class:`MapSender` offers its first word
            a cycle later.
        pool_delay
            A pooled row is written this many cycles after its odd conv row.
    Row sinks (``rtl/backprop.py``, ``rtl/rowlink.py``, ``rtl/partial.py``)
        deriv_none, deriv_relu, deriv_pool
            Cycles per row that :class:`ErrorDerivative` takes: without post-ops (a
            pass-through), with ReLU only (take, look up, emit), with max-pool (two
            rows out).
        deriv_latency
            With post-ops, the derivative's first output row of a row taken in
            cycle ``n`` leaves (into the :class:`ErrorStore`) in ``n +
            deriv_latency``, the second (max-pool) a cycle later; without, in ``n``.
        deser_latency
            A framed row whose last word is taken from the link in cycle ``n``
            leaves the :class:`RowDeserializer` in ``n + deser_latency``.
        serializer_gap
            :class:`RowSerializer` takes a new row this many cycles after the last
            word of the previous one left: none, it takes it in that cycle, so rows
            that wait for the link leave back to back and the packer fills whole
            frames with them (a pause would close a frame per row).
        partial_words
            Words per value of a partial-sum row (a 48-bit sum).
        partial_latency
            :class:`PartialSum`: a row accepted in cycle ``n`` leaves in ``n + 2``.
    Sequencers (``rtl/core.py``)
        engine_overhead
            BACK_START (one cycle) plus three cycles of BACK_WAIT after the
            engine's busy falls (two settle cycles and the cycle that moves on).
        fp_wait_tail
            FP_WAIT moves on to DONE this many cycles after the forward path's
            parts (FP engines, loader, senders, receiver) are all idle.
        loss_overhead
            The loss stage's start cycle plus the cycle its WAIT sees the loss unit
            idle (the buffer shows the errors the cycle after; the backward path's
            LOSS_WAIT, writing straight into the store, sees it idle with the stage).
        done_cycles
            The forward DONE state.
        idle_cycles
            The backward IDLE state between samples (it sees ``ahead`` one cycle
            after the forward DONE).
        receive_tail
            BACK_WAIT sees the error map in this many cycles after its last word is
            taken, plus the derivative's period, less one (the row leaves the
            deserializer, then the derivative must be ready again).
        sgd_overhead
            Cycles around the SGD walk: the WU_WAIT cycle that starts it, and
            UPDATE_WAIT's settle and exit.
    Loss (``rtl/loss.py``)
        loss_base, loss_per_class
            The :class:`LossUnit` is busy ``loss_base + error_frac + classes *
            loss_per_class`` cycles: three passes of one class per cycle, the last
            through a divider pipeline of ``error_frac + 2`` stages.
        replay_tail
            :class:`ErrorBuffer` replays the ``classes`` stored errors in ``classes +
            replay_tail`` busy cycles (one read cycle before the first word leaves).
        error_frac
            Fraction bits of the error format (``DEFAULT_NUMERICS.error.frac``).
    SGD walk (``WeightUpdateUnit.start_update``)
        sgd_drain
            One cycle per gradient word plus one per weight, then this many cycles
            of pipeline drain.
    Held weights (``WeightUpdateUnit(remote=True)``, ``rtl/weight_holder.py``)
        exchange_words
            Words per saturated gradient sum on the WGT channel
            (:func:`~fpdeep.rtl.weight_update.gradient_words`).
        holder_latency
            :class:`WeightHolder` offers a weight's new 16-bit copy this many cycles
            after it took the last word of the weight's sum (4 of pipeline, 2 of the
            output FIFO).
        exchange_tail
            The owner's SGD step (UPDATE_WAIT) ends this many cycles after it took
            the last copy.
        holder_copies
            The holder takes a weight's last word only while fewer copies than this
            are in its pipeline and output FIFO (``COPY_FIFO_DEPTH - 1``).
    Host
        host_words_per_cycle
            The host feeds chip 0 one word per cycle while it loads (the simulation
            harness does).
    Links (``rtl/link``, defaults of ``LinkConfig``; measured in pysim with a
    :class:`LinkPair` at ``wire_latency`` 4 and BER 0)
        wire_latency
            One-way wire latency in cycles (``Cluster``'s ``link_latency``).
        board_phy_latency
            One-way latency in core cycles of a link through two board PHYs
            (``rtl/link/board_phy.py``, 4 lanes of 4 bits, 3 link cycles per core
            cycle), the ``wire_latency`` of a board link: 11 to 13 measured over the
            bit-level channel model with up to one core cycle of wire delay, so 13
            plus the cable's delay in core cycles. Not yet used by the planner.
        board_cc_interval
            ``LinkConfig.cc_interval`` of a board link: one cycle in 1,024 is a
            second idle for clock compensation.
        frame_overhead
            Wire symbols per frame besides the payload: 2 header, 2 CRC, 1 idle.
        max_payload
            Words per frame at most.
        packer_grant
            The packer spends one cycle granting a VC before it takes a frame's
            first word; a frame closes on a pause in the source, when credits run
            out, or at ``max_payload`` words.
        rx_delay
            From the frame's last CRC symbol leaving the sender to its first word
            at the receiver's FIFO output: ``rx_delay + wire_latency``.
        ack_delay
            From a frame's last symbol to its replay slot being free again at the
            sender: ``ack_delay + 2 * wire_latency`` (with the reverse direction
            sending CTRL frames, the ACKs queue behind them).
        ack_rx, credit_rx, ack_tx
            Where the model follows ACKs and credits through the reverse direction's
            frames (:meth:`LinkDirection.carry`): from a frame's last symbol to its
            ACK being ready for the reverse framer's next header, ``ack_rx +
            wire_latency``; from a word leaving the receiver's FIFO to its credit
            being ready, ``credit_rx``; from the last symbol of the frame carrying
            them to the replay slot or credit being usable, ``ack_tx +
            wire_latency``.
        credit_delay
            From a word leaving the receiver's FIFO to its credit being usable by
            the sender's packer: ``credit_delay + wire_latency``.
        replay_slots, rx_depth
            Frames awaiting ACK (the selective-repeat window) and credits per virtual
            channel. At BER 0 the link's timing is the same with selective repeat (the
            default) as with go-back-N; under bit errors see :func:`link_efficiency`.
    Chip
        reserved_multipliers_per_layer, reserved_multipliers_loss
            Multipliers outside the engines (SGD scaling, address arithmetic, the
            loss). From the ULX3S builds of the digits core: 123 used for 110 PEs,
            38 for 20 PEs; 9 per layer and 2 for the loss cover both.
    """
    first_step: int = 2
    drain_delay: int = 1
    matvec_latency: int = 2
    rmw_tail: int = 1
    deriv_none: int = 1
    deriv_relu: int = 3
    deriv_pool: int = 4
    deriv_latency: int = 2
    deser_latency: int = 1
    serializer_gap: int = 0
    partial_words: int = 3
    partial_latency: int = 2
    engine_overhead: int = 4
    fp_wait_tail: int = 3
    row_visible: int = 1
    pool_delay: int = 1
    loss_overhead: int = 2
    done_cycles: int = 1
    idle_cycles: int = 1
    receive_tail: int = 2
    sgd_overhead: int = 2
    loss_base: int = 7
    loss_per_class: int = 3
    replay_tail: int = 1
    error_frac: int = 13
    sgd_drain: int = 5
    exchange_words: int = 2
    holder_latency: int = 6
    exchange_tail: int = 3
    holder_copies: int = 7
    host_words_per_cycle: int = 1
    wire_latency: int = 4
    board_phy_latency: int = 13
    board_cc_interval: int = 1024
    frame_overhead: int = 5
    max_payload: int = 16
    packer_grant: int = 1
    rx_delay: int = 5
    ack_delay: int = 10
    ack_rx: int = 2
    credit_rx: int = 1
    ack_tx: int = 2
    credit_delay: int = 7
    replay_slots: int = 8
    rx_depth: int = 64
    reserved_multipliers_per_layer: int = 9
    reserved_multipliers_loss: int = 2

    def deriv(self, relu, pool):
        """Cycles per row of the error derivative of a layer's post-ops."""
        return self.deriv_pool if pool else self.deriv_relu if relu else self.deriv_none

    def to_dict(self):
        return {name: getattr(self, name) for name in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, spec):
        try:
            return cls(**spec)
        except TypeError as error:
            raise FpdeepError(f"gateware timing: {error}") from None


#: The constants of the gateware as built now.
TIMING = GatewareTiming()


def row_header_words(channels, h):
    """Header words of an error row's frame (:class:`~fpdeep.rtl.rowlink.RowSerializer`)
    on a link whose error rows are those of a map of ``channels`` channels (all of
    them, not a slice's) and ``h`` rows.

    One word when the row and channel numbers fit beside the kind bit (15 bits), as
    for every map of the networks in ``plan/zoo.py``; else a channel word and a row
    word. A partial row always has the two. Both ends of a link take the rule from
    here, from the same map.
    """
    return 1 if (channels - 1).bit_length() + (h - 1).bit_length() <= 15 else 2


def link_efficiency(ber, *, timing=TIMING, word_bits=16):
    """Payload words per cycle that one busy direction of a link carries at bit-error
    rate ``ber`` (independent bit errors), with full frames and selective repeat.

    It is the framing bound, ``max_payload / (max_payload + frame_overhead)``, times the
    chance that a full frame arrives intact, ``(1 - ber) ** bits`` with ``bits =
    (max_payload + frame_overhead - 1) * word_bits`` (header, payload and CRC; the idle
    carries nothing that matters): every frame is sent until one copy arrives intact,
    and selective repeat resends nothing else. With the defaults: 0.762 at BER 0, 0.738
    at 1e-4, 0.553 at 1e-3. ``python -m fpdeep.scripts.bench_link --seeds 5`` measured
    the RTL at 99 % of it at 1e-4 and 92 % at 1e-3 (medians of 5 seeds; go-back-N: 96 %
    and 67 %), so a plan that leans on the link within 10 % of this figure should leave
    that margin. A busy reverse direction costs nothing more: ACKs ride in its headers.
    """
    if not 0 <= ber < 1:
        raise ValueError(f"ber must be in [0, 1), not {ber}")
    symbols = timing.max_payload + timing.frame_overhead
    bits = (symbols - 1) * word_bits
    return timing.max_payload / symbols * (1 - ber) ** bits
