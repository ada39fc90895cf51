"""The gateware target: plans the RTL can build, and a model of its timing.

The paper-scale planner (:mod:`.partition`) models ideal R×C arrays and may split
layers by rows or by inputs. The gateware (:mod:`fpdeep.rtl`) builds a subset, with
its own timing. This module plans for that subset and predicts what the gateware
measures, cycle for cycle where it can.

What the gateware builds
------------------------
* A chip holds either a contiguous run of whole weighted layers, or one slice of
  one layer split by **output channels** (contiguous ranges on consecutive chips;
  such a chip holds nothing else).
* Engines: FP is ``rows × Wo`` (``rows`` output channels at once), WU is
  ``rows × kw``, BP is the FP engine on :meth:`ConvGeometry.transposed`, ``rows × W``
  of the layer input (``rows`` input channels at once). The network's first layer
  has no BP. One multiplier per PE, plus the multipliers outside the engines
  (:class:`GatewareTiming`, ``reserved_multipliers_*``).
* Every layer must be gateware-supported (:meth:`Network.gateware_unsupported`), a
  Conv2d or Linear optionally followed by ReLU and then a 2×2 max-pool.

The chip schedule (``rtl/core.py``)
-----------------------------------
Per sample, a *forward* sequencer: LOAD takes the label word, then FP_START starts
every local layer's FP engine, the sender of the output map and, on a slice chip
after the first of its layer, the receiver of the slices in front, all at once.
Maps travel and are produced row by row (row ``y`` of every channel, then row
``y + 1``): an engine step waits until its input row is in (1 word per cycle from
the host or the link, or the layer in front's output row), and the sender sends
each output row as soon as it is written, one word per cycle. FP_WAIT ends when
all of them are idle. A chip with a slice of a split layer that has more of the
layer behind it loads its whole input first and sends it on (with the label) as
its FP starts, then the channels up to its own (no label).

A *backward* sequencer: LOSS on the last chip (with a split last layer, the last
slice's chip takes the loss over all logits and sends the other slices' errors
up), then every local layer's BP and WU engine at once, each taking the rows of
its error map as they are stored: from the loss (all in by then), from the BP
behind it on the chip, or, on a chip that does not end the chain, framed from
the link as they come (``w + 2`` words a row; partial-sum rows of a split layer's
BP are ``3w + 2``). BACK_WAIT ends when every BP is done and the whole error map
is in, then wait for every WU engine. Per mini-batch of B samples, an SGD walk over every local weight;
for a layer whose masters and velocities the next chip holds (``Cluster(held=...)``)
an exchange instead, which the owner waits for: its saturated gradient sums go down
the link's WGT channel (1 + 2 words per weight), the holder steps SGD on them as
they arrive and sends each new 16-bit copy back up (1 word per weight).

Forward of sample ``s + 1`` overlaps backward of ``s``: a chip's feature memories
hold its own number of samples, its *slots* (``Cluster(slots=[...])``), and its
forward waits while ``slots`` samples are forwarded but not yet backed. The first
forward of batch ``b + 1`` waits for batch ``b``'s SGD step, so more than ``B``
slots never help.

The model
---------
:func:`fp_run`, :func:`bp_run`, :func:`wu_run` give an engine's exact busy cycles
from the tile-by-tile behaviour of :class:`~fpdeep.rtl.systolic.SystolicArray`
(:func:`array_run`), an FP engine's steps waiting for their input rows included
(:func:`fp_run` with ``enter``); :func:`loss_cycles` and :func:`sgd_cycles` those of the loss
and the SGD walk. :class:`LinkDirection` follows words through one direction of
a link (packer, credits, replay slots, framer, receiver); :func:`exchange_step`
follows a held layer's exchange through both directions at once, cycle for cycle.
:func:`simulate` runs the
chain's two sequencers per chip, sample by sample, over a few mini-batches and
returns the steady-state figures. Every timing constant is in
:class:`GatewareTiming`, with the RTL behaviour it mirrors, so that a measurement
can correct it in one place.

Known approximations, except in the exchange: CTRL frames (ACK and credit updates
sent while a direction has no data) are not modelled as taking the wire (a
:class:`LinkPair` carrying traffic both ways delivered as fast as with one way: the
updates ride in the data frames' headers), nor are periodic refresh frames; credit
and ACK returns are fixed delays;
an engine stalled by a full serializer is not slowed further than the link it feeds;
a slice chip receives the partial sums of the chips after it before its own BP.

Planning
--------
:func:`plan_chips` costs every way of grouping the layers into chips, choosing each
chip's engine rows (:func:`choose_rows`) by a quick estimate of its forward and
backward paths (:func:`_estimate`), simulates the best few chains, each with its
feature slots sized by :func:`choose_slots`, moves the channel boundaries of split
layers while the simulation improves, and keeps the fastest.

Weight balancing (architecture decision 4) as the gateware builds it: a chip whose
memory does not hold its layers with even one feature slot keeps the masters and
velocities of one of its layers (64 bits per weight; it keeps the 16-bit copies and
48-bit gradient sums) on the next chip, which holds one such layer at most
(:func:`place_masters`, front to back, for every chain costed). The link carries
the exchange once per batch, which the model times; a chip that does not fit even
so rules its chain out, and if no chain is left the error names the chip that came
nearest. Decision 4's check that the traffic fits the link is the model's: the
exchange's cycles are in the chain's cycles per sample.

The slots hold the activations that WU needs for as long as the round trip to the
end of the chain and back takes; a chip near the end needs fewer than chip 0.
:func:`choose_slots` gives each chip the fewest slots that keep the chain within
:data:`SLOT_TOLERANCE` of its speed with unlimited slots, within the chip's memory
(:func:`memory_bits` counts them, :func:`max_slots` is the most that fit).
"""

import bisect
import functools
import itertools
import math
from dataclasses import dataclass, replace

from .errors import FpdeepError
from .layers import ConvGeometry, GatewareLayer, gateware_layers

__all__ = ["GatewareTiming", "TIMING", "ConvGeometry", "GatewareLayer", "gateware_layers",
           "EngineRun", "array_run", "fp_tiles", "wu_tiles", "fp_run", "bp_run", "wu_run",
           "loss_cycles", "loss_emit_cycle", "sgd_cycles", "map_sender_cycles",
           "exchange_runs", "exchange_step", "LinkDirection", "SliceSpec", "ChipSpec",
           "DEFAULT_SLOTS", "simulate", "feature_bits", "memory_bits", "master_bits",
           "place_masters", "max_slots", "choose_slots", "SLOT_TOLERANCE", "choose_rows",
           "plan_chips", "limit", "max_chips"]


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
            word of the previous one left.
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
            LOSS_START plus the cycle LOSS_WAIT sees the loss unit idle.
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
            Frames awaiting ACK (go-back-N window) and credits per virtual channel.
    Chip
        reserved_multipliers_per_layer, reserved_multipliers_loss
            Multipliers outside the engines (SGD scaling, address arithmetic, the
            loss). From the ULX3S builds of the digits core: 123 used for 110 PEs,
            38 for 20 PEs; 9 per layer and 2 for the loss cover both.
    """
    first_step: int = 2
    drain_delay: int = 1
    rmw_tail: int = 1
    deriv_none: int = 1
    deriv_relu: int = 3
    deriv_pool: int = 4
    deriv_latency: int = 2
    deser_latency: int = 1
    serializer_gap: int = 1
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
    error_frac: int = 13
    sgd_drain: int = 5
    exchange_words: int = 2
    holder_latency: int = 6
    exchange_tail: int = 3
    holder_copies: int = 7
    host_words_per_cycle: int = 1
    wire_latency: int = 4
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


# ---------------------------------------------------------------------------------------
# Layers as the gateware sees them.

# ---------------------------------------------------------------------------------------
# Engines.

@dataclass(frozen=True)
class EngineRun:
    """One run of an engine over a sample.

    ``busy`` counts the cycles its ``busy`` output is high (from the cycle after
    ``start``); ``steps`` the steps through its array; ``rows`` the cycle (after
    ``start``) at which each used result row left, in output order, with its
    ``(channel, row)``.
    """
    busy: int
    steps: int
    rows: tuple = ()


def array_run(tiles, rows, cols, *, sink_period=1, timing=TIMING, keep_rows=False,
              enter=None):
    """Busy cycles of an engine that feeds ``tiles`` through a ``rows × cols`` array.

    ``tiles`` is a sequence of runs ``(steps, used, count, tag)``: ``count`` tiles
    (accumulations) of ``steps`` steps each, of which ``used`` of the ``rows``
    result rows are used (lanes past the layer's channels drain in one cycle each,
    unseen). ``tag`` is the index of the run's first tile in the engine's order;
    tile ``j`` of the run is ``tag + j``. A used row leaves when the sink is ready:
    at most one per ``sink_period`` cycles.

    ``enter``, if given, maps a tile's index to its steps' waits: ``(step, cycle)``
    pairs, in step order, saying that step (counted from 0 in the tile) enters the
    array no earlier than ``cycle``, as an FP engine's step waits for its input row.

    This follows :class:`~fpdeep.rtl.systolic.SystolicArray` cycle by cycle: steps
    enter one per cycle from :attr:`GatewareTiming.first_step`; a tile's result
    rows are offered ``rows + cols + 1 + drain_delay`` cycles after its last step
    and leave one per cycle; with two result banks, a tile's last step waits until
    the tile two before it has drained. Within a run the recurrence is shift
    invariant, so once one tile moves the whole state by the same number of cycles
    the rest of the run follows in one step, exactly (without waits).
    """
    latency = rows + cols + 1 + timing.drain_delay
    period = sink_period
    prev_last = timing.first_step - 1      # the last step of the "previous" tile
    d1 = d2 = None                         # the last two tiles' final result rows
    sink_free = 0
    steps = 0
    out = []
    for run_steps, used, count, tag in tiles:
        j = 0
        while j < count:
            before = (prev_last, d1, d2, sink_free)
            waits = enter(tag + j) if enter is not None else ()
            at, step = prev_last, -1       # the cycle step ``step`` entered
            for k, cycle in waits:
                if k < run_steps - 1:
                    at, step = max(at + k - step, cycle), k
            last = at + run_steps - 1 - step
            if waits and waits[-1][0] == run_steps - 1:
                last = max(last, waits[-1][1])
            if d2 is not None:
                last = max(last, d2 + 1)
            offered = last + latency
            if d1 is not None:
                offered = max(offered, d1 + 1)
            first = max(offered, sink_free)
            last_used = first + (used - 1) * period
            sink_free = last_used + period
            d2, d1 = d1, last_used + rows - used
            prev_last = last
            steps += run_steps
            if keep_rows:
                out += [(first + r * period, tag + j, r) for r in range(used)]
            j += 1
            after = (prev_last, d1, d2, sink_free)
            if j < count and None not in before and enter is None:
                deltas = {a - b for a, b in zip(after, before)}
                if len(deltas) == 1:
                    delta, rest = deltas.pop(), count - j
                    if keep_rows:
                        base = out[-used:]
                        for k in range(1, rest + 1):
                            out += [(cycle + k * delta, tag + j - 1 + k, r)
                                    for cycle, _, r in base]
                    prev_last += rest * delta
                    d1 += rest * delta
                    d2 += rest * delta
                    sink_free += rest * delta
                    steps += rest * run_steps
                    j = count
    return EngineRun(busy=d1, steps=steps, rows=tuple(out))


def _valid_rows(g, ky):
    """Output rows whose input row ``y + ky - ph`` is in range (at least one)."""
    lo = max(0, g.ph - ky)
    hi = min(g.ho - 1, g.h - 1 + g.ph - ky)
    return max(1, hi - lo + 1)


def _valid_taps(g, y):
    """Kernel rows with an input row in range for output row ``y``."""
    lo = max(0, g.ph - y)
    hi = min(g.kh - 1, g.h - 1 + g.ph - y)
    return max(1, hi - lo + 1)


def _runs(items):
    """Run-length encode ``(steps, used, tag)`` tiles into ``(steps, used, count, tag)``."""
    runs = []
    for steps, used, tag in items:
        if runs and runs[-1][:2] == (steps, used):
            runs[-1][2] += 1
        else:
            runs.append([steps, used, 1, tag])
    return [tuple(run) for run in runs]


def fp_tiles(g, rows, *, bias=True):
    """Tiles of :class:`~fpdeep.rtl.conv.ConvEngine` in its order: per output row
    ``y``, per tile ``t`` of ``rows`` output channels, ``cin * (valid kernel rows) *
    kw`` steps (+1 bias). Tile ``n`` is row ``n // tiles``, channel tile ``n % tiles``.

    Returned as runs for :func:`array_run`.
    """
    tiles = -(-g.cout // rows)
    return _runs((g.cin * _valid_taps(g, y) * g.kw + (1 if bias else 0),
                  min(rows, g.cout - t * rows), y * tiles + t)
                 for y in range(g.ho) for t in range(tiles))


def fp_waits(g, rows, enter):
    """The waits (for :func:`array_run`) of an FP engine whose input row ``r`` can be
    read by steps entering the array from cycle ``enter[r]`` on.

    A tile of output row ``y`` reads input row ``y + ky - ph`` for each valid ``ky``
    in turn, every input channel of it (``cin * kw`` steps); rows arrive for every
    channel at once, so only a kernel row's first step can wait.
    """
    tiles = -(-g.cout // rows)

    def waits(n):
        y = n // tiles
        lo = max(0, g.ph - y)
        hi = min(g.kh - 1, g.h - 1 + g.ph - y)
        return [((ky - lo) * g.cin * g.kw, enter[y + ky - g.ph]) for ky in range(lo, hi + 1)]
    return waits


def wu_tiles(g, rows):
    """Tiles of :class:`~fpdeep.rtl.weight_update.WeightGradientEngine` in its order:
    per tile of ``rows`` output channels, one per ``(i, ky)`` of ``(valid output
    rows) * wo`` steps, then the bias over all ``ho * wo`` pixels; tile ``n`` is
    channel tile ``n // (cin * kh + 1)``. Returned as runs."""
    per = g.cin * g.kh + 1
    return _runs((g.ho * g.wo if j == per - 1 else _valid_rows(g, j % g.kh) * g.wo,
                  min(rows, g.cout - t * rows), t * per + j)
                 for t in range(-(-g.cout // rows)) for j in range(per))


def wu_waits(g, enter):
    """The waits (for :func:`array_run`) of a WU engine whose error row ``y`` can be
    read by steps entering from cycle ``enter[y]``: each tile walks its valid
    output rows in order, ``wo`` steps a row."""
    per = g.cin * g.kh + 1

    def waits(n):
        j = n % per
        lo, hi = 0, g.ho - 1
        if j != per - 1:
            ky = j % g.kh
            lo = max(0, g.ph - ky)
            hi = min(g.ho - 1, g.h - 1 + g.ph - ky)
        return [((y - lo) * g.wo, enter[y]) for y in range(lo, hi + 1)]
    return waits


def fp_run(g, rows, *, timing=TIMING, enter=None, keep_rows=False):
    """The FP engine (``rows × wo``) over one sample; its sink never stalls.

    ``enter``: per input row, the first cycle (after ``start``) a step reading it
    may enter the array (:func:`fp_waits`); by default every row is there.
    """
    waits = fp_waits(g, rows, enter) if enter is not None else None
    return array_run(fp_tiles(g, rows), rows, g.wo, timing=timing, enter=waits,
                     keep_rows=keep_rows)


def bp_run(g, rows, *, sink_period=1, timing=TIMING, keep_rows=False, enter=None):
    """The BP engine (``rows × w``): the FP engine on the transposed geometry, no bias.

    ``sink_period``: cycles per row its consumer takes (:meth:`GatewareTiming.deriv`,
    or a serializer's row time). With ``keep_rows`` the run lists each row's
    ``(cycle, tile, lane)``, tiles numbered as :func:`fp_tiles` does. ``enter``: per
    error row, the first cycle a step reading it may enter (as :func:`fp_run`).
    """
    t = g.transposed()
    waits = fp_waits(t, rows, enter) if enter is not None else None
    return array_run(fp_tiles(t, rows, bias=False), rows, t.wo, sink_period=sink_period,
                     timing=timing, keep_rows=keep_rows, enter=waits)


def wu_run(g, rows, *, timing=TIMING, enter=None):
    """The WU engine (``rows × kw``) over one sample; its sink never stalls.
    ``enter``: per error row, as :func:`bp_run`."""
    waits = wu_waits(g, enter) if enter is not None else None
    return array_run(wu_tiles(g, rows), rows, g.kw, timing=timing, enter=waits)


def loss_cycles(classes, *, timing=TIMING):
    """Cycles :class:`~fpdeep.rtl.loss.LossUnit` is busy (its output never stalls)."""
    return timing.loss_base + timing.error_frac + classes * timing.loss_per_class


def loss_emit_cycle(classes, index, *, timing=TIMING):
    """Cycle (after ``start``) at which the loss emits class ``index``'s error: the
    division pipeline delivers one class per cycle, the last in the last busy cycle."""
    return loss_cycles(classes, timing=timing) - classes + 1 + index


def sgd_cycles(g, *, timing=TIMING):
    """Busy cycles of one SGD walk over a layer (slice): one per gradient word (a
    row of ``kw`` weights, or a bias) plus one per weight, plus the drain."""
    words = g.cout * (g.cin * g.kh + 1)
    return words + g.weights + timing.sgd_drain


def map_sender_cycles(rows, width):
    """Cycles :class:`~fpdeep.rtl.rowlink.MapSender` is busy with an always-ready sink
    and every row ready: the label, then every word, one per cycle."""
    return 1 + rows * width


def exchange_runs(g, *, timing=TIMING):
    """Words of the gradient sums an owner sends its holder per batch, in the runs its
    :class:`~fpdeep.rtl.weight_update.WeightUpdateUnit` offers them back to back: the
    op word with the first master word's sums, then one run per master word (in
    :class:`~fpdeep.rtl.weight_update.WeightWalk` order: per output channel, ``cin *
    kh`` words of ``kw`` weights, then the bias), a read cycle between runs;
    ``exchange_words`` words per weight."""
    runs = [timing.exchange_words * k for k in ([g.kw] * (g.cin * g.kh) + [1]) * g.cout]
    runs[0] += 1
    return runs


# ---------------------------------------------------------------------------------------
# Links.

class LinkDirection:
    """Words through one direction of a link, message after message.

    A message is a list of *runs*, groups of words that the source offers back to
    back (a row), each with the earliest cycle its first word can be offered; a
    pause in the source between runs closes the packer's frame. The packer takes a word
    when it has a credit (at most ``rx_depth`` words between it and the consumer),
    and a frame needs a free replay slot when it starts. The framer sends committed
    frames one after another; the consumer takes a frame's words from the receiver's
    FIFO one per cycle, from the cycle it is ready.

    A replay slot is free again a fixed ``ack_delay`` after its frame, and a credit
    ``credit_delay`` after its word left the FIFO. With ``returns_on``, the reverse
    direction with all its frames sent, the model follows them instead: each ACK and
    credit is back once the header of the reverse direction's next frame has carried
    it (:meth:`carry`), and this direction's framer sends a CTRL frame whenever it
    is idle with the reverse direction's news to return.
    """

    def __init__(self, timing=TIMING, *, returns_on=None):
        self.t = timing
        self.returns_on = returns_on
        self.framer_next = 0          # first cycle the framer may start a frame
        self.packer_idle = 0          # first cycle the packer may grant
        self.consumed = []            # cycle each word left the receiver's FIFO
        self.frame_begins = []        # the framer's GAP cycle before each data frame
        self.frame_ends = []          # the last symbol of each data frame
        self.header_begins = []       # the same for every frame, CTRL frames too
        self.header_ends = []
        self.words = 0
        self.frames = 0
        self._news_sent = 0           # the reverse direction's news in headers so far

    @property
    def symbols(self):
        """Wire symbols of the data frames sent so far, payload and framing."""
        return self.words + self.frames * self.t.frame_overhead

    @functools.cached_property
    def _news(self):
        """With ``returns_on``: the cycles news for the reverse direction's sender
        reaches this direction's framer, in order: an ACK per frame received, a
        credit per word its consumer took."""
        t, reverse = self.t, self.returns_on
        return sorted([end + t.ack_rx + t.wire_latency for end in reverse.frame_ends] +
                      [cycle + t.credit_rx for cycle in reverse.consumed])

    def send(self, runs, consumer_ready):
        """Send one message.

        Parameters
        ----------
        runs : list of (earliest_offer, words, gap)
            The source offers a run's first word no earlier than ``earliest_offer``
            and ``gap + 1`` cycles after the previous run's last word was taken.
        consumer_ready : int or list of int
            The first cycle the consumer takes words, or per word of the message the
            first cycle it takes that word.

        Returns
        -------
        (accepted, consumed) : lists with, per word, the cycle the packer took it and
        the cycle the consumer took it.
        """
        t = self.t
        accepted, consumed = [], []
        open_frame = 0                # words in the frame being packed
        last = None                   # cycle the previous word was taken
        for earliest, words, gap in runs:
            for p in range(words):
                if p == 0:
                    offer = earliest if last is None else max(earliest, last + 1 + gap)
                    if open_frame and offer > last + 1:     # the source paused: the frame closed
                        self._close(open_frame, last + 1, consumed, consumer_ready)
                        open_frame = 0
                else:
                    offer = last + 1
                credit = self._credit(len(self.consumed) + open_frame)
                if open_frame == t.max_payload:
                    self._close(open_frame, last, consumed, consumer_ready)
                    open_frame = 0
                elif open_frame and credit > offer:
                    # Out of credits: the frame closes in the cycle the word waits.
                    self._close(open_frame, offer, consumed, consumer_ready)
                    open_frame = 0
                if open_frame:
                    take = offer
                else:
                    take = max(offer, self.packer_idle, credit, self._slot_free()) + \
                        t.packer_grant
                accepted.append(take)
                open_frame += 1
                last = take
        if open_frame:
            self._close(open_frame, last + 1, consumed, consumer_ready)
        self._framer_free(math.inf)       # the CTRL frames after the message
        return accepted, consumed

    def _credit(self, index):
        """First cycle word ``index`` of this direction has a credit at the packer."""
        t = self.t
        k = index - t.rx_depth
        if k < 0:
            return 0
        if self.returns_on is None:
            return self.consumed[k] + t.credit_delay + t.wire_latency
        return self.returns_on.carry(self.consumed[k] + t.credit_rx)

    def _slot_free(self):
        """First cycle a new frame has a replay slot."""
        t = self.t
        k = len(self.frame_ends) - t.replay_slots
        if k < 0:
            return 0
        if self.returns_on is None:
            return self.frame_ends[k] + t.ack_delay + 2 * t.wire_latency
        return self.returns_on.carry(self.frame_ends[k] + t.ack_rx + t.wire_latency)

    def carry(self, cycle):
        """The first cycle the far end has the news (an ACK, freed credits) this
        direction's framer has from ``cycle``: the framer puts it in the header of the
        next frame it starts (in a GAP cycle), a data frame if one starts then, else a
        CTRL frame."""
        t = self.t
        begins, ends = self.header_begins, self.header_ends
        gap = cycle
        k = bisect.bisect_left(ends, gap)               # the first frame not over
        if k < len(ends) and begins[k] < gap:
            gap = ends[k] + 1                           # busy: its next GAP
            k += 1
        if k < len(ends) and begins[k] == gap:
            end = ends[k]
        else:
            end = gap + t.frame_overhead - 1            # a CTRL frame: header and CRC
        return end + t.ack_tx + t.wire_latency

    def _framer_free(self, ready):
        """The GAP cycle a data frame committed for cycle ``ready`` starts in: the
        framer's next, after the CTRL frames it sends (with ``returns_on``) while it
        waits, each for the news it has by then. A data frame goes first."""
        t = self.t
        news = self._news if self.returns_on is not None else []
        while self._news_sent < len(news):
            gap = max(self.framer_next, news[self._news_sent])
            if gap >= max(ready, self.framer_next):
                break
            self._header(gap, gap + t.frame_overhead - 1)
        return max(ready, self.framer_next)

    def _header(self, begin, end):
        """A frame from GAP cycle ``begin`` to its last symbol ``end``: its header
        carries the news the framer has in ``begin``."""
        self.header_begins.append(begin)
        self.header_ends.append(end)
        self.framer_next = end + 1                      # at least one idle symbol
        if self.returns_on is not None:
            self._news_sent = bisect.bisect_right(self._news, begin)

    def _close(self, length, cycle, consumed, consumer_ready):
        """Commit the frame of ``length`` words closed in ``cycle``; send and deliver it."""
        t = self.t
        self.packer_idle = cycle + 1
        begin = self._framer_free(cycle + 1)            # the framer's GAP cycle
        end = begin + 2 + length + 2                    # header, payload, CRC
        self._header(begin, end)
        self.frame_begins.append(begin)
        self.frame_ends.append(end)
        self.frames += 1
        self.words += length
        # The frame's words reach the FIFO's output one per cycle from ``first``; the
        # consumer takes one per cycle once ready, after the words before.
        first = end + t.rx_delay + t.wire_latency
        previous = self.consumed[-1] if self.consumed else -1
        for k in range(length):
            ready = (consumer_ready if isinstance(consumer_ready, int) else
                     consumer_ready[len(consumed)])
            previous = max(first + k, previous + 1, ready)
            consumed.append(previous)
            self.consumed.append(previous)


# ---------------------------------------------------------------------------------------
# Chips.

@dataclass
class SliceSpec:
    """Output channels ``[lo, hi)`` of a layer on one chip, and the rows of its engines."""
    layer: GatewareLayer
    lo: int
    hi: int
    fp: int = 1
    bp: int = 0          # 0 for the network's first layer, which has no BP
    wu: int = 1

    @property
    def geometry(self):
        return self.layer.geometry.channels(self.lo, self.hi)

    @property
    def has_bp(self):
        return self.layer.index > 0

    @property
    def channels(self):
        return self.hi - self.lo

    def pes(self):
        g = self.geometry
        return self.fp * g.wo + self.wu * g.kw + (self.bp * g.w if self.has_bp else 0)

    def engine_shapes(self):
        """``{kind: (rows, cols)}`` of the engines as built."""
        g = self.geometry
        shapes = {"fp": (self.fp, g.wo), "wu": (self.wu, g.kw)}
        if self.has_bp:
            shapes["bp"] = (self.bp, g.w)
        return shapes


#: Feature-memory slots of a chip nobody sized (``TrainingCore(slots=2)``).
DEFAULT_SLOTS = 2


@dataclass
class ChipSpec:
    """One chip: whole layers (``parts == 1``), or slice ``part`` of ``parts`` of a layer.

    ``slots`` is the depth of its feature memories: how many samples its forward path
    may run ahead of its backward path (:func:`choose_slots` sizes it). ``remote`` and
    ``held`` are its weight balancing (:func:`place_masters` sets them).
    """
    index: int
    slices: list
    part: int = 0
    parts: int = 1
    #: ``(forward, backward)`` cycles per sample by :func:`_estimate`, once planned.
    estimate: tuple = None
    slots: int = DEFAULT_SLOTS
    #: The name of its layer whose masters and velocities the next chip holds, or None.
    remote: str = None
    #: The previous chip's :class:`SliceSpec` whose masters and velocities it holds.
    held: SliceSpec = None

    @property
    def split(self):
        return self.parts > 1

    @property
    def first_layer(self):
        return self.slices[0].layer

    @property
    def last_layer(self):
        return self.slices[-1].layer

    def pes(self):
        return sum(s.pes() for s in self.slices)

    def multipliers(self, *, last, timing=TIMING):
        """PEs plus the multipliers outside the engines."""
        return (self.pes() + timing.reserved_multipliers_per_layer * len(self.slices)
                + (timing.reserved_multipliers_loss if last else 0))

    def describe(self):
        if self.split:
            s = self.slices[0]
            return f"{s.layer.name}[{s.lo}:{s.hi}]"
        return "+".join(s.layer.name for s in self.slices)


def _map_rows(shape):
    """Word counts of a map's rows, as :class:`~fpdeep.rtl.rowlink.MapSender` sends them."""
    c, h, w = shape
    return [w] * (c * h)


def _input_shape(layer, layers):
    g = layer.geometry
    return (g.cin, g.h, g.w) if layer.index == 0 else layers[layer.index - 1].out_shape


def _messages(chip, layers, *, chain_first, chain_last, timing=TIMING):
    """The traffic of one chip, per sample.

    Returns a dict of row lists: ``act_in`` (the label and input map), ``gather_in``
    (on a slice chip after the first, the slices before it, after the input),
    ``input_out`` (on a slice chip with more of the layer behind it, its input map,
    sent on as its FP starts) and ``act_out`` (the output map of ``out_shape``, sent
    as its rows are written) as word counts per row, the label with the first of a
    message; ``err_in`` and ``err_out`` (``(words, kind, channel)`` per framed row,
    kind ``"error"`` or ``"partial"``).
    """
    first, last = chip.first_layer, chip.last_layer
    x_rows = _map_rows(_input_shape(first, layers))
    oc, oh, ow = first.out_shape

    def labelled(rows):
        return [1 + rows[0]] + rows[1:]

    def slices_before(hi):
        return _map_rows((hi, oh, ow)) if hi else []

    def up_rows(part, lo):
        """What slice ``part`` (first channel ``lo``) of ``first`` sends up."""
        rows = [(ow + 2, "error", ch) for ch in range(lo) for _ in range(oh)] if part else []
        if first.index > 0:
            g = first.geometry
            words = timing.partial_words * g.w + 2 if part else g.w + 2
            rows += [(words, "partial" if part else "error", ch)
                     for ch in range(g.cin) for _ in range(g.h)]
        return rows

    lo, hi = chip.slices[0].lo, chip.slices[0].hi
    lc, lh, lw = last.out_shape
    out_shape = (hi, lh, lw) if chip.split else last.out_shape
    act_in = labelled(x_rows)
    gather_in = slices_before(lo) if chip.split else []
    input_out = []
    if chain_last:
        act_out, err_in = [], []
    elif chip.split and chip.part < chip.parts - 1:
        input_out = labelled(x_rows)
        act_out = slices_before(hi)
        err_in = up_rows(chip.part + 1, hi)
    else:
        act_out = labelled(_map_rows(last.out_shape))
        err_in = [(lw + 2, "error", ch) for ch in range(lc) for _ in range(lh)]
    err_out = up_rows(chip.part if chip.split else 0, lo if chip.split else 0)
    if first.index == 0 and not (chip.split and chip.part):
        err_out = []
    return {"act_in": act_in, "gather_in": gather_in, "input_out": input_out,
            "act_out": act_out, "out_shape": out_shape, "err_in": err_in, "err_out": err_out}


@functools.lru_cache(maxsize=None)
def _fp_cached(g, rows, timing):
    return fp_run(g, rows, timing=timing)


@functools.lru_cache(maxsize=None)
def _wu_cached(g, rows, timing, enter):
    return wu_run(g, rows, timing=timing, enter=enter)


@functools.lru_cache(maxsize=None)
def _bp_cached(g, rows, sink, timing, keep_rows=False, enter=None):
    return bp_run(g, rows, sink_period=sink, timing=timing, keep_rows=keep_rows, enter=enter)


@functools.lru_cache(maxsize=None)
def _fp_streamed(g, rows, enter, timing):
    """:func:`fp_run` with its input rows entering from ``enter`` (a tuple); the
    pattern repeats from sample to sample, so a cache saves most of the walks."""
    return fp_run(g, rows, timing=timing, enter=enter, keep_rows=True)


def _rows_visible(run, sl, timing):
    """Per row of a slice's FP output map (pooled if it pools), the cycle after
    ``start`` from which the next reader sees it: its last channel's row written,
    and with pooling the odd row's pooled row after it."""
    g = sl.geometry
    tiles = -(-g.cout // sl.fp)
    done = [0] * g.ho
    for cycle, n, _ in run.rows:
        done[n // tiles] = max(done[n // tiles], cycle)
    if sl.layer.pool:
        return [done[2 * y + 1] + timing.pool_delay + timing.row_visible
                for y in range(g.ho // 2)]
    return [cycle + timing.row_visible for cycle in done]


@dataclass
class _ChipRuns:
    """The engine runs of one chip, and what its backward path sends up.

    The backward path starts every BP and WU engine at once (BACK_START); each
    takes its error rows as the BP behind it stores them, so its timing is that of
    the chip alone: ``bp_span`` and ``wu_end`` count from BACK_START. ``fp``, ``bp``
    and ``wu`` are the engines' runs with every input there (their busy counters
    leave out waits for rows).
    """
    fp: list                  # per slice: EngineRun
    bp: list                  # per slice: EngineRun or None
    bp_span: list             # per slice: until BP is idle and its sink took the last row
    wu: list                  # per slice: EngineRun
    wu_end: list              # per slice: the WU engine's busy end, waits included
    sgd: int                  # busy cycles of the SGD walk (the slowest local layer's)
    exchange: ConvGeometry    # the layer (slice) whose masters the next chip holds, or None
    loss: int                 # 0 unless the chip takes the loss
    up_offsets: list          # per BP row sent up: cycle after BACK_START it is offered
    up_words: int
    up_rows: list             # per BP row sent up: (channel, row), the BP's output order
    recv_period: int          # period of the derivative behind the link


def _errors_stored(run, s, prev, timing):
    """Per row of ``prev``'s conv output map (the error store in front of slice ``s``'s
    BP), the first cycle after BACK_START that a step reading it may enter an
    engine: the derivative takes each BP row as it leaves, a row is complete with
    its last channel, and the store shows it ``row_visible`` later."""
    g = s.geometry.transposed()
    tiles = -(-g.cout // s.bp)
    post = prev.relu or prev.pool
    rows_out = 2 if prev.pool else 1
    delay = timing.deriv_latency if post else 0
    written = {}
    for cycle, n, lane in run.rows:
        channel, y = n % tiles * s.bp + lane, n // tiles
        if channel == g.cout - 1:
            for k in range(rows_out):
                written[y * rows_out + k] = cycle + delay + k
    return tuple(written[r] + timing.row_visible + 1 for r in range(len(written)))


def _backward(chip, enter, timing):
    """A chip's backward engines from BACK_START, its last slice's error rows entering
    from ``enter`` (``None``: all in): per slice the BP span and the WU busy end, and
    for the rows its first BP sends up, their offsets and ``(channel, row)``."""
    bp_span, wu_end = [], []
    up_offsets, up_rows = [], []
    for k in reversed(range(len(chip.slices))):
        s = chip.slices[k]
        g = s.geometry
        wu_end.append(_wu_cached(g, s.wu, timing, enter).busy)
        if not s.has_bp:
            bp_span.append(0)
            continue
        if k == 0:
            # Into the serializer (via PartialSum on a chip that adds the slices after it).
            run = _bp_cached(g, s.bp, _bp_sink(chip, k, timing), timing, True, enter)
            adds = chip.split and chip.part < chip.parts - 1
            delay = 1 + (timing.partial_latency if adds else 0)
            up_offsets = [cycle + delay for cycle, _, _ in run.rows]
            tiles = -(-g.cin // s.bp)
            up_rows = [(n % tiles * s.bp + lane, n // tiles) for _, n, lane in run.rows]
            bp_span.append(run.busy)
        else:
            # BACK_WAIT also waits for the derivative to take the last row and be
            # ready again, ``period`` cycles after.
            prev = chip.slices[k - 1].layer
            period = _bp_sink(chip, k, timing)
            run = _bp_cached(g, s.bp, period, timing, True, enter)
            bp_span.append(max(run.busy, run.rows[-1][0] + period - 1))
            enter = _errors_stored(run, s, prev, timing)
    return bp_span[::-1], wu_end[::-1], up_offsets, up_rows


def _up_words(chip, timing):
    """Words per row that the chip's first BP sends up (raw partial sums on a slice
    chip after the first of its layer)."""
    g = chip.slices[0].geometry
    raw = chip.split and chip.part > 0
    return timing.partial_words * g.w + 2 if raw else g.w + 2


def _bp_sink(chip, k, timing):
    """Cycles per row the consumer of slice ``k``'s BP takes: the serializer up the
    link for the chip's first slice, else the derivative of the layer in front."""
    if k == 0:
        return _up_words(chip, timing) + timing.serializer_gap
    prev = chip.slices[k - 1].layer
    return timing.deriv(prev.relu, prev.pool)


def _errors_arriving(chip, rows, row_ends, start, timing):
    """``enter`` (for :func:`_backward`) of the error rows a chip takes from the link:
    ``rows`` are the received rows in order, ``(words, kind, channel, row)``, and
    ``row_ends`` the cycle each one's last word was taken. A row leaves the
    deserializer into the last layer's derivative, then its store; ``start`` is
    BACK_START."""
    last = chip.last_layer
    hi = chip.slices[-1].hi
    post = last.relu or last.pool
    rows_out = 2 if last.pool else 1
    delay = timing.deser_latency + (timing.deriv_latency if post else 0)
    written = {}
    for (_, kind, channel, row), end in zip(rows, row_ends):
        if kind == "error" and channel == hi - 1:
            for k in range(rows_out):
                written[row * rows_out + k] = end + delay + k
    return tuple(written[r] + timing.row_visible + 1 - start for r in range(len(written)))


def _chip_runs(chip, layers, *, chain_last, timing):
    fp = [_fp_cached(s.geometry, s.fp, timing) for s in chip.slices]
    wu = [_wu_cached(s.geometry, s.wu, timing, None) for s in chip.slices]
    bp = []
    for k, s in enumerate(chip.slices):
        if not s.has_bp:
            bp.append(None)
            continue
        bp.append(_bp_cached(s.geometry, s.bp, _bp_sink(chip, k, timing), timing))
    bp_span, wu_end, up_offsets, up_rows = _backward(chip, None, timing)
    sgd = max((sgd_cycles(s.geometry, timing=timing) for s in chip.slices
               if s.layer.name != chip.remote), default=0)
    exchange = next((s.geometry for s in chip.slices if s.layer.name == chip.remote), None)
    loss = loss_cycles(layers[-1].geometry.cout, timing=timing) if chain_last else 0
    last = chip.last_layer
    return _ChipRuns(fp, bp, bp_span, wu, wu_end, sgd, exchange, loss, up_offsets,
                     _up_words(chip, timing), up_rows, timing.deriv(last.relu, last.pool))


# ---------------------------------------------------------------------------------------
# The chain.

def simulate(chips, layers, *, batch_size, batches=4, slots=None, timing=TIMING):
    """Run the chain's schedule over ``batches`` mini-batches and return its figures.

    Samples are walked in order: the forward path of sample ``s`` on every chip,
    front to back, then its backward path, back to front. That order respects every
    dependency of the schedule (forward of ``s`` waits at most for backward of
    ``s - 1``; backward of ``s`` never waits for a later sample).

    Parameters
    ----------
    chips : list of ChipSpec
    layers : list of GatewareLayer
    batch_size : int
    batches : int
        At least 3; the steady state is measured between the end of the SGD steps
        of the second and of the last batch.
    slots : list of int, optional
        Feature-memory slots per chip; by default each chip's ``slots``.

    Returns
    -------
    dict
        ``cycles_per_sample`` of the cluster (steady state, SGD amortized),
        ``latency_cycles`` (chip 0, first sample, load to backward done),
        ``run_cycles`` (per ``k``, cycles from the first load to the end of
        batch ``k``'s SGD step on every chip), ``perf_cycles`` (per ``k``, the
        largest ``perf_cycles`` counter of a chip after ``k`` batches from a cold
        start: a chip counts from its first word; ``fpdeep sim`` reports it over
        the samples), ``slots`` (per chip, as simulated), and per chip in ``chips``:
        ``cycles_per_sample``, ``engines`` (busy cycles, steps and busy fraction per
        sample), ``phases_per_sample`` (cycles per sample each sequencer spends
        per phase), ``feature_slots`` (the depth simulated),
        ``feature_slots_peak`` (as ``perf_slots_peak``: the most samples forwarded
        and not yet backed), ``slots_in_use_max`` (counting the sample being
        loaded), ``slot_wait_per_sample`` (cycles per sample its forward path could
        have loaded, the sample offered, but waited for a free slot),
        ``latency_cycles`` (its first sample, first word to backward done), ``link_down``
        / ``link_up`` (on the link to the next chip: payload words, frames and wire
        symbols per sample).

    Raises
    ------
    ValueError
        If ``batches`` is below 3, or ``slots`` does not give every chip at least one.
    """
    if batches < 3:
        raise ValueError("simulate needs at least 3 batches")
    n = len(chips)
    slots = [chip.slots for chip in chips] if slots is None else list(slots)
    if len(slots) != n or not all(isinstance(k, int) and k >= 1 for k in slots):
        raise ValueError(f"slots must be a positive int per chip ({n}), not {slots!r}")
    msgs = [_messages(chip, layers, chain_first=c == 0, chain_last=c == n - 1, timing=timing)
            for c, chip in enumerate(chips)]
    runs = [_chip_runs(chip, layers, chain_last=c == n - 1, timing=timing)
            for c, chip in enumerate(chips)]
    _order_errors(chips, layers, msgs, runs)
    down = [LinkDirection(timing) for _ in range(n - 1)]   # chip c -> c + 1: activations
    up = [LinkDirection(timing) for _ in range(n - 1)]     # chip c + 1 -> c: errors
    # The WGT channel: it never shares the wire with ACT or ERR (see exchange_step).
    wgt = [[] for _ in range(n)]      # chip c -> c + 1 and back: (down, up) per exchange
    samples = batches * batch_size
    ox = timing.engine_overhead

    first_word = [0] * n               # the cycle each chip takes its first word
    fwd_free = [0] * n                 # first cycle the forward path may load
    idle_from = [0] * n                # first cycle of the backward path's IDLE
    load = [[0] * samples for _ in range(n)]
    fdone = [[0] * samples for _ in range(n)]
    bdone = [[0] * samples for _ in range(n)]
    sgd_done = [[] for _ in range(n)]
    unblocked = [0] * n                # when each chip could load but for its slots
    bp_stall = [0] * n                 # cycles the first layer's BP waited for the link
    backward_cache = {}                # (chip, error rows' arrival pattern): _backward
    slot_wait = [0] * n
    phase_names = ("load", "fp", "done", "idle", "loss", "bp", "wu_wait", "sgd")
    phases = [dict.fromkeys(phase_names, 0) for _ in range(n)]

    for s in range(samples):
        batch, index = divmod(s, batch_size)
        # ---- forward: the first cycle each chip may load sample s, then chip by chip.
        for c in range(n):
            start = fwd_free[c]
            if index == 0 and batch:
                start = max(start, sgd_done[c][batch - 1])
            unblocked[c] = start
            if s >= slots[c]:
                start = max(start, bdone[c][s - slots[c]] + 1)
            load[c][s] = start
        slot_wait[0] += load[0][s] - unblocked[0]
        arrived = gathered = None       # what chip c takes from chip c - 1 (words' cycles)
        for c, chip in enumerate(chips):
            r, p, m = runs[c], phases[c], msgs[c]
            start = load[c][s]
            if c == 0:
                words = sum(m["act_in"])
                arrived = [start + k // timing.host_words_per_cycle for k in range(words)]
                first_word[0] = load[0][0]
            elif s == 0:
                first_word[c] = arrived[0]
            # FP starts with the label, or once the whole input is in on a chip that
            # sends it on; then every part of the forward path runs at once.
            sends_input = bool(m["input_out"])
            fp_start = (arrived[-1] if sends_input else arrived[0]) + 1
            p["load"] += fp_start - start
            x_shape = _input_shape(chip.first_layer, layers)
            visible = [fp_start] * x_shape[1] if sends_input else [
                arrived[(y + 1) * x_shape[0] * x_shape[2]] + timing.row_visible
                for y in range(x_shape[1])]
            idle = [arrived[-1] + 1]
            for k, sl in enumerate(chip.slices):
                enter = tuple(v - fp_start + 1 for v in visible)
                run = _fp_streamed(sl.geometry, sl.fp, enter, timing)
                idle.append(fp_start + run.busy + 1)
                visible = [fp_start + v for v in _rows_visible(run, sl, timing)]
            if m["gather_in"]:
                # Channels 0 .. lo from the slices in front, then row by row as own.
                lo = chip.slices[0].lo
                ow = chip.last_layer.out_shape[2]
                visible = [max(v, gathered[(y + 1) * lo * ow - 1] + timing.row_visible)
                           for y, v in enumerate(visible)]
                idle.append(gathered[-1] + 1)
            if c < n - 1:
                # The label leaves as FP starts, each row of the output map once written
                # (row y of every channel in turn); a chip that sends its input on
                # sends the label and input first, the channels so far after it.
                oc, oh, ow = m["out_shape"]
                rows = [(v + 1, ow, 0) for v in visible for _ in range(oc)]
                offer = fp_start + 1
                slot_wait[c + 1] += max(0, load[c + 1][s] - max(unblocked[c + 1], offer))
                if sends_input:
                    accepted, arrived = down[c].send([(offer, sum(m["input_out"]), 0)],
                                                     load[c + 1][s])
                    rows[0] = (max(rows[0][0], fp_start + 2, accepted[-1] + 1),) + rows[0][1:]
                    # Chip c + 1 gathers from its own FP start on.
                    gather_ready = (arrived[-1] if msgs[c + 1]["input_out"] else
                                    arrived[0]) + 2
                    accepted, gathered = down[c].send(rows, gather_ready)
                else:
                    accepted, arrived = down[c].send([(offer, 1, 0)] + rows, load[c + 1][s])
                idle.append(accepted[-1] + 1)
            t = max(idle) + timing.fp_wait_tail
            p["fp"] += t - fp_start
            fdone[c][s] = t
            p["done"] += timing.done_cycles
            fwd_free[c] = t + timing.done_cycles
        # ---- backward: from the last chip to the first.
        begin = [max(idle_from[c], fdone[c][s] + 1) + timing.idle_cycles for c in range(n)]
        arrived = None
        for c in reversed(range(n)):
            chip, r, p = chips[c], runs[c], phases[c]
            t = begin[c]
            p["idle"] += t - idle_from[c]
            relay = []                  # rows of other slices' errors, sent on up
            if c == n - 1:
                if chip.split:
                    classes = layers[-1].geometry.cout
                    relay = [(t + loss_emit_cycle(classes, k, timing=timing) + 1, 3,
                              timing.serializer_gap) for k in range(chip.slices[0].lo)]
                t += r.loss + timing.loss_overhead
                p["loss"] += r.loss + timing.loss_overhead
            bp_span, wu_end, up_offsets = r.bp_span, r.wu_end, r.up_offsets
            received = t
            rows_in, row_ends = [], []       # the error rows this chip takes, and when
            if c < n - 1:
                # BACK_START right away: the engines take the error rows as they come.
                rows_in = msgs[c]["err_in_rows"]
                row_ends = [arrived[end - 1] for end in
                            itertools.accumulate(words for words, *_ in rows_in)]
                if chip.split and chip.part:
                    relay = [(end + 2, words, timing.serializer_gap)
                             for (words, kind, channel, _), end in zip(rows_in, row_ends)
                             if kind == "error" and channel < chip.slices[0].lo]
                enter = _errors_arriving(chip, rows_in, row_ends, t, timing)
                if (c, enter) not in backward_cache:
                    backward_cache[c, enter] = _backward(chip, enter, timing)
                bp_span, wu_end, up_offsets, _ = backward_cache[c, enter]
                # BACK_WAIT sees the whole map in (the last row through the derivative).
                received = arrived[-1] + timing.receive_tail + r.recv_period + ox - 2
            # BACK_START: every BP and WU engine at once (see _ChipRuns).
            wu_idle = max(t + end + timing.rmw_tail + 1 for end in wu_end)
            end = max(t + max(bp_span) + ox, received)
            if c > 0:
                offers = [t + offset for offset in up_offsets]
                # PartialSum adds the n-th incoming partial row to the n-th own one, so
                # an own row leaves no earlier than its partner is stored.
                partners = [end for (_, kind, _, _), end in zip(rows_in, row_ends)
                            if kind == "partial"]
                for k, end in enumerate(partners[:len(offers)]):
                    offers[k] = max(offers[k], end + timing.deser_latency +
                                    timing.row_visible + 1 + timing.partial_latency)
                rows = relay + [(offer, r.up_words, timing.serializer_gap) for offer in offers]
                accepted, arrived = up[c - 1].send(rows, begin[c - 1])
                if up_offsets:
                    end = max(end, accepted[-1] + ox)
                    # A link short of credits holds the serializer, which holds the
                    # BP engine's rows: its busy ends as late as its last row leaves.
                    nominal = t + up_offsets[-1]
                    before = len(accepted) - r.up_words - 1
                    if before >= 0:
                        bp_stall[c] += max(0, accepted[before] + 1 +
                                           timing.serializer_gap - nominal)
            p["bp"] += end - t
            t = end
            done = max(t, wu_idle)
            p["wu_wait"] += done - t + 1
            bdone[c][s] = done
            if index == batch_size - 1:
                finished = done + r.sgd + timing.sgd_overhead
                if r.exchange is not None:
                    end, *directions = _exchange_cached(r.exchange, timing)
                    wgt[c].append(directions)
                    finished = max(finished, done + end)
                p["sgd"] += finished - done - 1
                sgd_done[c].append(finished)
                idle_from[c] = finished
            else:
                idle_from[c] = done + 1

    per = batch_size * (batches - 2)
    out = []
    for c, chip in enumerate(chips):
        r = runs[c]
        period = (sgd_done[c][-1] - sgd_done[c][1]) / per
        engines = {}
        for k, s_ in enumerate(chip.slices):
            for kind, run in (("fp", r.fp[k]), ("bp", r.bp[k]), ("wu", r.wu[k])):
                if run is None:
                    continue
                rows, cols = s_.engine_shapes()[kind]
                busy = run.busy + (bp_stall[c] / samples if kind == "bp" and k == 0 else 0)
                engines[f"{s_.layer.name}.{kind}"] = {
                    "rows": rows, "cols": cols, "pes": rows * cols,
                    "busy_cycles_per_sample": busy, "steps_per_sample": run.steps,
                    "busy_fraction": busy / period,
                    "step_fraction": run.steps / period}
        out.append({
            "cycles_per_sample": period,
            "engines": engines,
            "phases_per_sample": {k: v / samples for k, v in phases[c].items()},
            "feature_slots": slots[c],
            "loss_cycles": r.loss,
            "sgd_cycles_per_batch": r.sgd,
            "feature_slots_peak": _peak([(fdone[c][s] + 1, 1) for s in range(samples)] +
                                        [(bdone[c][s] + 1, -1) for s in range(samples)]),
            "slots_in_use_max": _peak([(load[c][s], 1) for s in range(samples)] +
                                      [(bdone[c][s] + 1, -1) for s in range(samples)]),
            "slot_wait_per_sample": slot_wait[c] / samples,
            "latency_cycles": bdone[c][0] - first_word[c],
            "link_down": _link_figures([down[c]], samples) if c < n - 1 else None,
            "link_up": _link_figures([up[c]], samples) if c < n - 1 else None,
            "wgt_down": (_link_figures([d for d, _ in wgt[c]], batches, "batch")
                         if wgt[c] else None),
            "wgt_up": (_link_figures([u for _, u in wgt[c]], batches, "batch")
                       if wgt[c] else None),
        })
    first = load[0][0]
    return {"cycles_per_sample": max(chip["cycles_per_sample"] for chip in out),
            "latency_cycles": bdone[0][0] - first,
            "run_cycles": {k + 1: max(sgd_done[c][k] for c in range(n)) - first
                           for k in range(batches)},
            "perf_cycles": {k + 1: max(sgd_done[c][k] - first_word[c] - 1 for c in range(n))
                            for k in range(batches)},
            "slots": slots,
            "chips": out}


def _order_errors(chips, layers, msgs, runs):
    """Put each chip's error rows in the order they travel: relayed rows in the order
    they arrived (classes in order from the loss), then BP rows in the engine's
    output order (tile, row, lane)."""
    n = len(chips)
    for c in reversed(range(1, n)):
        chip = chips[c]
        relay = []
        if chip.split and chip.part:
            lo = chip.slices[0].lo
            if c == n - 1:
                relay = [(3, "error", k, 0) for k in range(lo)]
            else:
                relay = [row for row in msgs[c]["err_in_rows"]
                         if row[1] == "error" and row[2] < lo]
        kind = "partial" if chip.split and chip.part else "error"
        bp = [(runs[c].up_words, kind, channel, y) for channel, y in runs[c].up_rows]
        rows = relay + bp
        if sorted(row[:3] for row in rows) != sorted(msgs[c]["err_out"]):
            raise AssertionError(f"chip {c}: error rows out of step with the message plan")
        msgs[c]["err_out"] = [row[:3] for row in rows]
        msgs[c - 1]["err_in"] = [row[:3] for row in rows]
        msgs[c - 1]["err_in_rows"] = rows


def _peak(events):
    """Most intervals open at once; ``events`` are ``(cycle, +1 / -1)``, ends first on ties."""
    level = peak = 0
    for _, delta in sorted(events, key=lambda e: (e[0], e[1])):
        level += delta
        peak = max(peak, level)
    return peak


def _link_figures(links, count, per="sample"):
    """Payload words, frames and wire symbols of ``links`` (directions), per ``count``."""
    return {f"{what}_per_{per}": sum(getattr(link, what) for link in links) / count
            for what in ("words", "frames", "symbols")}


#: Rounds at most of sending an exchange's two directions in turn
#: (:func:`exchange_step`): about a second for LeNet-5's largest, once per slice.
EXCHANGE_ROUNDS = 20


@functools.lru_cache(maxsize=None)
def _exchange_cached(g, timing):
    """:func:`exchange_step` from cycle 0: the link is idle when an exchange starts,
    so the cycles it takes do not depend on when."""
    return exchange_step(g, 0, timing=timing)


def exchange_step(g, start, *, timing=TIMING):
    """The SGD step of a layer (slice) ``g`` whose masters and velocities the next chip
    holds, its owner's ``start_update`` in cycle ``start``.

    The owner offers the gradient sums (:func:`exchange_runs`) from the next cycle on;
    the holder takes them one word per cycle as they arrive, but a weight's last word
    only while fewer than ``holder_copies`` copies wait in its pipeline and FIFO, and
    offers the weight's new copy ``holder_latency`` cycles after; the owner takes the
    copies as they arrive and ends ``exchange_tail`` cycles after the last.

    The WGT channel has the link to itself meanwhile (the owner's errors of the batch
    are all in, and its next forward, the only ACT it sends and what the holder's
    next errors wait for, waits for this step), so each direction starts idle. Both
    carry words at once, and each carries the other's ACKs and credits in its frame
    headers (``returns_on``): the two directions are sent in turn, each with the
    other's frames from the turn before, until neither changes, at most
    :data:`EXCHANGE_ROUNDS` times. Each round is exact at least one round trip
    further on than the one before: the exchanges of digits' layers settle in two to
    five rounds, and are exact. A long one settles later: LeNet-5's fc1[0:30] (12,030
    weights) measures 40,842 cycles in Amaranth's simulator, and the rounds give
    39,857 after one, 41,006 after 5, 40,987 after 20 (the limit, 0.4 % over) and
    40,842 after 200.

    Returns
    -------
    (end, down, up) : the cycle the step (the core's UPDATE_WAIT) ends, and the two
    :class:`LinkDirection`.
    """
    w = timing.exchange_words
    runs = exchange_runs(g, timing=timing)
    offer = [(start + 1, runs[0], 0)] + [(start + 1, words, 1) for words in runs[1:]]
    ready = [start + 1] * sum(runs)
    up = settled = None
    for _ in range(EXCHANGE_ROUNDS):
        down = LinkDirection(timing, returns_on=up)
        _, taken = down.send(offer, ready)
        # taken[0] is the op word; weight k's last word is taken[w * (k + 1)].
        copies = [(cycle + timing.holder_latency, 1, 0) for cycle in taken[w::w]]
        up = LinkDirection(timing, returns_on=down)
        accepted, back = up.send(copies, start + 1)
        sent = (down.frame_ends, taken, up.frame_ends, accepted, back)
        if sent == settled:
            break
        settled = sent
        # A copy the packer takes leaves room in the holder's FIFO a cycle later.
        for k, cycle in enumerate(accepted[:len(accepted) - timing.holder_copies]):
            ready[w * (k + timing.holder_copies + 1)] = cycle + 1
    return back[-1] + timing.exchange_tail, down, up


# ---------------------------------------------------------------------------------------
# Planning: which layers go where, and the engines' rows.

#: Candidate chains (cheapest by the estimate) that :func:`plan_chips` runs through
#: :func:`simulate` before choosing.
SIMULATED_CANDIDATES = 6
#: At most this many groupings of layers into chips are costed; beyond, the groupings
#: with the fewest splits come first.
GROUPING_LIMIT = 20_000
#: Channel ranges of a split layer: all compositions when there are at most this many,
#: else the even split and its neighbours.
RANGE_LIMIT = 64
#: Rounds of moving split boundaries by one channel (:func:`_refine`).
REFINE_ROUNDS = 8
#: How many larger row counts :func:`choose_rows` tries per engine and step.
ROW_LOOKAHEAD = 8
#: Mini-batches :func:`simulate` runs while choosing among chains (the fewest that
#: give a steady state), and for the chosen plan's figures.
SEARCH_BATCHES = 3
SIMULATED_BATCHES = 4


def max_chips(layers):
    """Most chips the gateware can spread ``layers`` over: one output channel each."""
    return sum(layer.geometry.cout for layer in layers)


def feature_bits(chip, layers):
    """Block RAM bits of one feature slot of a chip: one sample's copy of its first
    layer's input map, each local layer's output map (and the pooled map), and on a
    slice chip the slices of the chips before it (``TrainingCore``'s feature
    memories, which hold ``slots`` of these)."""
    bits = 0
    for k, s in enumerate(chip.slices):
        g = s.geometry
        if k == 0:
            c, h, w = _input_shape(s.layer, layers)
            bits += c * h * w * 16
        bits += g.cout * g.ho * g.wo * 16
        if s.layer.pool:
            bits += g.cout * (g.ho // 2) * (g.wo // 2) * 16
    if chip.split:
        _, h, w = chip.first_layer.out_shape
        bits += chip.slices[0].lo * h * w * 16
    return bits


def memory_bits(chip, layers, *, slots=None):
    """Block RAM bits one chip needs, roughly, by use.

    ``features``: ``slots`` (by default the chip's) feature slots
    (:func:`feature_bits`); ``errors``: the error stores (lane and row layouts);
    ``weights``: per weight the FP and BP 16-bit copies and the 48-bit gradient sum,
    and unless the layer is the chip's ``remote`` one its masters and velocities
    (:func:`master_bits`); ``relay``: on a slice chip after the first of a layer with
    BP, the 48-bit partial sums it adds; ``held``: the masters and velocities it holds
    for the previous chip.
    """
    slots = chip.slots if slots is None else slots
    out = dict.fromkeys(("features", "errors", "weights", "relay", "held"), 0)
    out["features"] = feature_bits(chip, layers) * slots
    for s in chip.slices:
        g = s.geometry
        maps = g.cout * g.ho * g.wo
        out["errors"] += -(-g.cout // s.wu) * s.wu * g.ho * g.wo * 16
        if s.has_bp:
            out["errors"] += maps * 16
            out["weights"] += -(-g.cin // s.bp) * s.bp * g.cout * g.kh * g.kw * 16
        out["weights"] += -(-g.cout // s.fp) * s.fp * (g.cin * g.kh * g.kw + 1) * 16
        out["weights"] += g.cout * (g.cin * g.kh + 1) * g.kw * 48
        if s.layer.name != chip.remote:
            out["weights"] += master_bits(g)
    if chip.split and chip.first_layer.index > 0:
        g = chip.first_layer.geometry
        out["relay"] += g.cin * g.h * g.w * 48
    if chip.held is not None:
        out["held"] = master_bits(chip.held.geometry)
    out["total"] = sum(out.values())
    return out


def master_bits(g):
    """Bits of a layer's (slice's) 32-bit masters and 32-bit velocities: ``kw`` per
    gradient word, the bias padded to a word, as
    :class:`~fpdeep.rtl.weight_update.WeightUpdateUnit` and
    :class:`~fpdeep.rtl.weight_holder.WeightHolder` store them."""
    return g.cout * (g.cin * g.kh + 1) * g.kw * (32 + 32)


def _does_not_fit(chip, layers, board):
    """Why ``chip`` (its masters placed as they are) does not fit ``board`` with one
    feature slot, in one line."""
    need = memory_bits(chip, layers, slots=1)["total"]
    what = "one feature slot and its weights and errors"
    if chip.remote is not None:
        what += f" (its {chip.remote} masters and velocities on chip {chip.index + 1})"
    if chip.held is not None:
        what += (f" plus the {chip.held.layer.name} masters and velocities it holds for chip "
                 f"{chip.index - 1}")
    return (f"chip {chip.index} ({chip.describe()}) does not fit {board.name}: {what} need "
            f"{need / 1e6:.3g} Mb, it has {board.bram_bits / 1e6:.3g} Mb")


def _place(chip, layers, board, *, last):
    """Weight balancing for one chip, with what it holds for the chip in front: all its
    masters stay if it fits with one feature slot; else the masters and velocities of
    its layer with the fewest weights that makes it fit go to the next chip
    (``chip.remote``; not from the last chip of the chain).

    Returns
    -------
    None, or ``(shortfall, why)``: the bits it lacks even with its heaviest layer's
    masters moved, and why in one line.
    """
    movable = [] if last else sorted(chip.slices, key=lambda s: s.geometry.weights)
    for remote in [None] + [s.layer.name for s in movable]:
        chip.remote = remote
        shortfall = memory_bits(chip, layers, slots=1)["total"] - board.bram_bits
        if shortfall <= 0:
            return None
    why = _does_not_fit(chip, layers, board)
    chip.remote = None
    return shortfall, why


def place_masters(chips, layers, boards, *, chain_end=True):
    """Weight balancing as the gateware builds it, front to back: a chip that does not
    fit its board with one feature slot moves one layer's masters and velocities to
    the next chip (:func:`_place`), which then fits that as well or moves one of its
    own on. So an owner has one layer held, a holder holds one layer, and the holder
    is the next chip (``Cluster(held=...)``). Sets every chip's ``remote`` and
    ``held``.

    ``chain_end``: the last of ``chips`` ends the chain; else ``chips`` are a run of
    a chain and the last may move a layer on to the chip after them.

    Returns
    -------
    None, or :func:`_place`'s ``(shortfall, why)`` for the first chip that does not fit.
    """
    for chip in chips:
        chip.held = None
    for c, (chip, board) in enumerate(zip(chips, boards)):
        last = c == len(chips) - 1
        misfit = _place(chip, layers, board, last=last and chain_end)
        if misfit is not None:
            return misfit
        if chip.remote is not None and not last:
            chips[c + 1].held = next(s for s in chip.slices if s.layer.name == chip.remote)
    return None


def max_slots(chip, layers, board, *, batch_size=None):
    """The most feature slots that fit the chip's memory with everything else it holds
    (0 if not even one does); at most ``batch_size`` when given, as more never help."""
    rest = memory_bits(chip, layers, slots=0)["total"]
    fit = max(0, (board.bram_bits - rest) // feature_bits(chip, layers))
    return fit if batch_size is None else min(fit, batch_size)


#: :func:`choose_slots` keeps a chain's cycles per sample within this fraction of its
#: cycles per sample with as many slots as help.
SLOT_TOLERANCE = 0.02


def choose_slots(chips, layers, boards, *, batch_size, batches=4,
                 tolerance=SLOT_TOLERANCE, timing=TIMING):
    """Give each chip the fewest feature slots that keep the chain within ``tolerance``
    of its speed with as many slots as help.

    The reference is the chain with every chip at its :func:`max_slots` (``batch_size``
    unless its memory holds fewer: more never help, the first forward of a batch
    waits for the SGD step of the last). Each chip starts with as many slots as
    samples it must hold to keep pace, its round trip over the reference's cycles
    per sample (``latency_cycles`` of the reference run, rounded up); while the chain
    is outside ``tolerance`` of the reference, the chip whose forward path waited
    longest for a free slot (``slot_wait_per_sample``) gets one more; then every chip
    gives back slots while the chain stays within. So one slot fewer on any chip
    would take the chain outside the tolerance. Sets each chip's ``slots``.

    Returns
    -------
    (result, sizing)
        ``result`` is :func:`simulate`'s with the chosen slots; ``sizing`` has
        ``tolerance``, ``memory_caps`` (per chip, :func:`max_slots`),
        ``held_by_memory`` (the chips whose memory holds fewer than ``batch_size``),
        ``reference_cycles_per_sample`` (every chip at its cap),
        ``unlimited_cycles_per_sample`` (every chip at ``batch_size``, memory
        aside) and ``simulations`` (how many runs the choice took).

    Raises
    ------
    FpdeepError
        If a chip's memory does not hold one feature slot.
    ValueError
        If ``tolerance`` is negative.
    """
    if tolerance < 0:
        raise ValueError(f"tolerance must not be negative, not {tolerance}")
    n = len(chips)
    caps = [max_slots(chip, layers, board, batch_size=batch_size)
            for chip, board in zip(chips, boards)]
    for chip, board, cap in zip(chips, boards, caps):
        if cap < 1:
            raise FpdeepError(_does_not_fit(chip, layers, board))
    runs = {}

    def run(depths):
        key = tuple(depths)
        if key not in runs:
            runs[key] = simulate(chips, layers, batch_size=batch_size, batches=batches,
                                 slots=list(key), timing=timing)
        return runs[key]

    unlimited = run([batch_size] * n)["cycles_per_sample"]
    at_caps = run(caps)
    reference = at_caps["cycles_per_sample"]
    goal = (1 + tolerance) * reference
    depths = [max(1, min(cap, math.ceil(chip["latency_cycles"] / reference)))
              for chip, cap in zip(at_caps["chips"], caps)]
    while run(depths)["cycles_per_sample"] > goal:
        # Some chip is below its cap (at the caps the chain runs at the reference),
        # and one of those waits: with no slot waits the schedule is the reference's.
        waits = run(depths)["chips"]
        c = max((c for c in range(n) if depths[c] < caps[c]),
                key=lambda c: (waits[c]["slot_wait_per_sample"], -c))
        depths[c] += 1
    given_back = True
    while given_back:
        given_back = False
        for c in sorted(range(n), key=lambda c: (-depths[c], -c)):
            fewer = depths[:c] + [depths[c] - 1] + depths[c + 1:]
            if depths[c] > 1 and run(fewer)["cycles_per_sample"] <= goal:
                depths, given_back = fewer, True
    for chip, k in zip(chips, depths):
        chip.slots = k
    sizing = {"tolerance": tolerance, "memory_caps": caps,
              "held_by_memory": [c for c in range(n) if caps[c] < batch_size],
              "reference_cycles_per_sample": reference,
              "unlimited_cycles_per_sample": unlimited, "simulations": len(runs)}
    return run(depths), sizing


def _wire(rows, timing):
    """Cycles a message of ``rows`` (word counts) takes on the wire, first to last word."""
    if not rows:
        return 0
    words = sum(rows)
    frames = sum(-(-w // timing.max_payload) for w in rows)
    return words + frames * timing.frame_overhead + timing.rx_delay + timing.wire_latency


def _estimate(chip, layers, msgs, *, chain_first, chain_last, batch_size, timing):
    """Quick ``(forward, backward)`` cycles per sample of one chip, links at wire speed."""
    r = _chip_runs(chip, layers, chain_last=chain_last, timing=timing)
    ox = timing.engine_overhead
    # The forward path streams: its parts overlap, and the slowest sets the pace.
    load = sum(msgs["act_in"]) if chain_first else _wire(msgs["act_in"], timing)
    fwd = max([load, _wire(msgs["input_out"], timing) + _wire(msgs["act_out"], timing),
               _wire(msgs["gather_in"], timing)] + [run.busy for run in r.fp])
    fwd += timing.fp_wait_tail + timing.done_cycles
    # The engines start with the loss done, or with the first error row from the link
    # (they take the rows as they come: the wire time bounds them from below).
    bwd = r.loss + timing.loss_overhead if chain_last else 0
    t = max(r.bp_span) + ox
    if not chain_last:
        t = max(t, _wire([w for w, _, _ in msgs["err_in"]], timing) + timing.receive_tail
                + r.recv_period + ox - 2)
    if msgs["err_out"]:
        t = max(t, _wire([w for w, _, _ in msgs["err_out"]], timing) + ox)
    wu_idle = max(end + timing.rmw_tail + 1 for end in r.wu_end)
    bwd += max(t, wu_idle) + 1 + timing.idle_cycles
    # A held layer's step: its sums to the holder at wire speed, the last copy back.
    exchange = 0
    if r.exchange is not None:
        exchange = (_wire(exchange_runs(r.exchange, timing=timing), timing)
                    + timing.holder_latency + _wire([1], timing) + timing.exchange_tail)
    bwd += max(r.sgd + timing.sgd_overhead, exchange) / batch_size
    return fwd, bwd


def _row_options(n):
    """Rows worth trying for ``n`` channels: the fewest rows for each tile count."""
    return sorted({-(-n // tiles) for tiles in range(1, n + 1)})


def choose_rows(chip, layers, msgs, board, *, chain_first, chain_last, batch_size,
                timing=TIMING):
    """Give the chip's engines rows so that they finish a sample in about the same
    cycles, within the board's multipliers.

    Starting from one row each, repeatedly grow the engine to the row count (among
    its next :data:`ROW_LOOKAHEAD` larger ones: an engine's cycles are not monotonic
    in its rows, a ragged last tile drains unused lanes) that lowers the chip's
    estimated cycles per sample (the slower of its forward and backward paths,
    :func:`_estimate`) the most per added PE, while the PEs and the multipliers
    outside the engines fit. Modifies ``chip``; returns its estimate
    ``(forward, backward)``, or None if even one-row engines do not fit.
    """
    budget = board.multipliers

    def cost(fb):
        return max(fb) + 1e-3 * sum(fb)

    def estimate():
        return _estimate(chip, layers, msgs, chain_first=chain_first, chain_last=chain_last,
                         batch_size=batch_size, timing=timing)

    engines = []
    for s in chip.slices:
        s.fp = s.wu = 1
        s.bp = 1 if s.has_bp else 0
        engines += [(s, "fp", _row_options(s.channels)), (s, "wu", _row_options(s.channels))]
        if s.has_bp:
            engines.append((s, "bp", _row_options(s.layer.geometry.cin)))
    if chip.multipliers(last=chain_last, timing=timing) > budget:
        return None
    current = estimate()
    while True:
        best = None
        for s, kind, options in engines:
            rows = getattr(s, kind)
            before = chip.pes()
            for larger in [o for o in options if o > rows][:ROW_LOOKAHEAD]:
                setattr(s, kind, larger)
                if chip.multipliers(last=chain_last, timing=timing) > budget:
                    break
                trial = estimate()
                gain = (cost(current) - cost(trial)) / (chip.pes() - before)
                if gain > 0 and (best is None or gain > best[0]):
                    best = (gain, s, kind, larger, trial)
            setattr(s, kind, rows)
        if best is None:
            return current
        _, s, kind, rows, current = best
        setattr(s, kind, rows)


def _groupings(layers, chips):
    """Ways to cover ``layers`` with ``chips`` chips: lists of ``("layers", l0, l1)``
    (whole layers on one chip) and ``("split", l, k)`` (layer ``l`` over ``k`` chips)."""
    count = len(layers)

    def walk(l, left):
        if l == count:
            if left == 0:
                yield []
            return
        if left <= 0:
            return
        for l1 in range(l + 1, count + 1):
            for rest in walk(l1, left - 1):
                yield [("layers", l, l1)] + rest
        for k in range(2, min(left, layers[l].geometry.cout) + 1):
            for rest in walk(l + 1, left - k):
                yield [("split", l, k)] + rest

    return walk(0, chips)


def _count_groupings(layers, chips):
    """How many groupings :func:`_groupings` yields, without listing them."""
    count = len(layers)

    @functools.lru_cache(maxsize=None)
    def ways(l, left):
        if l == count:
            return 1 if left == 0 else 0
        if left <= 0:
            return 0
        total = sum(ways(l1, left - 1) for l1 in range(l + 1, count + 1))
        total += sum(ways(l + 1, left - k)
                     for k in range(2, min(left, layers[l].geometry.cout) + 1))
        return total

    return ways(0, chips)


def _best_grouping(planner, layers, chips):
    """The grouping with the least estimated slowest chip (a dynamic programme), for
    chains with too many groupings to list; None if none fits."""
    count = len(layers)

    @functools.lru_cache(maxsize=None)
    def best(l, left):
        if l == count:
            return (0, ()) if left == 0 else None
        if left <= 0:
            return None
        index = chips - left
        options = [(("layers", l, l1), l1, 1) for l1 in range(l + 1, count + 1)]
        options += [(("split", l, k), l + 1, k)
                    for k in range(2, min(left, layers[l].geometry.cout) + 1)]
        found = None
        for group, after, used in options:
            rest = best(after, left - used)
            if rest is None:
                continue
            made = planner.group(group, index)
            if made is None:
                continue
            worst = max(made[1], rest[0])
            if found is None or worst < found[0]:
                found = (worst, (group,) + rest[1])
        return found

    found = best(0, chips)
    return None if found is None else list(found[1])


def _ranges(cout, parts):
    """Candidate channel ranges of a layer split ``parts`` ways: lists of (lo, hi)."""
    def as_ranges(sizes):
        edges = [0] + list(itertools.accumulate(sizes))
        return list(zip(edges, edges[1:]))

    if math.comb(cout - 1, parts - 1) <= RANGE_LIMIT:
        for cuts in itertools.combinations(range(1, cout), parts - 1):
            edges = (0,) + cuts + (cout,)
            yield list(zip(edges, edges[1:]))
        return
    even = [cout // parts + (1 if k < cout % parts else 0) for k in range(parts)]
    yield as_ranges(even)
    for k in range(parts - 1):
        for delta in (-1, 1):
            sizes = list(even)
            sizes[k] += delta
            sizes[k + 1] -= delta
            if min(sizes) >= 1:
                yield as_ranges(sizes)


class _Planner:
    """Costs groups of chips with :func:`choose_rows` and :func:`_estimate`, memoized."""

    def __init__(self, layers, boards, batch_size, timing):
        self.layers, self.boards = layers, boards
        self.batch_size, self.timing = batch_size, timing
        self.n = len(boards)
        self.memo = {}
        self.chips = {}
        #: ``(shortfall, why)`` of the nearest miss of a chip (or run of chips) to
        #: fitting its memory, and whether a chip's engines missed its multipliers,
        #: for the error if no chain fits.
        self.misfit = None
        self.short_of_multipliers = False

    def fits(self, misfit):
        """Whether ``misfit`` (:func:`_place`'s or :func:`place_masters`'s) is None;
        else keep it if it is the nearest miss so far."""
        if misfit is not None and (self.misfit is None or misfit < self.misfit):
            self.misfit = misfit
        return misfit is None

    def chip(self, slices, index, part=0, parts=1):
        """A chip with its rows chosen and its estimate, or None if it does not fit."""
        first, last = index == 0, index == self.n - 1
        board = self.boards[index]
        key = (tuple((s.layer.index, s.lo, s.hi) for s in slices), part, parts, first,
               last, board)
        if key in self.chips:
            made = self.chips[key]
            if made is None:
                return None
            chip = replace(made[0], index=index,
                           slices=[replace(s) for s in made[0].slices])
            return chip, made[1]
        chip = ChipSpec(index, slices, part, parts, slots=1)
        self.chips[key] = None
        # Memory grows with the rows (padded tiles) only a little: one-row engines
        # that do not fit with one feature slot, even with a layer's masters moved to
        # the next chip, rule the chip out before its rows are chosen. What the chip in
        # front moves here is placed per chain (place_masters); choose_slots sizes the
        # slots of the chains simulated.
        for s in slices:
            s.fp = s.wu = 1
            s.bp = 1 if s.has_bp else 0
        if not self.fits(_place(chip, self.layers, board, last=last)):
            return None
        msgs = _messages(chip, self.layers, chain_first=first, chain_last=last,
                         timing=self.timing)
        fb = choose_rows(chip, self.layers, msgs, board, chain_first=first, chain_last=last,
                         batch_size=self.batch_size, timing=self.timing)
        chip.estimate = fb
        self.short_of_multipliers |= fb is None
        if fb is None or not self.fits(_place(chip, self.layers, board, last=last)):
            return None
        self.chips[key] = (chip, max(fb))
        return self.chip(slices, index, part, parts)

    def sized(self, chips, *, batches=SEARCH_BATCHES):
        """:func:`choose_slots` for a chain of this planner's chips: ``(result, sizing)``."""
        return choose_slots(chips, self.layers, self.boards, batch_size=self.batch_size,
                            batches=batches, timing=self.timing)

    def group(self, group, index):
        """``(chips, estimate)`` of one group starting at chip ``index``, or None."""
        key = (group, index)
        if key not in self.memo:
            self.memo[key] = self._group(group, index)
        return self.memo[key]

    def _group(self, group, index):
        layers = self.layers
        if group[0] == "layers":
            _, l0, l1 = group
            made = self.chip([SliceSpec(layers[l], 0, layers[l].geometry.cout)
                              for l in range(l0, l1)], index)
            return None if made is None else ([made[0]], made[1])
        _, l, parts = group
        best = None
        for ranges in _ranges(layers[l].geometry.cout, parts):
            chips, worst = [], 0
            for part, (lo, hi) in enumerate(ranges):
                made = self.chip([SliceSpec(layers[l], lo, hi)], index + part, part, parts)
                if made is None:
                    break
                chips.append(made[0])
                worst = max(worst, made[1])
            else:
                # The slices must hold what they move on to each other.
                if (best is None or worst < best[1]) and self.fits(place_masters(
                        chips, layers, self.boards[index:index + parts],
                        chain_end=index + parts == self.n)):
                    best = (chips, worst)
        return best


def _copy(chips):
    return [replace(chip, slices=[replace(s) for s in chip.slices]) for chip in chips]


def _refine(planner, chips):
    """Move the channel boundaries inside split layers one channel at a time while
    that lowers the simulated cycles per sample, with the chips' slots (sized by
    :func:`choose_slots`, within what the moved chips' memories hold); returns
    ``(chips, result)``."""
    chips = _copy(chips)
    result = simulate(chips, planner.layers, batch_size=planner.batch_size,
                      batches=SEARCH_BATCHES, timing=planner.timing)
    for _ in range(REFINE_ROUNDS):
        best = None
        for i in range(len(chips) - 1):
            a, b = chips[i], chips[i + 1]
            if not (a.split and b.split and b.part == a.part + 1):
                continue
            layer = a.first_layer
            for delta in (-1, 1):
                edge = a.slices[0].hi + delta
                if not a.slices[0].lo < edge < b.slices[0].hi:
                    continue
                made_a = planner.chip([SliceSpec(layer, a.slices[0].lo, edge)], a.index,
                                      a.part, a.parts)
                made_b = planner.chip([SliceSpec(layer, edge, b.slices[0].hi)], b.index,
                                      b.part, b.parts)
                if made_a is None or made_b is None:
                    continue
                trial = _copy(chips[:i] + [made_a[0], made_b[0]] + chips[i + 2:])
                if place_masters(trial, planner.layers, planner.boards) is not None:
                    continue
                for chip, t, board in zip(chips, trial, planner.boards):
                    t.slots = min(chip.slots, max_slots(t, planner.layers, board))
                trial_result = simulate(trial, planner.layers,
                                        batch_size=planner.batch_size,
                                        batches=SEARCH_BATCHES, timing=planner.timing)
                if trial_result["cycles_per_sample"] < (
                        best[1] if best else result)["cycles_per_sample"]:
                    best = (trial, trial_result)
        if best is None:
            break
        chips, result = best
    return chips, result


def plan_chips(network, boards, *, batch_size, timing=TIMING):
    """Plan ``network`` for the gateware on ``boards`` (one per chip, in chain order).

    Costs every grouping of the layers into chips (whole layers, or one layer split
    by output channels; split channel ranges chosen by the estimate), each chip with
    its engines' rows chosen by :func:`choose_rows`, by the estimate of its slower
    path; runs the :data:`SIMULATED_CANDIDATES` best through :func:`simulate`, each
    with its feature slots sized by :func:`choose_slots`, keeps the fastest, moves
    its split boundaries while the simulation improves (:func:`_refine`), and sizes
    its slots again over :data:`SIMULATED_BATCHES`.

    Returns
    -------
    (layers, chips, result, candidates, sizing)
        ``chips`` carry their ``slots``; ``result`` is :func:`simulate`'s for the
        chosen chain and ``sizing`` :func:`choose_slots`'s; ``candidates`` lists the
        chains simulated, the chosen first: ``{"chips": [description...],
        "estimate", "reference_cycles_per_sample"`` (every chip with as many slots
        as help, :func:`max_slots`), ``"slots"`` (per chip, as sized) and
        ``"cycles_per_sample"`` (with them)``}``; a chain whose reference is no
        faster than a sized one is not sized (``slots`` and ``cycles_per_sample``
        None).

    Raises
    ------
    FpdeepError
        If the network has a layer the gateware cannot build, more chips are asked
        for than it has output channels, or no chain fits the boards.
    """
    layers = gateware_layers(network)
    n = len(boards)
    most = max_chips(layers)
    if n > most:
        raise FpdeepError(f"network {network.name!r} can use at most {most} chips on the "
                          f"gateware target (a split layer gives each chip at least one "
                          f"output channel), not {n}")
    # Every layer's memory (one-row engines, whole, one feature slot) must fit
    # somewhere in the chain: splitting a layer only copies its input map, and
    # grouping shares nothing.
    need = sum(memory_bits(ChipSpec(0, [SliceSpec(layer, 0, layer.geometry.cout,
                                                  bp=1 if layer.index else 0)], slots=1),
                           layers)["total"] for layer in layers)
    have = sum(board.bram_bits for board in boards)
    if need > have:
        raise FpdeepError(f"network {network.name!r} does not fit the gateware on {n} x "
                          f"{boards[0].name}: its feature maps (one slot), errors and "
                          f"weights need at least {need / 1e6:.1f} Mb, the chips have "
                          f"{have / 1e6:.1f} Mb")
    planner = _Planner(layers, boards, batch_size, timing)
    if _count_groupings(layers, n) <= GROUPING_LIMIT:
        groupings = _groupings(layers, n)
    else:
        groupings = [g for g in [_best_grouping(planner, layers, n)] if g is not None]
    scored = []
    for grouping in groupings:
        chips, worst, index = [], 0, 0
        for group in grouping:
            made = planner.group(tuple(group), index)
            if made is None:
                break
            chips += made[0]
            worst = max(worst, made[1])
            index += len(made[0])
        else:
            chips = _copy(chips)
            if planner.fits(place_masters(chips, layers, boards)):
                scored.append((worst, len(scored), chips))
    if not scored:
        why = []
        if planner.short_of_multipliers:
            why.append("has engines within the multipliers of every chip")
        if planner.misfit is not None:
            why.append(f"fits their memories (nearest: {planner.misfit[1]})")
        names = [board.name for board in boards]
        chain = f"{n} x {names[0]}" if len(set(names)) == 1 else " | ".join(names)
        raise FpdeepError(f"network {network.name!r} does not fit the gateware on {chain}: "
                          f"no chain {', or '.join(why)}")
    scored.sort(key=lambda e: (e[0], e[1]))
    # Each candidate's cycles per sample with as many slots as help (its memories'
    # caps) bounds it with its slots sized: only those that could still win are sized.
    simulated = []
    for worst, _, chips in scored[:SIMULATED_CANDIDATES]:
        for chip, board in zip(chips, boards):
            chip.slots = max_slots(chip, layers, board, batch_size=batch_size)
        reference = simulate(chips, layers, batch_size=batch_size, batches=SEARCH_BATCHES,
                             timing=timing)["cycles_per_sample"]
        simulated.append({"chips": chips, "estimate": worst, "reference": reference})
    simulated.sort(key=lambda e: e["reference"])
    fastest = None
    for entry in simulated:
        if fastest is None or entry["reference"] < fastest["cycles_per_sample"]:
            result, _ = planner.sized(entry["chips"])
            entry["cycles_per_sample"] = result["cycles_per_sample"]
            if fastest is None or entry["cycles_per_sample"] < fastest["cycles_per_sample"]:
                fastest = entry
    chips, _ = _refine(planner, fastest["chips"])
    result, sizing = planner.sized(chips, batches=SIMULATED_BATCHES)
    fastest.update(chips=chips, cycles_per_sample=result["cycles_per_sample"])
    simulated.remove(fastest)
    simulated.sort(key=lambda e: e.get("cycles_per_sample", e["reference"]))
    candidates = [{"chips": [chip.describe() for chip in e["chips"]],
                   "slots": [chip.slots for chip in e["chips"]] if "cycles_per_sample" in e
                   else None,
                   "estimate": e["estimate"], "reference_cycles_per_sample": e["reference"],
                   "cycles_per_sample": e.get("cycles_per_sample")}
                  for e in [fastest] + simulated]
    return layers, chips, result, candidates, sizing


def limit(result, chips, *, sizing=None):
    """What holds the chain back: ``(reason, bounds)``.

    ``bounds`` are cycles per sample: ``round_trip`` (the largest over the chips of a
    chip's first sample, first word to backward done, over its ``slots``: its
    forward can only run ``slots`` samples ahead), and ``busiest_chip`` (the largest
    estimated forward or backward path of a chip, :func:`_estimate`).

    With ``sizing`` (:func:`choose_slots`'s), the reason is the feature slots when
    the chain is slower than with unlimited slots by more than the tolerance (a
    chip's memory holds fewer slots than would help); without, the round trip when
    it is the larger bound and the chain runs within 10 % of it. Else the busiest
    chip, if the chain runs within 10 % of it, else ``"links and waits"``.
    """
    trips = [chip["latency_cycles"] / chip["feature_slots"] for chip in result["chips"]]
    slow, round_trip = max(enumerate(trips), key=lambda e: e[1])
    index, busiest = max(enumerate(max(chip.estimate) for chip in chips), key=lambda e: e[1])
    cps = result["cycles_per_sample"]
    bounds = {"round_trip": round_trip, "busiest_chip": busiest}
    unlimited = sizing["unlimited_cycles_per_sample"] if sizing else None
    if sizing and cps > (1 + sizing["tolerance"]) * unlimited:
        # Only a chip whose memory holds fewer slots than the batch keeps the chain
        # from its speed with unlimited slots.
        slow = max(sizing["held_by_memory"],
                   key=lambda c: (result["chips"][c]["slot_wait_per_sample"], -c))
        reason = (f"round trip: chip {slow} waits for a free feature slot "
                  f"({chips[slow].slots} slots, its memory holds at most "
                  f"{sizing['memory_caps'][slow]}); unlimited slots would give "
                  f"{unlimited:.1f} cycles per sample")
    elif sizing is None and round_trip >= busiest and cps <= 1.1 * round_trip:
        reason = (f"round trip: chip {slow} waits for a free feature slot "
                  f"({chips[slow].slots} slots, {result['chips'][slow]['latency_cycles']} "
                  f"cycles from its first word to backward done)")
    elif cps <= 1.1 * busiest:
        side = "forward" if chips[index].estimate[0] >= chips[index].estimate[1] else \
            "backward"
        reason = f"chip {index} ({chips[index].describe()}), its {side} path"
    else:
        reason = "links and waits between chips"
    return reason, bounds
