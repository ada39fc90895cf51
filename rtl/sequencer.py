"""The chip's sequencers: a forward path and a backward path, each walking the samples.

The :class:`Sequencer` starts the blocks of a :class:`~fpdeep.rtl.core.TrainingCore` and
waits for them through small handshakes, defined here: a block's ``start`` pulses
begin a task, and its ``busy`` is high from the next cycle until the task is done. The
sequencer knows nothing else of the blocks; what a layer's FP or BP is, or where the
errors come from, is theirs.
"""

from amaranth import *
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .slots import SlotSignature

__all__ = ["TaskSignature", "LabelledTaskSignature", "LayerControlSignature",
           "LoaderControlSignature", "ErrorControlSignature", "Sequencer"]


class TaskSignature(wiring.Signature):
    """A task started by the sequencer; members from the sequencer's side.

    Members
    -------
    start : Out(1)
        Pulse to begin the task.
    busy : In(1)
        High from the cycle after ``start`` until the task is done.
    """

    def __init__(self, members=None):
        super().__init__({"start": Out(1), "busy": In(1), **(members or {})})


class LabelledTaskSignature(TaskSignature):
    """A :class:`TaskSignature` for one sample, given its label.

    Members
    -------
    start : Out(1)
    label : Out(range(classes))
        The sample's label, with ``start`` (and, for the loss, until ``busy`` falls).
    busy : In(1)
    """

    def __init__(self, classes):
        super().__init__({"label": Out(range(classes))})


class LayerControlSignature(wiring.Signature):
    """The tasks of a layer's datapath; members from the sequencer's side.

    Members
    -------
    forward : Out(TaskSignature())
        FP of one sample into the forward slot.
    backward : Out(TaskSignature({"clear": Out(1)}))
        ``clear`` pulses as a sample's errors begin (before the errors at the layer's
        output arrive); ``start`` runs BP and the weight gradients of that sample;
        ``busy`` covers the BP and the errors held on their way into the layer.
    update : Out(TaskSignature({"refresh": Out(1)}))
        ``start`` steps SGD with the batch's gradient sums; ``refresh`` rewrites the
        16-bit copies from the masters; ``busy`` is the weight update's, the sample's
        gradient sums included.
    """

    def __init__(self):
        super().__init__({
            "forward": Out(TaskSignature()),
            "backward": Out(TaskSignature({"clear": Out(1)})),
            "update": Out(TaskSignature({"refresh": Out(1)})),
        })


class LoaderControlSignature(wiring.Signature):
    """The sample loader's handshake; members from the sequencer's side.

    Members
    -------
    take : Out(1)
        A feature slot is free: take a new sample's words.
    offered : In(1)
        A word is waiting at the chip's input.
    accepted : In(1)
        The sample is accepted this cycle (its label is taken, or with a relaying
        loader its last word).
    label : In(range(classes))
        Its label, with ``accepted``.
    pending : In(1)
        A sample is partly taken.
    filling : In(1)
        An accepted sample's rows are still coming.
    """

    def __init__(self, classes):
        super().__init__({
            "take": Out(1),
            "offered": In(1),
            "accepted": In(1),
            "label": In(range(classes)),
            "pending": In(1),
            "filling": In(1),
        })


class ErrorControlSignature(wiring.Signature):
    """The chip's error traffic for one sample; members from the sequencer's side.

    Members
    -------
    begin : Out(1)
        A sample's errors begin (without the loss): the counts of error rows received
        return to 0.
    take : Out(1)
        The backward path takes this sample's error rows from the chip behind; the
        next sample's may follow on the link and wait.
    relaying : In(1)
        Errors of channels in front of this chip's slice are still being passed up.
    busy : In(1)
        This sample's errors are not all in, from the chip behind, or not all out, to
        the chip in front.
    """

    def __init__(self):
        super().__init__({"begin": Out(1), "take": Out(1), "relaying": In(1), "busy": In(1)})


class Sequencer(wiring.Component):
    """The forward and backward sequencers of a chip, and its sample and batch counts.

    The forward path loads a sample, runs every layer's FP at once (a row pipeline) and
    sends the output map on; the backward path takes the errors (from the loss, or
    from the chip behind), then runs every layer's BP and weight gradients at once,
    and after each mini-batch the SGD step. On the chip that ends the chain the loss
    is a stage of its own between them: as soon as a sample's FP is done and the error
    buffer is free, it computes that sample's errors into the buffer while the
    backward path still runs BP and WU of the sample before on the errors in the last
    layer's store (the other buffer); the backward path replays the buffer into the
    store as its BP starts (the engines take rows as they are stored, as from a
    link). If the backward path is idle as the loss starts, waiting for that very
    sample, the loss writes the store directly (``through``). Every sample still
    passes through BP and WU before the batch's SGD step: the barrier is unchanged.
    Each path walks the samples in order, in its own feature slot: forward runs at
    most ``slots`` samples ahead of backward (``ahead``), so it never overwrites a copy
    that the loss, BP or WU still reads, and it waits at the end of a mini-batch until
    the SGD step is done, so every FP of a batch sees the same weights
    (synchronous mini-batch SGD).

    Forward states: ``LOAD`` (a free slot and the last SGD step done: take a sample;
    or, when the host wrote masters and a sample arrives, ``REFRESH`` the 16-bit
    copies), ``FP_START``, ``FP_WAIT`` (every FP and the sends done, and two settling
    cycles: the writer's pooled row lands one cycle after its engine goes idle),
    ``DONE``. Loss states (with ``loss``): ``IDLE`` (a sample forwarded but not through
    the loss, and the buffer free: replayed), ``WAIT``. Backward states: ``IDLE`` (with
    the loss, until the buffer is filled or the loss starts ``through``), ``LOSS_WAIT``
    (with the loss, ``through``), ``BACK_START`` (with the buffer's replay),
    ``BACK_WAIT`` (every layer's BP and the errors' traffic done, and two settling
    cycles), ``WU_WAIT``, ``UPDATE_WAIT`` (after the batch's last sample).

    Parameters
    ----------
    layers : int
        Layers of the chip.
    slots : int
    batch_size : int
    classes : int
    loss : bool
        The chip runs the loss (it ends the chain).
    buffered : bool
        With ``loss``: the loss may run a sample ahead into the error buffer. Without,
        it runs only while the backward path waits for it, straight into the store:
        on a slice of a split last layer, the errors passed up would reach the link
        while the chip in front still takes the sample before, and the BP rows behind
        them stall (see ``plan/model/chain.py``).

    Members
    -------
    slot : Out(SlotSignature(slots))
    loader : Out(LoaderControlSignature(classes))
    layers : Out(LayerControlSignature()).array(layers)
    send : Out(LabelledTaskSignature(classes))
        Sending the forward slot's output map (and relaying its input) down the chain.
    errors : Out(ErrorControlSignature())
    loss : Out(LabelledTaskSignature(classes))
        Only with ``loss``; ``busy`` is the loss unit's. It fills the error buffer with
        the errors of the sample in the ``loss`` slot.
    replay : Out(TaskSignature())
        Only with ``loss``: the error buffer streams its errors into the last layer's
        error store (from BACK_START), and is free again once ``busy`` falls.
    through : Out(1)
        Only with ``loss``: from the cycle after the loss's ``start`` until it is done,
        its errors go straight to the last layer's store, not into the buffer (the
        backward path was idle, waiting for that sample).
    weights_written : In(1)
        The host wrote masters (here or on the neighbour holding this chip's): refresh
        the copies before the next sample.
    samples, batches : Out(32)
        Samples the backward path has finished, and SGD steps done.
    busy : Out(1)
        A sample is in the chip, or a step or refresh is running.
    slots_peak : Out(range(slots + 1))
        The most feature slots ever in use at once.

    Raises
    ------
    ValueError
        If ``layers``, ``slots`` or ``batch_size`` is not a positive int.
    """

    def __init__(self, *, layers, slots, batch_size, classes, loss, buffered=True):
        for name, value in (("layers", layers), ("slots", slots), ("batch_size", batch_size)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, not {value!r}")
        self._layers, self._slots, self._batch_size = layers, slots, batch_size
        self._classes, self._loss = classes, bool(loss)
        self._buffered = bool(buffered)
        members = {
            "slot": Out(SlotSignature(slots)),
            "loader": Out(LoaderControlSignature(classes)),
            "layers": Out(LayerControlSignature()).array(layers),
            "send": Out(LabelledTaskSignature(classes)),
            "errors": Out(ErrorControlSignature()),
        }
        if self._loss:
            members["loss"] = Out(LabelledTaskSignature(classes))
            members["replay"] = Out(TaskSignature())
            members["through"] = Out(1)
        members.update({
            "weights_written": In(1),
            "samples": Out(32),
            "batches": Out(32),
            "busy": Out(1),
            "slots_peak": Out(range(slots + 1)),
        })
        super().__init__(members)
        #: The two FSMs (after elaboration), for waveforms and for debugging a stalled run.
        self.forward_fsm = self.backward_fsm = self.loss_fsm = None

    def elaborate(self, platform):
        m = Module()
        slots, batch_size = self._slots, self._batch_size
        loader, layers = self.loader, self.layers
        fslot, bslot = self.slot.forward, self.slot.backward

        ahead = Signal(range(slots + 1))    # samples forward is ahead of backward
        forwarded = Signal()                # pulses as forward finishes a sample
        backed = Signal()                   # pulses as backward finishes a sample
        m.d.sync += ahead.eq(ahead + forwarded - backed)
        labels = Array(Signal(range(self._classes), name=f"label{k}") for k in range(slots))
        fwd_in_batch = Signal(range(batch_size + 1))
        fwd_batches = Signal(32)            # batches forward has finished
        bwd_in_batch = Signal(range(batch_size + 1))
        fsettle = Signal(2)
        bsettle = Signal(2)

        # The host wrote masters; the copies need a refresh before the next sample.
        dirty = Signal()
        with m.If(self.weights_written):
            m.d.sync += dirty.eq(1)

        def next_slot(slot):
            return Mux(slot == slots - 1, 0, slot + 1)

        all_wu_idle = Cat(*[~layer.update.busy for layer in layers]).all()
        with m.FSM(name="forward") as fwd:
            with m.State("LOAD"):
                # A free slot, and the previous batch's SGD step done.
                m.d.comb += loader.take.eq(~dirty & (ahead < slots) &
                                           (self.batches == fwd_batches))
                # Refresh the 16-bit copies only when a sample arrives, so that host
                # weight accesses between samples are never refused for being busy.
                with m.If(dirty & loader.offered & all_wu_idle & (ahead == 0)):
                    for layer in layers:
                        m.d.comb += layer.update.refresh.eq(1)
                    m.d.sync += dirty.eq(0)
                    m.next = "REFRESH"
                with m.Elif(loader.accepted):
                    m.d.sync += labels[fslot].eq(loader.label)
                    m.next = "FP_START"
            with m.State("REFRESH"):
                with m.If(all_wu_idle & (fsettle == 1)):
                    m.d.sync += fsettle.eq(0)
                    m.next = "LOAD"
                with m.Else():
                    m.d.sync += fsettle.eq(1)
            with m.State("FP_START"):
                # Every layer's FP starts at once: each takes its input rows as the
                # layer in front writes them, and the output map leaves row by row as
                # it is written, so the layers and chips form a row pipeline.
                for layer in layers:
                    m.d.comb += layer.forward.start.eq(1)
                m.d.comb += [self.send.start.eq(1), self.send.label.eq(labels[fslot])]
                m.d.sync += fsettle.eq(0)
                m.next = "FP_WAIT"
            with m.State("FP_WAIT"):
                working = [loader.filling] + [layer.forward.busy for layer in layers] + \
                    [self.send.busy]
                done = ~Cat(*working).any()
                # Two idle cycles: the writer's pooled row lands one cycle after the engine.
                with m.If(done & (fsettle == 2)):
                    m.next = "DONE"
                with m.Elif(done):
                    m.d.sync += fsettle.eq(fsettle + 1)
            with m.State("DONE"):
                m.d.comb += forwarded.eq(1)
                m.d.sync += fslot.eq(next_slot(fslot))
                with m.If(fwd_in_batch == batch_size - 1):
                    m.d.sync += [fwd_in_batch.eq(0), fwd_batches.eq(fwd_batches + 1)]
                with m.Else():
                    m.d.sync += fwd_in_batch.eq(fwd_in_batch + 1)
                m.next = "LOAD"

        # The loss stage: samples forwarded but not through the loss (``lossless``), the
        # slot of the next one, and the error buffer's state (``buffered``: it holds a
        # sample's errors the backward path has not yet replayed).
        lslot = Signal(range(slots))
        lossless = Signal(range(slots + 1))
        lossed = Signal()                   # pulses as the loss finishes a sample
        buffered = Signal()
        draining = Signal()                 # the buffer is replaying into the store
        replayed = Signal()                 # pulses as the replay is done: the buffer is free
        loss_now = Signal()                 # the loss starts this cycle
        bwd_idle = Signal()
        lfsm = None
        if self._loss:
            m.d.sync += lossless.eq(lossless + forwarded - lossed)
            # The replay's busy rises the cycle after its start, as ``draining`` does.
            m.d.comb += replayed.eq(draining & ~self.replay.busy)
            with m.If(replayed):
                m.d.sync += draining.eq(0)
            with m.If(lossed & ~self.through):
                m.d.sync += buffered.eq(1)
            with m.Elif(replayed):
                m.d.sync += buffered.eq(0)
            with m.FSM(name="loss") as lfsm:
                with m.State("IDLE"):
                    with m.If((lossless != 0) & ~buffered & (bwd_idle | self._buffered)):
                        m.d.comb += [self.loss.start.eq(1), self.loss.label.eq(labels[lslot]),
                                     loss_now.eq(1)]
                        # With the backward path idle, waiting for this very sample (the
                        # buffer is empty), the errors go straight into the store.
                        m.d.sync += self.through.eq(bwd_idle)
                        m.next = "WAIT"
                with m.State("WAIT"):
                    m.d.comb += self.loss.label.eq(labels[lslot])
                    with m.If(~self.loss.busy):
                        m.d.comb += lossed.eq(1)
                        m.d.sync += [lslot.eq(next_slot(lslot)), self.through.eq(0)]
                        m.next = "IDLE"
            m.d.comb += self.slot.loss.eq(lslot)
        else:
            m.d.comb += self.slot.loss.eq(bslot)

        with m.FSM(name="backward") as bwd:
            with m.State("IDLE"):
                # With the loss, the sample's errors must be in the buffer (which implies
                # ``ahead != 0``); elsewhere they come from the chip behind.
                # Or, with the loss, the loss starts on it and writes the store directly.
                with m.If((buffered | loss_now) if self._loss else ahead != 0):
                    # This sample's error maps begin: every store counts rows afresh.
                    for layer in layers:
                        m.d.comb += layer.backward.clear.eq(1)
                    if not self._loss:
                        m.d.comb += self.errors.begin.eq(1)
                        m.next = "BACK_START"
                    else:
                        with m.If(loss_now):
                            m.next = "LOSS_WAIT"
                        with m.Else():
                            m.next = "BACK_START"
            if self._loss:
                with m.State("LOSS_WAIT"):
                    # The loss done (``through`` falls a cycle after), and the other
                    # slices' errors passed up.
                    with m.If((lossed | ~self.through) & ~self.errors.relaying):
                        m.next = "BACK_START"
            # Every layer's BP and WU start at once, as a row pipeline back through the
            # layers: each takes the error rows of its layer's output as they are stored,
            # from the loss, from the layer behind, or from the link as they come.
            with m.State("BACK_START"):
                for layer in layers:
                    m.d.comb += layer.backward.start.eq(1)
                if self._loss:
                    # The buffer replays into the last layer's store as BP starts (unless
                    # the loss wrote it): the engines take the rows as they are stored,
                    # as from a link.
                    with m.If(buffered):
                        m.d.comb += self.replay.start.eq(1)
                        m.d.sync += draining.eq(1)
                m.d.sync += bsettle.eq(0)
                m.next = "BACK_WAIT"
            with m.State("BACK_WAIT"):
                working = [layer.backward.busy for layer in layers] + [self.errors.busy]
                if self._loss:
                    # The other slices' errors passed up, and the buffer replayed.
                    working += [self.errors.relaying, self.replay.busy]
                done = ~Cat(*working).any()
                with m.If(done & (bsettle == 2)):
                    m.next = "WU_WAIT"
                with m.Elif(done):
                    m.d.sync += bsettle.eq(bsettle + 1)
            with m.State("WU_WAIT"):
                with m.If(all_wu_idle):
                    m.d.comb += backed.eq(1)
                    m.d.sync += [self.samples.eq(self.samples + 1), bslot.eq(next_slot(bslot))]
                    with m.If(bwd_in_batch == batch_size - 1):
                        m.d.sync += bwd_in_batch.eq(0)
                        for layer in layers:
                            m.d.comb += layer.update.start.eq(1)
                        m.d.sync += bsettle.eq(0)
                        m.next = "UPDATE_WAIT"
                    with m.Else():
                        m.d.sync += bwd_in_batch.eq(bwd_in_batch + 1)
                        m.next = "IDLE"
            with m.State("UPDATE_WAIT"):
                with m.If(all_wu_idle & (bsettle == 1)):
                    m.d.sync += self.batches.eq(self.batches + 1)
                    m.next = "IDLE"
                with m.Else():
                    m.d.sync += bsettle.eq(1)
        self.forward_fsm, self.backward_fsm, self.loss_fsm = fwd, bwd, lfsm
        m.d.comb += bwd_idle.eq(bwd.ongoing("IDLE"))
        loss_busy = ~lfsm.ongoing("IDLE") if lfsm is not None else C(0)
        m.d.comb += [
            self.errors.take.eq(bwd.ongoing("BACK_START") | bwd.ongoing("BACK_WAIT")),
            self.busy.eq(~fwd.ongoing("LOAD") | loader.pending | ~bwd.ongoing("IDLE") |
                         (ahead != 0) | loss_busy),
        ]
        # The feature memories' occupancy: the most slots ever in use. The forward
        # path cannot overwrite a slot the backward path still reads (it waits at
        # ``ahead == slots``); ``slots_peak`` lets a run show how deep it went.
        with m.If(ahead > self.slots_peak):
            m.d.sync += self.slots_peak.eq(ahead)
        return m
