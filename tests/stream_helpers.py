"""Async stream helpers for Amaranth 0.5 testbenches, with seeded random gaps and stalls."""

__all__ = ["stream_put", "stream_get", "StreamDriver"]


async def stream_put(ctx, port, payload, *, rng=None, gap=0.0):
    """Send one payload on ``port`` (an ``Out`` stream seen from the testbench).

    With ``rng`` and ``gap``, first idle ``valid`` for a random number of cycles
    (each further idle cycle with probability ``gap``).
    """
    while rng is not None and rng.random() < gap:
        ctx.set(port.valid, 0)
        await ctx.tick()
    ctx.set(port.payload, payload)
    ctx.set(port.valid, 1)
    await ctx.tick().until(port.ready)
    ctx.set(port.valid, 0)


async def stream_get(ctx, port, *, rng=None, stall=0.0):
    """Receive one payload from ``port``; with ``rng``, hold ``ready`` low at random."""
    while rng is not None and rng.random() < stall:
        ctx.set(port.ready, 0)
        await ctx.tick()
    ctx.set(port.ready, 1)
    payload, = await ctx.tick().sample(port.payload).until(port.valid)
    ctx.set(port.ready, 0)
    return payload


class StreamDriver:
    """Bundles a seeded ``random.Random`` with gap and stall probabilities."""

    def __init__(self, rng, *, gap=0.0, stall=0.0):
        self.rng, self.gap, self.stall = rng, gap, stall

    async def put(self, ctx, port, payload):
        await stream_put(ctx, port, payload, rng=self.rng, gap=self.gap)

    async def get(self, ctx, port):
        return await stream_get(ctx, port, rng=self.rng, stall=self.stall)
