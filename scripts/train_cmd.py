"""``fpdeep train``: train a network with the NumPy reference (int, float, or both).

``fpdeep train --net digits --reference both`` runs the same comparison as
``python -m fpdeep.scripts.train_quality``: per-epoch held-out accuracy of each
mode, the final figures and their difference. Any network trains, on the digits
resized to its input or on ``--data FILE.npz`` (:mod:`fpdeep.sim.data`).
"""

from .args import load_network_arg, network_arg
from .train_quality import MODES, add_arguments, run_from_args

__all__ = ["register"]


def register(subparsers):
    parser = subparsers.add_parser(
        "train", help="train a network with the NumPy reference",
        description="Train a network on its data set with the bit-exact integer reference, "
                    "the float reference, or both side by side, and report held-out "
                    "accuracy per epoch.")
    parser.add_argument("--net", default="digits", type=network_arg, metavar="NAME|FILE",
                        help="built-in network (any case) or a .json/.yaml/.onnx network "
                             "file (default %(default)s)")
    parser.add_argument("--data", metavar="FILE.npz",
                        help="arrays x (N, C, H, W), y (N,) and optionally x_test, y_test; "
                             "by default the 8x8 digits resized to the network's input")
    parser.add_argument("--reference", default="both", choices=("int", "float", "both"),
                        help="which reference mode trains (default %(default)s)")
    add_arguments(parser)
    parser.set_defaults(handler=_train)


def _train(args):
    modes = MODES if args.reference == "both" else (args.reference,)
    run_from_args(args, modes=modes, network=load_network_arg(args.net), data=args.data)
    return 0
