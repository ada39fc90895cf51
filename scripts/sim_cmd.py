"""``fpdeep sim``: train on the simulated gateware and check it against the reference.

``fpdeep sim --net digits --chips 4 --batches 2`` plans the network for the
gateware (or takes ``--plan``), elaborates the plan into chips
(:mod:`fpdeep.rtl.elaborate`), feeds them ``batches * batch_size`` digits back to
back in Amaranth's simulator, and prints whether every weight equals the integer
reference bit for bit, the counters, each engine's PE utilization, and every
measured figure next to the plan's model (:mod:`fpdeep.sim.compare`).
``--backend verilator`` runs the same chips in Verilator instead (built once per
design into a cache; see :mod:`fpdeep.sim.verilator`), fast enough for hundreds
of batches; its results equal pysim's cycle for cycle.
"""

from ..plan.errors import FpdeepError
from .args import (finite_float, load_network_arg, network_arg, nonnegative_int,
                   output_file, positive_int, refuse_with_plan)

__all__ = ["register", "add_training_options", "plan_for"]


def add_training_options(parser):
    """``--net``, ``--data``, ``--lr``, ``--momentum`` and ``--seed``: shared by the
    commands that train."""
    parser.add_argument("--net", default="digits", type=network_arg, metavar="NAME|FILE",
                        help="built-in network (digits, lenet5, ...; any case) or a "
                             ".json/.yaml/.onnx network file (default %(default)s)")
    parser.add_argument("--data", metavar="FILE.npz",
                        help="training data: arrays x (N, C, H, W) and y (N,), optionally "
                             "x_test and y_test; by default the 8x8 digits resized to the "
                             "network's input (fpdeep.sim.data)")
    parser.add_argument("--lr", type=finite_float(0, low_open=True), default=0.02,
                        help="learning rate (default %(default)s)")
    parser.add_argument("--momentum", type=finite_float(0), default=0.9,
                        help="momentum, in [0, 1) (default %(default)s)")
    parser.add_argument("--seed", type=nonnegative_int, default=0,
                        help="initial weights and data order (default %(default)s)")


def register(subparsers):
    parser = subparsers.add_parser(
        "sim", help="simulate training on the gateware against the NumPy reference",
        description="Train a network on the simulated gateware and compare every weight with "
                    "the bit-exact integer reference.")
    add_training_options(parser)
    parser.add_argument("--chips", type=positive_int, default=None,
                        help="FPGAs in the chain (default 1, or the plan's)")
    parser.add_argument("--plan", metavar="FILE",
                        help="a gateware plan (fpdeep plan --target gateware -o FILE); by "
                             "default the network is planned here for --chips --board")
    parser.add_argument("--board", default=None,
                        help="board of every chip, when planning here (default ulx3s-85f)")
    parser.add_argument("--batches", type=positive_int, default=2,
                        help="mini-batches to train (default 2)")
    parser.add_argument("--batch-size", type=positive_int, default=None,
                        help="samples per mini-batch (default 8, or the plan's)")
    parser.add_argument("--backend", choices=("pysim", "verilator"), default="pysim",
                        help="simulator: Amaranth's (default) or Verilator, built once per "
                             "design into ~/.cache/fpdeep/verilator ($FPDEEP_CACHE)")
    parser.add_argument("--vcd", metavar="FILE", type=output_file,
                        help="write a VCD and a GTKWave save file (FILE with .gtkw) beside it")
    parser.add_argument("--link-ber", type=finite_float(0, 1, high_open=True), default=0.0,
                        metavar="BER",
                        help="bit-error rate of every link wire, in [0, 1), seeded by --seed "
                             "(default 0); the link layer replays what the errors corrupt")
    parser.set_defaults(handler=run)


def run(args):
    from ..sim.harness import CoreRun, compare_weights
    from ..sim.compare import format_model_rows, model_rows
    from ..sim.data import dataset_for
    from ..rtl.elaborate import chain_from_plan
    from ..plan.files import output_target
    refuse_with_plan(args, ["board"])
    if args.backend == "verilator" and args.vcd:
        raise FpdeepError("--vcd needs --backend pysim: the Verilator backend does not write "
                          "waveforms yet")
    if args.vcd:
        from pathlib import Path
        output_target(Path(args.vcd).with_suffix(".gtkw"), what="waveforms")
    network = load_network_arg(args.net)
    dataset = dataset_for(network, args.data)
    plan = plan_for(args, network)
    chips = len(plan.chips)
    if args.link_ber and chips < 2:
        raise FpdeepError(f"--link-ber {args.link_ber:g} needs links: --chips 2 or more")
    layout = chain_from_plan(plan, network)
    args.batch_size = plan.data["batch_size"]
    count = args.batches * args.batch_size
    # The model's run, before the simulation: a plan it cannot model fails now.
    plan.run_cycles(args.batches)
    floats, labels = dataset.samples(count, seed=args.seed)
    run = CoreRun(network, batch_size=args.batch_size, lr=args.lr, momentum=args.momentum,
                  seed=args.seed, splits=layout.splits, engines=layout.engines,
                  slots=layout.slots, held=layout.held)
    reference = run.reference()
    samples = [reference.quantize_input(x) for x in floats]
    simulator = "Verilator" if args.backend == "verilator" else "Amaranth simulator"
    print(f"fpdeep sim: {network.name} on {chips} chip(s), {args.batches} batches of "
          f"{args.batch_size}, {simulator}, data: {dataset.source}")
    for k, chip in enumerate(run.chips):
        held = ", ".join(spec.name + (f"[{chip.lo}:{chip.hi}]" if chip.split else "")
                         for spec in chip.specs)
        rows = ", ".join(f"{name} {rows}x{cols}"
                         for name, (rows, cols) in chip.engine_array_shapes().items())
        extra = (f"; masters of {chip.remote_layer} held by chip {k + 1}"
                 if chip.remote_layer else "")
        print(f"  chip {k}: {held}; engines {rows}; {chip.slots} feature slots{extra}")
    # A line per sample while that stays readable; past 64 samples, a line per batch.
    per_batch = args.backend == "verilator" and count > 64
    batch_cycles = []

    def progress(done, total, cycles):
        if not per_batch:
            print(f"  sample {done:3d}/{total}: {cycles:6d} cycles", flush=True)
            return
        batch_cycles.append(cycles)
        if len(batch_cycles) == args.batch_size or done == total:
            print(f"  batch {(done - 1) // args.batch_size + 1:4d}/{args.batches}: samples "
                  f"{done - len(batch_cycles) + 1}-{done}, {min(batch_cycles)}-"
                  f"{max(batch_cycles)} cycles each", flush=True)
            batch_cycles.clear()

    if args.backend == "verilator":
        print("  building or finding the Verilator model ...", flush=True)
    result = run.run(samples, labels, progress=progress, vcd=args.vcd, backend=args.backend,
                     link_ber=args.link_ber, link_seed=args.seed)
    for batch in range(args.batches):
        span = slice(batch * args.batch_size, (batch + 1) * args.batch_size)
        reference.train_batch(samples[span], labels[span])

    equal, total, first = compare_weights(result.masters, reference)
    exact = equal == total
    counters_equal = (result.correct == reference.correct and
                      result.saturations == sum(reference.saturations.values()) and
                      result.loss_sum == reference.loss_sum)
    print()
    print(f"weights: {equal}/{total} equal the integer reference bit for bit"
          + ("" if exact else f"; first difference {first}"))
    print(f"counters: {result.samples} samples, {result.correct} correct, {result.batches} "
          f"batches, {result.saturations} saturations, mean loss "
          f"{result.loss_sum / 256 / max(1, result.samples):.4f} bits (reference: "
          f"{reference.correct} correct, {sum(reference.saturations.values())} saturations, "
          f"{reference.loss_sum / 256 / max(1, len(labels)):.4f} bits)")
    if result.link_status:
        replays = sum(status["replays"] for status in result.link_status.values())
        bad = sum(status["bad_frames"] for status in result.link_status.values())
        print(f"links at bit-error rate {args.link_ber:g}: {replays} replays, {bad} bad frames "
              f"dropped")
    print(f"cycles per sample: {result.cycles_per_sample:.1f} "
          f"(SGD steps amortized; {result.wall_seconds:.1f} s simulated at "
          f"{result.total_cycles / result.wall_seconds:.0f} cycles/s)")
    if args.backend == "verilator":
        build = run.verilator_build
        print(f"Verilator model: {build.directory} ("
              + ("found in the cache" if build.cached else f"built in {build.build_seconds:.1f} s")
              + f"; Verilog conversion {build.convert_seconds:.1f} s)")
    print()
    print(format_utilization(result))
    print(f"\nmeasured against the plan's model ({args.batches} batches from a cold start; "
          f"plan/model/):")
    print(format_model_rows(model_rows(result, plan, args.batches)))
    if args.vcd:
        print(f"\nwaveforms: {args.vcd} (open with: gtkwave {args.vcd[:-4] if args.vcd.endswith('.vcd') else args.vcd}.gtkw)")
    return 0 if exact and counters_equal else 1


def plan_for(args, network):
    """The gateware plan to simulate: ``--plan`` checked against the network, or a new one."""
    from ..plan.plan import Plan, plan_network
    from ..plan.boards import Cluster, get_board
    if args.plan:
        plan = Plan.load(args.plan)
        plan.check_network(network)
        plan.check_resources()
        if args.chips is not None and args.chips != len(plan.chips):
            raise FpdeepError(f"--chips {args.chips}: the plan {args.plan!r} is for "
                              f"{len(plan.chips)} chips")
        if args.batch_size is not None and args.batch_size != plan.data["batch_size"]:
            raise FpdeepError(f"--batch-size {args.batch_size}: the plan {args.plan!r} was "
                              f"made for batches of {plan.data['batch_size']}")
        return plan
    chips = args.chips or 1
    cluster = Cluster([get_board(args.board or "ulx3s-85f")] * chips)
    return plan_network(network, cluster, batch_size=args.batch_size or 8, target="gateware")


def format_utilization(result):
    rows = result.utilization_table()
    width = max(12, *(len(row[0]) for row in rows))
    lines = [f"{'engine':<{width}} {'PEs':>4} {'active':>7} {'steps':>7} {'useful MACs':>12}",
             f"{'':<{width}} {'':>4} {'(of cycles per sample)':>28}"]
    for name, pes, active, steps, useful in rows:
        lines.append(f"{name:<{width}} {pes:>4} {active:>7.1%} {steps:>7.1%} {useful:>12.1%}")
    return "\n".join(lines)