import numpy as np
import pytest
from amaranth.sim import Simulator

from fpdeep.plan.errors import FpdeepError
from fpdeep.plan.network import (Conv2d, Linear, MaxPool2d, Network, ReLU, SoftmaxCrossEntropy,
                                 digits_cnn)
from fpdeep.rtl.cluster import Cluster
from fpdeep.rtl.numerics import DEFAULT_NUMERICS as N
from fpdeep.sim.harness import compare_weights, digits_samples, read_masters, send_sample
from fpdeep.sim.reference import Reference, init_masters


def train_cluster(network, splits, samples, labels, *, batch_size, lr=0.05, seed=0,
                  error_rng=None, ber=0.0):
    masters = init_masters(network, N, seed)
    cluster = Cluster(network, splits=splits, masters=masters, batch_size=batch_size, lr=lr,
                      momentum=0.9)
    reference = Reference(network, mode="int", masters=masters, batch_size=batch_size, lr=lr,
                          momentum=0.9)
    for start in range(0, len(labels), batch_size):
        reference.train_batch(samples[start:start + batch_size], labels[start:start + batch_size])
    got = {}

    async def errors(ctx):
        if not ber:
            return
        width = cluster.link_config.word_width
        while True:
            for mask in cluster.err_masks:
                value = 0
                for bit in range(width):
                    if error_rng.random() < ber:
                        value |= 1 << bit
                ctx.set(mask, value)
            await ctx.tick()

    async def tb(ctx):
        for x, label in zip(samples, labels):
            await send_sample(ctx, cluster.host.sample, x, label)
            await ctx.tick()
            while ctx.get(cluster.host.busy):
                await ctx.tick()
        for chip in cluster.chips:
            got.update(read_masters(ctx, chip))
        got["counters"] = (ctx.get(cluster.host.samples), ctx.get(cluster.host.batches),
                           ctx.get(cluster.host.correct), ctx.get(cluster.host.saturations))
        statuses = [ctx.get(s) for link in cluster.links for s in (link.a_status, link.b_status)]
        got["bad_frames"] = sum(status.bad_frames for status in statuses)
        assert not any(status.overflow for status in statuses)

    sim = Simulator(cluster)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    if ber:
        sim.add_process(errors)
    sim.run()
    counters = got.pop("counters")
    bad_frames = got.pop("bad_frames")
    assert (bad_frames > 0) == (ber > 0), "errors were injected and caught, or none were"
    equal, total, first = compare_weights(got, reference)
    assert equal == total, first
    assert counters == (len(labels), len(labels) // batch_size, reference.correct,
                        sum(reference.saturations.values()))


def test_digits_on_two_chips_is_bit_exact():
    floats, labels = digits_samples(4, seed=2)
    samples = [N.act.from_float(x) for x in floats]
    train_cluster(digits_cnn(), [(0, 1), (1, 2)], samples, labels, batch_size=2)


def test_three_chips_with_conv_backprop_over_links_and_bit_errors():
    """Errors of a conv layer (through ReLU and max-pool) cross two links hit by bit errors."""
    network = Network("deep", (2, 6, 4), [
        Conv2d("c1", 2, 3, kernel=3, padding=1), ReLU("r1"), MaxPool2d("p1"),
        Conv2d("c2", 3, 4, kernel=(3, 1), padding=(1, 0)), ReLU("r2"),
        Linear("fc", 4 * 3 * 2, 5), SoftmaxCrossEntropy("loss"),
    ])
    rng = np.random.default_rng(11)
    samples = [N.act.from_float(rng.uniform(-1, 3, size=(2, 6, 4))) for _ in range(4)]
    labels = rng.integers(0, 5, size=4)
    import random
    train_cluster(network, [(0, 1), (1, 2), (2, 3)], samples, labels, batch_size=2,
                  error_rng=random.Random(5), ber=1e-3)


def test_refuses_bad_splits():
    with pytest.raises(FpdeepError, match="chip 1"):
        Cluster(digits_cnn(), splits=[(0, 1), (0, 2)])
    with pytest.raises(FpdeepError, match="cover 1 of the 2"):
        Cluster(digits_cnn(), splits=[(0, 1)])
