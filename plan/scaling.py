"""The scaling study: speedup against N for the paper's benchmarks.

Speedup is taken against the compute-bound throughput of one chip (its MACs per
sample over its PEs at its clock), because one VC709 cannot hold VGG's weights
on chip. Parallel efficiency is speedup / N. Linearity is taken to end at the
first N where parallel efficiency drops below ``LINEAR_EFFICIENCY``.

:func:`balance_sweep` measures the partitioner's balance target instead: max/mean
chip cycles per sample of every built-in network at N = 1..64.
"""

import time

from .errors import FpdeepError
from .paper_partition import partition, BALANCE_TARGET
from .plan import plan_network
from .workload import workload
from . import zoo
from .boards import Cluster, get_board

__all__ = ["sweep", "summarise", "balance_sweep", "LINEAR_EFFICIENCY", "BALANCE_BOARDS"]

LINEAR_EFFICIENCY = 0.9

#: The board each built-in network's balance is measured on.
BALANCE_BOARDS = {"digits": "ulx3s-85f", "lenet5": "ulx3s-85f", "alexnet": "vc709",
                  "vgg16": "vc709", "vgg19": "vc709"}


def balance_sweep(nets=None, max_chips=64):
    """Balance of :func:`partition` for N = 1..max_chips (N at most the total output
    channels) on :data:`BALANCE_BOARDS`: one dict per network.

    ``worst`` is the largest max/mean chip cycles per sample (at ``worst_at``),
    ``misses`` the N above :data:`BALANCE_TARGET`, ``slowdown`` the largest ratio
    of the slowest chip to the ideal ``MACs / (N * multipliers)`` cycles (at
    ``slowdown_at``: what balance costs in throughput), ``seconds`` the time to
    partition all N.
    """
    rows = []
    for name in nets or list(BALANCE_BOARDS):
        network, board = zoo.get(name), get_board(BALANCE_BOARDS[name])
        works = workload(network)
        chips = min(max_chips, sum(w.out_channels for w in works))
        macs = sum(w.macs for w in works)
        start, per_n = time.perf_counter(), []
        for n in range(1, chips + 1):
            cycles = [c.cycles for c in partition(network, [board] * n)[1]]
            per_n.append((n, max(cycles) / (sum(cycles) / n),
                          max(cycles) / (macs / (board.multipliers * n))))
        worst = max(per_n, key=lambda r: r[1])
        slow = max(per_n, key=lambda r: r[2])
        rows.append({"net": name, "board": board.name, "chips": chips,
                     "worst": worst[1], "worst_at": worst[0],
                     "misses": [n for n, balance, _ in per_n if balance > BALANCE_TARGET],
                     "slowdown": slow[2], "slowdown_at": slow[0],
                     "seconds": time.perf_counter() - start})
    return rows


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
