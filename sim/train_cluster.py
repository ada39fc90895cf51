"""Train a network for whole epochs on the simulated cluster of a plan, against the reference.

:func:`train_cluster` is what ``fpdeep train --chips N --backend verilator`` runs.
It trains on the same data, split, sample order, initial weights and
hyper-parameters as the reference mode of ``fpdeep train``
(:func:`fpdeep.scripts.train_quality.train_side_by_side`, whose epoch loop it
mirrors), so the two runs' curves are comparable; here the gateware trains and the
integer reference follows it.

All epochs are one simulation: the samples of every epoch are sent back to back,
and at each epoch's end (a checkpoint of :meth:`~fpdeep.sim.harness.CoreRun.run`)
the simulator drains the chips and reads every master weight through the host
port, then goes on. Meanwhile the reference trains the same epoch and every weight
is compared with it, bit for bit, as are the host counters (samples, correct,
saturations, loss). Because they are equal, the held-out accuracy of an epoch is
the reference's prediction with those weights. A difference stops the run at the
epoch where it appears, naming the first differing weight.

The links may carry bit errors (``link_ber``, seeded by ``link_seed``); the link
layer replays what they corrupt, so the weights stay bit-exact, and each epoch
reports the replays its links started.
"""

import time
from dataclasses import dataclass, field

import numpy as np

from ..plan.errors import FpdeepError
from .data import training_split
from .harness import COUNTERS, CoreRun, compare_weights, link_status, status_ports

__all__ = ["EpochFigures", "ClusterTraining", "WeightMismatch", "train_cluster"]


class WeightMismatch(Exception):
    """The gateware's weights or counters differ from the integer reference's."""


@dataclass
class EpochFigures:
    """One epoch on the cluster."""
    epoch: int
    #: Mean cross-entropy of the epoch's training samples, in bits (the gateware's counter).
    train_loss: float
    #: Fraction of the epoch's training samples classified right (the gateware's counter).
    train_accuracy: float
    #: The reference's held-out accuracy with the epoch's (bit-exact) weights.
    test_accuracy: float
    #: Weights compared with the reference at the epoch's end: ``(equal, total)``.
    weights: tuple
    #: Replays the links' transmitters started during the epoch (0 without links).
    replays: int
    #: Seconds since the simulation started (after the build), at the epoch's end.
    seconds: float


@dataclass
class ClusterTraining:
    """A run of :func:`train_cluster`: its epochs and the simulation's figures."""
    network: str
    source: str
    chips: int
    train_samples: int
    test_samples: int
    epochs: list = field(default_factory=list)
    #: The run's :class:`~fpdeep.sim.harness.RunResult` (None if it stopped early).
    result: object = None
    #: ``(equal, total, first difference or None)`` at the end.
    final_weights: tuple = None
    #: Why the run stopped early (a :class:`WeightMismatch`'s message), else None.
    mismatch: str = None
    #: Seconds from the simulation's start (after any build) to the last comparison.
    wall_seconds: float = 0.0
    #: Verilator: the :class:`~fpdeep.sim.verilator.VerilatorBuild` that ran.
    verilator_build: object = None

    @property
    def exact(self):
        return self.mismatch is None and self.final_weights is not None and \
            self.final_weights[0] == self.final_weights[1]

    @property
    def replays(self):
        return sum(e.replays for e in self.epochs)


def _accuracy(ref, xs, labels):
    return float(np.mean([ref.predict(x) == label for x, label in zip(xs, labels)]))


def train_cluster(plan, layout, network, *, epochs, lr, momentum, seed, train_samples=None,
                  data=None, backend="verilator", link_ber=0.0, link_seed=0, progress=None,
                  on_epoch=None, on_start=None):
    """Train ``network`` on the chips of a gateware ``plan`` for ``epochs`` epochs.

    Parameters
    ----------
    plan : Plan
        A gateware plan; its batch size is the mini-batch.
    layout : ChainLayout
        :func:`fpdeep.rtl.elaborate.chain_from_plan` of ``plan`` and ``network``.
    epochs, lr, momentum, seed, train_samples, data :
        As :func:`fpdeep.scripts.train_quality.train_side_by_side`.
    backend : "verilator" or "pysim"
    link_ber, link_seed :
        Bit-error rate of every link wire, and the seed of its errors.
    progress : callable, optional
        ``progress(samples_done, samples_total)`` as the simulation goes.
    on_epoch : callable, optional
        ``on_epoch(EpochFigures)`` at every epoch's end.
    on_start : callable, optional
        ``on_start(ClusterTraining)`` once the data are ready, before building.

    Returns
    -------
    ClusterTraining
        With ``mismatch`` set if the gateware differed from the reference.

    Raises
    ------
    FpdeepError
        For data that do not fit, an impossible hyper-parameter or a failed build.
    """
    if not isinstance(epochs, int) or epochs < 1:
        raise FpdeepError(f"epochs must be a positive int, not {epochs!r}")
    batch = plan.data["batch_size"]
    dataset, (x_train, y_train, x_test, y_test) = training_split(
        network, data=data, train_samples=train_samples, batch=batch)
    run = CoreRun(network, batch_size=batch, lr=lr, momentum=momentum, seed=seed,
                  splits=layout.splits, engines=layout.engines, slots=layout.slots,
                  held=layout.held)
    reference = run.reference()
    train_xs = [reference.quantize_input(x) for x in x_train]
    test_xs = [reference.quantize_input(x) for x in x_test]
    # The sample order of train_side_by_side: one permutation per epoch from ``seed``,
    # its last partial mini-batch dropped.
    order_rng = np.random.default_rng(seed)
    whole = len(x_train) - len(x_train) % batch
    orders = [order_rng.permutation(len(x_train))[:whole] for _ in range(epochs)]
    samples = [train_xs[i] for order in orders for i in order]
    labels = np.concatenate([y_train[order] for order in orders])

    training = ClusterTraining(network.name, dataset.source, len(run.chips), len(x_train),
                               len(x_test))
    if on_start:
        on_start(training)
    if backend == "verilator":
        # Built (or found in the cache) before the clock starts: the run's seconds are
        # the simulation's.
        from .verilator import build_top
        run.verilator_build = training.verilator_build = build_top(run.top)
    start = time.perf_counter()
    state = {"counters": {name: 0 for name in COUNTERS}, "replays": {}}

    def epoch_end(done, masters, outputs):
        epoch = done // whole
        order = orders[epoch - 1]
        for first in range(0, whole, batch):
            chosen = order[first:first + batch]
            reference.train_batch([train_xs[i] for i in chosen], y_train[chosen])
        equal, total, first = compare_weights(masters, reference)
        if equal != total:
            raise WeightMismatch(f"after epoch {epoch}: {total - equal} of {total} weights "
                                 f"differ from the integer reference; the first is {first}")
        counters = {name: int(outputs[f"host__{name}"]) for name in COUNTERS}
        want = {"samples": reference.samples, "correct": reference.correct,
                "batches": reference.batches,
                "saturations": sum(reference.saturations.values()),
                "loss_sum": reference.loss_sum}
        for name in COUNTERS:
            if counters[name] != want[name]:
                raise WeightMismatch(f"after epoch {epoch}: the counter {name} is "
                                     f"{counters[name]}, the integer reference's {want[name]}")
        replays = 0
        if "link_replays" in outputs:
            # 16-bit counters: an epoch's difference, modulo 2**16, is exact while an
            # epoch starts fewer than 65,536 replays per link end.
            for end, status in link_status(run.top, outputs).items():
                before = state["replays"].get(end, 0)
                replays += (status["replays"] - before) % (1 << 16)
                state["replays"][end] = status["replays"]
        previous = state["counters"]
        figures = EpochFigures(
            epoch=epoch,
            train_loss=(counters["loss_sum"] - previous["loss_sum"]) / 256 / whole,
            train_accuracy=(counters["correct"] - previous["correct"]) / whole,
            test_accuracy=_accuracy(reference, test_xs, y_test),
            weights=(equal, total), replays=replays, seconds=time.perf_counter() - start)
        state["counters"] = counters
        training.epochs.append(figures)
        if on_epoch:
            on_epoch(figures)

    def sample_done(done, total, cycles):
        if progress:
            progress(done, total)

    try:
        result = run.run(samples, labels, backend=backend, progress=sample_done,
                         checkpoints=[whole * e for e in range(1, epochs)],
                         on_checkpoint=epoch_end, link_ber=link_ber, link_seed=link_seed)
    except WeightMismatch as error:
        training.mismatch = str(error)
        training.wall_seconds = time.perf_counter() - start
        return training
    training.result = result
    # The last epoch: its end is the run's end, read the same way.
    outputs = {f"host__{name}": getattr(result, name) for name in COUNTERS}
    outputs.update(status_ports(run.top, result.link_status))
    try:
        epoch_end(epochs * whole, result.masters, outputs)
    except WeightMismatch as error:
        training.mismatch = str(error)
    equal, total, first = compare_weights(result.masters, reference)
    training.final_weights = (equal, total, first)
    training.wall_seconds = time.perf_counter() - start
    return training

