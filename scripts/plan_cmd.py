"""``fpdeep plan``: partition a network over a chain of FPGAs and write the plan.

Examples::

    fpdeep plan --net vgg16 --board vc709 --chips 16 --link-gbps 250 -o plan.json
    fpdeep plan --net lenet5 --board ulx3s-85f --chips 4 --compare
    fpdeep plan --sweep --out-dir docs/scaling
    fpdeep plan --balance lenet5 vgg16
    fpdeep plan --net digits --chips 4 --target gateware -o digits4.json

``--target gateware`` plans what the gateware builds (whole layers or output-channel
slices, engines as built, feature slots per chip) and prints the gateware model's
predictions: cycles per sample, engine busy fractions, link words and feature-slot
use per chip.
"""

import contextlib
import os

from ..plan.errors import FpdeepError
from .args import (finite_float, load_network_arg, network_arg, output_file, positive_int,
                   take_options)

__all__ = ["register", "OPTIONS", "READS"]

#: The options whose use depends on the mode, with their defaults. The parser's default
#: for each is None, so that one given to a mode that does not read it is refused.
OPTIONS = {"net": "digits", "board": "ulx3s-85f", "chips": 1, "link_gbps": None,
           "link_latency_ns": 500.0, "link_ber": 0.0, "batch": None, "target": "paper",
           "output": None, "compare": False, "max_chips": None, "out_dir": "docs/scaling"}

#: The options each mode reads: planning one network, ``--sweep`` and ``--balance``.
READS = {
    "plan without --sweep or --balance": {"net", "board", "chips", "link_gbps",
                                          "link_latency_ns", "link_ber", "batch", "target",
                                          "output", "compare"},
    "plan --sweep": {"batch", "max_chips", "out_dir"},
    "plan --balance": {"max_chips"},
}


def register(subparsers):
    parser = subparsers.add_parser("plan", help="partition a network over N FPGAs",
                                   description=__doc__.splitlines()[0])
    parser.add_argument("--net", type=network_arg,
                        help="built-in network (digits, lenet5, alexnet, vgg16, vgg19; any "
                             "case) or a .json/.yaml/.onnx file (default digits)")
    parser.add_argument("--board",
                        help="board kind, or a comma-separated list of one per chip "
                             "(default ulx3s-85f)")
    parser.add_argument("--chips", type=positive_int,
                        help="number of chips in the chain (default 1)")
    parser.add_argument("--link-gbps", type=finite_float(0, low_open=True), default=None,
                        help="total link bandwidth per FPGA, per direction (overrides board)")
    parser.add_argument("--link-latency-ns", type=finite_float(0),
                        help="latency of every link (default 500)")
    parser.add_argument("--link-ber", type=finite_float(0, 1, high_open=True),
                        help="bit-error rate of every link, in [0, 1) (default 0); the paper "
                             "target's link payload is the raw rate times the link layer's "
                             "efficiency at this rate")
    parser.add_argument("--batch", type=positive_int, default=None,
                        help="mini-batch size (default 64; 8 with --target gateware, the "
                             "training core's default)")
    parser.add_argument("--target", choices=("paper", "gateware"),
                        help="paper-scale engines (default), or what the gateware builds, "
                             "with its predicted timing")
    parser.add_argument("-o", "--output", type=output_file, help="write the plan JSON here")
    parser.add_argument("--compare", action="store_true", default=None,
                        help="also print the baselines' balance and throughput")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--sweep", action="store_true",
                      help="run the scaling study and write a table and a PNG plot")
    mode.add_argument("--balance", nargs="*", metavar="NET",
                      help="print max/mean chip cycles for N = 1..64 of these built-in "
                           "networks (all if none given)")
    parser.add_argument("--max-chips", type=positive_int,
                        help="largest N of the sweep (128) or of --balance (64)")
    parser.add_argument("--out-dir",
                        help="where --sweep writes scaling.md and scaling.png (default "
                             "docs/scaling)")
    parser.set_defaults(handler=run)


def make_cluster(args):
    from ..plan.boards import Cluster, get_board
    names = [name.strip() for name in args.board.split(",")]
    boards = [get_board(name) for name in names]
    if len(boards) == 1:
        boards = boards * args.chips
    elif len(boards) != args.chips:
        raise FpdeepError(f"--board lists {len(boards)} boards for {args.chips} chips")
    return Cluster(boards, link_latency_ns=args.link_latency_ns, link_gbps=args.link_gbps,
                   link_ber=args.link_ber)


def _fmt(x):
    return f"{x:.3g}" if isinstance(x, float) else str(x)


def print_plan(plan):
    print(f"{'chip':>4} {'board':<10} {'cycles/sample':>13} {'PEs':>5} {'util':>5} "
          f"{'mem Mb':>7} {'fwd kb':>8} {'bwd kb':>8}  slices")
    for chip in plan.chips:
        p = chip["predicted"]
        link = p["link_bits_per_sample"]
        fwd = link["fwd"]["act"] + link["fwd"]["weights"]
        bwd = link["bwd"]["err"] + link["bwd"]["weights"]
        slices = ", ".join(f"{s['layer']}[k{s['in_features'][0]}:{s['in_features'][1]}]"
                           if s["split"] == "inputs" else
                           f"{s['layer']}[c{s['out_channels'][0]}:{s['out_channels'][1]},"
                           f"r{s['rows'][0]}:{s['rows'][1]}]" for s in chip["slices"])
        print(f"{chip['index']:>4} {chip['board']:<10} {p['cycles_per_sample']:>13.0f} "
              f"{p['pes']:>5} {p['pe_utilisation']:>5.2f} {p['memory_bits'] / 1e6:>7.2f} "
              f"{fwd / 1e3:>8.1f} {bwd / 1e3:>8.1f}  {slices}")
    s = plan.summary
    print(f"balance {s['balance']:.3f}  images/s {s['images_per_s']:.4g} "
          f"(steady {s['images_per_s_steady']:.4g})  GOPS {s['gops']:.4g}  "
          f"limit {s['limiting_factor']}  latency {s['latency_cycles']:.0f} cycles  "
          f"bubble {s['bubble_cycles_per_batch']:.0f} cycles/batch")
    for layer, reason in s["row_split_layers"].items():
        print(f"row split {layer}: {reason}")
    for layer, reason in s.get("input_split_layers", {}).items():
        print(f"input split {layer}: {reason}")


def print_gateware(plan):
    """Print a gateware plan: per chip its slices and engines, then the predictions."""
    s = plan.summary["gateware"]
    print(f"{'chip':>4} {'board':<10} {'slices (engines rows x cols)':<44} {'PEs':>4} "
          f"{'mult':>9} {'cycles/sample':>13} {'fwd/bwd est':>11} {'slots':>5} "
          f"{'peak':>4} {'down w/s':>8} {'up w/s':>7}")
    for chip in plan.chips:
        p = chip["predicted"]
        g = p["gateware"]
        slices = " ".join(
            f"{sl['layer']}[{sl['out_channels'][0]}:{sl['out_channels'][1]}]("
            + ",".join(f"{k}{e['rows']}x{e['cols']}" for k, e in sl["engines"].items()) + ")"
            for sl in chip["slices"])
        down = g["link_down"]["words_per_sample"] if g["link_down"] else 0
        up = g["link_up"]["words_per_sample"] if g["link_up"] else 0
        est = g["estimate"]
        print(f"{chip['index']:>4} {chip['board']:<10} {slices:<44} {p['pes']:>4} "
              f"{p['multipliers']:>4}/{p['multipliers_capacity']:<4} "
              f"{p['cycles_per_sample']:>13.1f} {est['forward']:>5.0f}/{est['backward']:<5.0f} "
              f"{chip['buffers']['feature_slots']:>5} {g['feature_slots_peak']:>4} "
              f"{down:>8.1f} {up:>7.1f}")
    for chip in plan.chips:
        g = chip["predicted"]["gateware"]
        for place in chip["weights"]["stored_at"]:
            print(f"chip {chip['index']}'s {place['layer']} masters and velocities "
                  f"({place['count']} weights) are held by chip {place['chip']}: its memory "
                  f"is short; WGT {g['wgt_down']['words_per_batch']:.0f} words down, "
                  f"{g['wgt_up']['words_per_batch']:.0f} up per batch")
    print("\nengine busy cycles per sample (share of the chip's cycles per sample):")
    for chip in plan.chips:
        engines = chip["predicted"]["gateware"]["engines"]
        print(f"  chip {chip['index']}: " + "  ".join(
            f"{name} {e['busy_cycles_per_sample']} ({100 * e['busy_fraction']:.0f}%)"
            for name, e in engines.items()))
    print("\nsequencer cycles per sample by phase:")
    for chip in plan.chips:
        phases = chip["predicted"]["gateware"]["phases_per_sample"]
        print(f"  chip {chip['index']}: " + "  ".join(
            f"{name} {value:.0f}" for name, value in phases.items() if value))
    batch = s["batch_size"]
    runs = ", ".join(f"{k} batch{'es' if k != '1' else ''} {v / (int(k) * batch):.1f}"
                     for k, v in s["perf_cycles"].items())
    print(f"\ncluster: {s['cycles_per_sample']:.1f} cycles per sample (steady state, SGD "
          f"amortized over batches of {s['batch_size']}), {s['images_per_s']:.4g} images/s "
          f"at {plan.chips[0]['board']}'s clock; latency {s['latency_cycles']} cycles")
    print(f"feature slots per chip: {' '.join(map(str, s['slots']))} (the fewest within "
          f"{100 * s['slot_tolerance']:.0f}% of unlimited slots; at most "
          f"{' '.join(map(str, s['slots_memory_caps']))}: what each memory holds, up to "
          f"the batch)")
    print(f"from a cold start, as fpdeep sim reports it (busiest chip's busy cycles per "
          f"sample): {runs}")
    more = s["with_more_slots"]
    print(f"with more feature slots: one more on every chip {more['each_plus_1']:.1f}, "
          f"unlimited {more['unlimited']:.1f} cycles per sample")
    print(f"limit: {s['limit']}")
    bounds = s["bounds"]
    print(f"bounds: round trip / slots {bounds['round_trip']:.0f}, busiest chip "
          f"{bounds['busiest_chip']:.0f} cycles per sample")
    if len(s["candidates"]) > 1:
        print("chains simulated (cycles per sample with the slots sized, and with as many "
              "as help):")
        for cand in s["candidates"]:
            sized = (f"{cand['cycles_per_sample']:>9.1f}" if cand["slots"] else
                     f"{'-':>9}")
            slots = " ".join(map(str, cand["slots"])) if cand["slots"] else "not sized"
            print(f"  {sized} {cand['reference_cycles_per_sample']:>9.1f}  "
                  f"{' | '.join(cand['chips'])}  (slots {slots})")


def run_sweep(args):
    from ..plan.scaling import sweep, summarise
    from ..plan.files import atomic_output, output_directory, output_target
    output_directory(args.out_dir, what="--out-dir")
    table = os.path.join(args.out_dir, "scaling.md")
    png = os.path.join(args.out_dir, "scaling.png")
    if os.path.isdir(args.out_dir):
        for path in (table, png):       # refused now, not after the sweep's minutes
            output_target(path)
    args.max_chips = args.max_chips or 128
    rows = sweep(chips=range(1, args.max_chips + 1), batch_size=args.batch or 64)
    lines = ["| net | link | N | images/s | speedup | efficiency | balance | limit |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["fits"] and (r["chips"] in (1, 2, 4, 8, 16, 24, 32, 48, 64, 83, 96, 100, 128)
                          or r["chips"] == args.max_chips):
            lines.append(f"| {r['net']} | {r['link']} | {r['chips']} | {r['images_per_s']:.0f} "
                         f"| {r['speedup']:.1f} | {r['efficiency']:.2f} | {r['balance']:.3f} "
                         f"| {r['limit']} |")
    lines += ["", "| net | link | fits from N | linear (eff >= 0.9) to N | ends at N | because "
              "| best speedup (at N) |", "|---|---|---|---|---|---|---|"]
    for s in summarise(rows):
        lines.append(f"| {s['net']} | {s['link']} | {s['first_fit']} | {s['linear_to']} | "
                     f"{s['ends_at']} | {s['ends_because']} | {s['best_speedup']:.1f} "
                     f"({s['best_at']}) |")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for net in ("alexnet", "vgg16", "vgg19"):
        for link, style in (("6x10G", "--"), ("250G", "-")):
            series = [r for r in rows if r["net"] == net and r["link"] == link and r["fits"]]
            ax.plot([r["chips"] for r in series], [r["speedup"] for r in series], style,
                    label=f"{net}, {link}")
    ax.plot([1, args.max_chips], [1, args.max_chips], ":", color="grey", label="linear")
    ax.set_xlabel("FPGAs (VC709 class)")
    ax.set_ylabel("speedup over one chip (compute bound)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    # The table and its plot are replaced together or not at all; a directory made
    # for them goes again if they cannot be written.
    made = not os.path.isdir(args.out_dir)
    os.makedirs(args.out_dir, exist_ok=True)
    try:
        with atomic_output(table, png) as (table_temp, png_temp):
            with open(table_temp, "w", encoding="utf-8") as file:
                file.write("\n".join(lines) + "\n")
            fig.savefig(png_temp, dpi=110, bbox_inches="tight", format="png")
    except BaseException:
        if made:
            with contextlib.suppress(OSError):
                os.rmdir(args.out_dir)
        raise
    print("\n".join(lines))
    print(f"wrote {table} and {png}")
    return 0


def run_balance(args):
    from ..plan.scaling import balance_sweep
    print("| network | board | N range | worst balance (at N) | N over 1.05 "
          "| slowest chip / ideal, worst (at N) | time |")
    print("|---|---|---|---|---|---|---|")
    for r in balance_sweep(args.balance, args.max_chips or 64):
        misses = f"{len(r['misses'])}: {r['misses']}" if r["misses"] else "none"
        print(f"| {r['net']} | {r['board']} | 1..{r['chips']} | {r['worst']:.3f} "
              f"({r['worst_at']}) | {misses} | {r['slowdown']:.2f} ({r['slowdown_at']}) "
              f"| {r['seconds']:.1f} s |")
    return 0


def run(args):
    mode = ("plan --balance" if args.balance is not None else
            "plan --sweep" if args.sweep else "plan without --sweep or --balance")
    take_options(args, OPTIONS, READS[mode], mode)
    if args.balance is not None:
        return run_balance(args)
    if args.sweep:
        return run_sweep(args)
    from ..plan.plan import plan_network
    network = load_network_arg(args.net)
    cluster = make_cluster(args)
    if args.target == "gateware" and args.compare:
        raise FpdeepError("--compare compares paper-target plans; drop it or --target gateware")
    if args.target == "gateware" and args.link_ber:
        # The gateware model times error-free links to the cycle; a BER it ignored
        # would mislead.
        raise FpdeepError("--link-ber applies to paper-target plans; the gateware model "
                          "times error-free links")
    batch = args.batch if args.batch is not None else (8 if args.target == "gateware" else 64)
    plan = plan_network(network, cluster, batch_size=batch, target=args.target)
    if args.target == "gateware":
        print_gateware(plan)
    else:
        print_plan(plan)
    if args.compare:
        from ..plan.baselines import compare
        boards = [cluster.board(i) for i in range(len(cluster))]
        print(f"\n{'method':<38} {'balance':>8} {'images/s':>10} {'chips used':>10}")
        for row in compare(network, boards, plan):
            print(f"{row['method']:<38} {row['balance']:>8.3f} {row['images_per_s']:>10.4g} "
                  f"{row['chips_used']:>10}")
    if args.output:
        plan.save(args.output)
        print(f"wrote {args.output}")
    return 0
