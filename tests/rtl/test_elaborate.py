import copy

import pytest

from fpdeep.plan import zoo
from fpdeep.plan.errors import FpdeepError
from fpdeep.plan.plan import Plan, plan_network
from fpdeep.plan.boards import Cluster as Boards, get_board
from fpdeep.rtl.cluster import Cluster
from fpdeep.rtl.core import TrainingCore
from fpdeep.rtl.elaborate import build_from_plan, chain_from_plan


def gateware_plan(chips, network=None):
    network = network or zoo.get("digits")
    plan = plan_network(network, Boards([get_board("ulx3s-85f")] * chips), batch_size=8,
                        target="gateware")
    return network, plan


@pytest.mark.parametrize("chips", [1, 2, 4])
def test_chips_hold_what_the_plan_says(chips):
    network, plan = gateware_plan(chips)
    top = build_from_plan(plan, network, batch_size=8)
    cores = top.chips if isinstance(top, Cluster) else [top]
    assert isinstance(top, Cluster) == (chips > 1)
    assert len(cores) == len(plan.chips) == chips
    for core, chip, slices in zip(cores, plan.chips, plan.gateware_slices()):
        assert [spec.name for spec in core.specs] == [layer for layer, _, _ in slices]
        assert core.slots == chip["buffers"]["feature_slots"]
        shapes = core.engine_array_shapes()
        for layer, (lo, hi), rows in slices:
            if core.split:
                assert (core.lo, core.hi) == (lo, hi)
            for kind in ("fp", "wu") + (("bp",) if rows["bp"] else ()):
                assert shapes[f"{layer}.{kind}"][0] == rows[kind]
            # The columns the plan reports are the ones built.
            planned = next(s for s in chip["slices"] if s["layer"] == layer)["engines"]
            for kind, engine in planned.items():
                assert shapes[f"{layer}.{kind}"] == (engine["rows"], engine["cols"])


def test_refuses_a_plan_for_another_network():
    _, plan = gateware_plan(2)
    with pytest.raises(FpdeepError, match="not 'lenet5'"):
        chain_from_plan(plan, zoo.get("lenet5"))


def test_refuses_a_paper_plan():
    network = zoo.get("digits")
    plan = plan_network(network, Boards([get_board("ulx3s-85f")] * 2), batch_size=8)
    with pytest.raises(FpdeepError, match="gateware"):
        chain_from_plan(plan, network)


@pytest.mark.parametrize("damage, message", [
    (lambda d: d["chips"][0]["buffers"].pop("feature_slots"), "feature_slots"),
    (lambda d: d["chips"][0]["buffers"].update(feature_slots=0), "feature_slots must be"),
    (lambda d: d["chips"][0]["slices"][0]["engines"].pop("fp"), "fp engine"),
    (lambda d: d["chips"].pop(0), "where the chain needs 'conv1'"),
])
def test_refuses_a_damaged_plan_in_one_line(damage, message):
    network, plan = gateware_plan(2)
    data = copy.deepcopy(plan.data)
    damage(data)
    with pytest.raises(FpdeepError, match=message) as caught:
        chain_from_plan(Plan(data), network)
    assert "\n" not in str(caught.value)


def test_single_chip_plan_builds_a_core():
    network, plan = gateware_plan(1)
    assert isinstance(build_from_plan(plan, network), TrainingCore)


def test_weights_stored_at_the_next_chip_are_held_there():
    network, plan = gateware_plan(2)
    data = copy.deepcopy(plan.data)
    data["chips"][0]["weights"]["stored_at"] = [{"chip": 1, "layer": "conv1", "count": 40}]
    top = build_from_plan(Plan(data), network, batch_size=8)
    assert top.held == {0: "conv1"}
    assert top.chips[0].remote_layer == "conv1" and top.chips[1].held[0] == "conv1"
    data["chips"][1]["weights"]["stored_at"] = [{"chip": 0, "layer": "fc1", "count": 650}]
    with pytest.raises(FpdeepError, match="chip 1: weights stored at"):
        chain_from_plan(Plan(data), network)
