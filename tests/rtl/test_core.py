import numpy as np
import pytest
from amaranth.sim import Simulator

from fpdeep.plan.errors import FpdeepError
from fpdeep.plan.network import (Conv2d, Linear, MaxPool2d, Network, ReLU, SoftmaxCrossEntropy,
                                 digits_cnn)
from fpdeep.rtl.core import EngineSizes, TrainingCore
from fpdeep.rtl.numerics import DEFAULT_NUMERICS as N
from fpdeep.sim.harness import (CoreRun, compare_weights, digits_samples, read_masters,
                                send_sample)
from fpdeep.sim.reference import Reference, init_masters


def train_and_compare(network, samples, labels, *, batch_size, engines=None, momentum=0.9,
                      lr=0.05, seed=0):
    run = CoreRun(network, batch_size=batch_size, lr=lr, momentum=momentum, seed=seed,
                  engines=engines)
    reference = run.reference()
    result = run.run(samples, labels)
    for start in range(0, len(labels), batch_size):
        reference.train_batch(samples[start:start + batch_size], labels[start:start + batch_size])
    equal, total, first = compare_weights(result.masters, reference)
    assert equal == total, first
    assert result.samples == len(labels)
    assert result.batches == len(labels) // batch_size
    assert result.correct == reference.correct
    assert result.saturations == sum(reference.saturations.values())
    assert result.loss_sum == reference.loss_sum > 0
    return result, reference


def test_digits_two_batches_with_ragged_tiles():
    """Engines of several tiles, with lanes past the last channel, still train bit-exactly."""
    floats, labels = digits_samples(4, seed=3)
    network = digits_cnn()
    samples = [N.act.from_float(x) for x in floats]
    engines = {"conv1": EngineSizes(fp=3, bp=0, wu=3), "fc1": EngineSizes(fp=4, bp=3, wu=4)}
    result, _ = train_and_compare(network, samples, labels, batch_size=2, engines=engines)
    steps = {e.name: e.steps for e in result.engines}
    # conv1 FP per sample: 2 tiles x (6 inner rows x (3x3 taps + bias) + 2 edge rows x
    # (2x3 taps + bias)): taps in the vertical padding are skipped.
    assert steps["conv1.fp"] == 4 * 2 * (6 * 10 + 2 * 7)


def test_deeper_network_with_conv_backprop_and_saturation():
    """Two convs (BP through a padded conv and a ReLU without pool), and saturating values."""
    network = Network("deep", (2, 6, 4), [
        Conv2d("c1", 2, 3, kernel=3, padding=1), ReLU("r1"), MaxPool2d("p1"),
        Conv2d("c2", 3, 4, kernel=(3, 1), padding=(1, 0)), ReLU("r2"),
        Linear("fc", 4 * 3 * 2, 5), SoftmaxCrossEntropy("loss"),
    ])
    rng = np.random.default_rng(7)
    samples = [N.act.from_float(rng.uniform(-4, 30, size=(2, 6, 4))) for _ in range(4)]
    labels = rng.integers(0, 5, size=4)
    result, reference = train_and_compare(network, samples, labels, batch_size=2, lr=0.3,
                                          engines={"c2": EngineSizes(fp=3, bp=2, wu=4)})
    assert reference.saturations["fp"] > 0, "the inputs were chosen to saturate"


def test_host_writes_weights_and_training_follows():
    network = digits_cnn()
    masters = init_masters(network, N, seed=5)
    core = TrainingCore(network, masters=masters, batch_size=1, lr=0.05, momentum=0.0)
    floats, labels = digits_samples(1, seed=1)
    sample = N.act.from_float(floats[0])
    writes = {core.weight_address("conv1", 2, 0, 1, 2): N.master.from_float(1.5),
              core.weight_address("fc1", 7, 3, 2, 1): N.master.from_float(-0.75),
              core.weight_address("fc1", 9): N.master.from_float(0.25)}
    edited = {name: (w.copy(), b.copy()) for name, (w, b) in masters.items()}
    edited["conv1"][0][2, 0, 1, 2] = writes[core.weight_address("conv1", 2, 0, 1, 2)]
    edited["fc1"][0][7, 3, 2, 1] = writes[core.weight_address("fc1", 7, 3, 2, 1)]
    edited["fc1"][1][9] = writes[core.weight_address("fc1", 9)]
    reference = Reference(network, mode="int", masters=edited, batch_size=1, lr=0.05)
    reference.train_batch([sample], [labels[0]])

    async def tb(ctx):
        assert ctx.get(core.host.weight_count) == core.weight_space
        for address, value in writes.items():
            ctx.set(core.host.weight_addr, address)
            ctx.set(core.host.weight_wdata, int(value))
            ctx.set(core.host.weight_write, 1)
            await ctx.tick()
            ctx.set(core.host.weight_write, 0)
        for address, value in writes.items():
            ctx.set(core.host.weight_addr, address)
            ctx.set(core.host.weight_read, 1)
            await ctx.tick()
            ctx.set(core.host.weight_read, 0)
            while not ctx.get(core.host.weight_rvalid):
                await ctx.tick()
            assert ctx.get(core.host.weight_rdata) == value
        await send_sample(ctx, core.host.sample, sample, labels[0])
        await ctx.tick()
        while ctx.get(core.host.busy):
            await ctx.tick()
        masters_after = read_masters(ctx, core)
        for name, (w, b) in masters_after.items():
            np.testing.assert_array_equal(w, reference.params[name][0])
            np.testing.assert_array_equal(b, reference.params[name][1])

    sim = Simulator(core)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()


def test_refuses_unsupported_layer_order():
    network = Network("odd", (1, 4, 4), [
        Conv2d("c", 1, 2, kernel=3, padding=1), MaxPool2d("p"), ReLU("r"),
        Linear("fc", 8, 3), SoftmaxCrossEntropy("loss")])
    with pytest.raises(FpdeepError, match="'r'"):
        TrainingCore(network)


def test_refuses_bad_engine_size():
    with pytest.raises(FpdeepError, match="conv1"):
        TrainingCore(digits_cnn(), engines={"conv1": EngineSizes(fp=0, bp=0, wu=1)})
    with pytest.raises(FpdeepError, match="nope"):
        TrainingCore(digits_cnn(), engines={"nope": EngineSizes(fp=1, bp=1, wu=1)})
