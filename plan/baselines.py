"""Baseline partitioners to compare against: no intra-layer split.

* :func:`whole_layers`: each chip gets whole layers; layers are dealt out greedily
  in order so that chips get about equal MACs (the naive layer-per-chip split).
* :func:`contiguous_dp`: the optimal contiguous split of whole layers over N chips
  by dynamic programming, minimising the slowest chip (as PipeDream and GPipe
  partition). It cannot use more chips than layers.

Both cost a chip as its MACs over its PEs (engines perfectly balanced inside the
chip, no shape limits), which favours the baselines.
"""

from .workload import workload

__all__ = ["whole_layers", "contiguous_dp", "compare"]


def _report(name, groups, works, boards):
    times = []
    for i, board in enumerate(boards):
        macs = sum(works[k].macs for k in groups[i]) if i < len(groups) else 0
        times.append(macs / board.multipliers / board.clock_hz)
    mean = sum(times) / len(times)
    return {"method": name, "balance": max(times) / mean if mean else float("inf"),
            "images_per_s": 1 / max(times), "chips_used": sum(1 for t in times if t)}


def whole_layers(network, boards):
    works = workload(network)
    total = sum(w.macs for w in works)
    n = len(boards)
    groups, current, acc = [], [], 0
    for k, w in enumerate(works):
        current.append(k)
        acc += w.macs
        if acc >= total * (len(groups) + 1) / n and len(groups) < n - 1:
            groups.append(current)
            current = []
    groups.append(current)
    return _report("whole layers", groups, works, boards)


def contiguous_dp(network, boards):
    works = workload(network)
    n, m = len(boards), len(works)
    prefix = [0]
    for w in works:
        prefix.append(prefix[-1] + w.macs)
    chips = min(n, m)
    inf = float("inf")
    # best[c][k]: slowest-chip time of the first k layers on the first c chips.
    best = [[inf] * (m + 1) for _ in range(chips + 1)]
    cut = [[0] * (m + 1) for _ in range(chips + 1)]
    best[0][0] = 0.0
    for c in range(1, chips + 1):
        rate = boards[c - 1].multipliers * boards[c - 1].clock_hz
        for k in range(1, m + 1):
            for j in range(c - 1, k):
                t = max(best[c - 1][j], (prefix[k] - prefix[j]) / rate)
                if t < best[c][k]:
                    best[c][k], cut[c][k] = t, j
    groups, k = [], m
    for c in range(chips, 0, -1):
        j = cut[c][k]
        groups.append(list(range(j, k)))
        k = j
    groups.reverse()
    return _report("contiguous-layer DP", groups, works, boards)


def compare(network, boards, plan):
    """Rows of (method, balance, images/s) for the baselines and our plan."""
    ours = {"method": "fpdeep (intra-layer, compute bound)",
            "balance": plan.summary["balance"],
            "images_per_s": plan.summary["bounds_images_per_s"]["compute"],
            "chips_used": len(boards)}
    full = {"method": "fpdeep (full model)", "balance": plan.summary["balance"],
            "images_per_s": plan.summary["images_per_s"], "chips_used": len(boards)}
    return [whole_layers(network, boards), contiguous_dp(network, boards), ours, full]
