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
                  error_rng=None, ber=0.0, slots=2, host_reads=0, held=(), phy="sim"):
    """Train a cluster on samples sent back to back; assert it equals the reference.

    With ``host_reads``, also read that many weights (spread over every chip) and
    write one on the last chip through the cluster's host port.
    """
    masters = init_masters(network, N, seed)
    cluster = Cluster(network, splits=splits, masters=masters, batch_size=batch_size, lr=lr,
                      momentum=0.9, slots=slots, held=dict(held), phy=phy)
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

    async def producer(ctx):
        for x, label in zip(samples, labels):
            await send_sample(ctx, cluster.host.sample, x, label)

    async def host_read(ctx, address):
        host = cluster.host
        ctx.set(host.weight_addr, address)
        ctx.set(host.weight_read, 1)
        await ctx.tick()
        ctx.set(host.weight_read, 0)
        while not ctx.get(host.weight_rvalid):
            await ctx.tick()
        value = ctx.get(host.weight_rdata)
        await ctx.tick()
        return value

    async def tb(ctx):
        await ctx.tick().until(cluster.host.samples == len(labels))
        while ctx.get(cluster.host.busy):
            await ctx.tick()
        for chip in cluster.chips:
            read_masters(ctx, chip, into=got)
        got["counters"] = (ctx.get(cluster.host.samples), ctx.get(cluster.host.batches),
                           ctx.get(cluster.host.correct), ctx.get(cluster.host.saturations),
                           ctx.get(cluster.host.loss_sum))
        statuses = [ctx.get(s) for link in cluster.links for s in (link.a_status, link.b_status)]
        got["bad_frames"] = sum(status.bad_frames for status in statuses)
        assert not any(status.overflow for status in statuses)
        got["slots_peak"] = [ctx.get(chip.perf_slots_peak) for chip in cluster.chips]
        if host_reads:
            rng = np.random.default_rng(3)
            layers = [name for name in got if name not in ("counters", "bad_frames",
                                                           "slots_peak")]
            for _ in range(host_reads):
                layer = layers[int(rng.integers(len(layers)))]
                w, b = got[layer]         # as read from the memories (and checked below)
                o = int(rng.integers(w.shape[0]))
                if rng.random() < 0.2:
                    address, expected = cluster.weight_address(layer, o), b[o]
                else:
                    i, ky, kx = (int(rng.integers(s)) for s in w.shape[1:])
                    address, expected = cluster.weight_address(layer, o, i, ky, kx), w[o, i, ky, kx]
                assert await host_read(ctx, address) == expected, (layer, o)
            # A write to the last chip's last bias lands there, as read back.
            layer = layers[-1]
            address = cluster.weight_address(layer, got[layer][1].size - 1)
            assert address < ctx.get(cluster.host.weight_count)
            ctx.set(cluster.host.weight_wdata, -12345)
            ctx.set(cluster.host.weight_addr, address)
            ctx.set(cluster.host.weight_write, 1)
            await ctx.tick()
            ctx.set(cluster.host.weight_write, 0)
            assert await host_read(ctx, address) == -12345
            got[layer][1][-1] = reference.params[layer][1][-1]   # that one, written on purpose

    sim = Simulator(cluster)
    sim.add_clock(1e-8)
    phases = np.random.default_rng(seed + 1)
    for domain, ratio in cluster.link_clocks:       # board PHYs: random link-clock phases
        sim.add_clock(1e-8 / ratio, domain=domain, phase=phases.random() * 1e-8 / ratio)
    sim.add_testbench(producer, background=True)
    sim.add_testbench(tb)
    if ber:
        sim.add_process(errors)
    sim.run()
    counters = got.pop("counters")
    bad_frames = got.pop("bad_frames")
    slots_peak = got.pop("slots_peak")
    if phy == "sim":    # (a board PHY cuts the frames sent before it locks)
        assert (bad_frames > 0) == (ber > 0), "errors were injected and caught, or none were"
    equal, total, first = compare_weights(got, reference)
    assert equal == total, first
    assert counters == (len(labels), len(labels) // batch_size, reference.correct,
                        sum(reference.saturations.values()), reference.loss_sum)
    assert reference.loss_sum > 0
    return cluster, slots_peak


@pytest.mark.parametrize("splits", [
    [(0, 2)],
    [(0, 1), (1, 2)],
    [(0, 1, (0, 2)), (0, 1, (2, 4)), (1, 2, (0, 5)), (1, 2, (5, 10))],
], ids=["1 chip", "2 chips", "4 chips, both layers split"])
def test_digits_is_bit_exact_on_1_2_and_4_chips(splits):
    """Two mini-batches, samples back to back; every chip's FP overlaps earlier BP/WU."""
    floats, labels = digits_samples(8, seed=2)
    samples = [N.act.from_float(x) for x in floats]
    cluster, slots_peak = train_cluster(digits_cnn(), splits, samples, labels, batch_size=4,
                                        slots=3, host_reads=12)
    # The chips ran ahead as far as the feature memories let them, and no further.
    assert max(slots_peak) == 3 and all(1 <= peak <= 3 for peak in slots_peak)


@pytest.mark.slow      # 67-79 s on the shared 2-core machine (31 s of CPU)
def test_digits_two_chips_over_board_phys():
    """The 2-chip digits cluster with its link through two BoardPhys and the bit-level
    channel model (both chips on one clock, random link-clock phases): bit-exact."""
    floats, labels = digits_samples(4, seed=2)
    samples = [N.act.from_float(x) for x in floats]
    train_cluster(digits_cnn(), [(0, 1), (1, 2)], samples, labels, batch_size=2, slots=3,
                  phy="board")


@pytest.mark.parametrize("splits, held", [
    ([(0, 1), (1, 2)], {0: "conv1"}),
    ([(0, 1, (0, 2)), (0, 1, (2, 4)), (1, 2, (0, 5)), (1, 2, (5, 10))], {2: "fc1"}),
], ids=["conv1 held by chip 1", "fc1[0:5] held by chip 3"])
def test_weights_held_by_the_next_chip(splits, held):
    """A chip's masters and velocities live on its neighbour, which steps SGD on the
    gradient sums it receives once per batch; the host reads and writes them there."""
    floats, labels = digits_samples(8, seed=4)
    samples = [N.act.from_float(x) for x in floats]
    cluster, _ = train_cluster(digits_cnn(), splits, samples, labels, batch_size=4, slots=3,
                               host_reads=12, held=held)
    owner = next(iter(held))
    assert cluster.chips[owner].units[0].master is None       # not stored on the owner
    assert cluster.chips[owner + 1].holder is not None


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


def test_split_conv_layer_sends_partial_sums_up_over_bit_errors():
    """A conv layer with BP split three ways: its input's errors are the sum of three
    chips' 48-bit partial sums, added up the chain before one requantization."""
    network = Network("deep", (2, 6, 4), [
        Conv2d("c1", 2, 3, kernel=3, padding=1), ReLU("r1"), MaxPool2d("p1"),
        Conv2d("c2", 3, 5, kernel=(3, 1), padding=(1, 0)), ReLU("r2"),
        Linear("fc", 5 * 3 * 2, 4), SoftmaxCrossEntropy("loss"),
    ])
    rng = np.random.default_rng(12)
    samples = [N.act.from_float(rng.uniform(-1, 3, size=(2, 6, 4))) for _ in range(4)]
    labels = rng.integers(0, 4, size=4)
    import random
    train_cluster(network, [(0, 1), (1, 2, (0, 2)), (1, 2, (2, 3)), (1, 2, (3, 5)), (2, 3)],
                  samples, labels, batch_size=2, error_rng=random.Random(6), ber=1e-3,
                  host_reads=10)


def test_refuses_bad_splits():
    with pytest.raises(FpdeepError, match="chip 1"):
        Cluster(digits_cnn(), splits=[(0, 1), (0, 2)])
    with pytest.raises(FpdeepError, match="cover 1 of the 2"):
        Cluster(digits_cnn(), splits=[(0, 1)])
    with pytest.raises(FpdeepError, match="chip 1: .* channel 2 of layer 'conv1'"):
        Cluster(digits_cnn(), splits=[(0, 1, (0, 2)), (0, 1, (3, 4)), (1, 2)])
    with pytest.raises(FpdeepError, match="and 2 channels of layer 'conv1'"):
        Cluster(digits_cnn(), splits=[(0, 1, (0, 2))])
    with pytest.raises(FpdeepError, match="must hold that layer alone"):
        Cluster(digits_cnn(), splits=[(0, 2, (0, 5))])


def test_rows_stream_through_layers_and_chips():
    """One sample through digits on a chip holding both layers, and on two chips: the
    FC layer's FP steps while the conv layer's map is still coming, because the conv's
    pooled rows reach it (on the chip, or over the link) as they are written."""
    net = digits_cnn()
    x = N.act.from_float(digits_samples(1)[0][0])
    map_words = 1 + 4 * 4 * 4               # the label and the pooled conv1 map
    for splits in ([(0, 2)], [(0, 1), (1, 2)]):
        cluster = Cluster(net, splits=splits, masters=init_masters(net, N, 0), batch_size=1)
        early = []

        async def producer(ctx):
            await send_sample(ctx, cluster.host.sample, x, 3)

        async def watch(ctx):
            conv = cluster.chips[0].engines_by_name["conv1.fp"]
            fc = cluster.chips[-1].engines_by_name["fc1.fp"]
            fc_in = cluster.chips[-1].host.sample
            taken = 0
            while not ctx.get(cluster.host.samples):
                coming = ctx.get(conv.busy) if len(splits) == 1 else taken < map_words
                if coming and ctx.get(fc.step):
                    early.append(True)
                taken += ctx.get(fc_in.valid) and ctx.get(fc_in.ready)
                await ctx.tick()

        sim = Simulator(cluster)
        sim.add_clock(1e-8)
        sim.add_testbench(producer, background=True)
        sim.add_testbench(watch)
        sim.run()
        assert early, f"{splits}: fc1 waited for the whole conv1 map"
