"""``fpdeep waves``: record a short training run as a VCD and a GTKWave save file.

``fpdeep waves --net digits --chips 2 -o run.vcd`` simulates one mini-batch
(``--batch-size`` samples, 2 by default) and writes ``run.vcd`` and ``run.gtkw``,
whose signals are grouped by chip and then by engine. Open it with
``gtkwave run.gtkw``. It is ``fpdeep sim --batches 1 --vcd`` with short defaults.
"""

import argparse

__all__ = ["register"]


def register(subparsers):
    parser = subparsers.add_parser(
        "waves", help="record a short training run as VCD + GTKWave save file",
        description="Simulate one mini-batch and write waveforms grouped by chip and engine.")
    parser.add_argument("--net", default="digits", metavar="NAME|FILE")
    parser.add_argument("--chips", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-o", "--output", default="run.vcd", metavar="FILE.vcd")
    parser.set_defaults(handler=run)


def run(args):
    from .sim_cmd import run as simulate
    sim_args = argparse.Namespace(net=args.net, chips=args.chips, plan=None, board="ulx3s-85f",
                                  batches=1, batch_size=args.batch_size, lr=0.02, momentum=0.9,
                                  seed=args.seed, backend="pysim", vcd=args.output)
    return simulate(sim_args)
