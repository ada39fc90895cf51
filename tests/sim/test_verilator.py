import os

import numpy as np
import pytest

from fpdeep.plan.errors import FpdeepError
from fpdeep.plan.network import digits_cnn
from fpdeep.rtl.numerics import DEFAULT_NUMERICS as N
from fpdeep.sim import verilator
from fpdeep.sim.harness import CoreRun, compare_weights, digits_samples

#: Digits on two chips: conv1 on chip 0, fc1 on chip 1.
TWO_CHIPS = [(0, 1), (1, 2)]

HEADER = """
class alignas(VL_CACHE_LINE_BYTES) Vtop VL_NOT_FINAL : public VerilatedModel {
    VL_IN8(&clk,0,0);
    VL_IN8(&host___05Fsample___05Fvalid,0,0);
    VL_IN16(&host___05Fsample___05Fpayload,15,0);
    VL_OUT(&host___05Fweight_count,19,0);
    VL_OUT64(&wide___05Fish,47,0);
    VL_OUTW(&perf_busy,159,0,5);
"""


def test_demangle_undoes_verilator_escapes():
    assert verilator.demangle("host___05Fsample___05Fvalid") == "host__sample__valid"
    assert verilator.demangle("a___05F0") == "a__0"
    assert verilator.demangle("perf_busy") == "perf_busy"


def test_header_ports_reads_names_widths_and_wide_words():
    ports = verilator.header_ports(HEADER)
    assert ports["host__sample__valid"] == ("host___05Fsample___05Fvalid", "in", 1, None)
    assert ports["host__sample__payload"] == ("host___05Fsample___05Fpayload", "in", 16, None)
    assert ports["host__weight_count"] == ("host___05Fweight_count", "out", 20, None)
    assert ports["wide__ish"] == ("wide___05Fish", "out", 48, None)
    assert ports["perf_busy"] == ("perf_busy", "out", 160, 5)


def test_ports_header_refuses_a_missing_port():
    with pytest.raises(FpdeepError, match="host__busy"):
        verilator._ports_header(verilator.header_ports(HEADER))


def test_port_array_splits_flat_elements():
    value = sum(v << (32 * k) for k, v in enumerate([7, 0, 0xFFFFFFFF, 3]))
    assert verilator.port_array(value, 4) == [7, 0, 0xFFFFFFFF, 3]


def test_unknown_backend_is_refused():
    run = CoreRun(digits_cnn(), batch_size=1)
    with pytest.raises(FpdeepError, match="'spice'"):
        run.run([], [], backend="spice")


def test_cache_root_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("FPDEEP_CACHE", str(tmp_path))
    assert verilator.cache_root() == tmp_path / "verilator"


def test_driver_top_brings_every_chips_counters_out():
    cluster = CoreRun(digits_cnn(), batch_size=1, splits=TWO_CHIPS).top
    members = verilator.DriverTop(cluster).signature.members
    engines = sum(len(chip.engine_names) for chip in cluster.chips)
    assert members["perf_cycles"].shape.length == 2
    assert members["perf_busy"].shape.length == members["perf_steps"].shape.length == engines
    assert members["perf_link_words"].shape.length == len(cluster.perf_link_words)
    # The bit-error masks come in from the driver; the replay counters go out.
    assert members["err_masks"].flow.name == "In"
    assert members["err_masks"].shape.length == len(cluster.err_masks) == 2
    for name in ("replays", "timeouts", "bad_frames"):
        assert members[f"link_{name}"].shape.length == 2
    assert "err_masks" not in verilator.DriverTop(cluster.chips[0]).signature.members
    assert "perf_link_words" not in verilator.DriverTop(cluster.chips[0]).signature.members
    with pytest.raises(TypeError, match="TrainingCore or a Cluster"):
        verilator.DriverTop(cluster.links[0])


# Module-scoped: each design is built (or found in the cache) once for every test.
@pytest.fixture(scope="module", params=[None, TWO_CHIPS], ids=["one-chip", "two-chips"])
def digits_runs(request):
    """Digits, 2 batches of 4, in both backends from the same initial masters."""
    floats, labels = digits_samples(8, seed=2)
    samples = [N.act.from_float(x) for x in floats]
    pysim_run = CoreRun(digits_cnn(), batch_size=4, seed=1, splits=request.param)
    verilator_run = CoreRun(digits_cnn(), batch_size=4, seed=1, splits=request.param)
    reference = pysim_run.reference()
    for start in range(0, 8, 4):
        reference.train_batch(samples[start:start + 4], labels[start:start + 4])
    return dict(samples=samples, labels=labels, reference=reference, splits=request.param,
                verilator_run=verilator_run,
                pysim=pysim_run.run(samples, labels),
                verilator=verilator_run.run(samples, labels, backend="verilator"))


# The first build compiles the C++ model (about 20-60 s per design on 2 cores);
# later runs find it in the cache.
@pytest.mark.slow
def test_verilator_equals_reference_bit_for_bit(digits_runs):
    result, reference = digits_runs["verilator"], digits_runs["reference"]
    assert result.backend == "verilator"
    equal, total, first = compare_weights(result.masters, reference)
    assert equal == total, first
    assert (result.samples, result.batches) == (8, 2)
    assert result.correct == reference.correct
    assert result.saturations == sum(reference.saturations.values())
    assert result.loss_sum == reference.loss_sum


@pytest.mark.slow
def test_verilator_equals_pysim_cycle_for_cycle(digits_runs):
    fast, slow = digits_runs["verilator"], digits_runs["pysim"]
    assert fast.masters.keys() == slow.masters.keys()
    for name, (w, b) in slow.masters.items():
        np.testing.assert_array_equal(fast.masters[name][0], w)
        np.testing.assert_array_equal(fast.masters[name][1], b)
    assert fast.sample_cycles == slow.sample_cycles
    assert (fast.run_cycles, fast.total_cycles) == (slow.run_cycles, slow.total_cycles)
    assert (fast.chip_cycles, fast.slots_peak) == (slow.chip_cycles, slow.slots_peak)
    assert (fast.samples, fast.correct, fast.batches, fast.saturations, fast.loss_sum) == \
        (slow.samples, slow.correct, slow.batches, slow.saturations, slow.loss_sum)
    assert fast.engines == slow.engines
    assert fast.link_words == slow.link_words
    chips = len(digits_runs["splits"] or [None])
    assert len(fast.chip_cycles) == chips and len(fast.slots_peak) == chips
    if chips > 1:     # activations down, errors up; no weight traffic while training
        words = fast.link_words
        assert words[(0, "down", "act")] > 0 and words[(0, "up", "err")] > 0
        assert words[(0, "down", "ctl")] == words[(0, "up", "ctl")] == 0


@pytest.mark.slow
def test_second_build_comes_from_the_cache(digits_runs):
    # A new design with the same parameters converts to the same Verilog: no rebuild.
    again = CoreRun(digits_cnn(), batch_size=4, seed=1, splits=digits_runs["splits"])
    build = verilator.build_top(again.top)
    assert build.directory == digits_runs["verilator_run"].verilator_build.directory
    assert build.cached and build.executable.exists()
    assert not [p for p in os.listdir(build.directory.parent) if p.startswith(".")], \
        "a temporary build directory was left behind"


@pytest.mark.slow
def test_progress_and_cycle_limit(digits_runs):
    run, samples, labels = (digits_runs[k] for k in ("verilator_run", "samples", "labels"))
    seen = []
    run.run(samples[:2], labels[:2], backend="verilator",
            progress=lambda done, total, cycles: seen.append((done, total, cycles)))
    assert [(d, t) for d, t, _ in seen] == [(1, 2), (2, 2)]
    assert [c for _, _, c in seen] == digits_runs["pysim"].sample_cycles[:2]
    with pytest.raises(FpdeepError, match="did not finish sample 0 within 10 cycles"):
        run.run(samples[:1], labels[:1], backend="verilator", max_cycles_per_sample=10)


@pytest.mark.parametrize("splits", [None, TWO_CHIPS], ids=["one-chip", "two-chips"])
def test_vcd_is_refused_with_verilator(tmp_path, splits):
    run = CoreRun(digits_cnn(), batch_size=1, splits=splits)
    with pytest.raises(FpdeepError, match="VCD"):
        run.run([], [], backend="verilator", vcd=str(tmp_path / "x.vcd"))


@pytest.mark.slow
def test_checkpoints_and_seeded_link_errors(digits_runs):
    run, samples, labels = (digits_runs[k] for k in ("verilator_run", "samples", "labels"))
    if digits_runs["splits"] is None:
        with pytest.raises(FpdeepError, match="needs links"):
            run.run(samples, labels, backend="verilator", link_ber=1e-3)
        return
    seen = []

    def train(seed):
        return run.run(samples, labels, backend="verilator", checkpoints=[4], link_ber=1e-3,
                       link_seed=seed, on_checkpoint=lambda *figures: seen.append(figures))

    result = train(3)
    # At the checkpoint (after the first batch) every weight equals the reference's then.
    first_batch = run.reference()
    first_batch.train_batch(samples[:4], labels[:4])
    (done, masters, outputs), = seen
    assert done == 4 and outputs["host__samples"] == 4 and outputs["host__batches"] == 1
    equal, total, first = compare_weights(masters, first_batch)
    assert equal == total, first
    # The errors are replayed: the end is bit-exact, and the same seed, the same run.
    equal, total, first = compare_weights(result.masters, digits_runs["reference"])
    assert equal == total, first
    assert result.loss_sum == digits_runs["reference"].loss_sum
    assert sum(s["replays"] for s in result.link_status.values()) > 0
    assert sum(s["bad_frames"] for s in result.link_status.values()) > 0
    again, other = train(3), train(4)
    assert (again.link_status, again.sample_cycles) == (result.link_status, result.sample_cycles)
    assert other.link_status != result.link_status
    with pytest.raises(FpdeepError, match="checkpoints must increase"):
        run.run(samples, labels, backend="verilator", checkpoints=[8])
