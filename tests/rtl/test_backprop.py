import random

import numpy as np
import pytest
from amaranth import *
from amaranth.lib import memory, wiring
from amaranth.sim import Simulator

from fpdeep.rtl.backprop import ErrorDerivative, ErrorStore
from fpdeep.rtl.conv import RowLayout, pack_rows
from fpdeep.rtl.numerics import DEFAULT_NUMERICS as N
from fpdeep.sim.reference import maxpool_backward, maxpool_forward


class DerivativeBench(Elaboratable):
    """Error rows through an ErrorDerivative (over stored activations) into an
    ErrorStore; ``peek`` reads the store's row layout at ``peek_addr``."""

    def __init__(self, deriv, store, acts):
        self.deriv, self.store = deriv, store
        self.full = memory.Memory(shape=deriv.full_layout.shape, depth=len(acts), init=acts)
        self.rows = memory.Memory(shape=store.row_layout.shape, depth=store.row_layout.depth,
                                  init=[])
        self.lanes = memory.Memory(shape=store.lane_layout.shape,
                                   depth=store.lane_layout.depth, init=[])
        self.peek_addr = Signal(range(store.row_layout.depth))
        self.peek = Signal(store.row_layout.shape)

    def elaborate(self, platform):
        m = Module()
        m.submodules.deriv, m.submodules.store = self.deriv, self.store
        m.submodules.full, m.submodules.rows = self.full, self.rows
        m.submodules.lanes = self.lanes
        wiring.connect(m, self.deriv.full_rd0, self.full.read_port())
        if hasattr(self.deriv, "full_rd1"):
            wiring.connect(m, self.deriv.full_rd1, self.full.read_port())
        wiring.connect(m, self.deriv.o, self.store.i)
        wiring.connect(m, self.store.row_wr, self.rows.write_port())
        wiring.connect(m, self.store.lane_wr,
                       self.lanes.write_port(granularity=self.store.row_layout.w))
        port = self.rows.read_port()
        m.d.comb += [port.addr.eq(self.peek_addr), self.peek.eq(port.data)]
        return m


@pytest.mark.parametrize("pool", [True, False])
@pytest.mark.parametrize("seed", range(2))
def test_error_rows_are_ready_as_stored(pool, seed):
    """Error rows in stream order, with gaps: the derivative's output equals the
    reference (max-pool routing to the first maximum, times the ReLU derivative),
    and the store's ``rows_ready`` never shows a row before it can be read."""
    rng = random.Random(seed)
    c, h, w = rng.randint(1, 3), 2 * rng.randint(1, 3), 2 * rng.randint(1, 3)
    a = np.array([[[rng.choice([0, rng.randint(-50, 50)]) for _ in range(w)]
                   for _ in range(h)] for _ in range(c)])
    a = np.maximum(a, 0)                       # stored post-ReLU
    ih, iw = (h // 2, w // 2) if pool else (h, w)
    e = np.array([[[rng.randint(1, 900) for _ in range(iw)] for _ in range(ih)]
                  for _ in range(c)])
    if pool:
        want = maxpool_backward(e, maxpool_forward(a)[1]) * (a > 0)
    else:
        want = e * (a > 0)
    deriv = ErrorDerivative(channels=c, h=h, w=w, act_fmt=N.act, error_fmt=N.error,
                            relu=True, pool=pool)
    store = ErrorStore(channels=c, h=h, w=w, fmt=N.error, lanes=2, rows=True)
    bench = DerivativeBench(deriv, store, pack_rows(a))
    layout = RowLayout(c, h, w, N.error)
    checked = []

    async def feed(ctx):
        for ch, y in RowLayout(c, ih, iw, N.error).stream_order():
            while rng.random() < 0.4:
                await ctx.tick()
            ctx.set(deriv.i.valid, 1)
            ctx.set(deriv.i.payload.channel, ch)
            ctx.set(deriv.i.payload.row, y)
            for x in range(iw):
                ctx.set(deriv.i.payload.values[x], int(e[ch, y, x]))
            await ctx.tick().until(deriv.i.ready)
            ctx.set(deriv.i.valid, 0)

    async def watch(ctx):
        ctx.set(store.clear, 1)
        await ctx.tick()
        ctx.set(store.clear, 0)
        while ctx.get(store.rows_ready) < h:
            ready = ctx.get(store.rows_ready)
            if ready:
                ch = rng.randrange(c)
                ctx.set(bench.peek_addr, layout.address(ch, ready - 1))
                await ctx.tick()
                assert [ctx.get(bench.peek[x]) for x in range(w)] == \
                    list(want[ch, ready - 1]), "a row shown ready before it was stored"
                checked.append(ready)
            else:
                await ctx.tick()
        await ctx.tick()
        got = [[ctx.get(bench.rows.data[layout.address(ch, y)][x]) for x in range(w)]
               for ch in range(c) for y in range(h)]
        assert got == [list(want[ch, y]) for ch in range(c) for y in range(h)]

    sim = Simulator(bench)
    sim.add_clock(1e-6)
    sim.add_testbench(feed, background=True)
    sim.add_testbench(watch)
    sim.run()
    assert checked
