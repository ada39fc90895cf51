"""``fpdeep bench``: measured performance of the gateware in simulation.

``fpdeep bench core`` trains the single-chip core on digits for a few mini-batches
and reports cycles per sample, where each engine's cycles go, and the simulator's
speed, as medians over ``--repeats`` runs taken side by side.
``fpdeep bench link`` runs the link bandwidth benchmark
(:mod:`fpdeep.scripts.bench_link`). ``fpdeep bench plan`` times the planner on
VGG-19 over 128 VC709s (the issue's bound: under 2 s).

``--backend verilator`` runs the core in Verilator instead, and ``--backend both``
runs it in each and prints their speeds side by side (the same run: the same
core, samples and cycle counts). Verilator repeats reuse one build (seed 0);
its speed counts the whole simulator process, start-up and weight read-out
included, so short runs understate it.
"""

import statistics

from .args import network_arg, positive_int, take_options

__all__ = ["register"]


def register(subparsers):
    parser = subparsers.add_parser(
        "bench", help="measure cycles per sample, PE utilization and link bandwidth",
        description="Benchmarks run in Amaranth's simulator; figures are medians over repeats.")
    parser.add_argument("what", choices=("core", "link", "plan"), help="what to measure")
    parser.add_argument("--net", type=network_arg, metavar="NAME|FILE",
                        help="bench core: built-in network (any case) or network file "
                             "(default: digits)")
    parser.add_argument("--data", metavar="FILE.npz",
                        help="bench core: samples to feed (default: the digits resized to "
                             "the network's input)")
    parser.add_argument("--batches", type=positive_int, help="bench core (default: 2)")
    parser.add_argument("--batch-size", type=positive_int, help="bench core (default: 8)")
    parser.add_argument("--repeats", type=positive_int, default=3,
                        help="runs per figure (median)")
    parser.add_argument("--backend", choices=("pysim", "verilator", "both"),
                        help="bench core: simulator to measure; 'both' compares their "
                             "speeds (default: pysim)")
    parser.set_defaults(handler=run)


#: Options only ``bench core`` reads, and their defaults (None until then, so that one
#: given to ``bench link`` or ``bench plan`` is refused rather than silently ignored).
CORE_OPTIONS = {"net": "digits", "data": None, "batches": 2, "batch_size": 8,
                "backend": "pysim"}


def run(args):
    take_options(args, CORE_OPTIONS, CORE_OPTIONS if args.what == "core" else (),
                 f"bench {args.what}", hint=" (only bench core does)")
    if args.what == "link":
        from .bench_link import bench
        bench(seeds=args.repeats)
        return 0
    if args.what == "plan":
        return bench_plan(args.repeats)
    from ..sim.data import dataset_for
    from ..sim.harness import CoreRun
    from .args import load_network_arg
    from .sim_cmd import format_utilization
    network = load_network_arg(args.net)
    count = args.batches * args.batch_size
    floats, labels = dataset_for(network, args.data).samples(count, seed=0)
    results = []
    if args.backend in ("pysim", "both"):
        for repeat in range(args.repeats):
            core_run = CoreRun(network, batch_size=args.batch_size, seed=repeat)
            reference = core_run.reference()
            samples = [reference.quantize_input(x) for x in floats]
            results.append(core_run.run(samples, labels))
    if args.backend in ("verilator", "both"):
        core_run = CoreRun(network, batch_size=args.batch_size, seed=0)
        samples = [core_run.reference().quantize_input(x) for x in floats]
        fast = [core_run.run(samples, labels, backend="verilator")
                for _ in range(args.repeats)]
        build = core_run.verilator_build
        if args.backend == "verilator":
            results = fast
    cps = statistics.median(r.cycles_per_sample for r in results)
    speed = statistics.median(r.total_cycles / r.wall_seconds for r in results)
    middle = sorted(results, key=lambda r: r.cycles_per_sample)[len(results) // 2]
    train = [c for r in results for c in r.sample_cycles]
    print(f"fpdeep bench core: {network.name}, {args.batches} batches of {args.batch_size}, "
          f"{args.repeats} runs")
    print(f"cycles per sample (SGD amortized): {cps:.1f}")
    print(f"cycles of a sample without / with the SGD step: {min(train)} / {max(train)}")
    pes = sum(e.pes for e in middle.engines)
    macs = sum(e.macs_per_sample for e in middle.engines)
    print(f"PEs: {pes}; useful MACs per sample: {macs}; "
          f"chip-wide PE utilization: {macs / (pes * cps):.1%}")
    if args.backend == "both":
        fast_speed = statistics.median(r.total_cycles / r.wall_seconds for r in fast)
        same = all(r.sample_cycles == results[0].sample_cycles for r in fast)
        print(f"simulation speed (median): Amaranth simulator {speed:.0f} cycles/s, "
              f"Verilator {fast_speed:.0f} cycles/s, {fast_speed / speed:.0f}x")
        print("cycle counts of the two simulators "
              + ("agree" if same else "DIFFER: a backend is wrong"))
    else:
        print(f"simulation speed: {speed:.0f} cycles/s (median)")
    if args.backend != "pysim":
        print("Verilator model: " + ("found in the cache" if build.cached else
                                      f"built in {build.build_seconds:.1f} s")
              + f", Verilog conversion {build.convert_seconds:.1f} s")
    print()
    print(format_utilization(middle))
    return 0


def bench_plan(repeats):
    import time
    from ..plan import zoo
    from ..plan.plan import plan_network
    from ..plan.boards import Cluster
    times = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        plan = plan_network(zoo.get("vgg19"), Cluster.uniform("vc709", 128, link_gbps=250))
        times.append(time.perf_counter() - start)
    print(f"fpdeep bench plan: vgg19 on 128 vc709 chips at 250 Gb/s, {len(times)} runs")
    print(f"planning time: median {statistics.median(times):.2f} s, "
          f"min {min(times):.2f} s, max {max(times):.2f} s "
          f"(balance {plan.summary['balance']:.3f})")
    return 0
