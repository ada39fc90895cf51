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

* ``"inputs"`` (linear layers only): the unit is one *input row*, one row of
  one channel of the layer's input map (``W`` inputs; the flattened input is
  channel-major, so input row ``c·H + r`` covers inputs ``[(c·H + r)·W, +W)``).
  A chip holds a contiguous run of input rows, i.e. a slice of the K = Cin·H·W
  reduction (its ``in_features``). Rows rather than whole input channels because
  an input channel of ``H·W`` inputs is too coarse a unit to balance a short
  chain (LeNet-5's fc1 has only 16 of them, each over a third of a chip's work
  at N = 47). Reason: *the output-channel split cannot go below the K-step
  floor*. A linear engine is ``R×1`` (C = 1) and walks K + 1 steps per tile of
  R outputs (the extra step adds the bias or the incoming partial sum), so an
  output-channel slice takes at least K + 1 cycles per sample however few
  outputs it holds. Split by inputs, a chip computes partial sums of *all*
  outputs over its K-slice in ``ceil(out/R)·(K_slice + 1)`` cycles and adds the
  partial sums arriving from the chip before it; the last chip of the layer
  holds the full sums and runs the post-ops. BP of the slice (the transposed
  layer) needs only the full output error, which flows back through the
  layer's chips anyway, and yields the errors of the slice's own inputs; WU
  needs the slice's inputs and the output error. Weights and their updates stay
  local (each chip owns the columns of its K-slice; the first one owns the
  biases). The price is ``out`` partial-sum words per sample forward and
  ``out`` error words back across each cut inside the layer.

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
(:func:`allocate_engines`) and reports the real cycles; a hill-climb then
moves cuts next to the slowest chip while that lowers the exact maximum.

On small chips the integer arrays round in coarse steps (on a 156-multiplier
ULX3S a LeNet-5 conv2 chip takes 150 cycles for 1 to 5 lines and 30 more per
extra line), so a cut that balances the continuous model can be far from
balanced. Where no candidate meets :data:`BALANCE_TARGET`, the chain is cut
again on exact chip cycles (:func:`_exact_cuts`, a bisection) and, where the
chain is short enough, by an exact search (:func:`_dp_cuts`): every run of
lines a chip could hold is costed exactly, and a dynamic programme finds, for
each cap on the slowest chip, the cut with the largest mean; the smallest cap
whose cut is balanced wins. :func:`_dp_modes` runs it over split modes near the
fastest candidate (one layer changed at a time, with the reason given). The
measure stays max/mean over all chips, each at its smallest exact cycles: no
chip is padded or left out.

A linear layer's floor includes its bias (or partial-sum) step: ``K + 1`` per
output-channel tile, ``K_slice + 1`` for an input slice. Conv engines keep the
ideal ``rows·Cin·kh·kw`` floor.
"""

import bisect
import math
from dataclasses import dataclass, field

import numpy as np

from .errors import FpdeepError
from .workload import workload

__all__ = ["LayerUnits", "Tile", "Engine", "ChipPart", "split_modes", "partition",
           "allocate_engines", "ENGINE_KINDS", "ROW_SPLIT_MEMORY_FRACTION",
           "INPUT_SPLIT_REASON", "BALANCE_TARGET"]

ENGINE_KINDS = ("fp", "bp", "wu")

#: The balance (max/mean chip cycles per sample) the partitioner aims to meet.
BALANCE_TARGET = 1.05

#: How many candidate plans the exact re-cut starts from, and its relative precision.
EXACT_CANDIDATES = 1
EXACT_TOLERANCE = 2e-3
#: At most this many exact chip builds per re-cut (each is one R×C allocation).
EXACT_BUILDS = 1500

#: The exact cut search (:func:`_dp_cuts`) costs at most this many runs of lines (one
#: candidate chip each) per choice of split modes; longer chains (VGG, AlexNet) keep
#: the bisection re-cut of :func:`_exact_cuts` as the last word.
DP_PAIRS = 60_000
#: Caps on the slowest chip that the exact search allows, in turn, as factors of the
#: ideal balanced time, until a cut meets the balance target; then up to 1.25 times
#: the slowest chip of the fastest candidate; then anything faster than the fastest
#: balanced candidate.
DP_CAPS = (1.15, 1.4)
#: The exact search also runs where the fastest balanced candidate is this much
#: slower than the fastest candidate.
DP_SLOWER = 1.1

#: Why a layer is split by rows, or a linear layer by inputs, for balance alone.
BALANCE_REASON = ("balance: on exact integer-array cycles, the fastest cut found with "
                  f"max/mean chip cycles within {BALANCE_TARGET} uses this split")

#: Why a linear layer is split by inputs (see the module docstring).
INPUT_SPLIT_REASON = "the output-channel split cannot go below the K-step floor"

#: A layer is split by rows when its input map exceeds this fraction of a chip's memory.
ROW_SPLIT_MEMORY_FRACTION = 0.25

ACT_BITS = 16


@dataclass(frozen=True)
class LayerUnits:
    """One layer's lines in their split order."""
    work: object        # LayerWork
    mode: str           # "channels" | "rows" | "inputs"
    reason: str
    offset: int         # global index of the first line
    count: int          # Cout·Ho; for "inputs": Cin·H (input rows)
    line_macs: int      # FP + BP + WU MACs of one line (or one input row)
    floor_per_row: int  # Cin·kh·kw: cycles of one row of a tile on a full-width array;
                        # for "inputs": W, the K-steps of one input row
    floor_extra: int = 0    # 1 for linear layers: the bias / partial-sum step

    @property
    def minor(self):
        if self.mode == "inputs":
            return 1
        return self.work.out_rows if self.mode == "channels" else self.work.out_channels

    def tile_floor(self, n):
        """Least cycles per sample of a tile of ``n`` rows (``"inputs"``: input rows)."""
        return n * self.floor_per_row + self.floor_extra

    @property
    def max_floor(self):
        """The floor of the whole layer as one tile."""
        return self.tile_floor(self.count if self.mode == "inputs" else self.work.out_rows)

    def rects(self, a, b):
        """The tiles of local lines ``[a, b)``: list of ((c0, c1), (r0, r1)).

        For ``"inputs"`` the one tile is ``((0, Cout), (0, 1))``: see :meth:`inputs`.
        """
        m = self.minor
        out = []
        if a >= b:
            return out
        if self.mode == "inputs":
            return [((0, self.work.out_channels), (0, 1))]
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

    def inputs(self, a, b):
        """Input channels ``[lo, hi)`` read (in whole or in part) by local lines ``[a, b)``."""
        if self.mode == "inputs":
            h = self.work.in_shape[1]
            return (a // h, -(-b // h))
        return (0, self.work.in_channels)

    def in_rows(self, a, b):
        """Input rows ``[lo, hi)`` (channel-major, ``c·H + r``) read by local lines ``[a, b)``."""
        if self.mode == "inputs":
            return (a, b)
        return (0, self.work.in_channels * self.work.in_shape[1])


@dataclass
class Engine:
    """One FP, BP or WU engine: an R×C PE array.

    By default it takes ``ceil(macs / (R·C))`` cycles per sample (an ideal array).
    A linear layer's FP engine is modelled step by step, as the gateware runs it:
    with ``units`` outputs and ``steps`` = K + 1 steps per tile of R of them
    (C = 1), it takes ``ceil(units / R) · steps`` cycles.
    """
    kind: str
    macs: int
    max_rows: int
    col_options: tuple
    rows: int = 0
    cols: int = 0
    efficiency: float = 1.0
    units: int = 0
    steps: int = 0

    @property
    def pes(self):
        return self.rows * self.cols

    def cycles_at(self, rows, cols):
        if self.macs == 0:
            return 0.0
        if self.steps:
            return -(-self.units // rows) * self.steps / self.efficiency
        return math.ceil(self.macs / (rows * cols)) / self.efficiency

    @property
    def cycles(self):
        return self.cycles_at(self.rows, self.cols)

    def pes_for(self, target):
        """Smallest (R, C) meeting ``target`` cycles per sample, or None."""
        if self.steps:
            tiles = int(target * self.efficiency * (1 + 1e-12) // self.steps)
            if tiles < 1:
                return None
            rows = -(-self.units // tiles)
            return (rows, 1) if rows <= self.max_rows else None
        need = math.ceil(self.macs / (target * self.efficiency))
        best = None
        for cols in self.col_options:
            rows = -(-need // cols)
            if rows <= self.max_rows and (best is None or rows * cols < best[0] * best[1]):
                best = (rows, cols)
        return best


@dataclass
class Tile:
    """One layer slice on one chip.

    ``channels`` and ``rows`` are its output channels and rows; ``inputs`` the
    input channels it reads and ``in_rows`` the rows of the input map
    (channel-major, ``c·H + r``): all of them, except for an ``"inputs"`` split.
    """
    layer: object               # LayerUnits
    channels: tuple             # [c0, c1)
    rows: tuple                 # [r0, r1)
    inputs: tuple = None        # [i0, i1); None: all input channels
    in_rows: tuple = None       # [j0, j1); None: all input rows
    engines: dict = field(default_factory=dict)

    def __post_init__(self):
        w = self.layer.work
        if self.inputs is None:
            self.inputs = (0, w.in_channels)
        if self.in_rows is None:
            self.in_rows = (self.inputs[0] * w.in_shape[1], self.inputs[1] * w.in_shape[1])

    @property
    def n_channels(self):
        return self.channels[1] - self.channels[0]

    @property
    def n_rows(self):
        return self.rows[1] - self.rows[0]

    @property
    def n_inputs(self):
        return self.inputs[1] - self.inputs[0]

    @property
    def in_features(self):
        """The slice ``[lo, hi)`` of the flattened input (Cin·H·W) it reads."""
        width = self.layer.work.in_shape[2]
        return (self.in_rows[0] * width, self.in_rows[1] * width)

    @property
    def n_in_features(self):
        return (self.in_rows[1] - self.in_rows[0]) * self.layer.work.in_shape[2]

    @property
    def lines(self):
        return self.n_channels * self.n_rows

    @property
    def k(self):
        """The reduction length of one output: Cin·kh·kw over the inputs it reads.

        For a linear layer (kernel = the whole H×W map) that is its ``in_features``.
        """
        w = self.layer.work
        if w.kind == "linear":
            return self.n_in_features
        return self.n_inputs * w.kernel[0] * w.kernel[1]

    @property
    def fp_macs(self):
        w = self.layer.work
        return self.lines * self.k * w.out_cols

    @property
    def weights(self):
        """Weights held: the slice's kernel columns, and biases of its outputs.

        An input split gives the biases to the chip holding input row 0.
        """
        bias = self.n_channels if self.in_rows[0] == 0 else 0
        return self.n_channels * self.k + bias

    def make_engines(self, efficiency):
        w = self.layer.work
        cols = tuple(d for d in range(1, w.out_cols + 1) if w.out_cols % d == 0)
        if w.kind == "linear":
            cols = (1,)
        macs = {"fp": self.fp_macs, "bp": self.fp_macs if w.index else 0, "wu": self.fp_macs}
        self.engines = {kind: Engine(kind, macs[kind], self.n_channels, cols,
                                     efficiency=efficiency[kind])
                        for kind in ENGINE_KINDS if macs[kind]}
        if w.kind == "linear":
            fp = self.engines["fp"]
            fp.units, fp.steps = self.n_channels, self.k + 1


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
            k_floor = w.macs_per_output + 1
            if len(boards) > 1 and k_floor > ideal_cycles \
                    and w.in_channels * w.in_shape[1] > 1:
                modes.append(("inputs", INPUT_SPLIT_REASON + f": one output takes K + 1 = "
                              f"{k_floor} cycles, more than the balanced {ideal_cycles:.0f} "
                              f"cycles per chip"))
            else:
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
            if a < b and lu.mode == "inputs":
                result = max(result, lu.tile_floor(b - a))
            elif a < b:
                for _, (r0, r1) in lu.rects(a, b):
                    result = max(result, lu.tile_floor(r1 - r0))
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
            r_max = int((tau_cycles - lu.floor_extra) // lu.floor_per_row)
            if r_max <= 0:
                return min(e, e_work)
            if lu.mode == "inputs":
                if a + r_max < lu.count:
                    return min(lu.offset + a + r_max, e_work)
            elif lu.mode == "channels":
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
            r_need = math.ceil((lam_cycles - lu.floor_extra) / lu.floor_per_row)
            end = None
            if r_need <= 1:
                end = a + 1
            elif lu.mode == "inputs":
                end = a + r_need
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
        extra = 1 if w.kind == "linear" else 0
        if mode == "inputs":
            count = w.in_channels * w.in_shape[1]
            per_input = w.in_shape[2]                   # W steps per input row
            line_fp = w.out_channels * per_input
            floor = per_input
        else:
            count = w.out_channels * w.out_rows
            line_fp = w.macs_per_output * w.out_cols
            floor = w.macs_per_output
        line_macs = line_fp * (2 if w.index == 0 else 3)
        layers.append(LayerUnits(w, mode, reason, offset, count, line_macs, floor, extra))
        offset += count
    return layers


def partition(network, boards, *, efficiency=None, modes=None, score=None):
    """Split ``network`` over the chain ``boards``; returns (layers, list of ChipPart).

    ``efficiency`` maps engine kind to its efficiency (default 1.0 each);
    ``modes`` optionally forces the split mode of every layer.

    ``score``, if given, rates a candidate ``(layers, chips)`` by the full model
    (images/s with link and memory limits; 0 where it does not fit). Then every
    candidate is built, including variants that split the deeper layers with the
    ``compute`` reason by channels instead (:func:`_compute_row_variants`), and of
    those that meet the balance target and fit, the best scored wins. Where none
    does, the choice is as without ``score``.

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
        # The reasoned modes, and variants: the default split for the conv layers
        # (where engines are shape-bound, in small networks on many chips,
        # whole-channel tiles can balance better), and for the linear layers the
        # output-channel split or the input split throughout. An output-channel
        # slice of a linear layer takes a multiple of K + 1 cycles, so the input
        # split can serve better even where K + 1 is below the balanced time. The
        # partitioner keeps whichever balances and runs best.
        reasoned = split_modes(works, boards, eff)
        conv_plain = [("channels", "default: weights and updates stay local")
                      if w.kind == "conv" else r for w, r in zip(works, reasoned)]
        linear_options = [lambda w, r: r,
                          lambda w, r: ("channels", "linear layer: output features")]
        if len(boards) > 1:
            linear_options.append(lambda w, r: r if r[0] == "inputs"
                                  or w.in_channels * w.in_shape[1] < 2
                                  else ("inputs", INPUT_SPLIT_REASON + f": an output-channel "
                                        f"slice takes a multiple of K + 1 = "
                                        f"{w.macs_per_output + 1} cycles"))
        candidates = []
        for conv_modes in (reasoned, conv_plain):
            for option in linear_options:
                modes_ = [option(w, r) if w.kind == "linear" else r
                          for w, r in zip(works, conv_modes)]
                if modes_ not in candidates:
                    candidates.append(modes_)
        if score is not None:
            for modes_ in _compute_row_variants(works, reasoned):
                if modes_ not in candidates:
                    candidates.append(modes_)
    # Build the candidates fastest first (by the search's estimate) and stop at the
    # first that meets the balance target.
    searched = sorted((_search(network, works, modes_, boards, eff) for modes_ in candidates),
                      key=lambda r: (r[2][1], r[2][0]))
    results = []
    for layers, ends, _ in searched:
        chips = _build(layers, ends, boards, efficiency)
        _refine(layers, chips, boards, efficiency)
        results.append(_quality(chips, boards) + (layers, chips))
        if results[-1][0] <= BALANCE_TARGET and score is None:
            break
    if min(r[0] for r in results) > BALANCE_TARGET:
        # Integer R×C arrays round some chips up by more than the continuous search
        # can see: cut again on the exact cycles, starting from the best candidates.
        for r in sorted(results, key=lambda r: r[0])[:EXACT_CANDIDATES]:
            chips = _exact_cuts(r[2], r[3], boards, efficiency)
            if chips is not None:
                results.append(_quality(chips, boards) + (r[2], chips))
    balanced = min((r[1] for r in results if r[0] <= BALANCE_TARGET), default=math.inf)
    if balanced > min(r[1] for r in results) * DP_SLOWER and len(boards) > 1:
        # Not balanced, or balanced only far slower than the fastest candidate: search
        # the cuts exactly, over nearby split modes.
        results += _dp_modes(works, boards, efficiency, results)
    if score is not None:
        # The full model decides among the balanced candidates: a row split of a
        # layer with many weights makes every chip of the layer hold them all, and
        # where they spill they stream over the links per sample.
        rated = [(score(r[2], r[3]), -r[1], -r[0], k) for k, r in enumerate(results)
                 if r[0] <= BALANCE_TARGET]
        rated = [r for r in rated if r[0] > 0]
        if rated:
            best = results[max(rated)[3]]
            return best[2], best[3]
    # Meet the balance target if any candidate does; then the fastest, and among
    # those within 1% of it the best balanced.
    meeting = [r for r in results if r[0] <= BALANCE_TARGET] or results
    best_time = min(r[1] for r in meeting)
    _, _, layers, chips = min((r for r in meeting if r[1] <= best_time * 1.01),
                              key=lambda r: r[0])
    return layers, chips


def _compute_row_variants(works, reasoned):
    """The reasoned split modes with the deepest ``k`` conv layers that are split by
    rows for the ``compute`` reason split by channels instead, for every ``k``.

    The compute reason looks at cycles alone; a row split makes every chip of the
    layer hold all of its weights, which in the deep layers (many weights, small
    maps) can cost more on the links than the shape limit costs in compute.
    """
    plain = ("channels", "default: weights and updates stay local")
    rows = [k for k, (mode, reason) in enumerate(reasoned)
            if works[k].kind == "conv" and mode == "rows" and reason.startswith("compute")]
    variants = []
    for j in range(len(rows) - 1, -1, -1):
        variants.append([plain if k in rows[j:] else r for k, r in enumerate(reasoned)])
    return variants


def _quality(chips, boards):
    """(balance, slowest time in s) on the exact cycles."""
    times = [c.cycles / boards[c.index].clock_hz for c in chips]
    return max(times) / (sum(times) / len(times)), max(times)


def _exact_cuts(layers, chips, boards, efficiency):
    """Cut the chain again on the exact (integer-array) chip cycles.

    The continuous search cannot see how R×C rounding (R at most the slice's
    channels, C dividing Wo) favours some cut points over others, and the
    hill-climb of :func:`_refine` only moves one cut at a time. This repeats the
    search on exact costs: a bisection on the slowest time T with a greedy fill
    (each chip takes the most lines that stay within T, found by bisection on
    the cut), then a bisection on a lower threshold λ that spreads the work
    (each chip takes the fewest lines that reach λ). Chip costs are memoised.
    Returns new chips if they are better balanced, else None.
    """
    n, total = len(chips), chips[-1].end
    if n < 2:
        return None
    cache = {}

    def build(i, s, e):
        key = (boards[i].name, s, e)
        chip = cache.get(key)
        if chip is None:
            if len(cache) >= EXACT_BUILDS:
                raise _OutOfBudget
            chip = cache[key] = _build_chip(layers, i, s, e, boards[i], efficiency)
        return chip

    def cost(i, s, e):
        return build(i, s, e).cycles / boards[i].clock_hz if e > s else 0.0

    def last_within(i, s, limit, hint):
        """Largest e in (s, total] with cost <= limit (cost taken as rising in e)."""
        if cost(i, s, s + 1) > limit:
            return s
        lo, hi = s + 1, total + 1           # cost(lo) <= limit; hi: assumed above
        step = max(1, hint - s)
        probe = min(total, s + step)
        while probe < total and cost(i, s, probe) <= limit:
            lo, step = probe, step * 2
            probe = min(total, s + step)
        if cost(i, s, probe) <= limit:
            return probe
        hi = probe
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if cost(i, s, mid) <= limit:
                lo = mid
            else:
                hi = mid
        return lo

    def first_reaching(i, s, limit, e_max):
        """Smallest e in (s, e_max] with cost >= limit, or e_max."""
        lo, hi = s, e_max                   # cost(hi) is the candidate
        if cost(i, s, hi) < limit:
            return e_max
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if cost(i, s, mid) >= limit:
                hi = mid
            else:
                lo = mid
        return hi

    hints = [c.end for c in chips]
    hints_ref = {"hints": hints, "best": None}
    lines = _Lines(layers)
    power = [b.multipliers * b.clock_hz for b in boards]

    def fill(limit, lam):
        ends, s = [], 0
        for i in range(n - 1):
            if s >= total:                  # feasible, but with idle chips
                ends.append(s)
                continue
            e = last_within(i, s, limit, hints[i])
            if e <= s:
                return None
            if lam > 0:
                # The fewest lines reaching lam, but never less than a fair share
                # of the remaining work.
                share = (lines.cum[-1] - lines.prefix(s)) * power[i] / sum(power[i:])
                e = min(e, max(first_reaching(i, s, lam, e), lines.min_end_work(s, share)))
            ends.append(e)
            s = e
        if s < total and cost(n - 1, s, total) > limit:
            return None
        ends.append(total)
        return ends

    def quality(ends):
        times, s = [], 0
        for i, e in enumerate(ends):
            times.append(cost(i, s, e))
            s = e
        return max(times) / (sum(times) / n), max(times)

    best, best_q = None, _quality(chips, boards)
    try:
        best = _exact_search(chips, best_q, fill, quality, cost, hints_ref)
    except _OutOfBudget:
        best = hints_ref["best"]
    if best is None:
        return None
    out, s = [], 0
    for i, e in enumerate(best):
        out.append(cache.get((boards[i].name, s, e))
                   or _build_chip(layers, i, s, e, boards[i], efficiency))
        s = e
    return out


class _OutOfBudget(Exception):
    pass


def _exact_search(chips, best_q, fill, quality, cost, state):
    """The two bisections of :func:`_exact_cuts`; the best cuts so far in ``state``."""
    n, total = len(chips), chips[-1].end
    best = None
    hi = best_q[1]
    # The slowest chip can hardly fall below the present mean.
    lo = hi / max(best_q[0], 1 + 4 * EXACT_TOLERANCE)
    while hi / lo > 1 + EXACT_TOLERANCE:
        mid = math.sqrt(lo * hi)
        ends = fill(mid, 0.0)
        if ends is None:
            lo = mid
        else:
            hi = mid
            state["hints"][:] = ends
            q = quality(ends)
            if q < best_q:
                best, best_q = ends, q
                state["best"] = best
    limit = hi
    lam_lo, lam_hi = 0.0, limit
    while lam_hi - lam_lo > limit * EXACT_TOLERANCE:
        lam = (lam_lo + lam_hi) / 2
        ends = fill(limit, lam)
        if ends is None:
            lam_lo = lam                    # the last chip overflows: take more earlier
            continue
        q = quality(ends)
        if q < best_q:
            best, best_q = ends, q
            state["best"] = best
        if cost(n - 1, ends[-2], total) < lam:
            lam_hi = lam                    # the last chip is left short: take less
        else:
            lam_lo = lam
    return best


class _ChipCosts:
    """Exact chip times of runs of lines, memoised by the shapes of their tiles.

    A chip's cycles depend only on its multipliers and the shapes of its tiles
    (layer, output channels, rows, input rows), not on where in the layer a
    tile lies, so runs of the same shapes share one allocation. The costs are
    those of :func:`allocate_engines` (both use :func:`_smallest_target`). Engines
    depend on the layer's work and these counts only, so the memo holds for any
    split modes of the same network.
    """

    def __init__(self, efficiency):
        self.efficiency = efficiency
        # At efficiency 1 cycles are integers, and a chip takes exactly its smallest
        # target: were every engine faster, the same arrays would meet target - 1.
        self.exact_targets = all(e == 1.0 for e in efficiency.values())
        self.memo = {}              # (multipliers, tile shapes) -> cycles (inf: > horizon)
        self.engines = {}           # tile shape -> its engines (arrays unassigned)
        self.needs = {}             # tile shape -> PEs it needs at each target 0..horizon
        self.segments = {}          # a run inside one layer -> its tile shapes
        self.tables = {}            # (split modes, multipliers) -> (reach, rows, arrays)
        self.horizon = 0

    def reach(self, cycles):
        """Cost runs exactly up to ``cycles`` per sample (slower ones count as inf)."""
        cycles = int(math.ceil(cycles)) + 1
        if cycles > self.horizon:
            self.horizon = max(cycles, self.horizon * 5 // 4)
            self.needs.clear()
            self.tables.clear()
            self.memo = {k: v for k, v in self.memo.items() if v != math.inf}

    def table(self, layers, lines, board, reach):
        """The runs ``[s, e)`` whose work is within ``reach`` MACs, as arrays of
        starts, ends and cycles; kept and extended between calls.

        Raises
        ------
        _OutOfBudget
            If that is more than :data:`DP_PAIRS` runs.
        """
        key = (tuple(lu.mode for lu in layers), board.multipliers)
        old_reach, rows, flat = self.tables.get(key, (-1.0, None, None))
        if reach <= old_reach:
            return flat
        total = lines.total
        if rows is None:
            rows = [[] for _ in range(total)]
        stops = []
        for s in range(total):
            # The last end whose work alone stays within reach.
            lo, hi = s + len(rows[s]), total
            target = lines.prefix(s) + reach
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if lines.prefix(mid) <= target:
                    lo = mid
                else:
                    hi = mid - 1
            stops.append(lo)
        if sum(stop - s for s, stop in enumerate(stops)) > DP_PAIRS:
            raise _OutOfBudget
        for s, stop in enumerate(stops):
            rows[s] += self.run(layers, lines, s, s + len(rows[s]) + 1, stop, board)
        starts = np.repeat(np.arange(total), [len(row) for row in rows])
        ends = np.concatenate([np.arange(s + 1, s + 1 + len(row)) for s, row in enumerate(rows)])
        flat = (starts, ends, np.array([c for row in rows for c in row], dtype=float))
        self.tables[key] = (reach, rows, flat)
        return flat

    def _segment(self, layers, li, a, b):
        """Tile shapes of local lines ``[a, b)`` of layer ``li``."""
        lu = layers[li]
        key = (li, lu.mode, 0 if lu.mode == "inputs" else a % lu.minor, b - a)
        shapes = self.segments.get(key)
        if shapes is None:
            i0, i1 = lu.in_rows(a, b)
            shapes = self.segments[key] = tuple(
                (li, c1 - c0, r1 - r0, i1 - i0) for (c0, c1), (r0, r1) in lu.rects(a, b))
        return shapes

    def run(self, layers, lines, s, e_from, e_stop, board):
        """Cycles of the runs ``[s, e)`` for e = e_from .. e_stop, in order."""
        out = []
        li = lines.layer_of(s)
        a, held = s - layers[li].offset, ()
        for e in range(e_from, e_stop + 1):
            while e > layers[li].offset + layers[li].count:
                held += self._segment(layers, li, a, layers[li].count)
                li, a = li + 1, 0
            out.append(self.cycles(layers, held + self._segment(
                layers, li, a, e - layers[li].offset), board))
        return out

    def _tile(self, layers, shape):
        """The engines of a tile shape, and the PEs they need at every target."""
        engines = self.engines.get(shape)
        if engines is None:
            li, channels, rows, in_rows = shape
            tile = Tile(layers[li], (0, channels), (0, rows), in_rows=(0, in_rows))
            tile.make_engines(self.efficiency)
            engines = self.engines[shape] = list(tile.engines.values())
        need = self.needs.get(shape)
        if need is None:
            need = self.needs[shape] = sum(_pes_needed(e, self.horizon) for e in engines)
        return engines, need

    def cycles(self, layers, shapes, board):
        """Cycles of a chip of ``board`` holding tiles of these shapes.

        The same target search as :func:`_smallest_target`, on the PEs each tile
        needs at every integer target up to the horizon (inf beyond it).
        """
        key = (board.multipliers, shapes)
        cycles = self.memo.get(key)
        if cycles is None:
            engines, need = [], 0
            for shape in shapes:
                tile_engines, tile_need = self._tile(layers, shape)
                engines += tile_engines
                need = need + tile_need
            fits = need <= board.multipliers
            target = int(np.argmax(fits))
            if not fits[target] or len(engines) > board.multipliers:
                cycles = math.inf
            elif self.exact_targets:
                cycles = float(target)      # integer cycles: the target is met exactly
            else:
                cycles = max((e.cycles_at(*e.pes_for(target)) for e in engines), default=0.0)
            self.memo[key] = cycles
        return cycles


def _pes_needed(engine, horizon):
    """PEs of :meth:`Engine.pes_for` at every integer target 0..horizon (huge: none)."""
    none = 1 << 40
    target = np.arange(horizon + 1, dtype=float)
    target[0] = 0.5                          # no target below 1 fits; avoids 1 / 0
    if engine.steps:
        tiles = np.floor_divide(target * engine.efficiency * (1 + 1e-12), engine.steps)
        rows = np.ceil(engine.units / np.maximum(tiles, 1))
        pes = np.where((tiles >= 1) & (rows <= engine.max_rows), rows, none)
    else:
        need = np.ceil(engine.macs / (target * engine.efficiency))
        pes = np.full(horizon + 1, float(none))
        for cols in engine.col_options:
            rows = np.ceil(need / cols)
            pes = np.where(rows <= engine.max_rows, np.minimum(pes, rows * cols), pes)
    pes[0] = none
    return pes.astype(np.int64)


def _dp_cuts(layers, boards, costs, cap):
    """The best cut of the chain on exact chip times, by dynamic programming.

    Every run of lines ``[s, e)`` that a chip could hold within ``cap`` seconds
    per sample is costed exactly (integer R×C arrays, :func:`allocate_engines`).
    For a cap T, the programme finds the cut into ``len(boards)`` non-empty runs,
    each within T, whose chip times have the largest sum, i.e. the largest mean.
    The caps are the distinct run times, from the smallest that covers the
    chain; the smallest whose best cut has max/mean within :data:`BALANCE_TARGET`
    gives the fastest balanced cut there is (a cut whose slowest chip takes
    t < T would have met the target at cap t already). The largest sum only
    grows with T, which lets a bisection skip caps that cannot be balanced.

    Returns ``(balance, slowest time, ends)``: the first balanced cut, else the
    best balanced of those found; None if no cut fits within ``cap``.

    Raises
    ------
    _OutOfBudget
        If the chain has more than :data:`DP_PAIRS` candidate runs.
    """
    lines = _Lines(layers)
    n, total = len(boards), lines.total
    eff = max(costs.efficiency.values())
    kinds = {}
    for board in boards:
        kinds.setdefault((board.multipliers, board.clock_hz), board)
    runs = {}
    costs.reach(max(cap * board.clock_hz for board in kinds.values()))
    for kind, board in kinds.items():
        limit = cap * board.clock_hz
        starts, ends, cycles = costs.table(layers, lines, board,
                                           limit * board.multipliers * eff * (1 + 1e-9))
        keep = cycles <= limit * (1 + 1e-12)
        runs[kind] = (starts[keep], ends[keep], cycles[keep] / board.clock_hz)
    kind_of = [(b.multipliers, b.clock_hz) for b in boards]

    def solve(c):
        masked = {}
        for kind, (S, E, T) in runs.items():
            m = T <= c
            masked[kind] = (S[m], E[m], T[m])
        best = np.full(total + 1, -np.inf)
        best[0] = 0.0
        table = [best]
        for i in range(n):
            S, E, T = masked[kind_of[i]]
            nxt = np.full(total + 1, -np.inf)
            np.maximum.at(nxt, E, best[S] + T)
            best = nxt
            table.append(best)
        return table, masked

    caps = np.unique(np.concatenate([r[2] for r in runs.values()]))
    sums = {}

    def total_at(i):
        """The largest sum of chip times of a cut within cap ``caps[i]``."""
        if i not in sums:
            sums[i] = solve(caps[i])[0][-1][total]
        return sums[i]

    if not len(caps) or not np.isfinite(total_at(len(caps) - 1)):
        return None
    lo, hi = 0, len(caps) - 1                # the smallest cap that covers the chain
    while lo < hi:
        mid = (lo + hi) // 2
        if np.isfinite(total_at(mid)):
            hi = mid
        else:
            lo = mid + 1

    def first_balanced(lo, hi, sum_hi):
        """The smallest i in [lo, hi] whose cut is balanced; sum_hi = total_at(hi).

        The largest sum only grows with the cap, so no cap above
        BALANCE_TARGET * sum_hi / n in the range can be balanced: bisect, pruning so.
        """
        while lo <= hi:
            top = BALANCE_TARGET * sum_hi / n * (1 + 1e-12)
            hi = min(hi, int(np.searchsorted(caps, top, side="right")) - 1)
            if hi < lo:
                return None
            if caps[lo] <= BALANCE_TARGET * total_at(lo) / n * (1 + 1e-12):
                return lo
            if lo == hi:
                return None
            mid = (lo + hi) // 2
            found = first_balanced(lo + 1, mid, total_at(mid))
            if found is not None:
                return found
            lo = mid + 1
        return None

    found = first_balanced(lo, len(caps) - 1, total_at(len(caps) - 1))
    if found is None:                       # the best balanced of the cuts costed
        found = min((i for i in sums if np.isfinite(sums[i])),
                    key=lambda i: caps[i] / (sums[i] / n))
    c = caps[found]
    table, masked = solve(c)
    ends, e = [], total
    for i in range(n, 0, -1):
        S, E, T = masked[kind_of[i - 1]]
        pick = np.flatnonzero(E == e)
        values = table[i - 1][S[pick]] + T[pick]
        ends.append(e)
        e = int(S[pick[np.argmax(values)]])
    return float(c / (table[-1][total] / n)), float(c), ends[::-1]


def _toggle(work, mode, ideal_cycles):
    """The other split mode of a layer, for the exact cut search, or None.

    A linear layer is offered the input split only where its output-channel
    granularity, K + 1 cycles, is coarse: above a quarter of the ideal balanced
    chip time (finer than that, the input split only lengthens the search).
    """
    if work.kind == "conv":
        if mode == "rows":
            return ("channels", "default: weights and updates stay local")
        return ("rows", BALANCE_REASON) if work.out_rows > 1 else None
    if mode == "inputs":
        return ("channels", "linear layer: output features")
    k_step = work.macs_per_output + 1
    if work.in_channels * work.in_shape[1] > 1 and k_step > ideal_cycles / 4:
        return ("inputs", f"{INPUT_SPLIT_REASON}: an output-channel slice takes a "
                f"multiple of K + 1 = {k_step} cycles; {BALANCE_REASON}")
    return None


def _dp_modes(works, boards, efficiency, results):
    """Exact cut search over split modes near the fastest candidate so far.

    Starts from the split modes of the fastest result and tries every
    single-layer change of mode (:func:`_toggle`), then changes from the best
    balanced of those, for a few rounds, with each cut found by :func:`_dp_cuts`.
    The cap on chip time rises in tiers (:data:`DP_CAPS`, times the ideal
    balanced time) until some cut meets the balance target; within a tier, every
    variant is searched below the fastest balanced cut found so far (or among
    ``results``). Returns new
    results ``(balance, time, layers, chips)``: empty if none is balanced or the
    chain is too long for the exact search.
    """
    n = len(boards)
    costs = _ChipCosts(efficiency)
    ideal = sum(w.macs for w in works) / sum(
        b.multipliers * b.clock_hz * min(efficiency.values()) for b in boards)
    ideal_cycles = ideal * sum(b.clock_hz for b in boards) / n
    fastest = min(r[1] for r in results)
    # Only cuts faster than the fastest balanced candidate are of use.
    bound = min((r[1] for r in results if r[0] <= BALANCE_TARGET), default=math.inf)
    caps = [ideal * f for f in DP_CAPS] + [max(ideal * DP_CAPS[-1], fastest) * 1.25]
    if bound < math.inf:
        caps.append(bound)
    caps = sorted({min(cap, bound * (1 - 1e-9)) for cap in caps})
    costs.reach(max(caps) * max(b.clock_hz for b in boards))
    base = [(lu.mode, lu.reason) for lu in min(results, key=lambda r: r[1:2] + r[:1])[2]]
    best, seen = None, set()                # best: (time, balance, layers, ends)
    for cap in caps:
        frontier = [base]
        for _ in range(3):
            tried = []
            for modes in frontier:
                variants = [modes] + [
                    modes[:k] + [t] + modes[k + 1:]
                    for k, (w, (mode, _)) in enumerate(zip(works, modes))
                    for t in [_toggle(w, mode, ideal_cycles)] if t is not None]
                for variant in variants:
                    key = (cap, tuple(m for m, _ in variant))
                    if key in seen:
                        continue
                    seen.add(key)
                    layers = _layers(works, variant)
                    total = layers[-1].offset + layers[-1].count
                    if total * total / n > DP_PAIRS:
                        continue
                    try:
                        found = _dp_cuts(layers, boards, costs,
                                         cap if best is None else min(cap, best[0]))
                    except _OutOfBudget:
                        continue
                    if found is None:
                        continue
                    tried.append(found + (layers,))
                    if found[0] <= BALANCE_TARGET and (best is None or found[1] < best[0]):
                        best = (found[1], found[0], layers, found[2])
            if best is not None or not tried:
                break
            frontier = [[(lu.mode, lu.reason) for lu in min(tried, key=lambda r: r[0])[3]]]
        if best is not None:
            chips = _build(best[2], best[3], boards, efficiency)
            return [_quality(chips, boards) + (best[2], chips)]
    return []


def _build_chip(layers, index, s, e, board, efficiency):
    tiles = []
    for lu in layers:
        a, b = max(s - lu.offset, 0), min(e - lu.offset, lu.count)
        for channels, rows in lu.rects(a, b):
            tile = Tile(lu, channels, rows, lu.inputs(a, b), lu.in_rows(a, b))
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
             max(lu.tile_floor(1) for lu in layers) / max(clock))
    hi = max(lines.cum[-1] / min(peff), max(lu.max_floor for lu in layers)) / min(clock)
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
    if not engines:
        return
    if len(engines) > board.multipliers:
        raise FpdeepError(f"chip {chip.index} ({board.name}): its {len(engines)} engines need "
                          f"at least {len(engines)} multipliers, the board has "
                          f"{board.multipliers}")
    shapes = _smallest_target(engines, board.multipliers)[1]
    if shapes is None:
        raise FpdeepError(f"chip {chip.index} ({board.name}): its engines do not fit in "
                          f"{board.multipliers} multipliers")
    for engine, (rows, cols) in zip(engines, shapes):
        engine.rows, engine.cols = rows, cols


def _smallest_target(engines, budget):
    """The smallest integer cycle target whose arrays fit ``budget`` PEs, and the arrays.

    Each engine takes the smallest array meeting the target (:meth:`Engine.pes_for`).
    Fitting is monotone in the target, so this is a search: from a lower bound
    (the ideal ``sum(MACs) / budget``, and no engine faster than its largest
    array) it jumps up by the PE overshoot (PEs fall about as 1 / target) until
    the arrays fit, then bisects. Returns ``(target, shapes)``, or
    ``(None, None)`` if even one PE per engine at the slowest target does not fit.
    """
    def plan_for(target):
        shapes, used = [], 0
        for engine in engines:
            shape = engine.pes_for(target)
            if shape is None:
                return None, None
            used += shape[0] * shape[1]
            shapes.append(shape)
        return shapes, used

    lo = max(1, math.floor(sum(e.macs / (budget * e.efficiency) for e in engines)),
             max(math.floor(e.cycles_at(e.max_rows, max(e.col_options))) - 1 for e in engines))
    top = math.ceil(max(e.cycles_at(1, 1) for e in engines))
    target = lo
    while True:
        shapes, used = plan_for(target)
        if shapes is not None and used <= budget:
            break
        if target >= top:
            return None, None
        lo = target + 1
        grow = used / budget if shapes is not None else 1.125
        target = min(top, max(lo, math.ceil(target * grow)))
    hi = target
    while lo < hi:
        mid = (lo + hi) // 2
        candidate, used = plan_for(mid)
        if candidate is None or used > budget:
            lo = mid + 1
        else:
            hi, shapes = mid, candidate
    return hi, shapes
