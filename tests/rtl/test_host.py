import dataclasses
import random

import pytest
from amaranth import *
from amaranth.lib import wiring, memory
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator

from fpdeep.platforms.host_client import (HostClient, HostError, Op, Status,
                                          RX_FIFO_DEPTH, MAX_SAMPLE_WORDS)
from fpdeep.rtl.host import HostSignature, UartRx, UartTx, HostBridge
from tests.stream_helpers import stream_put, stream_get


# UART ------------------------------------------------------------------------------

async def idle(ctx, rng, divisor):
    """Random idle time between bytes: often none, sometimes a few bit times."""
    if rng.random() < 0.4:
        await ctx.tick().repeat(rng.randrange(1, 3 * divisor))


@pytest.mark.parametrize("divisor", [4, 5, 8])
def test_uart_loopback(divisor):
    rng = random.Random(divisor)
    m = Module()
    m.submodules.tx = tx = UartTx(divisor)
    m.submodules.rx = rx = UartRx(divisor)
    m.d.comb += rx.rx.eq(tx.tx)
    sent = [rng.randrange(256) for _ in range(40)] + [0x00, 0xFF, 0x55, 0xAA]
    received = []
    errors = []

    async def producer(ctx):
        for byte in sent:
            await idle(ctx, rng, divisor)
            await stream_put(ctx, tx.i, byte)

    async def consumer(ctx):
        # Stalls are short next to a byte time, so nothing may be lost.
        for _ in sent:
            received.append(await stream_get(ctx, rx.o, rng=rng, stall=0.3))

    async def checker(ctx):
        while True:
            _, _, overrun, frame_error = await ctx.tick().sample(rx.overrun, rx.frame_error)
            if overrun or frame_error:
                errors.append((overrun, frame_error))

    sim = Simulator(m)
    sim.add_clock(1e-6)
    sim.add_testbench(producer)
    sim.add_testbench(consumer)
    sim.add_testbench(checker, background=True)
    sim.run()
    assert received == sent
    assert errors == []


def test_uart_tx_waveform():
    """Each bit lasts exactly ``divisor`` cycles: start, 8 data bits LSB first, stop."""
    divisor = 6
    dut = UartTx(divisor)
    line = []

    async def tb(ctx):
        assert ctx.get(dut.tx) == 1
        await stream_put(ctx, dut.i, 0b1011_0010)
        for _ in range(11 * divisor):
            line.append(ctx.get(dut.tx))
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(tb)
    sim.run()
    bits = [0] + [(0b1011_0010 >> i) & 1 for i in range(8)] + [1, 1]
    assert line == [b for b in bits for _ in range(divisor)]


async def bitbang(ctx, line, byte, bit_time, *, stop=1):
    for bit in [0] + [(byte >> i) & 1 for i in range(8)] + [stop]:
        ctx.set(line, bit)
        await ctx.tick().repeat(bit_time)
    ctx.set(line, 1)


@pytest.mark.parametrize("bit_time", [31, 32, 33])   # the sender's clock 3% off either way
def test_uart_rx_tolerance_and_errors(bit_time):
    divisor = 32
    dut = UartRx(divisor)
    flags = {"overrun": 0, "frame_error": 0}

    async def checker(ctx):
        while True:
            _, _, overrun, frame_error = await ctx.tick().sample(dut.overrun, dut.frame_error)
            flags["overrun"] += overrun
            flags["frame_error"] += frame_error

    async def tb(ctx):
        await ctx.tick().repeat(5)
        # A glitch shorter than half a bit is not a start bit.
        ctx.set(dut.rx, 0)
        await ctx.tick().repeat(3)
        ctx.set(dut.rx, 1)
        await ctx.tick().repeat(2 * divisor)
        assert not ctx.get(dut.o.valid)

        await bitbang(ctx, dut.rx, 0xA7, bit_time)
        await ctx.tick().repeat(divisor)
        assert ctx.get(dut.o.valid) and ctx.get(dut.o.payload) == 0xA7

        # The held byte is not overwritten; the new one is dropped and flagged.
        await bitbang(ctx, dut.rx, 0x3C, bit_time)
        await ctx.tick().repeat(divisor)
        assert flags == {"overrun": 1, "frame_error": 0}
        assert await stream_get(ctx, dut.o) == 0xA7

        # A low stop bit drops the byte.
        await bitbang(ctx, dut.rx, 0x5A, bit_time, stop=0)
        await ctx.tick().repeat(2 * divisor)
        assert flags == {"overrun": 1, "frame_error": 1}
        assert not ctx.get(dut.o.valid)

        await bitbang(ctx, dut.rx, 0x01, bit_time)
        assert await stream_get(ctx, dut.o) == 0x01

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(checker, background=True)
    sim.add_testbench(tb)
    sim.run()


@pytest.mark.parametrize("divisor", [0, 3, 2.5])
def test_uart_divisor_validated(divisor):
    with pytest.raises((ValueError, TypeError), match="divisor"):
        UartRx(divisor)
    with pytest.raises((ValueError, TypeError), match="divisor"):
        UartTx(divisor)


def test_bridge_params_validated():
    with pytest.raises(ValueError, match="baud"):
        HostBridge(1_000_000, 500_000)
    with pytest.raises(TypeError, match="clk_hz"):
        HostBridge(25e6, 115200)
    with pytest.raises(ValueError, match="fifo_depth"):
        HostBridge(25_000_000, fifo_depth=4)
    assert HostBridge(25_000_000, 115200).divisor == 217


# Bridge against a model core --------------------------------------------------------

class ModelCore(wiring.Component):
    """Test-only core: a weight Memory, counters with known values, controllable busy.

    ``samples`` counts sample words taken, ``batches`` weight writes and
    ``saturations`` weight reads; ``correct`` is a constant and ``loss_sum`` another
    plus the sample words taken. Reads answer three cycles after the strobe.
    ``stall`` holds ``sample.ready`` low.
    """

    CORRECT = 0x1234_5678
    LOSS_SUM = 0x9ABC_0000

    def __init__(self, weights):
        self._weights = list(weights)
        super().__init__({
            "host": Out(HostSignature()),
            "force_busy": In(1),
            "stall": In(1),
        })

    def elaborate(self, platform):
        m = Module()
        host = self.host
        m.submodules.mem = mem = memory.Memory(shape=signed(32), depth=len(self._weights),
                                               init=self._weights)
        rd = mem.read_port()
        wr = mem.write_port()
        pending = Signal(2)
        m.d.comb += [
            rd.addr.eq(host.weight_addr), rd.en.eq(host.weight_read),
            wr.addr.eq(host.weight_addr), wr.data.eq(host.weight_wdata),
            wr.en.eq(host.weight_write),
            host.weight_rdata.eq(rd.data),
            host.weight_rvalid.eq(pending[1]),
            host.weight_count.eq(len(self._weights)),
            host.correct.eq(self.CORRECT),
            host.loss_sum.eq(self.LOSS_SUM + host.samples),
            host.busy.eq(self.force_busy),
            host.sample.ready.eq(~self.stall),
        ]
        m.d.sync += pending.eq(Cat(host.weight_read, pending[0]))
        with m.If(host.sample.valid & host.sample.ready):
            m.d.sync += host.samples.eq(host.samples + 1)
        with m.If(host.weight_write):
            m.d.sync += host.batches.eq(host.batches + 1)
        with m.If(host.weight_read):
            m.d.sync += host.saturations.eq(host.saturations + 1)
        return m


DIVISOR = 5


class BridgeBench:
    """A HostBridge and a ModelCore, with a host-side UART driven by testbenches."""

    def __init__(self, weights, *, seed):
        self.rng = random.Random(seed)
        self.m = m = Module()
        m.submodules.bridge = self.bridge = HostBridge(DIVISOR * 1000, 1000)
        m.submodules.core = self.core = ModelCore(weights)
        m.submodules.host_tx = self.host_tx = UartTx(DIVISOR)
        m.submodules.host_rx = self.host_rx = UartRx(DIVISOR)
        wiring.connect(m, self.bridge.core, self.core.host)
        m.d.comb += [self.bridge.rx.eq(self.host_tx.tx), self.host_rx.rx.eq(self.bridge.tx)]
        self.replies = []       # every byte from the device, in order
        self.taken = 0
        self.samples = []       # every word the core accepted, in order
        self.rx_errors = 0

    async def send(self, ctx, payload):
        for byte in payload:
            await idle(ctx, self.rng, DIVISOR)
            await stream_put(ctx, self.host_tx.i, byte)

    async def receive(self, ctx, count, *, timeout=20_000):
        for _ in range(timeout):
            if len(self.replies) >= self.taken + count:
                break
            await ctx.tick()
        else:
            raise AssertionError(f"no reply: have {self.replies[self.taken:]}, want {count} bytes")
        reply = bytes(self.replies[self.taken:self.taken + count])
        self.taken += count
        return reply

    async def transact(self, ctx, request):
        await self.send(ctx, request.payload)
        return request.decode(await self.receive(ctx, request.reply_length))

    def run(self, script):
        bench = self

        # Background testbenches use plain ticks only: one suspended inside
        # tick().until()/repeat() leaves an async generator to be finalised
        # at some arbitrary later point, which upsets unrelated code.
        async def receiver(ctx):
            ctx.set(bench.host_rx.o.ready, 1)
            while True:
                _, _, valid, payload = await ctx.tick().sample(bench.host_rx.o.valid,
                                                               bench.host_rx.o.payload)
                if valid:
                    bench.replies.append(payload)

        async def monitor(ctx):
            sample = bench.core.host.sample
            while True:
                _, _, valid, ready, payload, overrun, frame_error = await ctx.tick().sample(
                    sample.valid, sample.ready, sample.payload,
                    bench.host_rx.overrun, bench.host_rx.frame_error)
                if valid and ready:
                    bench.samples.append(payload)
                bench.rx_errors += overrun + frame_error

        async def staller(ctx):
            while True:
                ctx.set(bench.core.stall, bench.rng.random() < 0.5)
                for _ in range(bench.rng.randrange(1, 4 * DIVISOR)):
                    await ctx.tick()

        async def main(ctx):
            await script(ctx, bench)
            await ctx.tick().repeat(20 * DIVISOR)
            assert bench.taken == len(bench.replies), "unexpected reply bytes"

        sim = Simulator(self.m)
        sim.add_clock(1e-6)
        for background in (receiver, monitor, staller):
            sim.add_testbench(background, background=True)
        sim.add_testbench(main)
        sim.run()
        assert self.rx_errors == 0


WEIGHTS = [(-1) ** i * (i * 0x0101_0101 + 7) for i in range(13)]


def test_bridge_weight_count_and_reads():
    bench = BridgeBench(WEIGHTS, seed=1)

    async def script(ctx, bench):
        assert await bench.transact(ctx, HostClient.weight_count_request()) == len(WEIGHTS)
        for addr in (0, 5, len(WEIGHTS) - 1):
            assert await bench.transact(ctx, HostClient.read_weight_request(addr)) == WEIGHTS[addr]
        # Pipelined, as HostClient.read_weights does: a FIFO-full of requests at once.
        requests = [HostClient.read_weight_request(a % len(WEIGHTS))
                    for a in range(RX_FIFO_DEPTH // 4)]
        await bench.send(ctx, b"".join(r.payload for r in requests))
        for addr, request in enumerate(requests):
            value = request.decode(await bench.receive(ctx, request.reply_length))
            assert value == WEIGHTS[addr % len(WEIGHTS)]

    bench.run(script)


def test_bridge_writes_and_errors():
    bench = BridgeBench(WEIGHTS, seed=2)

    async def script(ctx, bench):
        new = {0: -2**31, 4: 2**31 - 1, 12: 12345}
        for addr, value in new.items():
            assert await bench.transact(ctx, HostClient.write_weight_request(addr, value)) is None
        for addr in range(len(WEIGHTS)):
            got = await bench.transact(ctx, HostClient.read_weight_request(addr))
            assert got == new.get(addr, WEIGHTS[addr])

        # Out of range: refused with FD and zero padding; nothing is written.
        request = HostClient.read_weight_request(len(WEIGHTS))
        await bench.send(ctx, request.payload)
        assert await bench.receive(ctx, 5) == bytes([Status.BAD_ADDRESS, 0, 0, 0, 0])
        with pytest.raises(HostError, match="out of range"):
            await bench.transact(ctx, HostClient.write_weight_request(2**24 - 1, 1))

        # Busy: refused with FB; nothing is written.
        ctx.set(bench.core.force_busy, 1)
        with pytest.raises(HostError, match="busy"):
            await bench.transact(ctx, HostClient.write_weight_request(1, 99))
        with pytest.raises(HostError, match="busy"):
            await bench.transact(ctx, HostClient.read_weight_request(1))
        counters = await bench.transact(ctx, HostClient.counters_request())
        assert counters.busy
        ctx.set(bench.core.force_busy, 0)
        assert await bench.transact(ctx, HostClient.read_weight_request(1)) == WEIGHTS[1]

        # Writes and reads that reached the core are exactly the ones that were allowed.
        counters = await bench.transact(ctx, HostClient.counters_request())
        assert counters.batches == len(new)
        assert counters.saturations == len(WEIGHTS) + 1
        assert not counters.busy

    bench.run(script)


def test_bridge_samples_and_counters():
    bench = BridgeBench(WEIGHTS, seed=3)
    rng = random.Random(3)
    label, pixels = 7, [rng.randrange(-2**15, 2**15) for _ in range(2 * MAX_SAMPLE_WORDS + 5)]

    async def script(ctx, bench):
        counters = await bench.transact(ctx, HostClient.counters_request())
        assert (counters.samples, counters.correct, counters.batches,
                counters.saturations, counters.loss_sum) == \
            (0, ModelCore.CORRECT, 0, 0, ModelCore.LOSS_SUM)
        # Chunked as HostClient.push_sample does.
        words = [label, *pixels, -2**15, 2**15 - 1]
        for start in range(0, len(words), MAX_SAMPLE_WORDS):
            chunk = words[start:start + MAX_SAMPLE_WORDS]
            await bench.transact(ctx, HostClient.sample_request(chunk))
        await bench.transact(ctx, HostClient.sample_request([]))
        assert bench.samples == words
        counters = await bench.transact(ctx, HostClient.counters_request())
        assert counters.samples == len(words)
        assert counters.correct == ModelCore.CORRECT
        assert counters.loss_sum == ModelCore.LOSS_SUM + len(words)     # the same cycle
        assert not (counters.busy or counters.rx_error or counters.bad_command)
        # The COUNTERS command of hosts older than the loss counter: 18 bytes, as before.
        request = HostClient.counters_request(loss=False)
        await bench.send(ctx, request.payload)
        reply = await bench.receive(ctx, 18)
        assert reply[:5] == bytes([Status.ok(Op.COUNTERS)]) + len(words).to_bytes(4, "little")
        assert request.decode(reply) == dataclasses.replace(counters, loss_sum=None)

    bench.run(script)


def test_bridge_bad_command_reported_and_ignored():
    bench = BridgeBench(WEIGHTS, seed=4)

    async def script(ctx, bench):
        for bad in (0x00, 0x7A, 0x83, 0xFF):
            await bench.send(ctx, bytes([bad]))
            assert await bench.receive(ctx, 2) == bytes([Status.BAD_COMMAND, bad])
        # The parser is back in step: the next command works.
        assert await bench.transact(ctx, HostClient.read_weight_request(3)) == WEIGHTS[3]
        counters = await bench.transact(ctx, HostClient.counters_request())
        assert counters.bad_command and not counters.rx_error
        counters = await bench.transact(ctx, HostClient.counters_request())
        assert not counters.bad_command     # cleared by the read that reported it
        # The same with the COUNTERS command of older hosts.
        await bench.send(ctx, bytes([0x42]))
        assert await bench.receive(ctx, 2) == bytes([Status.BAD_COMMAND, 0x42])
        assert (await bench.transact(ctx, HostClient.counters_request(loss=False))).bad_command
        assert not (await bench.transact(ctx, HostClient.counters_request())).bad_command

    bench.run(script)
