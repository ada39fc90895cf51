"""The training core driven end to end through the UART host bridge, as on a board."""

from amaranth import *
from amaranth.lib import wiring
from amaranth.sim import Simulator

from fpdeep.plan.network import digits_cnn
from fpdeep.platforms.host_client import HostClient
from fpdeep.rtl.core import TrainingCore
from fpdeep.rtl.host import HostBridge, UartRx, UartTx
from fpdeep.rtl.numerics import DEFAULT_NUMERICS as N
from fpdeep.sim.harness import digits_samples
from fpdeep.sim.reference import Reference, init_masters
from tests.stream_helpers import stream_put

DIVISOR = 4


def test_train_and_read_back_over_uart():
    network = digits_cnn()
    masters = init_masters(network, N, seed=4)
    core = TrainingCore(network, masters=masters, batch_size=1, lr=0.05, momentum=0.0)
    floats, labels = digits_samples(1, seed=6)
    sample = N.act.from_float(floats[0])
    reference = Reference(network, mode="int", masters=masters, batch_size=1, lr=0.05)
    reference.train_batch([sample], [labels[0]])

    m = Module()
    m.submodules.bridge = bridge = HostBridge(DIVISOR * 1000, 1000)
    m.submodules.core = core
    m.submodules.host_tx = host_tx = UartTx(DIVISOR)
    m.submodules.host_rx = host_rx = UartRx(DIVISOR)
    wiring.connect(m, bridge.core, core.host)
    m.d.comb += [bridge.rx.eq(host_tx.tx), host_rx.rx.eq(bridge.tx)]
    replies = []
    # Weights to read back: a conv weight, an FC weight and an FC bias.
    probes = {core.weight_address("conv1", 3, 0, 2, 1): reference.params["conv1"][0][3, 0, 2, 1],
              core.weight_address("fc1", 6, 2, 3, 0): reference.params["fc1"][0][6, 2, 3, 0],
              core.weight_address("fc1", 4): reference.params["fc1"][1][4]}

    async def receiver(ctx):
        ctx.set(host_rx.o.ready, 1)
        while True:
            _, _, valid, payload = await ctx.tick().sample(host_rx.o.valid, host_rx.o.payload)
            if valid:
                replies.append(payload)

    async def transact(ctx, request):
        before = len(replies)
        for byte in request.payload:
            await stream_put(ctx, host_tx.i, byte)
        while len(replies) < before + request.reply_length:
            await ctx.tick()
        return request.decode(bytes(replies[before:before + request.reply_length]))

    async def main(ctx):
        assert await transact(ctx, HostClient.weight_count_request()) == core.weight_space
        words = [int(labels[0])] + [int(v) for v in sample.reshape(-1)]
        for start in range(0, len(words), 30):
            await transact(ctx, HostClient.sample_request(words[start:start + 30]))
        while True:
            counters = await transact(ctx, HostClient.counters_request())
            if counters.samples == 1 and not counters.busy:
                break
        assert (counters.batches, counters.correct) == (1, reference.correct)
        for address, want in probes.items():
            assert await transact(ctx, HostClient.read_weight_request(address)) == want

    sim = Simulator(m)
    sim.add_clock(1e-6)
    sim.add_testbench(receiver, background=True)
    sim.add_testbench(main)
    sim.run()
