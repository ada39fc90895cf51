"""Link PHY interface and a simulation PHY that models the wire between two chips.

A PHY moves one *symbol* of ``lanes * lane_width`` bits per cycle. The symbol stream
has ``valid`` (a data symbol rather than an idle) but no ``ready``: a serial line
cannot be told to wait, so all flow control lives in the link layer above it.
"""

import math

from amaranth import *
from amaranth.lib import wiring, stream, data
from amaranth.lib.wiring import In, Out

__all__ = ["phy_signature", "SimPhy", "BitErrorInjector"]


def phy_signature(lanes, lane_width):
    """Signature of a PHY symbol stream, seen from the side that drives symbols.

    The payload is ``data.ArrayLayout(lane_width, lanes)``; ``valid`` low means an
    idle symbol. There is no backpressure (``always_ready``).

    Parameters
    ----------
    lanes : int
        Number of lanes, at least 1.
    lane_width : int
        Bits per lane per cycle, at least 1.

    Raises
    ------
    TypeError
        If ``lanes`` or ``lane_width`` is not an integer.
    ValueError
        If ``lanes`` or ``lane_width`` is less than 1.
    """
    for name, value in (("lanes", lanes), ("lane_width", lane_width)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{name} must be an integer, not {value!r}")
        if value < 1:
            raise ValueError(f"{name} must be at least 1, not {value}")
    return stream.Signature(data.ArrayLayout(unsigned(lane_width), lanes), always_ready=True)


class SimPhy(wiring.Component):
    """One direction of a chip-to-chip wire, for simulation.

    Symbols entering at ``i`` leave at ``o`` exactly ``latency`` cycles later, with the
    bits set in ``err`` (sampled when the symbol enters) flipped. Bit errors touch the
    symbol's data bits only: ``valid`` models the PHY's protected control coding
    (a 64b/66b sync header or an 8b/10b comma), and the link layer would recover from a
    corrupted one anyway because it then sees a frame of the wrong length.

    Errors are injected from *outside* through ``err`` rather than by a gateware
    random source, so that a test can draw them from a seeded ``random.Random``
    (see :class:`BitErrorInjector`) and the same seed replays the same error pattern
    in any simulator. Tie ``err`` to zero for an error-free wire.

    Parameters
    ----------
    lanes : int
        Number of lanes.
    lane_width : int
        Bits per lane per cycle.
    latency : int
        Cycles from ``i`` to ``o``, at least 1.

    Members
    -------
    i : In(phy_signature(lanes, lane_width))
        Symbols from the transmitting chip. Never back-pressured.
    o : Out(phy_signature(lanes, lane_width))
        Symbols to the receiving chip, ``latency`` cycles later.
    err : In(lanes * lane_width)
        Error mask XORed into the symbol entering this cycle (whether or not it is valid).

    Throughput is one symbol per cycle.
    """

    def __init__(self, *, lanes=1, lane_width=16, latency=4):
        sig = phy_signature(lanes, lane_width)
        if not isinstance(latency, int) or isinstance(latency, bool):
            raise TypeError(f"latency must be an integer, not {latency!r}")
        if latency < 1:
            raise ValueError(f"latency must be at least 1, not {latency}")
        self._lanes, self._lane_width, self._latency = lanes, lane_width, latency
        super().__init__({
            "i": In(sig),
            "o": Out(sig),
            "err": In(lanes * lane_width),
        })

    @property
    def width(self):
        return self._lanes * self._lane_width

    @property
    def latency(self):
        return self._latency

    def elaborate(self, platform):
        m = Module()
        valid, bits = self.i.valid, self.i.payload.as_value() ^ self.err
        for stage in range(self._latency):
            valid_q = Signal(name=f"valid_{stage}")
            bits_q = Signal(self.width, name=f"bits_{stage}")
            m.d.sync += [valid_q.eq(valid), bits_q.eq(bits)]
            valid, bits = valid_q, bits_q
        m.d.comb += [
            self.o.valid.eq(valid),
            self.o.payload.eq(bits),
        ]
        return m


class BitErrorInjector:
    """Seeded source of independent bit errors for :attr:`SimPhy.err` (testbench side).

    Each bit of each cycle flips with probability ``ber``, independently. Instead of
    drawing ``width`` numbers per cycle it draws the geometric gap to the next error, so
    error-free cycles cost nothing.

    Parameters
    ----------
    width : int
        Bits per cycle (the PHY symbol width).
    ber : float
        Bit-error rate, ``0 <= ber < 1``.
    rng : random.Random
        Seeded source of randomness.
    """

    def __init__(self, width, ber, rng):
        if not 0 <= ber < 1:
            raise ValueError(f"ber must be in [0, 1), not {ber}")
        self._width, self._ber, self._rng = width, ber, rng
        self._next = self._gap()    # bit index (counting all bits sent) of the next error
        self.errors = 0

    def _gap(self):
        if self._ber == 0:
            return math.inf
        u = self._rng.random()
        return int(math.log1p(-u) / math.log1p(-self._ber))

    def cycles_to_next(self):
        """Whole error-free cycles before the next cycle that has an error."""
        return self._next // self._width

    def mask(self):
        """Advance one cycle and return its error mask."""
        mask = 0
        while self._next < self._width:
            mask |= 1 << self._next
            self.errors += 1
            self._next += 1 + self._gap()
        self._next -= self._width
        return mask

    async def drive(self, ctx, err, domain="sync"):
        """Testbench coroutine: drive the error-mask signal ``err`` (e.g. ``SimPhy.err``),
        one mask per cycle of ``domain``."""
        while True:
            if self._next == math.inf:
                return
            skip = self.cycles_to_next()
            for _ in range(skip):       # (not tick().repeat(): it cannot be closed mid-wait)
                await ctx.tick(domain)
            self._next -= skip * self._width
            ctx.set(err, self.mask())
            await ctx.tick(domain)
            ctx.set(err, 0)

    def testbench(self, err, domain="sync"):
        """An async testbench function for ``Simulator.add_testbench(..., background=True)``."""
        async def inject(ctx):
            await self.drive(ctx, err, domain)
        return inject
