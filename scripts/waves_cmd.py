"""``fpdeep waves``: record a short training run as a VCD and a GTKWave save file.

``fpdeep waves --net digits --chips 2 -o run.vcd`` simulates one mini-batch
(``--batch-size`` samples, 2 by default) and writes ``run.vcd`` and ``run.gtkw``,
whose signals are grouped by chip and then by engine, and by link direction
(transmit, receive, replay, credits). Open it with ``gtkwave run.gtkw``.
``--plan FILE`` takes the chain from a saved gateware plan instead, as ``fpdeep sim
--plan`` does; the plan decides the chips and the batch size. It is ``fpdeep sim
--batches 1 --vcd`` with short defaults.
"""

import argparse

from .args import output_file, positive_int

__all__ = ["register"]


def register(subparsers):
    from .sim_cmd import add_training_options
    parser = subparsers.add_parser(
        "waves", help="record a short training run as VCD + GTKWave save file",
        description="Simulate one mini-batch and write waveforms grouped by chip, engine "
                    "and link.")
    add_training_options(parser)
    # None when not given: with --plan, sim's plan_for refuses a value the plan contradicts.
    parser.add_argument("--chips", type=positive_int, default=None,
                        help="FPGAs in the chain (default 1, or the plan's)")
    parser.add_argument("--plan", metavar="FILE",
                        help="a gateware plan (fpdeep plan --target gateware -o FILE); by "
                             "default the network is planned here for --chips")
    parser.add_argument("--batch-size", type=positive_int, default=None,
                        help="samples in the mini-batch (default 2, or the plan's)")
    parser.add_argument("-o", "--output", default="run.vcd", type=output_file,
                        metavar="FILE.vcd", help="the VCD; the .gtkw goes beside it")
    parser.set_defaults(handler=run)


def run(args):
    from .sim_cmd import run as simulate
    chips, batch_size = args.chips, args.batch_size
    if not args.plan:
        chips, batch_size = chips or 1, batch_size or 2
    sim_args = argparse.Namespace(net=args.net, data=args.data, chips=chips, plan=args.plan,
                                  board=None, batches=1, batch_size=batch_size,
                                  lr=args.lr, momentum=args.momentum, seed=args.seed,
                                  backend="pysim", vcd=args.output, link_ber=0.0)
    return simulate(sim_args)
