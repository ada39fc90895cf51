"""A memory write port driven from an Amaranth 0.5 testbench, for benches whose input
is written while the design under test already runs (rows arriving)."""

from amaranth import Signal

__all__ = ["MemoryWriter"]


class MemoryWriter:
    """``connect`` in the bench's ``elaborate``, then ``await put(ctx, address, word)``
    writes one word (in the cycle of the call's tick)."""

    def __init__(self, memory):
        self.memory = memory
        self.write = Signal()
        self.address = Signal(range(memory.depth))
        self.data = Signal(memory.shape)

    def connect(self, m):
        port = self.memory.write_port()
        m.d.comb += [port.en.eq(self.write), port.addr.eq(self.address),
                     port.data.eq(self.data)]

    async def put(self, ctx, address, word):
        ctx.set(self.address, address)
        ctx.set(self.data, word)
        ctx.set(self.write, 1)
        await ctx.tick()
        ctx.set(self.write, 0)
