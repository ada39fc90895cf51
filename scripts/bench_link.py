"""Link bandwidth efficiency: payload words per link cycle at several bit-error rates.

    python -m fpdeep.scripts.bench_link [--words N] [--seeds S] [--max-payload P ...]

Each run pushes ``N`` words on each of the 4 VCs from endpoint a to endpoint b of a
simulated :class:`~fpdeep.rtl.link.endpoint.LinkPair` (always-valid sources,
always-ready sinks; b's ACKs and credits share the wire back), in Amaranth's simulator,
and measures delivered words over cycles. The table gives medians over the seeds and
the framing bound ``max_payload / (header + max_payload + CRC + idle)``.
"""

import argparse
import statistics
import sys

from ..rtl.link.frame import LinkConfig
from ..rtl.link.traffic import run_traffic

__all__ = ["bench", "main"]

BERS = (0.0, 1e-4, 1e-3)


def bench(*, words=1000, seeds=3, max_payloads=(16,), bers=BERS, out=sys.stdout):
    """Run the benchmark and print its table to ``out``; return the rows as dicts."""
    rows = []
    for max_payload in max_payloads:
        config = LinkConfig(max_payload=max_payload)
        for ber in bers:
            runs = []
            for seed in range(1, seeds + 1):
                result = run_traffic(config, words=words, ber=ber, seed=seed)
                result.check()
                runs.append(result)
            eff = [r.efficiency for r in runs]
            rows.append({
                "max_payload": max_payload, "ber": ber,
                "bound": config.efficiency(),
                "median": statistics.median(eff), "min": min(eff), "max": max(eff),
                "replays": statistics.median(r.status["a"]["replays"] for r in runs),
                "bad": statistics.median(r.status["b"]["bad_frames"] for r in runs),
                "seconds": sum(r.seconds for r in runs),
                "cycles": sum(r.cycles for r in runs),
            })
            print(f"  max_payload={max_payload} ber={ber:g}: done", file=sys.stderr)

    c = LinkConfig()
    print(f"Link efficiency, 4 VCs a->b, {words} words/VC, median of {seeds} seeds "
          f"(word = symbol = {c.word_width} bits; frame = {c.header_symbols} header + payload + "
          f"{c.trailer_symbols} CRC-32 + 1 idle symbols)", file=out)
    print("| max_payload | BER | words/cycle (median) | min-max | % of framing bound "
          "| framing bound | replays/run | bad frames/run |", file=out)
    print("|---|---|---|---|---|---|---|---|", file=out)
    for r in rows:
        print(f"| {r['max_payload']} | {r['ber']:g} | {r['median']:.3f} | "
              f"{r['min']:.3f}-{r['max']:.3f} | {100 * r['median'] / r['bound']:.0f} % | "
              f"{r['bound']:.3f} | {r['replays']:g} | {r['bad']:g} |", file=out)
    total_s = sum(r["seconds"] for r in rows)
    total_c = sum(r["cycles"] for r in rows)
    print(f"({total_c} simulated cycles in {total_s:.0f} s, "
          f"{total_c / total_s:.0f} cycles/s)", file=out)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m fpdeep.scripts.bench_link",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--words", type=int, default=1000, help="words per VC per run")
    parser.add_argument("--seeds", type=int, default=3, help="runs per point (median)")
    parser.add_argument("--max-payload", type=int, nargs="+", default=[16],
                        help="frame payload sizes to compare (powers of two)")
    args = parser.parse_args(argv)
    bench(words=args.words, seeds=args.seeds, max_payloads=args.max_payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
