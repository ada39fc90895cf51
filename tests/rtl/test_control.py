"""WeightAccessRouter: the host reads and writes every weight of a chain of chips.

Each chip's local weight port is a memory model in the testbench that answers a
read after a random 1..3 cycles. The routers are chained through FIFOs whose
input stalls at random, or through real link pairs with bit errors. The host
makes random reads and writes over the whole global space, sometimes back to
back, sometimes waiting for each read; every read must return the last value
written, every chip's memory must end equal to the model, and nothing extra may
arrive anywhere.
"""

import collections
import random

import pytest
from amaranth import *
from amaranth.lib import fifo
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator

from fpdeep.rtl.control import (ControlOp, WeightAccessRouter, connect_weight_port,
                                WeightPortSignature)
from fpdeep.rtl.host import HostSignature
from fpdeep.rtl.link.channels import VirtualChannel
from fpdeep.rtl.link.endpoint import LinkPair
from fpdeep.rtl.link.frame import LinkConfig
from fpdeep.rtl.link.phy import BitErrorInjector
from tests.stream_helpers import stream_put, stream_get


def _signed32(value):
    value &= 0xFFFF_FFFF
    return value - (1 << 32) if value & (1 << 31) else value


def _initial(chip, addr):
    """A chip's weight before any write: distinct per chip and address."""
    return _signed32((addr + 1) * 2654435761 ^ (chip + 1) * 0x9E3779B9)


class LocalMemory:
    """Testbench model of a core's weight port: reads answer 1..``max_latency`` cycles later."""

    def __init__(self, chip, port, count, rng, *, max_latency=3, latency=None):
        self.chip, self.port, self.count, self.rng = chip, port, count, rng
        self.max_latency, self.latency = max_latency, latency
        self.written = {}
        self.errors = []
        self.strobes = []       # (cycle, "read"/"write", local address)

    def value(self, addr):
        return self.written.get(addr, _initial(self.chip, addr))

    async def process(self, ctx):
        p = self.port
        countdown, answer, cycle = 0, 0, 0
        async for _, _, read, write, addr, wdata in ctx.tick().sample(
                p.weight_read, p.weight_write, p.weight_addr, p.weight_wdata):
            cycle += 1
            ctx.set(p.weight_rvalid, 0)
            if read or write:
                self.strobes.append((cycle, "write" if write else "read", addr))
                if read and write:
                    self.errors.append(f"chip {self.chip}: read and write at once")
                if addr >= self.count:
                    self.errors.append(f"chip {self.chip}: strobe at {addr} >= {self.count}")
            if write:
                self.written[addr] = wdata
            if read:
                if countdown:
                    self.errors.append(f"chip {self.chip}: read while a read is pending")
                answer = self.value(addr)
                countdown = self.latency or self.rng.randint(1, self.max_latency)
            if countdown:
                countdown -= 1
                if countdown == 0:
                    ctx.set(p.weight_rdata, answer)
                    ctx.set(p.weight_rvalid, 1)


def _watchdog(cycles):
    """A background testbench that fails the simulation if it runs ``cycles`` cycles."""
    async def watchdog(ctx):
        for _ in range(cycles):         # (not tick().repeat(): it cannot be closed mid-wait)
            await ctx.tick()
        raise AssertionError(f"simulation still running after {cycles} cycles")
    return watchdog


def _stalled_fifo(m, name, source, sink, stall, depth=4):
    """``source`` -> FIFO -> ``sink``; the FIFO's input refuses words while ``stall``."""
    m.submodules[name] = q = fifo.SyncFIFOBuffered(width=16, depth=depth)
    m.d.comb += [
        q.w_data.eq(source.payload),
        q.w_en.eq(source.valid & ~stall),
        source.ready.eq(q.w_rdy & ~stall),
        sink.valid.eq(q.r_rdy),
        sink.payload.eq(q.r_data),
        q.r_en.eq(sink.ready),
    ]
    return q


class Chain:
    """Routers for chips of ``counts`` weights, joined by stalling FIFOs and optionally links."""

    def __init__(self, counts, *, links=False, queue_depth=4, link_latency=4):
        self.counts = counts
        total = sum(counts)
        self.bases = [sum(counts[:k]) for k in range(len(counts))]
        self.routers = [WeightAccessRouter(base=self.bases[k], local_count=c,
                                           total_count=total, has_next=k + 1 < len(counts),
                                           has_prev=k > 0, queue_depth=queue_depth)
                        for k, c in enumerate(counts)]
        self.m = m = Module()
        self.stalls = []
        self.fifos = []
        self.links = []
        for k, router in enumerate(self.routers):
            m.submodules[f"router{k}"] = router
        ctl = VirtualChannel.CTL

        def join(name, source, sink):
            stall = Signal(name=f"stall_{name}")
            self.stalls.append(stall)
            self.fifos.append(_stalled_fifo(m, name, source, sink, stall))

        for k in range(len(counts) - 1):
            up, down = self.routers[k], self.routers[k + 1]
            if links:
                m.submodules[f"link{k}"] = link = LinkPair(LinkConfig(), latency=link_latency)
                self.links.append(link)
                join(f"req{k}", up.down_o, link.a_i[ctl])
                join(f"req{k}_rx", link.b_o[ctl], down.up_i)
                join(f"resp{k}", down.up_o, link.b_i[ctl])
                join(f"resp{k}_rx", link.a_o[ctl], up.down_i)
                for vc in VirtualChannel:
                    if vc != ctl:
                        m.d.comb += [link.a_i[vc].valid.eq(0), link.b_i[vc].valid.eq(0),
                                     link.a_o[vc].ready.eq(1), link.b_o[vc].ready.eq(1)]
            else:
                join(f"req{k}", up.down_o, down.up_i)
                join(f"resp{k}", down.up_o, up.down_i)

    @property
    def host(self):
        return self.routers[0].host


def run_chain(chain, *, seed, ops, stall=0.3, ber=0.0, burst=0.3, max_latency=3):
    """Random host traffic over the chain; returns the reads checked and the memory models."""
    rng = random.Random(seed)
    total = sum(chain.counts)
    mems = [LocalMemory(k, r.local, c, random.Random(rng.random()), max_latency=max_latency)
            for k, (r, c) in enumerate(zip(chain.routers, chain.counts))]
    model = {}
    expected = collections.deque()
    got = []
    errors = []
    link_status = []
    host, full = chain.host, chain.routers[0].full
    done = False

    def owner(addr):
        k = max(i for i, b in enumerate(chain.bases) if b <= addr)
        return k, addr - chain.bases[k]

    def model_value(addr):
        return model.get(addr, _initial(*owner(addr)))

    def pick_addr(touched):
        if touched and rng.random() < 0.5:
            return rng.choice(touched)
        # Each chip's first and last words, and anywhere.
        edges = [b + o for b, c in zip(chain.bases, chain.counts) for o in (0, c - 1)]
        return rng.choice(edges) if rng.random() < 0.3 else rng.randrange(total)

    async def driver(ctx):
        nonlocal done
        assert ctx.get(host.weight_count) == total
        touched = []
        for _ in range(ops):
            while not (rng.random() < burst):
                await ctx.tick()
            while ctx.get(full):
                await ctx.tick()
            addr = pick_addr(touched)
            ctx.set(host.weight_addr, addr)
            if rng.random() < 0.5:
                value = _signed32(rng.getrandbits(32))
                model[addr] = value
                touched.append(addr)
                ctx.set(host.weight_wdata, value)
                ctx.set(host.weight_write, 1)
                await ctx.tick()
                ctx.set(host.weight_write, 0)
            else:
                expected.append((addr, model_value(addr)))
                ctx.set(host.weight_read, 1)
                await ctx.tick()
                ctx.set(host.weight_read, 0)
                if rng.random() < 0.5:      # as the UART bridge does: wait for the answer
                    while expected:
                        await ctx.tick()
        # Drain: every request answered and every chip idle, every FIFO empty.
        idle_for = 0
        while idle_for < 50:
            await ctx.tick()
            quiet = not any(ctx.get(r.pending) for r in chain.routers) and \
                not any(ctx.get(q.r_rdy) for q in chain.fifos)
            idle_for = idle_for + 1 if quiet and not expected else 0
        for link in chain.links:
            for status in (link.a_status, link.b_status):
                link_status.append({name: ctx.get(getattr(status, name))
                                    for name in ("bad_frames", "replays", "overflow")})
        done = True

    async def responses(ctx):
        async for _, _, rvalid, rdata in ctx.tick().sample(host.weight_rvalid,
                                                           host.weight_rdata):
            if rvalid:
                if not expected:
                    errors.append(f"unexpected rvalid with {rdata}")
                else:
                    addr, want = expected.popleft()
                    got.append((addr, rdata, want))

    async def stalls(ctx):
        while True:
            for s in chain.stalls:
                ctx.set(s, rng.random() < stall)
            await ctx.tick()

    sim = Simulator(chain.m)
    sim.add_clock(1e-6)
    sim.add_testbench(driver)
    sim.add_process(responses)
    sim.add_testbench(stalls, background=True)
    sim.add_testbench(_watchdog(200 * ops + 2000), background=True)
    for mem in mems:
        sim.add_process(mem.process)
    for link in chain.links:
        for err in (link.err_ab, link.err_ba):
            if ber:
                injector = BitErrorInjector(16, ber, random.Random(rng.random()))
                sim.add_testbench(injector.testbench(err), background=True)
    sim.run()

    assert done
    assert errors == []
    for mem in mems:
        assert mem.errors == []
    assert [(a, r) for a, r, _ in got] == [(a, w) for a, _, w in got]
    # Every chip's memory holds exactly the model's writes to it, and nothing else.
    for k, mem in enumerate(mems):
        want = {a - chain.bases[k]: v for a, v in model.items() if owner(a)[0] == k}
        assert mem.written == want
    assert all(status["overflow"] == 0 for status in link_status)
    if ber:
        # The errors broke frames, which the links replayed.
        assert sum(status["bad_frames"] for status in link_status) > 0
        assert sum(status["replays"] for status in link_status) > 0
    return len(got), mems


@pytest.mark.parametrize("seed", [1, 2])
def test_three_chips_through_stalling_fifos(seed):
    chain = Chain([5, 3, 7])
    reads, mems = run_chain(chain, seed=seed, ops=150)
    assert reads > 50
    # Every chip was reached, for reads and writes.
    for mem in mems:
        assert {kind for _, kind, _ in mem.strobes} == {"read", "write"}


def test_wide_addresses_and_single_weight_chip():
    # Addresses above 16 bits use the address's high word; a one-weight chip in the middle.
    chain = Chain([70_000, 1, 40_000])
    run_chain(chain, seed=9, ops=100, stall=0.5, burst=0.6)


def test_long_local_latency_and_shallow_queue():
    chain = Chain([4, 4, 4], queue_depth=2)
    run_chain(chain, seed=4, ops=100, burst=0.8, max_latency=8)


def _links_test(ber, ops, seed):
    chain = Chain([6, 2, 5], links=True)
    run_chain(chain, seed=seed, ops=ops, stall=0.2, ber=ber)
    return chain


def test_three_chips_through_links_with_bit_errors():
    _links_test(ber=1.5e-3, ops=16, seed=17)


@pytest.mark.slow
@pytest.mark.parametrize("ber", [0.0, 1e-3, 4e-3])
def test_three_chips_through_links_long(ber):
    _links_test(ber=ber, ops=400, seed=23)


# Directed tests of one router --------------------------------------------------------

def _one_chip_latencies(latency):
    router = WeightAccessRouter(base=0, local_count=8, total_count=8,
                                has_next=False, has_prev=False)
    mem = LocalMemory(0, router.local, 8, random.Random(0), latency=latency)
    seen = {}

    async def bench(ctx):
        host = router.host
        cycle = 0

        async def tick():
            nonlocal cycle
            await ctx.tick()
            cycle += 1

        ctx.set(host.weight_addr, 5)
        ctx.set(host.weight_wdata, -123456789)
        ctx.set(host.weight_write, 1)
        await tick()
        ctx.set(host.weight_write, 0)
        while not ctx.get(router.pending) or mem.strobes == []:
            assert ctx.get(router.pending)
            await tick()
        seen["write"] = mem.strobes[0][0] - 1     # the host's strobe is sampled at edge 1
        while ctx.get(router.pending):
            await tick()
        start = cycle
        ctx.set(host.weight_read, 1)
        await tick()
        ctx.set(host.weight_read, 0)
        while not ctx.get(host.weight_rvalid):
            await tick()
        seen["read"] = cycle - start
        seen["rdata"] = ctx.get(host.weight_rdata)
        await tick()
        assert not ctx.get(host.weight_rvalid)

    sim = Simulator(router)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.add_process(mem.process)
    sim.run()
    return seen, mem


@pytest.mark.parametrize("latency", [1, 3])
def test_first_chip_latency(latency):
    seen, mem = _one_chip_latencies(latency)
    assert seen["write"] == 3                   # local write strobe 3 cycles after the host's
    assert seen["read"] == latency + 4          # rvalid L + 4 cycles after the read strobe
    assert seen["rdata"] == -123456789
    assert [(kind, addr) for _, kind, addr in mem.strobes] == [("write", 5), ("read", 5)]


def test_far_chip_words_and_reserved_ops():
    # The last chip of three (weights 10..13 of 14): words in on up_i, answers on up_o.
    router = WeightAccessRouter(base=10, local_count=4, total_count=14,
                                has_next=False, has_prev=True)
    mem = LocalMemory(2, router.local, 4, random.Random(1), latency=2)
    rng = random.Random(5)
    read, write = ControlOp.READ.value, ControlOp.WRITE.value
    requests = [
        [0x0000, 0x0007, 0xFFFF],                       # reserved op words: dropped
        [read, 11, 0],                                  # -> initial value of local 1
        [write, 12, 0, 0x5678, 0x8234],                 # local 2 := 0x8234_5678
        [read, 12, 0],
        [read, 14, 0],                                  # beyond the cluster: zero
        [write, 0x0002, 0x0001, 1, 0],                  # beyond: ignored, still acknowledged
        [read, 13, 0],
    ]
    received = []
    expected_words = 10

    async def sender(ctx):
        for request in requests:
            for word in request:
                await stream_put(ctx, router.up_i, word, rng=rng, gap=0.4)

    async def receiver(ctx):
        for _ in range(expected_words):
            received.append(await stream_get(ctx, router.up_o, rng=rng, stall=0.5))
        # Then nothing more: idle, and no word offered.
        ctx.set(router.up_o.ready, 1)
        for _ in range(30):
            await ctx.tick()
            assert not ctx.get(router.up_o.valid) and not ctx.get(router.pending)

    sim = Simulator(router)
    sim.add_clock(1e-6)
    sim.add_testbench(sender)
    sim.add_testbench(receiver)
    sim.add_testbench(_watchdog(2000), background=True)
    sim.add_process(mem.process)
    sim.run()

    def words(value):
        value &= 0xFFFF_FFFF
        return [value & 0xFFFF, value >> 16]

    assert received == (words(_initial(2, 1)) + [0x0000] + [0x5678, 0x8234] + [0, 0] +
                        [0x0000] + words(_initial(2, 3)))
    assert mem.written == {2: _signed32(0x8234_5678)}
    assert [(kind, addr) for _, kind, addr in mem.strobes] == \
        [("read", 1), ("write", 2), ("read", 2), ("read", 3)]


def test_full_and_pending():
    # A local port that never answers: the first read is in hand, the queue holds depth more.
    depth = 3
    router = WeightAccessRouter(base=0, local_count=2, total_count=2,
                                has_next=False, has_prev=False, queue_depth=depth)
    accepted = []

    async def bench(ctx):
        host = router.host
        assert not ctx.get(router.pending) and not ctx.get(router.full)
        for n in range(depth + 3):
            if ctx.get(router.full):
                break
            accepted.append(n)
            ctx.set(host.weight_read, 1)
            await ctx.tick()
            ctx.set(host.weight_read, 0)
            assert ctx.get(router.pending)
            await ctx.tick().repeat(3)
        for _ in range(20):
            await ctx.tick()
            assert ctx.get(router.full) and ctx.get(router.pending)
            assert not ctx.get(host.weight_rvalid)

    sim = Simulator(router)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert len(accepted) == depth + 1


def test_connect_weight_port():
    # A router's local port joined to a HostSignature holder, as the cluster will do.
    m = Module()
    router = WeightAccessRouter(base=0, local_count=1, total_count=1,
                                has_next=False, has_prev=False)
    core_side = HostSignature().create(path=("core",))
    connect_weight_port(m, router.local, core_side)
    m.submodules.router = router

    async def bench(ctx):
        ctx.set(router.host.weight_wdata, 77)
        ctx.set(router.host.weight_write, 1)
        await ctx.tick()
        ctx.set(router.host.weight_write, 0)
        for _ in range(2):
            assert not ctx.get(core_side.weight_write)
            await ctx.tick()
        assert ctx.get(core_side.weight_write) and ctx.get(core_side.weight_wdata) == 77
        assert ctx.get(core_side.weight_addr) == 0

    sim = Simulator(m)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()


def test_signature_members():
    first = WeightAccessRouter(base=0, local_count=3, total_count=10,
                               has_next=True, has_prev=False)
    middle = WeightAccessRouter(base=3, local_count=3, total_count=10,
                                has_next=True, has_prev=True)
    last = WeightAccessRouter(base=6, local_count=4, total_count=10,
                              has_next=False, has_prev=True)
    assert set(first.signature.members) == {"local", "pending", "host", "full",
                                            "down_o", "down_i", "wrote_beyond"}
    assert set(middle.signature.members) == {"local", "pending", "up_i", "up_o",
                                             "down_o", "down_i", "wrote_beyond"}
    assert set(last.signature.members) == {"local", "pending", "up_i", "up_o"}
    names = set(WeightPortSignature().members)
    for port, flow in ((first.local, In), (first.host, Out), (last.local, In)):
        assert set(port.signature.members) == names
    assert first.signature.members["local"].flow == In
    assert first.signature.members["host"].flow == Out
    assert (last.base, last.local_count, last.total_count) == (6, 4, 10)


def test_parameters_are_validated():
    ok = dict(base=0, local_count=4, total_count=4, has_next=False, has_prev=False)
    with pytest.raises(TypeError, match="local_count"):
        WeightAccessRouter(**{**ok, "local_count": 4.0})
    with pytest.raises(TypeError, match="has_next"):
        WeightAccessRouter(**{**ok, "has_next": 0})
    with pytest.raises(TypeError, match="queue_depth"):
        WeightAccessRouter(**{**ok, "queue_depth": "4"})
    with pytest.raises(ValueError, match="queue_depth"):
        WeightAccessRouter(**{**ok, "queue_depth": 1})
    with pytest.raises(ValueError, match="total_count"):
        WeightAccessRouter(**{**ok, "total_count": 1 << 21})
    with pytest.raises(ValueError, match="exceeds total_count"):
        WeightAccessRouter(**{**ok, "local_count": 5, "has_next": True})
    with pytest.raises(ValueError, match="base must be 0"):
        WeightAccessRouter(**{**ok, "base": 1, "local_count": 3})
    with pytest.raises(ValueError, match="must equal total_count"):
        WeightAccessRouter(**{**ok, "local_count": 3})
