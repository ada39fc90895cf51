"""Work partitioning: split a network's FP + BP + WU work over a chain of chips.

The unit of work
----------------
Every conv or linear layer is cut into *lines*: one output row of one output
channel (a linear layer has one row, so a line is one output feature). A line
costs ``Cin·kh·kw·Wo`` MACs in each of FP, BP (none in the first layer) and WU.
Each layer orders its lines in one of two ways, its *split mode*:

* ``"channels"`` (the default): channel-major. A chip holds a run of whole
  output channels, so their weights and weight updates stay on that chip. Only
  the channel at each end of a chip's run may be shared with the neighbour by
  rows; that one channel's weights are then held twice and its gradient summed
  once per mini-batch.
* ``"rows"``: row-major. A chip holds a band of output rows of every channel.
  Used only where it serves better, for one of two stated reasons:

  1. *compute*: an R×C engine has at most ``R = channels`` rows and
     ``C = Wo`` columns, so a whole output channel takes at least
     ``Ho·Cin·kh·kw`` cycles however many PEs a chip has. When that exceeds the
     ideal balanced cycle time, channels cannot be spread thinly enough; a band
     of rows uses all ``Cout`` channels as array rows instead.
  2. *memory*: with a channel split every chip of the layer needs (and caches
     for WU) the whole input map. When that map exceeds a quarter of a chip's
     memory, rows keep each chip's share of it small.

  The price is that every chip of the layer holds all its weights and the
  weight gradients are summed along the chain once per mini-batch.

A chip's run of lines in one layer falls into at most three rectangles
(channels × rows), its *tiles*; each tile becomes one layer slice with its own
FP, BP and WU engines.

Balancing
---------
The chain is cut at line boundaries, contiguously, so that every chip gets the
same time per sample. The time of a chip is modelled during the search as
``max(MACs / (PEs·efficiency), floor) / clock``, where ``floor`` is the largest
``rows·Cin·kh·kw`` of its tiles (the shape limit of the engines). A binary search
finds the smallest feasible maximum time τ with a greedy fill; a second search
then lowers the fill threshold λ so that work spreads over all chips with each
chip between λ and τ. The final plan allocates integer R×C arrays exactly
(:func:`allocate_engines`) and reports the real cycles.
"""

import bisect
import math
from dataclasses import dataclass, field

from .errors import FpdeepError
from .workload import workload

__all__ = ["LayerUnits", "Tile", "Engine", "ChipPart", "split_modes", "partition",
           "allocate_engines", "ENGINE_KINDS", "ROW_SPLIT_MEMORY_FRACTION"]

ENGINE_KINDS = ("fp", "bp", "wu")

#: A layer is split by rows when its input map exceeds this fraction of a chip's memory.
ROW_SPLIT_MEMORY_FRACTION = 0.25

ACT_BITS = 16


@dataclass(frozen=True)
class LayerUnits:
    """One layer's lines in their split order."""
    work: object        # LayerWork
    mode: str           # "channels" | "rows"
    reason: str
    offset: int         # global index of the first line
    count: int          # Cout·Ho
    line_macs: int      # FP + BP + WU MACs of one line
    floor_per_row: int  # Cin·kh·kw: cycles of one row of a tile on a full-width array

    @property
    def minor(self):
        return self.work.out_rows if self.mode == "channels" else self.work.out_channels

    def rects(self, a, b):
        """The tiles of local lines ``[a, b)``: list of ((c0, c1), (r0, r1))."""
        m = self.minor
        out = []
        if a >= b:
            return out
        ma, ra = divmod(a, m)
        mb, rb = divmod(b, m)
        if ma == mb:
            spans = [(ma, ma + 1, ra, rb)]
        else:
            spans = []
            if ra:
                spans.append((ma, ma + 1, ra, m))
                ma += 1
            if mb > ma:
                spans.append((ma, mb, 0, m))
            if rb:
                spans.append((mb, mb + 1, 0, rb))
        for major0, major1, minor0, minor1 in spans:
            if self.mode == "channels":
                out.append(((major0, major1), (minor0, minor1)))
            else:
                out.append(((minor0, minor1), (major0, major1)))
        return out


@dataclass
class Engine:
    """One FP, BP or WU engine: an R×C PE array."""
    kind: str
    macs: int
    max_rows: int
    col_options: tuple
    rows: int = 0
    cols: int = 0
    efficiency: float = 1.0

    @property
    def pes(self):
        return self.rows * self.cols

    @property
    def cycles(self):
        if self.macs == 0:
            return 0.0
        return math.ceil(self.macs / self.pes) / self.efficiency

    def pes_for(self, target):
        """Smallest (R, C) meeting ``target`` cycles per sample, or None."""
        need = math.ceil(self.macs / (target * self.efficiency))
        best = None
        for cols in self.col_options:
            rows = -(-need // cols)
            if rows <= self.max_rows and (best is None or rows * cols < best[0] * best[1]):
                best = (rows, cols)
        return best


@dataclass
class Tile:
    """One layer slice on one chip."""
    layer: object               # LayerUnits
    channels: tuple             # [c0, c1)
    rows: tuple                 # [r0, r1)
    engines: dict = field(default_factory=dict)

    @property
    def n_channels(self):
        return self.channels[1] - self.channels[0]

    @property
    def n_rows(self):
        return self.rows[1] - self.rows[0]

    @property
    def lines(self):
        return self.n_channels * self.n_rows

    @property
    def fp_macs(self):
        w = self.layer.work
        return self.lines * w.macs_per_output * w.out_cols

    def make_engines(self, efficiency):
        w = self.layer.work
        cols = tuple(d for d in range(1, w.out_cols + 1) if w.out_cols % d == 0)
        if w.kind == "linear":
            cols = (1,)
        macs = {"fp": self.fp_macs, "bp": self.fp_macs if w.index else 0, "wu": self.fp_macs}
        self.engines = {kind: Engine(kind, macs[kind], self.n_channels, cols,
                                     efficiency=efficiency[kind])
                        for kind in ENGINE_KINDS if macs[kind]}


@dataclass
class ChipPart:
    """The lines ``[start, end)`` given to one chip, as tiles."""
    index: int
    start: int
    end: int
    tiles: list

    @property
    def engines(self):
        return [e for t in self.tiles for e in t.engines.values()]

    @property
    def cycles(self):
        return max((e.cycles for e in self.engines), default=0.0)

    @property
    def pes(self):
        return sum(e.pes for e in self.engines)

    @property
    def macs(self):
        return sum(e.macs for e in self.engines)


def split_modes(works, boards, efficiency=1.0):
    """Choose each layer's split mode; returns a list of (mode, reason)."""
    total = sum(w.macs for w in works)
    capacity = sum(b.multipliers * efficiency * b.clock_hz for b in boards)
    clock = sum(b.clock_hz for b in boards) / len(boards)
    ideal_cycles = total / capacity * clock        # balanced cycles per sample
    memory = min(b.bram_bits for b in boards)
    modes = []
    for w in works:
        if w.kind == "linear":
            modes.append(("channels", "linear layer: output features"))
            continue
        whole_channel = w.out_rows * w.macs_per_output
        input_bits = w.activations_in * ACT_BITS
        if len(boards) > 1 and whole_channel > ideal_cycles and w.out_rows > 1:
            modes.append(("rows", f"compute: one output channel needs at least "
                          f"Ho*Cin*kh*kw = {whole_channel} cycles on a channels x Wo array, "
                          f"more than the balanced {ideal_cycles:.0f} cycles per chip"))
        elif len(boards) > 1 and input_bits > ROW_SPLIT_MEMORY_FRACTION * memory \
                and w.out_rows > 1:
            modes.append(("rows", f"memory: a channel split caches the whole "
                          f"{input_bits / 1e6:.1f} Mb input map on every chip, more than "
                          f"{ROW_SPLIT_MEMORY_FRACTION:.0%} of a chip's {memory / 1e6:.1f} Mb"))
        else:
            modes.append(("channels", "default: weights and updates stay local"))
    return modes


class _Lines:
    """Fast cost model of contiguous runs of lines, used by the search."""

    def __init__(self, layers):
        self.layers = layers
        self.offsets = [lu.offset for lu in layers]
        self.total = layers[-1].offset + layers[-1].count
        self.cum = [0.0]
        for lu in layers:
            self.cum.append(self.cum[-1] + lu.count * lu.line_macs)

    def layer_of(self, e):
        return max(0, bisect.bisect_right(self.offsets, e) - 1)

    def prefix(self, e):
        if e >= self.total:
            return self.cum[-1]
        li = self.layer_of(e)
        lu = self.layers[li]
        return self.cum[li] + (e - lu.offset) * lu.line_macs

    def floor(self, s, e):
        """Largest tile floor (cycles) of the run [s, e)."""
        result = 0
        li = self.layer_of(s)
        while li < len(self.layers) and self.layers[li].offset < e:
            lu = self.layers[li]
            a, b = max(s - lu.offset, 0), min(e - lu.offset, lu.count)
            if a < b:
                for _, (r0, r1) in lu.rects(a, b):
                    result = max(result, (r1 - r0) * lu.floor_per_row)
            li += 1
        return result

    def time(self, s, e, peff, clock):
        if e <= s:
            return 0.0
        work = (self.prefix(e) - self.prefix(s)) / peff
        return max(work, self.floor(s, e)) / clock

    def max_end(self, s, tau_cycles, peff):
        """Largest e such that the run [s, e) takes at most tau_cycles."""
        # Work bound.
        target = self.prefix(s) + tau_cycles * peff * (1 + 1e-12)
        if target >= self.cum[-1]:
            e_work = self.total
        else:
            li = bisect.bisect_right(self.cum, target) - 1
            lu = self.layers[li]
            e_work = lu.offset + min(lu.count, int((target - self.cum[li]) // lu.line_macs))
        # Shape (floor) bound.
        e, li = s, self.layer_of(s)
        while li < len(self.layers) and e < e_work:
            lu = self.layers[li]
            a = e - lu.offset
            r_max = int(tau_cycles // lu.floor_per_row)
            if r_max == 0:
                return min(e, e_work)
            if lu.mode == "channels":
                ho = lu.minor
                if r_max < ho:
                    if ho - a % ho <= r_max:
                        end = (a // ho + 1) * ho + r_max
                    else:
                        end = a + r_max
                    if end < lu.count:
                        return min(lu.offset + end, e_work)
            else:
                cout = lu.minor
                end = -(-a // cout) * cout + r_max * cout + cout - 1
                if end < lu.count:
                    return min(lu.offset + end, e_work)
            e = lu.offset + lu.count
            li += 1
        return min(e, e_work)

    def min_end_work(self, s, macs):
        """Smallest e such that the run [s, e) has at least ``macs`` MACs."""
        target = self.prefix(s) + macs * (1 - 1e-12)
        if target > self.cum[-1]:
            return self.total
        li = max(0, bisect.bisect_left(self.cum, target) - 1)
        lu = self.layers[li]
        return max(s + 1, lu.offset + math.ceil((target - self.cum[li]) / lu.line_macs))

    def min_end(self, s, lam_cycles, peff):
        """Smallest e such that the run [s, e) takes at least lam_cycles (or total+1)."""
        if lam_cycles <= 0:
            return s + 1
        target = self.prefix(s) + lam_cycles * peff
        if target > self.cum[-1]:
            e_work = self.total + 1
        else:
            li = max(0, bisect.bisect_left(self.cum, target) - 1)
            lu = self.layers[li]
            e_work = lu.offset + math.ceil((target - self.cum[li]) / lu.line_macs)
        li, a = self.layer_of(s), s - self.layers[self.layer_of(s)].offset
        while li < len(self.layers):
            lu = self.layers[li]
            if lu.offset >= e_work:
                break
            r_need = math.ceil(lam_cycles / lu.floor_per_row)
            end = None
            if r_need <= 1:
                end = a + 1
            elif lu.mode == "channels":
                ho = lu.minor
                if r_need <= ho:
                    end = a + r_need if ho - a % ho >= r_need else (a // ho + 1) * ho + r_need
            else:
                if r_need <= lu.work.out_rows:
                    end = -(-a // lu.minor) * lu.minor + r_need * lu.minor
            if end is not None and end <= lu.count:
                return min(lu.offset + end, e_work)
            li, a = li + 1, 0
        return e_work


def _layers(works, modes):
    layers, offset = [], 0
    for w, (mode, reason) in zip(works, modes):
        count = w.out_channels * w.out_rows
        line_fp = w.macs_per_output * w.out_cols
        line_macs = line_fp * (2 if w.index == 0 else 3)
        layers.append(LayerUnits(w, mode, reason, offset, count, line_macs, w.macs_per_output))
        offset += count
    return layers


def partition(network, boards, *, efficiency=None, modes=None):
    """Split ``network`` over the chain ``boards``; returns (layers, list of ChipPart).

    ``efficiency`` maps engine kind to its efficiency (default 1.0 each);
    ``modes`` optionally forces the split mode of every layer.

    Raises
    ------
    FpdeepError
        If the network has fewer lines than chips, or a chip cannot hold its engines.
    """
    efficiency = efficiency or {kind: 1.0 for kind in ENGINE_KINDS}
    eff = min(efficiency.values())
    works = workload(network)
    if modes is not None:
        candidates = [modes]
    else:
        # The reasoned modes, and the all-channel split: where engines are shape-bound
        # (small networks, many chips) whole-channel tiles can balance better.
        candidates = [split_modes(works, boards, eff)]
        plain = [("channels", "default: weights and updates stay local")] * len(works)
        if plain != candidates[0]:
            candidates.append(plain)
    results = [_search(network, works, modes, boards, eff) for modes in candidates]
    best_time = min(r[2][1] for r in results)
    layers, best, _ = min((r for r in results if r[2][1] <= best_time * 1.01),
                          key=lambda r: r[2][0])
    chips = _build(layers, best, boards, efficiency)
    _refine(layers, chips, boards, efficiency)
    return layers, chips


def _build_chip(layers, index, s, e, board, efficiency):
    tiles = []
    for lu in layers:
        a, b = max(s - lu.offset, 0), min(e - lu.offset, lu.count)
        for channels, rows in lu.rects(a, b):
            tile = Tile(lu, channels, rows)
            tile.make_engines(efficiency)
            tiles.append(tile)
    chip = ChipPart(index, s, e, tiles)
    allocate_engines(chip, board)
    return chip


def _build(layers, ends, boards, efficiency):
    chips, s = [], 0
    for i, e in enumerate(ends):
        chips.append(_build_chip(layers, i, s, e, boards[i], efficiency))
        s = e
    return chips


def _refine(layers, chips, boards, efficiency, rounds=None):
    """Hill-climb on the exact (integer-array) cycles: move lines off the slowest chip.

    The search above uses a continuous cost; integer R×C arrays (C must divide Wo)
    round some chips up. This moves a cut next to the slowest chip whenever that
    lowers the larger time of the two chips involved.
    """
    n = len(chips)
    if n < 2:
        return
    time = lambda c: c.cycles / boards[c.index].clock_hz
    for _ in range(rounds or 4 * n):
        worst = max(range(n), key=lambda i: time(chips[i]))
        t_worst = time(chips[worst])
        best = None
        for nb in (worst - 1, worst + 1):
            if not 0 <= nb < n:
                continue
            lines = chips[worst].end - chips[worst].start
            for frac in (1 / 2, 1 / 4, 1 / 8, 1 / 16, 1 / 32, 1 / 64, 1 / 256):
                shift = max(1, int(lines * frac))
                if shift >= lines:
                    continue
                if nb < worst:
                    cut = chips[worst].start + shift
                    a = _build_chip(layers, nb, chips[nb].start, cut, boards[nb], efficiency)
                    b = _build_chip(layers, worst, cut, chips[worst].end, boards[worst],
                                    efficiency)
                else:
                    cut = chips[worst].end - shift
                    b = _build_chip(layers, worst, chips[worst].start, cut, boards[worst],
                                    efficiency)
                    a = _build_chip(layers, nb, cut, chips[nb].end, boards[nb], efficiency)
                t = max(time(a), time(b))
                if t < t_worst * (1 - 1e-9) and (best is None or t < best[0]):
                    best = (t, a, b)
        if best is None:
            return
        _, a, b = best
        chips[a.index], chips[b.index] = a, b


def _search(network, works, modes, boards, eff):
    """Search the cut points for one choice of split modes: (layers, ends, quality)."""
    layers = _layers(works, modes)
    lines = _Lines(layers)
    n = len(boards)
    if lines.total < n:
        raise FpdeepError(f"network {network.name!r} has only {lines.total} output lines "
                          f"(channel rows) to share, fewer than {n} chips")
    peff = [b.multipliers * eff for b in boards]
    clock = [b.clock_hz for b in boards]

    def greedy_fill(tau):
        ends, s = [], 0
        for i in range(n):
            e = lines.max_end(s, tau * clock[i], peff[i]) if s < lines.total else s
            if e <= s and s < lines.total:
                return None
            ends.append(e)
            s = e
        return ends if s >= lines.total else None

    def greedy_spread(lam, tau):
        ends, s = [], 0
        for i in range(n - 1):
            if s >= lines.total:
                ends.append(s)
                continue
            e_max = lines.max_end(s, tau * clock[i], peff[i])
            e_min = lines.min_end(s, lam * clock[i], peff[i])
            # Never less than a fair share of the remaining work.
            share = (lines.cum[-1] - lines.prefix(s)) * peff[i] / sum(peff[i:])
            e_min = max(e_min, lines.min_end_work(s, share))
            e = e_min if e_min <= e_max else e_max
            e = max(e, s + 1) if e_max > s else e_max
            if e <= s:
                return None
            ends.append(e)
            s = e
        ends.append(lines.total)
        return ends

    def times(ends):
        s, out = 0, []
        for i, e in enumerate(ends):
            out.append(lines.time(s, e, peff[i], clock[i]))
            s = e
        return out

    # Smallest feasible maximum time, by bisection on tau.
    lo = max(lines.cum[-1] / sum(p * c for p, c in zip(peff, clock)),
             max(lu.floor_per_row for lu in layers) / max(clock))
    hi = max(lines.cum[-1] / min(peff), max(lu.floor_per_row * lu.work.out_rows
                                             for lu in layers)) / min(clock)
    if greedy_fill(hi) is None:
        raise FpdeepError(f"network {network.name!r} cannot be spread over {n} chips")
    while hi / lo > 1 + 1e-5:
        mid = math.sqrt(lo * hi)
        if greedy_fill(mid) is None:
            lo = mid
        else:
            hi = mid
    tau = hi
    best = greedy_fill(tau)

    def quality(ends):
        t = times(ends)
        return (max(t) / (sum(t) / n), max(t))

    best_q = quality(best)
    # Spread the work: the largest threshold lambda whose remainder still fits.
    lam_lo, lam_hi = 0.0, tau
    for _ in range(40):
        lam = (lam_lo + lam_hi) / 2
        ends = greedy_spread(lam, tau)
        if ends is None:
            lam_lo = lam
            continue
        t = times(ends)
        if t[-1] > tau * (1 + 1e-9):
            lam_lo = lam            # remainder too big: chips must take more
        else:
            q = quality(ends)
            if q < best_q:
                best, best_q = ends, q
            if t[-1] < lam:
                lam_hi = lam        # remainder too small: chips take less
            else:
                lam_lo = lam
        if lam_hi - lam_lo < tau * 1e-6:
            break
    return layers, best, best_q


def allocate_engines(chip, board):
    """Give the engines of ``chip`` integer R×C arrays within the board's multipliers.

    Every engine gets the smallest array that meets a common cycle target, and the
    target is the smallest one that fits: PEs go to engines in proportion to their
    MACs, so all engines take (nearly) the same cycles per sample.

    Raises
    ------
    FpdeepError
        If the chip has more engines than multipliers.
    """
    engines = chip.engines
    budget = board.multipliers
    if not engines:
        return
    if len(engines) > budget:
        raise FpdeepError(f"chip {chip.index} ({board.name}): its {len(engines)} engines need "
                          f"at least {len(engines)} multipliers, the board has {budget}")

    def plan_for(target):
        shapes, used = [], 0
        for engine in engines:
            shape = engine.pes_for(target)
            if shape is None:
                return None
            used += shape[0] * shape[1]
            if used > budget:
                return None
            shapes.append(shape)
        return shapes

    lo = max(1, math.floor(sum(e.macs / (budget * e.efficiency) for e in engines)))
    hi = max(math.ceil(e.macs / e.efficiency) for e in engines)
    shapes = plan_for(hi)
    if shapes is None:
        raise FpdeepError(f"chip {chip.index} ({board.name}): its engines do not fit in "
                          f"{budget} multipliers")
    while lo < hi:
        mid = (lo + hi) // 2
        candidate = plan_for(mid)
        if candidate is None:
            lo = mid + 1
        else:
            hi, shapes = mid, candidate
    shapes = plan_for(hi) or shapes
    for engine, (rows, cols) in zip(engines, shapes):
        engine.rows, engine.cols = rows, cols
