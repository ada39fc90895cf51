import json

import pytest

from fpdeep.plan import zoo
from fpdeep.plan.errors import FpdeepError
from fpdeep.plan.plan import Plan, plan_network
from fpdeep.plan.baselines import whole_layers, contiguous_dp
from fpdeep.plan.boards import Cluster, get_board


def test_schema_and_round_trip(tmp_path):
    plan = plan_network(zoo.get("vgg16"), Cluster.uniform("vc709", 16, link_gbps=250))
    path = tmp_path / "plan.json"
    plan.save(path)
    data = json.loads(path.read_text())
    assert data["version"] == 1 and data["batch_size"] == 64
    s = data["summary"]
    assert s["balance"] <= 1.05 and s["images_per_s"] > 0
    assert s["limiting_factor"] in ("compute", "link", "memory")
    for key in ("gops", "latency_cycles", "bubble_cycles_per_batch"):
        assert s[key] > 0
    chip = data["chips"][0]
    assert set(chip) >= {"index", "board", "slices", "weights", "buffers", "predicted"}
    sl = chip["slices"][0]
    assert set(sl["engines"]) == {"fp", "wu"}      # first layer: no BP
    assert set(chip["predicted"]["link_bits_per_sample"]) == {"fwd", "bwd", "weights"}
    assert Plan.load(path).to_dict() == data


def test_weights_all_placed():
    net = zoo.get("alexnet")
    plan = plan_network(net, Cluster.uniform("vc709", 8, link_gbps=60))
    held = sum(r["count"] for c in plan.chips for r in c["weights"]["local"])
    held += sum(r["count"] for c in plan.chips for r in c["weights"]["stored_at"])
    assert held >= sum(l.weight_count for l in net.layers)
    for c in plan.chips:
        assert c["predicted"]["memory_bits"] <= c["predicted"]["memory_capacity_bits"]


def test_does_not_fit():
    with pytest.raises(FpdeepError, match="does not fit"):
        plan_network(zoo.get("vgg16"), Cluster.uniform("ulx3s-25f", 20))


def test_bad_batch():
    with pytest.raises(FpdeepError, match="batch size"):
        plan_network(zoo.get("digits"), Cluster.uniform("ulx3s-85f", 1), batch_size=0)


def test_load_bad(tmp_path):
    path = tmp_path / "p.json"
    path.write_text('{"version": 7}')
    with pytest.raises(FpdeepError, match="version 1"):
        Plan.load(path)


def test_vgg19_on_128_chips():
    # Its planning time (the issue asks for under 2 s) is measured by `fpdeep bench plan`,
    # not here: a timed test fails on a loaded machine.
    plan = plan_network(zoo.get("vgg19"), Cluster.uniform("vc709", 128, link_gbps=250))
    assert len(plan.chips) <= 128
    assert plan.summary["balance"] >= 1.0


def test_beats_baselines():
    boards = [get_board("vc709")] * 16
    plan = plan_network(zoo.get("vgg16"), Cluster(boards, link_gbps=250))
    for baseline in (whole_layers, contiguous_dp):
        row = baseline(zoo.get("vgg16"), boards)
        assert row["balance"] > plan.summary["balance"]
        assert row["images_per_s"] < plan.summary["bounds_images_per_s"]["compute"]


def test_input_split_slices():
    # LeNet-5's fc1 (K = 400) cannot go below 401 cycles by output channels.
    plan = plan_network(zoo.get("lenet5"), Cluster.uniform("ulx3s-85f", 30))
    fc1 = [(c["index"], s) for c in plan.chips for s in c["slices"] if s["layer"] == "fc1"]
    assert fc1 and all(s["split"] == "inputs" for _, s in fc1)
    assert fc1[0][1]["reason"].startswith("the output-channel split cannot go below")
    # The input slices tile the 400 inputs in order, in whole input rows (W = 5);
    # every slice has all outputs and names the input channels it touches.
    spans = [s["in_features"] for _, s in fc1]
    assert spans[0][0] == 0 and spans[-1][1] == 400
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    assert all(lo % 5 == 0 and hi % 5 == 0 for lo, hi in spans)
    for _, s in fc1:
        lo, hi = s["in_features"]
        assert s["in_channels"] == [lo // 25, -(-hi // 25)]
    assert all(s["out_channels"] == [0, 120] for _, s in fc1)
    # K-slice weights plus the biases once: the whole layer, nowhere twice.
    held = sum(r["count"] for c in plan.chips for r in c["weights"]["local"]
               if r["layer"] == "fc1")
    held += sum(r["count"] for c in plan.chips for r in c["weights"]["stored_at"]
                if r["layer"] == "fc1")
    assert held == 400 * 120 + 120
    # Partial sums (120 words) cross every cut inside the layer.
    first, last = fc1[0][0], fc1[-1][0]
    for c in plan.chips[first:last]:
        assert c["predicted"]["link_bits_per_sample"]["fwd"]["act"] >= 120 * 16
    assert "fc1" in plan.summary["input_split_layers"]


def test_no_cliff_from_deep_row_splits():
    """VGG-16 at 250 Gb/s: 100 chips ran at 226 images/s against 993 on 96, because
    the compute reason split conv4_2/conv4_3 by rows, so every chip of those layers
    held all their weights, which spilled and streamed over the links per sample.
    The full model now picks among the balanced candidates."""
    net = zoo.get("vgg16")
    rate = {n: plan_network(net, Cluster.uniform("vc709", n, link_gbps=250)).summary
            for n in (96, 100)}
    assert rate[100]["balance"] <= 1.05
    assert rate[100]["images_per_s"] >= 0.9 * rate[96]["images_per_s"]
    assert "conv4_2" not in rate[100]["row_split_layers"]


def test_gateware_schema_and_round_trip(tmp_path):
    """A gateware plan carries each chip's feature slots (what the elaborator builds),
    their memory, and the choice's figures; all survive the JSON round trip."""
    plan = plan_network(zoo.get("digits"), Cluster.uniform("ulx3s-85f", 4), 8,
                        target="gateware")
    path = tmp_path / "plan.json"
    plan.save(path)
    data = json.loads(path.read_text())
    assert Plan.load(path).to_dict() == data
    s = data["summary"]["gateware"]
    assert set(s) >= {"slots", "slots_memory_caps", "slot_tolerance", "with_more_slots"}
    assert set(s["with_more_slots"]) == {"each_plus_1", "unlimited"}
    assert len(s["slots"]) == len(s["slots_memory_caps"]) == 4
    assert all(1 <= k <= cap <= 8 for k, cap in zip(s["slots"], s["slots_memory_caps"]))
    for chip, slots in zip(data["chips"], s["slots"]):
        buffers = chip["buffers"]
        assert buffers["feature_slots"] == slots
        assert buffers["feature_cache_bits"] == slots * buffers["feature_slot_bits"]
        assert chip["predicted"]["gateware"]["feature_slots"] == slots
    chosen = s["candidates"][0]
    assert chosen["slots"] == s["slots"] and chosen["cycles_per_sample"] == \
        s["cycles_per_sample"]


def _small_boards():
    """Three boards on which digits' conv1 and a slice of fc1 keep their masters on the
    next chip (their memories just short of them), so the plan has held layers."""
    from dataclasses import replace
    from fpdeep.plan import model
    from fpdeep.plan.layers import gateware_layers
    layers = gateware_layers(zoo.get("digits"))

    def alone(layer):
        spec = model.SliceSpec(layer, 0, layer.geometry.cout, bp=1 if layer.index else 0)
        return model.memory_bits(model.ChipSpec(0, [spec], slots=1), layers)["total"]
    conv, fc = layers
    sizes = [alone(conv) - model.master_bits(conv.geometry) // 2,
             int(0.42 * alone(fc)), int(0.72 * alone(fc))]
    board = get_board("ulx3s-85f")
    return [replace(board, name=f"small{c}", bram_bits=bits) for c, bits in enumerate(sizes)]


@pytest.mark.parametrize("boards", ["1", "2", "4", "held"])
def test_run_cycles_for_any_number_of_batches(boards, tmp_path):
    """The model rebuilt from a saved plan gives the run cycles the planner saved for
    1-4 batches, and runs the model for more (fpdeep sim --batches 100 compares them)."""
    from fpdeep.plan import model
    chain = (Cluster(_small_boards()) if boards == "held"
             else Cluster([get_board("ulx3s-85f")] * int(boards)))
    batch = 4 if boards == "held" else 8
    made = plan_network(zoo.get("digits"), chain, batch_size=batch, target="gateware")
    made.save(tmp_path / "p.json")
    plan = Plan.load(tmp_path / "p.json")
    chips, layers, timing = plan.model_chain()
    if boards == "held":
        assert [chip.remote for chip in chips] == ["conv1", "fc1", None]
    result = model.simulate(chips, layers, batch_size=batch, batches=6, timing=timing)
    saved = plan.summary["gateware"]["run_cycles"]
    assert {str(k): result["run_cycles"][k] for k in range(1, 5)} == saved
    assert [plan.run_cycles(k) for k in (1, 5, 6)] == [saved["1"], result["run_cycles"][5],
                                                       result["run_cycles"][6]]
    assert result["run_cycles"][6] > result["run_cycles"][5] > saved["4"]
    for bad in (0, -1, 2.5, True):
        with pytest.raises(FpdeepError, match="batches"):
            plan.run_cycles(bad)


@pytest.fixture(scope="module")
def gateware_dict():
    plan = plan_network(zoo.get("digits"), Cluster.uniform("ulx3s-85f", 2), batch_size=8,
                        target="gateware")
    return json.loads(json.dumps(plan.data))


@pytest.mark.parametrize("change, words", [
    (lambda d: d["chips"][0]["slices"][0]["engines"]["fp"].update(rows=100_000),
     "chip 0 (conv1) needs 800"),
    (lambda d: d["chips"][1]["buffers"].update(feature_slots=1_000_000),
     "with 1000000 feature slots, ulx3s-85f has"),
    (lambda d: d["chips"][0]["slices"][0]["engines"]["fp"].update(rows=10**9),
     "engines.fp.rows must be an int from 1 to"),
    (lambda d: d["chips"][0]["buffers"].update(feature_slots=2.5),
     "buffers.feature_slots must be an int"),
    (lambda d: d["chips"][0].pop("weights"), "chips[0] lacks 'weights'"),
    (lambda d: d["summary"]["gateware"]["timing"].update(max_payload=0),
     "timing.max_payload must be at least 1"),
    (lambda d: d.update(batch_size="8"), "batch_size must be an int"),
    (lambda d: d["chips"][0]["predicted"]["gateware"]["engines"].pop("conv1.fp"),
     "the slices' engines are"),
    (lambda d: d["chips"][1]["weights"]["stored_at"].append(
        {"chip": 2, "layer": "fc1", "count": 650}), "stores one of a chip's layers on the next"),
    (lambda d: d["chips"][0]["weights"]["stored_at"].append(
        {"chip": 1, "layer": "fc1", "count": 650}), "stores one of a chip's layers on the next"),
    (lambda d: d["chips"][1].update(board="nosuch"),
     "chips[1].board is 'nosuch', but the cluster's chip 1 is a 'ulx3s-85f'"),
])
def test_absurd_or_mistyped_plans_are_refused_before_elaborating(gateware_dict, tmp_path,
                                                                  change, words):
    data = json.loads(json.dumps(gateware_dict))
    change(data)
    path = tmp_path / "p.json"
    path.write_text(json.dumps(data))
    with pytest.raises(FpdeepError) as info:
        plan = Plan.load(path)
        plan.check_network(plan.network)
        plan.check_resources()
    assert words in str(info.value) and "\n" not in str(info.value)


def test_nan_is_refused_on_read_and_never_written(gateware_dict, tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps(gateware_dict).replace('"batch_size": 8', '"batch_size": NaN',
                                                      1))
    with pytest.raises(FpdeepError, match="NaN is not a number JSON allows"):
        Plan.load(path)
    data = json.loads(json.dumps(gateware_dict))
    data["summary"]["gateware"]["cycles_per_sample"] = float("inf")
    with pytest.raises(FpdeepError, match="NaN or infinite"):
        Plan(data).save(tmp_path / "q.json")
    assert not (tmp_path / "q.json").exists()


def _link_bound_plan(ber):
    # AlexNet over 16 VC709s at 6 x 10 Gb/s is link bound (docs/scaling/scaling.md).
    return plan_network(zoo.get("alexnet"), Cluster.uniform("vc709", 16, link_ber=ber))


@pytest.fixture(scope="module")
def link_plans():
    return {ber: _link_bound_plan(ber) for ber in (0.0, 1e-5, 1e-4, 1e-3, 1e-2)}


@pytest.mark.parametrize("ber", [0.0, 1e-4, 1e-3, 1e-2])
def test_link_payload_is_raw_rate_times_the_gateware_efficiency(link_plans, ber):
    from fpdeep.plan.model.timing import link_efficiency
    plan = link_plans[ber]
    cluster = Cluster.from_dict(plan.data["cluster"])
    assert cluster.link_ber == ber
    s = plan.summary
    assert s["assumptions"]["link_ber"] == ber
    assert s["assumptions"]["link_efficiency"] == link_efficiency(ber)
    bounds = []
    for c, chip in enumerate(plan.chips[:-1]):
        link = chip["predicted"]["link_bits_per_sample"]
        need = max(link["fwd"]["act"] + link["fwd"]["weights"],
                   link["bwd"]["err"] + link["bwd"]["weights"])
        payload = cluster.link_bps(c) * link_efficiency(ber)
        assert chip["predicted"]["link_utilisation"] == pytest.approx(
            need * s["images_per_s_steady"] / payload)
        if need:
            bounds.append(payload / need)
    assert s["bounds_images_per_s"]["link"] == pytest.approx(min(bounds))
    assert s["limiting_factor"] == "link"


def test_a_higher_ber_never_makes_a_plan_faster(link_plans):
    bers = sorted(link_plans)
    for low, high in zip(bers, bers[1:]):
        for key in ("images_per_s", "images_per_s_steady"):
            assert link_plans[high].summary[key] <= link_plans[low].summary[key]
    assert link_plans[1e-2].summary["images_per_s"] < link_plans[0.0].summary["images_per_s"]


@pytest.mark.parametrize("ber, words", [
    (-0.1, "cluster.link_ber must be in [0, 1)"), (1.0, "cluster.link_ber must be in [0, 1)"),
    ("0", "cluster.link_ber must be a finite number"),
    (True, "cluster.link_ber must be a finite number"),
])
def test_plan_files_refuse_a_bad_ber(link_plans, tmp_path, ber, words):
    data = json.loads(json.dumps(link_plans[1e-4].data))
    path = tmp_path / "p.json"
    path.write_text(json.dumps(data))
    assert Plan.load(path).to_dict() == data
    data["cluster"]["link_ber"] = ber
    path.write_text(json.dumps(data))
    with pytest.raises(FpdeepError) as info:
        Plan.load(path)
    assert words in str(info.value) and "\n" not in str(info.value)
