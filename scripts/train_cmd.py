"""``fpdeep train``: train a network with the NumPy reference (int, float, or both).

``fpdeep train --net digits --reference both`` runs the same comparison as
``python -m fpdeep.scripts.train_quality``: per-epoch held-out accuracy of each
mode, the final figures and their difference.
"""

from .train_quality import MODES, NETWORKS, add_arguments, run_from_args

__all__ = ["register"]


def register(subparsers):
    parser = subparsers.add_parser(
        "train", help="train a network with the NumPy reference",
        description="Train a network on its data set with the bit-exact integer reference, "
                    "the float reference, or both side by side, and report held-out "
                    "accuracy per epoch.")
    parser.add_argument("--net", default="digits", metavar="NAME",
                        help=f"network to train: {', '.join(NETWORKS)} (default %(default)s)")
    parser.add_argument("--reference", default="both", choices=("int", "float", "both"),
                        help="which reference mode trains (default %(default)s)")
    add_arguments(parser)
    parser.set_defaults(handler=_train)


def _train(args):
    modes = MODES if args.reference == "both" else (args.reference,)
    run_from_args(args, modes=modes, net=args.net)
    return 0
