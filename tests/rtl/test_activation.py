import random

import numpy as np
import pytest
from amaranth import *
from amaranth.lib import memory, wiring
from amaranth.sim import Simulator

from fpdeep.rtl.activation import ActivationWriter
from fpdeep.rtl.conv import RowLayout
from fpdeep.rtl.numerics import DEFAULT_NUMERICS as N
from fpdeep.sim.reference import maxpool_forward


class WriterBench(Elaboratable):
    """An ActivationWriter with its memories; ``peek`` reads the next layer's input
    map (pooled, or full) at ``peek_addr``, as a consumer would."""

    def __init__(self, writer):
        self.writer = writer
        full = writer.full_layout
        self.full = memory.Memory(shape=full.shape, depth=full.depth, init=[])
        nxt = writer.pooled_layout or full
        self.next_layout = nxt
        self.pooled = (memory.Memory(shape=nxt.shape, depth=nxt.depth, init=[])
                       if writer.pooled_layout else None)
        self.peek_addr = Signal(range(nxt.depth))
        self.peek = Signal(nxt.shape)

    def elaborate(self, platform):
        m = Module()
        m.submodules.writer, m.submodules.full = self.writer, self.full
        wiring.connect(m, self.writer.full_wr, self.full.write_port())
        target = self.full
        if self.pooled is not None:
            m.submodules.pooled = self.pooled
            wiring.connect(m, self.writer.full_rd, self.full.read_port())
            wiring.connect(m, self.writer.pooled_wr, self.pooled.write_port())
            target = self.pooled
        port = target.read_port()
        m.d.comb += [port.addr.eq(self.peek_addr), self.peek.eq(port.data)]
        return m


@pytest.mark.parametrize("relu, pool", [(True, True), (True, False), (False, True)])
@pytest.mark.parametrize("seed", range(2))
def test_rows_ready_follow_the_rows_written(relu, pool, seed):
    """Rows come in stream order with random gaps, twice (``clear`` between maps).
    Whenever ``rows_ready`` shows a row, a read of it that cycle returns the final
    value; and the maps equal ReLU / max-pool of the rows."""
    rng = random.Random(seed)
    c, h, w = rng.randint(1, 3), 2 * rng.randint(1, 3), 2 * rng.randint(1, 3)
    writer = ActivationWriter(channels=c, h=h, w=w, fmt=N.act, relu=relu, pool=pool)
    bench = WriterBench(writer)
    nxt = bench.next_layout
    checked = []

    def expected(x):
        a = np.maximum(x, 0) if relu else x
        return maxpool_forward(a)[0] if pool else a

    async def tb(ctx):
        for _ in range(2):
            x = np.array([[[rng.randint(N.act.min, N.act.max) for _ in range(w)]
                           for _ in range(h)] for _ in range(c)])
            want = expected(x)
            ctx.set(writer.clear, 1)
            await ctx.tick()
            ctx.set(writer.clear, 0)
            assert ctx.get(writer.rows_ready) == 0
            order = RowLayout(c, h, w, N.act).stream_order()
            pending = [(ch, y) for ch, y in order]
            seen = 0
            # Feed rows; each cycle, probe the newest row rows_ready claims.
            while pending or seen < nxt.h:
                if pending and rng.random() < 0.6:
                    ch, y = pending.pop(0)
                    ctx.set(writer.i.valid, 1)
                    ctx.set(writer.i.payload.channel, ch)
                    ctx.set(writer.i.payload.row, y)
                    for k in range(w):
                        ctx.set(writer.i.payload.values[k], int(x[ch, y, k]))
                else:
                    ctx.set(writer.i.valid, 0)
                ready = ctx.get(writer.rows_ready)
                assert ready >= seen
                if ready:
                    ch = rng.randrange(c)
                    ctx.set(bench.peek_addr, nxt.address(ch, ready - 1))
                    await ctx.tick()
                    assert [ctx.get(bench.peek[k]) for k in range(nxt.w)] == \
                        list(want[ch, ready - 1]), "a row shown ready before it was written"
                    checked.append(ready)
                else:
                    await ctx.tick()
                seen = ready
            ctx.set(writer.i.valid, 0)
            assert ctx.get(writer.rows_ready) == nxt.h

    sim = Simulator(bench)
    sim.add_clock(1e-6)
    sim.add_testbench(tb)
    sim.run()
    assert checked
