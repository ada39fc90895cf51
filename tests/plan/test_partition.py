import pytest

from fpdeep.plan import zoo
from fpdeep.plan.errors import FpdeepError
from fpdeep.plan.partition import partition
from fpdeep.plan.workload import workload
from fpdeep.platforms.resources import get_board

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
