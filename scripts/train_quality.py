"""Training quality: the int and float references train the digits CNN side by side.

``python -m fpdeep.scripts.train_quality`` (or ``fpdeep train --net digits``) trains
:func:`fpdeep.plan.network.digits_cnn` on ``sklearn.datasets.load_digits()`` with
the same hyper-parameters, initial weights and sample order in both modes of
:class:`fpdeep.sim.reference.Reference`, and prints the held-out accuracy of each
after every epoch, the final figures and their difference in percentage points.

The data: the 1,797 8x8 images scaled by 1/16 to [0, 1] as (1, 8, 8) maps, split by
a fixed permutation (seed :data:`SPLIT_SEED`) into 1,400 training and 397 held-out
samples. Each epoch visits the training samples in an order drawn from ``seed``;
a last partial mini-batch is dropped (synchronous SGD needs whole batches).
"""

import sys
import time
from dataclasses import dataclass, field

import numpy as np

from ..plan.errors import FpdeepError
from ..plan.network import digits_cnn
from ..sim.reference import Reference, init_masters

__all__ = ["SPLIT_SEED", "TRAIN_SIZE", "DEFAULTS", "load_digits_split",
           "ModeRun", "train_side_by_side", "add_arguments", "run_from_args", "main"]

SPLIT_SEED = 0
TRAIN_SIZE = 1400
#: Measured good for both modes (see "Measured accuracy" in README.md).
DEFAULTS = {"epochs": 10, "lr": 0.02, "momentum": 0.9, "batch": 8, "seed": 1}
MODES = ("int", "float")


def load_digits_split(*, train_size=TRAIN_SIZE, split_seed=SPLIT_SEED):
    """``(x_train, y_train, x_test, y_test)``: float (N, 1, 8, 8) maps in [0, 1], int labels."""
    from ..sim.data import digits_dataset
    return digits_dataset((1, 8, 8), 10).split(train_size=train_size, split_seed=split_seed)


@dataclass
class ModeRun:
    """One reference's run: held-out accuracy after every epoch, and its counters."""
    mode: str
    accuracies: list = field(default_factory=list)
    saturations: dict = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def final(self):
        return self.accuracies[-1]


def _accuracy(ref, xs, labels):
    return float(np.mean([ref.predict(x) == label for x, label in zip(xs, labels)]))


def train_side_by_side(*, modes=MODES, epochs=DEFAULTS["epochs"], lr=DEFAULTS["lr"],
                       momentum=DEFAULTS["momentum"], batch=DEFAULTS["batch"],
                       seed=DEFAULTS["seed"], train_samples=None, network=None, data=None,
                       out=None):
    """Train one reference per mode, epoch by epoch, from the same initial masters.

    Parameters
    ----------
    modes : sequence of "int" and "float"
    epochs, lr, momentum, batch, seed :
        The same hyper-parameters for every mode; ``seed`` draws the initial weights
        and the sample order.
    network : Network, optional
        The digits CNN by default.
    data : str, optional
        An ``.npz`` data file (:func:`fpdeep.sim.data.load_npz`); by default the
        digits, resized to the network's input (:func:`fpdeep.sim.data.dataset_for`).
    train_samples : int, optional
        Train on only the first ``train_samples`` of the training split (quick runs);
        the held-out set is always the full 397 samples.
    out : file, optional
        Where to print the per-epoch table; ``None`` prints nothing.

    Returns
    -------
    dict
        ``{mode: ModeRun}``.

    Raises
    ------
    FpdeepError
        For an unknown mode, data that do not fit the network, or an impossible
        hyper-parameter.
    """
    from ..sim.data import training_split
    modes = tuple(modes)
    for mode in modes:
        if mode not in MODES:
            raise FpdeepError(f"reference mode must be 'int' or 'float', not {mode!r}")
    if not isinstance(epochs, int) or epochs < 1:
        raise FpdeepError(f"epochs must be a positive int, not {epochs!r}")
    if not lr > 0:
        raise FpdeepError(f"learning rate must be positive, not {lr!r}")
    network = network if network is not None else digits_cnn()
    dataset, (x_train, y_train, x_test, y_test) = training_split(
        network, data=data, train_samples=train_samples, batch=batch)
    masters = init_masters(network, seed=seed)
    refs = {mode: Reference(network, mode=mode, lr=lr, momentum=momentum, batch_size=batch,
                            masters=masters) for mode in modes}
    inputs = {mode: ([ref.quantize_input(x) for x in x_train],
                     [ref.quantize_input(x) for x in x_test]) for mode, ref in refs.items()}
    runs = {mode: ModeRun(mode) for mode in modes}
    order_rng = np.random.default_rng(seed)
    whole = len(x_train) - len(x_train) % batch

    def say(text):
        if out is not None:
            print(text, file=out, flush=True)

    say(f"{network.name} on {dataset.source}: {len(x_train)} training / {len(x_test)} "
        f"held-out samples; lr {lr}, momentum {momentum}, batch {batch}, seed {seed}")
    say("epoch  " + "  ".join(f"{mode:>7}" for mode in modes))
    for epoch in range(1, epochs + 1):
        order = order_rng.permutation(len(x_train))[:whole]
        for mode, ref in refs.items():
            start = time.perf_counter()
            train_xs, test_xs = inputs[mode]
            for first in range(0, whole, batch):
                chosen = order[first:first + batch]
                ref.train_batch([train_xs[i] for i in chosen], y_train[chosen])
            runs[mode].accuracies.append(_accuracy(ref, test_xs, y_test))
            runs[mode].seconds += time.perf_counter() - start
        say(f"{epoch:5d}  " + "  ".join(f"{runs[mode].accuracies[-1]:7.4f}" for mode in modes))
    for mode, ref in refs.items():
        runs[mode].saturations = dict(ref.saturations)
    say("final  " + "  ".join(f"{runs[mode].final:7.4f}" for mode in modes))
    if "int" in runs and "float" in runs:
        difference = runs["int"].final - runs["float"].final
        say(f"int - float: {difference:+.4f} ({100 * difference:+.2f} points)")
    if "int" in runs:
        counts = runs["int"].saturations
        say("int saturations: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    say("seconds: " + ", ".join(f"{mode} {run.seconds:.1f}" for mode, run in runs.items()))
    return runs


def add_arguments(parser):
    """The options shared by this script and ``fpdeep train``."""
    from .args import finite_float, nonnegative_int, positive_int
    parser.add_argument("--epochs", type=positive_int, default=DEFAULTS["epochs"],
                        help="passes over the training split (default %(default)s)")
    parser.add_argument("--lr", type=finite_float(0, low_open=True), default=DEFAULTS["lr"],
                        help="learning rate of the batch-mean gradient (default %(default)s)")
    parser.add_argument("--momentum", type=finite_float(0), default=DEFAULTS["momentum"],
                        help="SGD momentum, in [0, 1), 0 to disable (default %(default)s)")
    parser.add_argument("--batch", type=positive_int, default=DEFAULTS["batch"],
                        help="mini-batch size (default %(default)s)")
    parser.add_argument("--seed", type=nonnegative_int, default=DEFAULTS["seed"],
                        help="seed of the initial weights and sample order "
                             "(default %(default)s)")
    parser.add_argument("--train-samples", type=positive_int, default=None, metavar="N",
                        help="train on only the first N training samples (quick runs)")


def run_from_args(args, *, modes=MODES, network=None, data=None, out=None):
    """Run :func:`train_side_by_side` with parsed options, printing to ``out`` or stdout."""
    return train_side_by_side(modes=modes, epochs=args.epochs, lr=args.lr,
                              momentum=args.momentum, batch=args.batch, seed=args.seed,
                              train_samples=args.train_samples, network=network, data=data,
                              out=out if out is not None else sys.stdout)


def main(argv=None):
    from .args import Parser, UsageError
    parser = Parser(
        prog="python -m fpdeep.scripts.train_quality",
        description="Train the digits CNN with the int and float references side by side "
                    "and compare held-out accuracy.")
    add_arguments(parser)
    try:
        args = parser.parse_args(argv)
        run_from_args(args)
    except (FpdeepError, UsageError) as error:
        print(f"train_quality: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
