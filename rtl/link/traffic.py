"""Seeded traffic and a scoreboard for a :class:`~.endpoint.LinkPair` in Amaranth's simulator.

Shared by the link tests and ``python -m fpdeep.scripts.bench_link``. Producers put
random words on chosen VCs with random ``valid`` gaps, consumers take them with random
``ready`` stalls, and the phys get independent bit errors at a given rate; every
random choice comes from one seeded ``random.Random``, so a run replays exactly.
"""

import random
import time
from dataclasses import dataclass, field

from amaranth.sim import Simulator

from .endpoint import LinkPair
from .frame import LinkConfig
from .phy import BitErrorInjector

__all__ = ["TrafficResult", "run_traffic"]


@dataclass
class TrafficResult:
    """What a :func:`run_traffic` run did."""
    words: int                  # payload words delivered, all directions and VCs
    cycles: int                 # cycles until the last word arrived
    seconds: float              # wall time of the simulation
    sent: dict = field(repr=False)      # (direction, vc) -> words put in
    received: dict = field(repr=False)  # (direction, vc) -> words taken out
    extra: dict = field(repr=False)     # (direction, vc) -> words that arrived after the last
    status: dict = field(default_factory=dict)  # "a"/"b" -> LinkStatus counters at the end
    bit_errors: int = 0

    @property
    def efficiency(self):
        """Payload words per cycle, summed over the directions used."""
        return self.words / self.cycles if self.cycles else 0.0

    def check(self):
        """Raise ``AssertionError`` unless every word arrived once, in order and intact."""
        for key, words in self.sent.items():
            got = self.received[key]
            assert len(got) == len(words), f"{key}: {len(got)} of {len(words)} words arrived"
            for n, (want, have) in enumerate(zip(words, got)):
                assert want == have, f"{key}: word {n} is {have:#x}, sent {want:#x}"
            assert not self.extra[key], f"{key}: {len(self.extra[key])} extra words arrived"
        for side, status in self.status.items():
            assert not status["overflow"], f"{side}: a receive FIFO overflowed"


def _direction_ports(pair, direction):
    return (pair.a_i, pair.b_o) if direction == "ab" else (pair.b_i, pair.a_o)


def run_traffic(config=None, *, words, vcs=None, directions=("ab",), ber=0.0, seed=0,
                gap=0.0, stall=0.0, latency=4, lanes=1, errors=None, hold=None,
                drain=200, max_cycles=None, pair=None, clocks=None):
    """Simulate seeded random traffic through a :class:`LinkPair` and score it.

    Parameters
    ----------
    config : LinkConfig
        Link parameters (default ``LinkConfig()``).
    words : int
        Words per VC per direction.
    vcs : iterable of int
        VCs that carry traffic (default: all).
    directions : iterable of "ab" or "ba"
        Directions that carry traffic (the other still carries ACKs and credits).
    ber : float
        Bit-error rate on both wires.
    seed : int
        Seed for everything random.
    gap, stall : float
        Probability of each extra idle cycle before a put, or stall cycle before a get.
    latency, lanes : int
        PHY latency and lanes.
    errors : async function(ctx, pair) or None
        Extra testbench (e.g. targeted error bursts), run in the background.
    hold : dict or None
        ``{(direction, vc): cycles}``: that consumer takes nothing for the first ``cycles``.
    drain : int
        Cycles after the last word during which nothing more may arrive.
    max_cycles : int or None
        Fail if the run takes longer (a hang guard); default scales with ``words``.
    pair : LinkPair-like or None
        The pair to drive instead of a ``LinkPair(config, lanes=, latency=)``, e.g. a
        :class:`~.pins_sim.BoardLinkPair`. Its ``domains`` attribute, if any, maps
        ``"a"``, ``"b"`` (each side's ports) and ``"ab"``, ``"ba"`` (each wire's error
        mask) to clock domains; the default is ``sync`` for all.
    clocks : list of (period, domain, phase) or None
        The clocks to add; default one 10 ns ``sync`` clock. Cycles count in ``sync``.

    Returns
    -------
    TrafficResult
    """
    config = config or LinkConfig()
    vcs = list(range(config.vcs)) if vcs is None else list(vcs)
    hold = hold or {}
    if pair is None:
        pair = LinkPair(config, lanes=lanes, latency=latency)
    domain = {"a": "sync", "b": "sync", "ab": "sync", "ba": "sync",
              **getattr(pair, "domains", {})}
    rng = random.Random(seed)
    mask = (1 << config.word_width) - 1
    sim = Simulator(pair)
    for period, clock_domain, phase in clocks or [(1e-8, "sync", None)]:
        sim.add_clock(period, domain=clock_domain, phase=phase)

    sent, received, extra = {}, {}, {}
    consumers_left = [0]
    last_word_cycle = [0]
    now = [0]

    def producer(port, payloads, r, dom):
        async def put(ctx):
            for w in payloads:
                while r.random() < gap:
                    ctx.set(port.valid, 0)
                    await ctx.tick(dom)
                ctx.set(port.payload, w)
                ctx.set(port.valid, 1)
                # Plain ticks rather than tick().until(): a background testbench left
                # waiting in until() when the simulation ends warns on teardown.
                while not (await ctx.tick(dom).sample(port.ready))[2]:
                    pass
                ctx.set(port.valid, 0)
        return put

    def consumer(port, count, out, late, r, delay, dom):
        async def get(ctx):
            for _ in range(delay):
                await ctx.tick(dom)
            for _ in range(count):
                while r.random() < stall:
                    ctx.set(port.ready, 0)
                    await ctx.tick(dom)
                ctx.set(port.ready, 1)
                while True:
                    _, _, valid, payload = await ctx.tick(dom).sample(port.valid, port.payload)
                    if valid:
                        break
                out.append(payload)
            last_word_cycle[0] = max(last_word_cycle[0], now[0])
            consumers_left[0] -= 1
            # Keep taking: anything more is a duplicate or an invention.
            ctx.set(port.ready, 1)
            while True:
                _, _, valid, payload = await ctx.tick(dom).sample(port.valid, port.payload)
                if valid:
                    late.append(payload)
        return get

    for direction in directions:
        ins, outs = _direction_ports(pair, direction)
        for v in vcs:
            key = (direction, v)
            sent[key] = [rng.getrandbits(32) & mask for _ in range(words)]
            received[key], extra[key] = [], []
            consumers_left[0] += 1
            sim.add_testbench(producer(ins[v], sent[key], random.Random(rng.random()),
                                       domain[direction[0]]), background=True)
            sim.add_testbench(consumer(outs[v], words, received[key], extra[key],
                                       random.Random(rng.random()), hold.get(key, 0),
                                       domain[direction[1]]), background=True)

    injectors = [BitErrorInjector(len(pair.err_ab), ber, random.Random(rng.random()))
                 for _ in range(2)]
    if ber:
        sim.add_testbench(injectors[0].testbench(pair.err_ab, domain["ab"]), background=True)
        sim.add_testbench(injectors[1].testbench(pair.err_ba, domain["ba"]), background=True)
    if errors is not None:
        async def run_errors(ctx):
            await errors(ctx, pair)
        sim.add_testbench(run_errors, background=True)

    if max_cycles is None:
        max_cycles = 20_000 + 200 * words * len(vcs) * len(directions) // max(1, len(directions))
    status = {}

    async def supervisor(ctx):
        while consumers_left[0]:
            await ctx.tick()
            now[0] += 1
            if now[0] > max_cycles:
                break
        for _ in range(drain):
            await ctx.tick()
        for side, port in (("a", pair.a_status), ("b", pair.b_status)):
            status[side] = {name: ctx.get(getattr(port, name))
                            for name in ("replays", "timeouts", "frames", "bad_frames",
                                         "duplicates", "overflow")}

    sim.add_testbench(supervisor)
    start = time.perf_counter()
    sim.run()
    seconds = time.perf_counter() - start
    delivered = sum(len(r) for r in received.values())
    return TrafficResult(words=delivered, cycles=last_word_cycle[0] or now[0], seconds=seconds,
                         sent=sent, received=received, extra=extra, status=status,
                         bit_errors=sum(i.errors for i in injectors))
