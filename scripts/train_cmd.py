"""``fpdeep train``: train a network with the NumPy reference, or on the simulated cluster.

``fpdeep train --net digits --reference both`` runs the same comparison as
``python -m fpdeep.scripts.train_quality``: per-epoch held-out accuracy of each
mode, the final figures and their difference. Any network trains, on the digits
resized to its input or on ``--data FILE.npz`` (:mod:`fpdeep.sim.data`).

``fpdeep train --chips N --backend verilator`` trains the same data, split, seeds
and hyper-parameters on the gateware of N chips instead, checking every weight
against the integer reference at every epoch's end (:mod:`.train_cluster`).
"""

from .args import finite_float, load_network_arg, network_arg, output_file, positive_int
from .train_quality import MODES, add_arguments, run_from_args

__all__ = ["register"]


def register(subparsers):
    parser = subparsers.add_parser(
        "train", help="train a network with the NumPy reference or on the simulated chips",
        description="Train a network on its data set with the bit-exact integer reference, "
                    "the float reference, or both side by side, and report held-out "
                    "accuracy per epoch; with --chips/--backend, train on the simulated "
                    "gateware of a chain of chips, bit-exact against the integer reference.")
    parser.add_argument("--net", default="digits", type=network_arg, metavar="NAME|FILE",
                        help="built-in network (any case) or a .json/.yaml/.onnx network "
                             "file (default %(default)s)")
    parser.add_argument("--data", metavar="FILE.npz",
                        help="arrays x (N, C, H, W), y (N,) and optionally x_test, y_test; "
                             "by default the 8x8 digits resized to the network's input")
    parser.add_argument("--reference", default=None, choices=("int", "float", "both"),
                        help="which reference mode trains (default both; int, the only one, "
                             "with --chips/--backend)")
    add_arguments(parser)
    parser.add_argument("--chips", type=positive_int, default=None,
                        help="train on the simulated gateware of this many chips, planned "
                             "for ulx3s-85f boards as fpdeep sim does (default: the reference "
                             "alone; 1 with --backend)")
    parser.add_argument("--backend", choices=("pysim", "verilator"), default=None,
                        help="simulator of the chips (default verilator with --chips; pysim "
                             "is about 100 times slower)")
    parser.add_argument("--link-ber", type=finite_float(0, 1, high_open=True), default=None,
                        metavar="BER",
                        help="bit-error rate of every link wire, in [0, 1), seeded by --seed "
                             "(default 0); the link layer replays what the errors corrupt")
    parser.add_argument("--curve", type=output_file, metavar="FILE.png",
                        help="write the loss and accuracy per epoch as a PNG")
    parser.set_defaults(handler=_train)


def _train(args):
    from .train_cluster import check_options, run
    if check_options(args):
        return run(args, load_network_arg(args.net))
    reference = args.reference or "both"
    modes = MODES if reference == "both" else (reference,)
    run_from_args(args, modes=modes, network=load_network_arg(args.net), data=args.data)
    return 0
