import numpy as np
import pytest
from amaranth import *
from amaranth.lib import wiring
from amaranth.sim import Simulator

from fpdeep.plan.layers import GatewareLayer
from fpdeep.rtl.conv import ConvGeometry, pack_rows
from fpdeep.rtl.layer import EngineSizes, LayerDatapath
from fpdeep.rtl.numerics import DEFAULT_NUMERICS as N, master_to_weight_np, requantize_np, \
    sgd_step_np
from fpdeep.rtl.slots import FeatureMemory, FeaturePort
from fpdeep.sim.reference import (conv_backward_acc, conv_forward_acc, conv_weight_grad_acc,
                                  maxpool_backward, maxpool_forward)
from tests.stream_helpers import stream_put


class LayerBench(Elaboratable):
    """A layer with its engines placed beside it, as a chip places them, and its input
    map in a slotted memory the testbench loads."""

    def __init__(self, layer, slots):
        self.layer = layer
        layout = layer.in_layout
        self.input = FeatureMemory(layout=layout, slots=slots, ports={
            "load": FeaturePort(True, "forward", layout),
            "forward": FeaturePort(False, "forward", layout),
            "backward": FeaturePort(False, "backward", layout)})

    def elaborate(self, platform):
        m = Module()
        layer = self.layer
        m.submodules.layer, m.submodules.input = layer, self.input
        for kind, engine in layer.engines.items():
            m.submodules[kind] = engine
        m.d.comb += [self.input.slot.forward.eq(layer.slot.forward),
                     self.input.slot.backward.eq(layer.slot.backward)]
        wiring.connect(m, self.input.forward, layer.i_act.forward)
        wiring.connect(m, self.input.backward, layer.i_act.backward)
        return m


@pytest.mark.parametrize("relu, pool, front, partial", [
    (True, True, 0, False),
    (False, False, 2, True),
], ids=["relu and pool", "a slice with two channels in front, partial sums"])
def test_a_sample_forward_back_and_its_sgd_step(relu, pool, front, partial):
    """FP into the layer's slot (after the channels in front), BP of errors given at its
    output, and the SGD step, each equal to the integer reference."""
    rng = np.random.default_rng(3)
    g = ConvGeometry(cin=2, cout=3, h=4, w=4, kh=3, kw=3, ph=1, pw=1)
    spec = GatewareLayer("c", 1, g, relu, pool)
    w = N.master.from_float(rng.normal(0, 0.5, size=(3, 2, 3, 3)))
    b = N.master.from_float(rng.normal(0, 0.5, size=3))
    rate_q = N.rate_from_float(0.1)
    slots, slot = 2, 1
    layer = LayerDatapath(spec, sizes=EngineSizes(fp=2, bp=1, wu=2), numerics=N,
                          masters=(w, b), rate_q=rate_q, momentum_q=0, batch_size=1,
                          slots=slots, bp=True, front=front, partial=partial)
    bench = LayerBench(layer, slots)
    x = rng.integers(-3000, 3000, size=(2, 4, 4))
    wq, bq = master_to_weight_np(w, N)[0], master_to_weight_np(b, N)[0]
    full, _ = requantize_np(conv_forward_acc(x, wq, bq, 1, 1, N.act.one),
                            N.act.frac + N.weight.frac, N.act)
    full = np.maximum(full, 0) if relu else full
    out, winner = maxpool_forward(full) if pool else (full, None)
    e = rng.integers(-3000, 3000, size=out.shape)
    e_full = maxpool_backward(e, winner) if pool else e
    e_full = np.where(full > 0, e_full, 0) if relu else e_full
    bp_acc = conv_backward_acc(e_full, wq, 1, 1)
    e_in = bp_acc if partial else requantize_np(bp_acc, N.weight.frac + N.error.frac,
                                                N.error)[0]
    gw, gb = conv_weight_grad_acc(x, e_full, 3, 3, 1, 1, N.act.one)
    new_w = sgd_step_np(w, np.zeros_like(w), gw, N, rate_q, 0)[0]
    new_b = sgd_step_np(b, np.zeros_like(b), gb, N, rate_q, 0)[0]
    got_e = np.zeros_like(e_in)
    control = layer.control

    async def pulse(ctx, signal):
        ctx.set(signal, 1)
        await ctx.tick()
        ctx.set(signal, 0)

    async def wait_idle(ctx, busy):
        await ctx.tick()
        while ctx.get(busy):
            await ctx.tick()

    async def sink(ctx):
        ctx.set(layer.o_err.ready, 1)
        async for _, _, valid, beat in ctx.tick().sample(layer.o_err.valid,
                                                         layer.o_err.payload):
            if valid:
                got_e[beat.channel, beat.row] = list(beat.values)

    async def tb(ctx):
        ctx.set(layer.slot.forward, slot)
        ctx.set(layer.slot.backward, slot)
        for a, word in enumerate(pack_rows(x)):
            ctx.set(bench.input.load.addr, a)
            ctx.set(bench.input.load.data, word)
            ctx.set(bench.input.load.en, 1)
            await ctx.tick()
        ctx.set(bench.input.load.en, 0)
        await pulse(ctx, control.forward.start)
        await wait_idle(ctx, control.forward.busy)
        for _ in range(2):
            await ctx.tick()
        assert ctx.get(layer.o_act.rows_ready) == out.shape[1]
        oh = out.shape[1]
        for a in range((front + 3) * oh):
            ctx.set(layer.o_act.backward.addr, a)
            await ctx.tick()
            c, y = divmod(a, oh)
            want = list(out[c - front, y]) if c >= front else [0] * out.shape[2]
            assert list(ctx.get(layer.o_act.backward.data)) == want, (c, y)

        await pulse(ctx, control.backward.clear)
        await pulse(ctx, control.backward.start)
        for y in range(oh):
            for c in range(3):
                await stream_put(ctx, layer.i_err, {"channel": c, "row": y,
                                                     "values": [int(v) for v in e[c, y]]})
        await wait_idle(ctx, control.backward.busy)
        await wait_idle(ctx, control.update.busy)
        await pulse(ctx, control.update.start)
        await wait_idle(ctx, control.update.busy)
        got_w = np.zeros_like(w)
        got_b = np.zeros_like(b)
        for o in range(3):
            base = o * (2 * 3 + 1)
            for j in range(6):
                got_w[o, j // 3, j % 3] = list(ctx.get(layer.unit.master.data[base + j]))
            got_b[o] = ctx.get(layer.unit.master.data[base + 6])[0]
        np.testing.assert_array_equal(got_w, new_w)
        np.testing.assert_array_equal(got_b, new_b)

    sim = Simulator(bench)
    sim.add_clock(1e-6)
    sim.add_testbench(sink, background=True)
    sim.add_testbench(tb)
    sim.run()
    np.testing.assert_array_equal(got_e, e_in)


def test_engines_and_their_shapes():
    g = ConvGeometry(cin=2, cout=3, h=4, w=4, kh=3, kw=3, ph=1, pw=1)
    masters = (np.zeros((3, 2, 3, 3), dtype=np.int64), np.zeros(3, dtype=np.int64))
    args = dict(sizes=EngineSizes(fp=2, bp=1, wu=3), numerics=N, masters=masters, rate_q=1,
                momentum_q=0, batch_size=1, slots=1)
    first = LayerDatapath(GatewareLayer("a", 0, g, True, False), bp=False, **args)
    inner = LayerDatapath(GatewareLayer("b", 1, g, True, True), bp=True, **args)
    assert set(first.engines) == {"fp", "wu"} and "o_err" not in first.signature.members
    assert set(inner.engines) == {"fp", "wu", "bp"}
    assert inner.engines["wu"] is inner.unit and inner.arrays["wu"] is inner.unit.engine
    assert inner.array_shapes() == {name: engine.array_shape
                                    for name, engine in inner.arrays.items()}
    assert inner.out_layout.h == 2 and first.out_layout.h == 4
    with pytest.raises(TypeError, match="sizes"):
        LayerDatapath(GatewareLayer("a", 0, g, True, False), bp=False,
                      **{**args, "sizes": (2, 1, 3)})
    with pytest.raises(ValueError, match="front"):
        LayerDatapath(GatewareLayer("a", 0, g, True, False), bp=False, front=-1, **args)
