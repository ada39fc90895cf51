"""The scaling study: speedup against N for the paper's benchmarks.

Speedup is taken against the compute-bound throughput of one chip (its MACs per
sample over its PEs at its clock), because one VC709 cannot hold VGG's weights
on chip. Parallel efficiency is speedup / N. Linearity is taken to end at the
first N where parallel efficiency drops below ``LINEAR_EFFICIENCY``.
"""

from .errors import FpdeepError
from .plan import plan_network
from .workload import workload
from . import zoo
from ..platforms.resources import Cluster, get_board

__all__ = ["sweep", "LINEAR_EFFICIENCY"]

LINEAR_EFFICIENCY = 0.9


def sweep(nets=("alexnet", "vgg16", "vgg19"), board="vc709", chips=range(1, 129),
          bandwidths=(("6x10G", 60.0), ("250G", 250.0)), batch_size=64):
    board = get_board(board)
    rows = []
    for name in nets:
        network = zoo.get(name)
        macs = sum(w.macs for w in workload(network))
        single = board.multipliers * board.clock_hz / macs
        for label, gbps in bandwidths:
            for n in chips:
                try:
                    plan = plan_network(network, Cluster.uniform(board, n, link_gbps=gbps),
                                        batch_size=batch_size)
                except FpdeepError as error:
                    rows.append({"net": name, "link": label, "chips": n, "fits": False,
                                 "error": str(error)})
                    continue
                s = plan.summary
                speedup = s["images_per_s"] / single
                rows.append({"net": name, "link": label, "chips": n, "fits": True,
                             "images_per_s": s["images_per_s"], "gops": s["gops"],
                             "speedup": speedup, "efficiency": speedup / n,
                             "balance": s["balance"], "limit": s["limiting_factor"]})
    return rows


def summarise(rows):
    """Per (net, link): where linearity ends and why."""
    out = []
    keys = sorted({(r["net"], r["link"]) for r in rows}, key=lambda k: (k[0], k[1]))
    for net, link in keys:
        series = [r for r in rows if r["net"] == net and r["link"] == link and r["fits"]]
        if not series:
            continue
        linear = [r for r in series if r["efficiency"] >= LINEAR_EFFICIENCY]
        end = None
        for r in series:
            if r["efficiency"] < LINEAR_EFFICIENCY and r["chips"] > (linear[0]["chips"]
                                                                    if linear else 0):
                end = r
                break
        best = max(series, key=lambda r: r["images_per_s"])
        out.append({"net": net, "link": link, "first_fit": series[0]["chips"],
                    "linear_to": max((r["chips"] for r in linear), default=None),
                    "ends_at": end["chips"] if end else None,
                    "ends_because": end["limit"] if end else None,
                    "best_speedup": best["speedup"], "best_at": best["chips"]})
    return out
