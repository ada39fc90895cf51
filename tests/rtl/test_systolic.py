import random

import numpy as np
import pytest
from amaranth.sim import Simulator

from fpdeep.rtl.systolic import SystolicArray
from tests.stream_helpers import StreamDriver


def run_tiles(rows, cols, tiles, *, seed, gap=0.3, stall=0.3):
    """Feed ``tiles`` (list of (A[K,rows], B[K,cols])) and return the drained sums."""
    dut = SystolicArray(rows=rows, cols=cols)
    rng = random.Random(seed)
    driver = StreamDriver(rng, gap=gap, stall=stall)
    received = []

    async def producer(ctx):
        for a, b in tiles:
            for k in range(len(a)):
                await driver.put(ctx, dut.i, {"a": [int(v) for v in a[k]],
                                              "b": [int(v) for v in b[k]],
                                              "last": k == len(a) - 1})

    async def consumer(ctx):
        for _ in tiles:
            tile = []
            for r in range(rows):
                beat = await driver.get(ctx, dut.o)
                assert beat.row == r and beat.last == (r == rows - 1)
                tile.append([beat.sums[c] for c in range(cols)])
            received.append(np.array(tile))
        for _ in range(3 * (rows + cols)):           # nothing extra arrives
            assert not ctx.get(dut.o.valid)
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(producer)
    sim.add_testbench(consumer)
    sim.run()
    return received


@pytest.mark.parametrize("rows,cols,seed", [(1, 1, 0), (3, 5, 1), (4, 2, 2), (2, 7, 3)])
def test_matches_matmul(rows, cols, seed):
    rng = np.random.default_rng(seed)
    tiles = []
    for n in range(4):
        k = int(rng.integers(1, 12))
        if n == 0:      # extremes: the largest products and sums of one sign
            a = np.full((k, rows), -32768)
            b = np.full((k, cols), -32768)
        else:
            a = rng.integers(-32768, 32768, size=(k, rows))
            b = rng.integers(-32768, 32768, size=(k, cols))
        tiles.append((a, b))
    got = run_tiles(rows, cols, tiles, seed=seed)
    for (a, b), sums in zip(tiles, got):
        np.testing.assert_array_equal(sums, a.T.astype(np.int64) @ b.astype(np.int64))


def test_full_throughput_when_tiles_are_long():
    """With no gaps or stalls, a long tile takes one cycle per step."""
    rows, cols, k = 3, 4, 40
    dut = SystolicArray(rows=rows, cols=cols)
    cycles = {}

    async def tb(ctx):
        for step in range(k):
            ctx.set(dut.i.payload.last, step == k - 1)
            ctx.set(dut.i.payload.a, [1] * rows)
            ctx.set(dut.i.payload.b, [1] * cols)
            ctx.set(dut.i.valid, 1)
            await ctx.tick()
            assert ctx.get(dut.i.ready) or step == k - 1
        ctx.set(dut.i.valid, 0)
        ctx.set(dut.o.ready, 1)
        waited = 0
        while not ctx.get(dut.o.valid):
            await ctx.tick()
            waited += 1
        cycles["latency"] = waited
        assert ctx.get(dut.o.payload.sums[0]) == k

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(tb)
    sim.run()
    assert cycles["latency"] <= dut.tile_latency + 1


def test_rejects_bad_size():
    with pytest.raises(ValueError, match="rows"):
        SystolicArray(rows=0, cols=2)
