"""SimPhy latency and error injection, and the BitErrorInjector's rate."""

import random

import pytest
from amaranth.sim import Simulator

from fpdeep.rtl.link.phy import SimPhy, BitErrorInjector, phy_signature


@pytest.mark.parametrize("lanes,lane_width,latency", [(1, 16, 1), (4, 4, 3), (2, 8, 6)])
def test_latency_and_errors(lanes, lane_width, latency):
    dut = SimPhy(lanes=lanes, lane_width=lane_width, latency=latency)
    width = lanes * lane_width
    rng = random.Random(latency)
    stimulus = [(rng.random() < 0.7, rng.getrandbits(width), rng.getrandbits(width) * (rng.random() < 0.2))
                for _ in range(60)]
    seen = []

    async def tb(ctx):
        for valid, bits, err in stimulus + [(0, 0, 0)] * latency:
            ctx.set(dut.i.valid, valid)
            ctx.set(dut.i.payload.as_value(), bits)
            ctx.set(dut.err, err)
            seen.append((ctx.get(dut.o.valid), ctx.get(dut.o.payload.as_value())))
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()
    expect = [(int(v), b ^ e) for v, b, e in stimulus]
    assert seen[latency:] == expect
    assert all(v == 0 for v, _ in seen[:latency])


def test_injector_rate():
    inj = BitErrorInjector(16, 1e-2, random.Random(7))
    errors = sum(bin(inj.mask()).count("1") for _ in range(20_000))
    assert errors == inj.errors
    assert 0.9 * 3200 < errors < 1.1 * 3200


def test_parameters_are_validated():
    with pytest.raises(ValueError, match="latency"):
        SimPhy(latency=0)
    with pytest.raises(ValueError, match="lanes"):
        phy_signature(0, 8)
    with pytest.raises(TypeError, match="lane_width"):
        phy_signature(1, 8.0)
    with pytest.raises(ValueError, match="ber"):
        BitErrorInjector(16, 1.5, random.Random())
