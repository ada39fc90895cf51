"""``fpdeep sim``: train on the simulated gateware and check it against the reference.

``fpdeep sim --net digits --chips 1 --batches 2`` builds the single-chip
training core, feeds it ``batches * batch_size`` digits in Amaranth's simulator,
and prints whether every weight equals the integer reference bit for bit, the
measured cycles per sample and each engine's PE utilization.
"""

from ..plan.errors import FpdeepError

__all__ = ["register", "network_from_arg"]


def network_from_arg(value):
    """A built-in network name, or a .json/.yaml network file."""
    from ..plan import zoo
    from ..plan.network import load_network
    if value.lower().endswith((".json", ".yaml", ".yml")):
        return load_network(value)
    return zoo.get(value)


def register(subparsers):
    parser = subparsers.add_parser(
        "sim", help="simulate training on the gateware against the NumPy reference",
        description="Train a network on the simulated gateware and compare every weight with "
                    "the bit-exact integer reference.")
    parser.add_argument("--net", default="digits", metavar="NAME|FILE",
                        help="built-in network or network file (default %(default)s)")
    parser.add_argument("--chips", type=int, default=1, help="FPGAs in the chain (default 1)")
    parser.add_argument("--batches", type=int, default=2, help="mini-batches to train (default 2)")
    parser.add_argument("--batch-size", type=int, default=8, help="samples per mini-batch")
    parser.add_argument("--lr", type=float, default=0.02, help="learning rate (default 0.02)")
    parser.add_argument("--momentum", type=float, default=0.9, help="momentum (default 0.9)")
    parser.add_argument("--seed", type=int, default=0, help="initial weights and data order")
    parser.add_argument("--vcd", metavar="FILE",
                        help="write a VCD and a GTKWave save file (FILE with .gtkw) beside it")
    parser.set_defaults(handler=run)


def run(args):
    from ..sim.harness import CoreRun, compare_weights, digits_samples
    if args.chips < 1:
        raise FpdeepError(f"--chips must be at least 1, not {args.chips}")
    if args.chips > 1:
        raise FpdeepError(f"--chips {args.chips}: the multi-chip cluster simulation is not "
                          f"built yet; only --chips 1 runs")
    if args.batches < 1 or args.batch_size < 1:
        raise FpdeepError("--batches and --batch-size must be at least 1")
    network = network_from_arg(args.net)
    if network.input_shape != (1, 8, 8) or network.num_classes != 10:
        raise FpdeepError(f"network {network.name!r}: simulation feeds 8x8 digits, so it needs "
                          f"a (1, 8, 8) input and 10 classes")
    count = args.batches * args.batch_size
    floats, labels = digits_samples(count, seed=args.seed)
    run = CoreRun(network, batch_size=args.batch_size, lr=args.lr, momentum=args.momentum,
                  seed=args.seed)
    reference = run.reference()
    samples = [reference.quantize_input(x) for x in floats]
    print(f"fpdeep sim: {network.name} on 1 chip, {args.batches} batches of {args.batch_size}, "
          f"Amaranth simulator")

    def progress(done, total, cycles):
        print(f"  sample {done:3d}/{total}: {cycles:6d} cycles", flush=True)

    result = run.run(samples, labels, progress=progress, vcd=args.vcd)
    for batch in range(args.batches):
        span = slice(batch * args.batch_size, (batch + 1) * args.batch_size)
        reference.train_batch(samples[span], labels[span])

    equal, total, first = compare_weights(result.masters, reference)
    exact = equal == total
    counters_equal = (result.correct == reference.correct and
                      result.saturations == sum(reference.saturations.values()))
    print()
    print(f"weights: {equal}/{total} equal the integer reference bit for bit"
          + ("" if exact else f"; first difference {first}"))
    print(f"counters: {result.samples} samples, {result.correct} correct, {result.batches} "
          f"batches, {result.saturations} saturations (reference: {reference.correct} correct, "
          f"{sum(reference.saturations.values())} saturations)")
    print(f"cycles per sample: {result.cycles_per_sample:.1f} "
          f"(SGD steps amortized; {result.wall_seconds:.1f} s simulated at "
          f"{result.total_cycles / result.wall_seconds:.0f} cycles/s)")
    print()
    print(format_utilization(result))
    if args.vcd:
        print(f"\nwaveforms: {args.vcd} (open with: gtkwave {args.vcd[:-4] if args.vcd.endswith('.vcd') else args.vcd}.gtkw)")
    return 0 if exact and counters_equal else 1


def format_utilization(result):
    lines = [f"{'engine':<12} {'PEs':>4} {'active':>7} {'steps':>7} {'useful MACs':>12}",
             f"{'':<12} {'':>4} {'(of cycles per sample)':>28}"]
    for name, pes, active, steps, useful in result.utilization_table():
        lines.append(f"{name:<12} {pes:>4} {active:>7.1%} {steps:>7.1%} {useful:>12.1%}")
    return "\n".join(lines)
