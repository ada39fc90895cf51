"""Virtual channels: round-robin, credit counters, and a stalled VC that blocks no other."""

import random

import pytest
from amaranth.sim import Simulator

from fpdeep.rtl.link.channels import RoundRobin, CreditCounter, ReceiveBuffers, VirtualChannel
from fpdeep.rtl.link.endpoint import LinkPair
from fpdeep.rtl.link.frame import LinkConfig


def test_round_robin_is_fair():
    dut = RoundRobin(4)
    grants = []

    async def tb(ctx):
        ctx.set(dut.take, 1)
        for requests in [0b1111] * 8 + [0b1010] * 4 + [0b0001, 0b0000]:
            ctx.set(dut.requests, requests)
            grants.append(ctx.get(dut.grant) if ctx.get(dut.valid) else None)
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()
    assert grants == [0, 1, 2, 3, 0, 1, 2, 3, 1, 3, 1, 3, 0, None]


def test_credit_counter_against_model():
    depth, width = 5, 3
    dut = CreditCounter(depth=depth, width=width)
    rng = random.Random(4)

    async def tb(ctx):
        sent = freed = 0
        for _ in range(400):
            assert ctx.get(dut.credits) == depth - (sent - freed)
            assert ctx.get(dut.available) == (sent - freed < depth)
            consume = ctx.get(dut.available) and rng.random() < 0.6
            report = rng.randrange(freed, sent + 1)            # any stale-or-current count
            bogus = rng.random() < 0.1                         # ...or one from outside it
            value = (sent + rng.randrange(1, 4)) if bogus else report
            ctx.set(dut.consume, consume)
            ctx.set(dut.update, 1)
            ctx.set(dut.freed, value % (1 << width))
            await ctx.tick()
            if not bogus:
                freed = report
            sent += consume

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()


def test_stalled_vc_blocks_no_other():
    # Nobody reads a->b VC0: exactly rx_depth words get in and then its credits stop it,
    # while VC1 carries all of its words. Then VC0 is drained and all its words arrive.
    config = LinkConfig(rx_depth=16)
    dut = LinkPair(config)
    act, err = VirtualChannel.ACT, VirtualChannel.ERR
    accepted, vc1_got, vc0_got = [0], [], []
    vc0 = list(range(1000, 1050))
    vc1 = list(range(2000, 2200))

    async def put(ctx, port, words, count=None):
        for w in words:
            ctx.set(port.payload, w)
            ctx.set(port.valid, 1)
            while not (await ctx.tick().sample(port.ready))[2]:
                pass
            if count:
                count[0] += 1
        ctx.set(port.valid, 0)

    async def put_vc0(ctx):
        await put(ctx, dut.a_i[act], vc0, accepted)

    async def put_vc1(ctx):
        await put(ctx, dut.a_i[err], vc1)

    async def tb(ctx):
        ctx.set(dut.b_o[err].ready, 1)
        for _ in range(1500):
            _, _, valid, word = await ctx.tick().sample(dut.b_o[err].valid, dut.b_o[err].payload)
            if valid:
                vc1_got.append(word)
        assert vc1_got == vc1
        assert accepted[0] == config.rx_depth
        assert ctx.get(dut.b_status.overflow) == 0
        ctx.set(dut.b_o[act].ready, 1)
        for _ in range(1000):
            _, _, valid, word = await ctx.tick().sample(dut.b_o[act].valid, dut.b_o[act].payload)
            if valid:
                vc0_got.append(word)
        assert vc0_got == vc0

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(put_vc0, background=True)
    sim.add_testbench(put_vc1, background=True)
    sim.add_testbench(tb)
    sim.run()


def test_parameters_are_validated():
    with pytest.raises(ValueError, match="count"):
        RoundRobin(0)
    with pytest.raises(ValueError, match="width"):
        CreditCounter(depth=8, width=3)
    with pytest.raises(ValueError, match="depth"):
        ReceiveBuffers(vcs=4, word_width=16, depth=1, credit_width=2)
