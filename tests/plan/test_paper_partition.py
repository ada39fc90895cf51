import math
import random

import pytest

from fpdeep.plan import zoo
from fpdeep.plan import paper_partition as part
from fpdeep.plan.errors import FpdeepError
from fpdeep.plan.paper_partition import partition
from fpdeep.plan.workload import workload
from fpdeep.plan.boards import get_board

BOARD = {"digits": "ulx3s-85f", "lenet5": "ulx3s-85f", "alexnet": "vc709", "vgg16": "vc709",
         "vgg19": "vc709"}


def _balance(chips):
    cycles = [c.cycles for c in chips]
    return max(cycles) / (sum(cycles) / len(cycles))


def _cases():
    for name in ("digits", "lenet5", "alexnet", "vgg16", "vgg19"):
        limit = min(64, sum(w.out_channels for w in workload(zoo.get(name))))
        yield name, limit


@pytest.mark.parametrize("name, limit", list(_cases()))
def test_balance_target(name, limit):
    net, board = zoo.get(name), get_board(BOARD[name])
    misses = []
    for n in range(1, limit + 1):
        _, chips = partition(net, [board] * n)
        # Every line of work is placed exactly once, in order.
        assert chips[0].start == 0 and all(a.end == b.start for a, b in zip(chips, chips[1:]))
        if _balance(chips) > 1.05:
            misses.append((n, round(_balance(chips), 3)))
    assert misses == []


def test_engines_follow_shape_rules():
    _, chips = partition(zoo.get("vgg16"), [get_board("vc709")] * 8)
    for chip in chips:
        assert chip.pes <= 3600
        for tile in chip.tiles:
            w = tile.layer.work
            for engine in tile.engines.values():
                assert engine.rows <= tile.n_channels
                assert w.out_cols % engine.cols == 0
                if w.kind == "linear":
                    assert engine.cols == 1
            assert ("bp" in tile.engines) == (w.index > 0)
        # Engines of a chip are balanced: the engines doing most of the work finish
        # within 10% of the slowest (small end tiles can be quicker: C must divide Wo).
        slowest = max(e.cycles for e in chip.engines)
        balanced = sum(e.macs for e in chip.engines if e.cycles >= 0.9 * slowest)
        assert balanced >= 0.8 * chip.macs


def test_row_split_has_reason():
    layers, _ = partition(zoo.get("vgg16"), [get_board("vc709")] * 32)
    rows = [lu for lu in layers if lu.mode == "rows"]
    assert rows and all(lu.reason.startswith(("compute", "memory")) for lu in rows)


def test_too_many_chips():
    with pytest.raises(FpdeepError, match="fewer than"):
        partition(zoo.get("digits"), [get_board("vc709")] * 100)


def test_too_many_engines():
    with pytest.raises(FpdeepError, match="engines need"):
        partition(zoo.get("vgg16"), [get_board("icebreaker")])


def _random_run(rng, works):
    """Random split modes and a random run of lines [s, e) under them."""
    modes = [(rng.choice(["channels", "rows"]) if w.kind == "conv"
              else rng.choice(["channels", "inputs"]), "") for w in works]
    layers = part._layers(works, modes)
    lines = part._Lines(layers)
    s = rng.randrange(lines.total)
    return layers, lines, s, min(lines.total, s + rng.randrange(1, 200))


@pytest.mark.parametrize("name, board", [("lenet5", "ulx3s-85f"), ("digits", "ulx3s-45f"),
                                         ("alexnet", "vc709")])
def test_exact_search_costs_equal_built_chips(name, board):
    # The exact cut search costs runs by tile shapes; it must agree with a built chip.
    rng, works, board = random.Random(7), workload(zoo.get(name)), get_board(board)
    for _ in range(20):
        efficiency = {k: rng.choice([1.0, 0.85]) for k in part.ENGINE_KINDS}
        costs = part._ChipCosts(efficiency)
        costs.reach(rng.choice([200, 2000, 8000]))
        layers, lines, s, e = _random_run(rng, works)
        cycles = costs.run(layers, lines, s, s + 1, e, board)
        for end in range(s + 1, e + 1, max(1, (e - s) // 5)):
            try:
                built = part._build_chip(layers, 0, s, end, board, efficiency).cycles
            except FpdeepError:
                built = math.inf
            if cycles[end - s - 1] < math.inf:
                assert cycles[end - s - 1] == built
            else:
                assert built >= costs.horizon - 1


def test_allocation_is_optimal():
    # The chip's cycles are the least over every legal R x C per engine (R <= slice
    # channels, C | Wo, C = 1 for linear) within the multipliers, by brute force.
    rng, works = random.Random(3), workload(zoo.get("lenet5"))
    efficiency = {k: 1.0 for k in part.ENGINE_KINDS}
    checked = 0
    for _ in range(60):
        layers, _, s, e = _random_run(rng, works)
        budget = rng.choice([40, 72, 156])
        board = get_board("ulx3s-85f")
        try:
            chip = part._build_chip(layers, 0, s, e, board, efficiency)
        except FpdeepError:
            continue
        engines = chip.engines

        def least_pes(engine, target):
            shapes = [(r, c) for c in engine.col_options for r in range(1, engine.max_rows + 1)
                      if engine.cycles_at(r, c) <= target]
            return min((r * c for r, c in shapes), default=math.inf)

        target, shapes = part._smallest_target(engines, budget)
        if target is None:
            assert len(engines) > budget or sum(least_pes(e, math.inf) for e in engines) > budget
            continue
        checked += 1
        assert sum(r * c for r, c in shapes) <= budget
        assert all(e.cycles_at(*shape) <= target for e, shape in zip(engines, shapes))
        assert sum(least_pes(e, target - 1) for e in engines) > budget
    assert checked > 30


def test_lenet5_split_reasons():
    # Rows and input splits chosen for balance say so.
    for n in (10, 30, 47):
        layers, _ = partition(zoo.get("lenet5"), [get_board("ulx3s-85f")] * n)
        for lu in layers:
            if lu.mode == "rows":
                assert lu.reason.startswith(("compute", "memory", "balance"))
            if lu.mode == "inputs":
                assert lu.reason.startswith(part.INPUT_SPLIT_REASON)
