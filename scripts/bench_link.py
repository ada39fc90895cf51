"""Link bandwidth efficiency: payload words per link cycle at several bit-error rates,
selective repeat and go-back-N side by side.

    python -m fpdeep.scripts.bench_link [--words N] [--seeds S] [--max-payload P ...]
                                        [--retransmit selective go-back-n]

Each run pushes ``N`` words on each of the 4 VCs from endpoint a to endpoint b of a
simulated :class:`~fpdeep.rtl.link.endpoint.LinkPair` (always-valid sources,
always-ready sinks; b's ACKs and credits share the wire back, under the same bit-error
rate), in Amaranth's simulator, and measures delivered words over cycles. Every run is
scored (every word once, in order, intact). The table gives medians over the seeds
(seeds 1..S, the same for both schemes), the framing bound ``max_payload / (header +
max_payload + CRC + idle)`` and the limit of any retransmission scheme, the framing
bound times the chance that a full frame arrives intact
(:meth:`~fpdeep.rtl.link.frame.LinkConfig.limit`).
"""

import argparse
import statistics
import sys

from ..rtl.link.frame import LinkConfig, Retransmit
from ..rtl.link.traffic import run_traffic

__all__ = ["bench", "main"]

BERS = (0.0, 1e-4, 1e-3)
SCHEMES = (Retransmit.SELECTIVE.value, Retransmit.GO_BACK_N.value)


def bench(*, words=1000, seeds=3, max_payloads=(16,), bers=BERS, schemes=SCHEMES,
          out=sys.stdout):
    """Run the benchmark and print its table to ``out``; return the rows as dicts."""
    rows = []
    for max_payload in max_payloads:
        for ber in bers:
            for scheme in schemes:
                config = LinkConfig(max_payload=max_payload, retransmit=scheme)
                runs = []
                for seed in range(1, seeds + 1):
                    result = run_traffic(config, words=words, ber=ber, seed=seed)
                    result.check()
                    runs.append(result)
                eff = [r.efficiency for r in runs]
                rows.append({
                    "max_payload": max_payload, "ber": ber, "scheme": scheme,
                    "bound": config.efficiency(), "limit": config.limit(ber),
                    "median": statistics.median(eff), "min": min(eff), "max": max(eff),
                    "resent": statistics.median(r.status["a"]["replays"] for r in runs),
                    "timeouts": statistics.median(r.status["a"]["timeouts"] for r in runs),
                    "bad": statistics.median(r.status["b"]["bad_frames"] for r in runs),
                    "seconds": sum(r.seconds for r in runs),
                    "cycles": sum(r.cycles for r in runs),
                })
                print(f"  max_payload={max_payload} ber={ber:g} {scheme}: done",
                      file=sys.stderr)

    c = LinkConfig()
    print(f"Link efficiency, 4 VCs a->b, {words} words/VC, median of {seeds} seeds "
          f"(word = symbol = {c.word_width} bits; frame = {c.header_symbols} header + payload + "
          f"{c.trailer_symbols} CRC-32 + 1 idle symbols; {c.replay_slots} replay slots)",
          file=out)
    print("| max_payload | BER | scheme | words/cycle (median) | min-max | limit | % of limit "
          "| framing bound | resent/run | timeouts/run | bad frames/run |", file=out)
    print("|---|---|---|---|---|---|---|---|---|---|---|", file=out)
    for r in rows:
        print(f"| {r['max_payload']} | {r['ber']:g} | {r['scheme']} | {r['median']:.3f} | "
              f"{r['min']:.3f}-{r['max']:.3f} | {r['limit']:.3f} | "
              f"{100 * r['median'] / r['limit']:.0f} % | {r['bound']:.3f} | "
              f"{r['resent']:g} | {r['timeouts']:g} | {r['bad']:g} |", file=out)
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
    parser.add_argument("--retransmit", nargs="+", default=list(SCHEMES), choices=SCHEMES,
                        help="retransmission schemes to compare")
    args = parser.parse_args(argv)
    bench(words=args.words, seeds=args.seeds, max_payloads=args.max_payload,
          schemes=args.retransmit)
    return 0


if __name__ == "__main__":
    sys.exit(main())
