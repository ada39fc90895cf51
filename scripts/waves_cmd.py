"""``fpdeep waves``: record a short training run as a VCD and a GTKWave save file.

``fpdeep waves --net digits --chips 2 -o run.vcd`` simulates one mini-batch
(``--batch-size`` samples, 2 by default) and writes ``run.vcd`` and ``run.gtkw``,
whose signals are grouped by chip and then by engine. Open it with
``gtkwave run.gtkw``. It is ``fpdeep sim --batches 1 --vcd`` with short defaults.
"""

import argparse

from .args import output_file, positive_int

__all__ = ["register"]


def register(subparsers):
    from .sim_cmd import add_training_options
    parser = subparsers.add_parser(
        "waves", help="record a short training run as VCD + GTKWave save file",
        description="Simulate one mini-batch and write waveforms grouped by chip and engine.")
    add_training_options(parser)
    parser.add_argument("--chips", type=positive_int, default=1)
    parser.add_argument("--batch-size", type=positive_int, default=2)
    parser.add_argument("-o", "--output", default="run.vcd", type=output_file,
                        metavar="FILE.vcd", help="the VCD; the .gtkw goes beside it")
    parser.set_defaults(handler=run)


def run(args):
    from .sim_cmd import run as simulate
    sim_args = argparse.Namespace(net=args.net, data=args.data, chips=args.chips, plan=None,
                                  board=None, batches=1, batch_size=args.batch_size,
                                  lr=args.lr, momentum=args.momentum, seed=args.seed,
                                  backend="pysim", vcd=args.output)
    return simulate(sim_args)
