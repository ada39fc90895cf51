"""Planning
--------
:func:`plan_chips` costs every way of grouping the layers into chips, choosing each
chip's engine rows (:func:`choose_rows`) by a quick estimate of its forward and
backward paths (:func:`_estimate`), simulates the best few chains, each with its
feature slots sized by :func:`choose_slots`, moves the channel boundaries of split
layers and then grows engines while the simulation improves, and keeps the fastest.

Weight balancing (architecture decision 4) as the gateware builds it: a chip whose
memory does not hold its layers with even one feature slot keeps the masters and
velocities of one of its layers (64 bits per weight; it keeps the 16-bit copies and
48-bit gradient sums) on the next chip, which holds one such layer at most
(:func:`place_masters`, front to back, for every chain costed). The link carries
the exchange once per batch, which the model times; a chip that does not fit even
so rules its chain out, and if no chain is left the error names the chip that came
nearest. Decision 4's check that the traffic fits the link is the model's: the
exchange's cycles are in the chain's cycles per sample.

The slots hold the activations that WU needs for as long as the round trip to the
end of the chain and back takes; a chip near the end needs fewer than chip 0.
:func:`choose_slots` gives each chip the fewest slots that keep the chain within
:data:`SLOT_TOLERANCE` of its speed with unlimited slots, within the chip's memory
(:func:`memory_bits` counts them, :func:`max_slots` is the most that fit).
"""

import functools
import itertools
import math
from dataclasses import replace

from .errors import FpdeepError
from .layers import gateware_layers
from .model import (TIMING, ChipSpec, SliceSpec, chip_runs, exchange_runs, max_chips, max_slots,
                    memory_bits, messages, simulate)

__all__ = ["SIMULATED_CANDIDATES", "GROUPING_LIMIT", "RANGE_LIMIT", "REFINE_ROUNDS", "ROW_LOOKAHEAD", "GROW_ROUNDS", "GROW_CHIPS", "SEARCH_BATCHES", "SIMULATED_BATCHES", "place_masters", "SLOT_TOLERANCE", "choose_slots", "choose_rows", "plan_chips", "limit"]


#: Candidate chains (cheapest by the estimate) that :func:`plan_chips` runs through
#: :func:`simulate` before choosing.
SIMULATED_CANDIDATES = 6


#: At most this many groupings of layers into chips are costed; beyond, the groupings
#: with the fewest splits come first.
GROUPING_LIMIT = 20_000


#: Channel ranges of a split layer: all compositions when there are at most this many,
#: else the even split and its neighbours.
RANGE_LIMIT = 64


#: Rounds of moving split boundaries by one channel (:func:`_refine`).
REFINE_ROUNDS = 8


#: How many larger row counts :func:`choose_rows` tries per engine and step.
ROW_LOOKAHEAD = 8


#: Rounds at most of growing one engine by the chain's simulation (:func:`_grow`),
#: and on how many chips (those with the busiest engines) each round tries.
GROW_ROUNDS = 8
GROW_CHIPS = 2


#: Mini-batches :func:`simulate` runs while choosing among chains (the fewest that
#: give a steady state), and for the chosen plan's figures.
SEARCH_BATCHES = 3


SIMULATED_BATCHES = 4


def _does_not_fit(chip, layers, board):
    """Why ``chip`` (its masters placed as they are) does not fit ``board`` with one
    feature slot, in one line."""
    need = memory_bits(chip, layers, slots=1)["total"]
    what = "one feature slot and its weights and errors"
    if chip.remote is not None:
        what += f" (its {chip.remote} masters and velocities on chip {chip.index + 1})"
    if chip.held is not None:
        what += (f" plus the {chip.held.layer.name} masters and velocities it holds for chip "
                 f"{chip.index - 1}")
    return (f"chip {chip.index} ({chip.describe()}) does not fit {board.name}: {what} need "
            f"{need / 1e6:.3g} Mb, it has {board.bram_bits / 1e6:.3g} Mb")


def _place(chip, layers, board, *, last):
    """Weight balancing for one chip, with what it holds for the chip in front: all its
    masters stay if it fits with one feature slot; else the masters and velocities of
    its layer with the fewest weights that makes it fit go to the next chip
    (``chip.remote``; not from the last chip of the chain).

    Returns
    -------
    None, or ``(shortfall, why)``: the bits it lacks even with its heaviest layer's
    masters moved, and why in one line.
    """
    movable = [] if last else sorted(chip.slices, key=lambda s: s.geometry.weights)
    for remote in [None] + [s.layer.name for s in movable]:
        chip.remote = remote
        shortfall = memory_bits(chip, layers, slots=1)["total"] - board.bram_bits
        if shortfall <= 0:
            return None
    why = _does_not_fit(chip, layers, board)
    chip.remote = None
    return shortfall, why


def place_masters(chips, layers, boards, *, chain_end=True):
    """Weight balancing as the gateware builds it, front to back: a chip that does not
    fit its board with one feature slot moves one layer's masters and velocities to
    the next chip (:func:`_place`), which then fits that as well or moves one of its
    own on. So an owner has one layer held, a holder holds one layer, and the holder
    is the next chip (``Cluster(held=...)``). Sets every chip's ``remote`` and
    ``held``.

    ``chain_end``: the last of ``chips`` ends the chain; else ``chips`` are a run of
    a chain and the last may move a layer on to the chip after them.

    Returns
    -------
    None, or :func:`_place`'s ``(shortfall, why)`` for the first chip that does not fit.
    """
    for chip in chips:
        chip.held = None
    for c, (chip, board) in enumerate(zip(chips, boards)):
        last = c == len(chips) - 1
        misfit = _place(chip, layers, board, last=last and chain_end)
        if misfit is not None:
            return misfit
        if chip.remote is not None and not last:
            chips[c + 1].held = next(s for s in chip.slices if s.layer.name == chip.remote)
    return None


#: :func:`choose_slots` keeps a chain's cycles per sample within this fraction of its
#: cycles per sample with as many slots as help.
SLOT_TOLERANCE = 0.02


def choose_slots(chips, layers, boards, *, batch_size, batches=4,
                 tolerance=SLOT_TOLERANCE, timing=TIMING):
    """Give each chip the fewest feature slots that keep the chain within ``tolerance``
    of its speed with as many slots as help.

    The reference is the chain with every chip at its :func:`max_slots` (``batch_size``
    unless its memory holds fewer: more never help, the first forward of a batch
    waits for the SGD step of the last). Each chip starts with as many slots as
    samples it must hold to keep pace, its round trip over the reference's cycles
    per sample (``latency_cycles`` of the reference run, rounded up); while the chain
    is outside ``tolerance`` of the reference, the chip whose forward path waited
    longest for a free slot (``slot_wait_per_sample``) gets one more; then every chip
    gives back slots while the chain stays within. So one slot fewer on any chip
    would take the chain outside the tolerance. Sets each chip's ``slots``.

    Returns
    -------
    (result, sizing)
        ``result`` is :func:`simulate`'s with the chosen slots; ``sizing`` has
        ``tolerance``, ``memory_caps`` (per chip, :func:`max_slots`),
        ``held_by_memory`` (the chips whose memory holds fewer than ``batch_size``),
        ``reference_cycles_per_sample`` (every chip at its cap),
        ``unlimited_cycles_per_sample`` (every chip at ``batch_size``, memory
        aside) and ``simulations`` (how many runs the choice took).

    Raises
    ------
    FpdeepError
        If a chip's memory does not hold one feature slot.
    ValueError
        If ``tolerance`` is negative.
    """
    if tolerance < 0:
        raise ValueError(f"tolerance must not be negative, not {tolerance}")
    n = len(chips)
    caps = [max_slots(chip, layers, board, batch_size=batch_size)
            for chip, board in zip(chips, boards)]
    for chip, board, cap in zip(chips, boards, caps):
        if cap < 1:
            raise FpdeepError(_does_not_fit(chip, layers, board))
    runs = {}

    def run(depths):
        key = tuple(depths)
        if key not in runs:
            runs[key] = simulate(chips, layers, batch_size=batch_size, batches=batches,
                                 slots=list(key), timing=timing)
        return runs[key]

    unlimited = run([batch_size] * n)["cycles_per_sample"]
    at_caps = run(caps)
    reference = at_caps["cycles_per_sample"]
    goal = (1 + tolerance) * reference
    depths = [max(1, min(cap, math.ceil(chip["latency_cycles"] / reference)))
              for chip, cap in zip(at_caps["chips"], caps)]
    while run(depths)["cycles_per_sample"] > goal:
        # Some chip is below its cap (at the caps the chain runs at the reference),
        # and one of those waits: with no slot waits the schedule is the reference's.
        waits = run(depths)["chips"]
        c = max((c for c in range(n) if depths[c] < caps[c]),
                key=lambda c: (waits[c]["slot_wait_per_sample"], -c))
        depths[c] += 1
    given_back = True
    while given_back:
        given_back = False
        for c in sorted(range(n), key=lambda c: (-depths[c], -c)):
            fewer = depths[:c] + [depths[c] - 1] + depths[c + 1:]
            if depths[c] > 1 and run(fewer)["cycles_per_sample"] <= goal:
                depths, given_back = fewer, True
    for chip, k in zip(chips, depths):
        chip.slots = k
    sizing = {"tolerance": tolerance, "memory_caps": caps,
              "held_by_memory": [c for c in range(n) if caps[c] < batch_size],
              "reference_cycles_per_sample": reference,
              "unlimited_cycles_per_sample": unlimited, "simulations": len(runs)}
    return run(depths), sizing


def _wire(rows, timing):
    """Cycles a message of ``rows`` (word counts) takes on the wire, first to last word."""
    if not rows:
        return 0
    words = sum(rows)
    frames = sum(-(-w // timing.max_payload) for w in rows)
    return words + frames * timing.frame_overhead + timing.rx_delay + timing.wire_latency


def _estimate(chip, layers, msgs, *, chain_first, chain_last, batch_size, timing):
    """Quick ``(forward, backward)`` cycles per sample of one chip, links at wire speed."""
    r = chip_runs(chip, layers, chain_last=chain_last, timing=timing)
    ox = timing.engine_overhead
    # The forward path streams: its parts overlap, and the slowest sets the pace.
    load = sum(msgs["act_in"]) if chain_first else _wire(msgs["act_in"], timing)
    fwd = max([load, _wire(msgs["input_out"], timing) + _wire(msgs["act_out"], timing),
               _wire(msgs["gather_in"], timing)] + [run.busy for run in r.fp])
    fwd += timing.fp_wait_tail + timing.done_cycles
    # The engines start with the loss done, or with the first error row from the link
    # (they take the rows as they come: the wire time bounds them from below).
    bwd = r.loss + timing.loss_overhead if chain_last else 0
    t = max(r.bp_span) + ox
    if not chain_last:
        t = max(t, _wire([w for w, _, _ in msgs["err_in"]], timing) + timing.receive_tail
                + r.recv_period + ox - 2)
    if msgs["err_out"]:
        t = max(t, _wire([w for w, _, _ in msgs["err_out"]], timing) + ox)
    wu_idle = max(end + timing.rmw_tail + 1 for end in r.wu_end)
    bwd += max(t, wu_idle) + 1 + timing.idle_cycles
    # A held layer's step: its sums to the holder at wire speed, the last copy back.
    exchange = 0
    if r.exchange is not None:
        exchange = (_wire(exchange_runs(r.exchange, timing=timing), timing)
                    + timing.holder_latency + _wire([1], timing) + timing.exchange_tail)
    bwd += max(r.sgd + timing.sgd_overhead, exchange) / batch_size
    return fwd, bwd


def _row_options(n):
    """Rows worth trying for ``n`` channels: the fewest rows for each tile count."""
    return sorted({-(-n // tiles) for tiles in range(1, n + 1)})


def choose_rows(chip, layers, msgs, board, *, chain_first, chain_last, batch_size,
                timing=TIMING):
    """Give the chip's engines rows so that they finish a sample in about the same
    cycles, within the board's multipliers.

    Starting from one row each, repeatedly grow the engine to the row count (among
    its next :data:`ROW_LOOKAHEAD` larger ones: an engine's cycles are not monotonic
    in its rows, a ragged last tile drains unused lanes) that lowers the chip's
    estimated cycles per sample (the slower of its forward and backward paths,
    :func:`_estimate`) the most per added PE, while the PEs and the multipliers
    outside the engines fit. Modifies ``chip``; returns its estimate
    ``(forward, backward)``, or None if even one-row engines do not fit.

    The WU engine has a second knob, its lanes (``wu_lanes``: output pixels per step,
    :class:`~fpdeep.rtl.weight_update.WeightGradientEngine`): its rows only cut the
    tiles of output channels, so a slice of few channels gains nothing from them,
    while ``L`` lanes divide every tile's steps by about ``L`` whatever the slice.
    The greedy weighs lanes against rows by the same gain per PE. Being greedy, it
    can spend a tight budget on cheap lanes of an engine that is not the bound (as
    on one chip holding several conv layers), so it runs once with and once without
    lanes and keeps the better: a chip is never slower than with rows alone. Lanes
    cost multipliers only (the memories the engine reads are as before), so the
    block RAM check of the caller is unchanged by them.
    """
    budget = board.multipliers

    def cost(fb):
        return max(fb) + 1e-3 * sum(fb)

    def estimate():
        return _estimate(chip, layers, msgs, chain_first=chain_first, chain_last=chain_last,
                         batch_size=batch_size, timing=timing)

    knobs = ("fp", "bp", "wu", "wu_lanes")
    best_found = None
    for lanes in (False, True):
        found = _grow_engines(chip, budget, estimate, cost, lanes=lanes,
                              chain_last=chain_last, timing=timing)
        if found is None:
            return None
        if best_found is None or cost(found) < cost(best_found[0]):
            best_found = (found, [{k: getattr(s, k) for k in knobs} for s in chip.slices])
    current, sizes = best_found
    for s, size in zip(chip.slices, sizes):
        for k, v in size.items():
            setattr(s, k, v)
    return current


def _grow_engines(chip, budget, estimate, cost, *, lanes, chain_last, timing):
    """The greedy of :func:`choose_rows`, with or without the WU lanes as a knob."""
    engines = []
    for s in chip.slices:
        s.fp = s.wu = s.wu_lanes = 1
        s.bp = 1 if s.has_bp else 0
        engines += [(s, "fp", _row_options(s.channels)), (s, "wu", _row_options(s.channels))]
        if lanes:
            engines.append((s, "wu_lanes", _row_options(s.geometry.wo)))
        if s.has_bp:
            engines.append((s, "bp", _row_options(s.layer.geometry.cin)))
    if chip.multipliers(last=chain_last, timing=timing) > budget:
        return None
    current = estimate()
    while True:
        best = None
        for s, kind, options in engines:
            rows = getattr(s, kind)
            before = chip.pes()
            for larger in [o for o in options if o > rows][:ROW_LOOKAHEAD]:
                setattr(s, kind, larger)
                if chip.multipliers(last=chain_last, timing=timing) > budget:
                    break
                trial = estimate()
                gain = (cost(current) - cost(trial)) / (chip.pes() - before)
                if gain > 0 and (best is None or gain > best[0]):
                    best = (gain, s, kind, larger, trial)
            setattr(s, kind, rows)
        if best is None:
            return current
        _, s, kind, rows, current = best
        setattr(s, kind, rows)


def _groupings(layers, chips):
    """Ways to cover ``layers`` with ``chips`` chips: lists of ``("layers", l0, l1)``
    (whole layers on one chip) and ``("split", l, k)`` (layer ``l`` over ``k`` chips)."""
    count = len(layers)

    def walk(l, left):
        if l == count:
            if left == 0:
                yield []
            return
        if left <= 0:
            return
        for l1 in range(l + 1, count + 1):
            for rest in walk(l1, left - 1):
                yield [("layers", l, l1)] + rest
        for k in range(2, min(left, layers[l].geometry.cout) + 1):
            for rest in walk(l + 1, left - k):
                yield [("split", l, k)] + rest

    return walk(0, chips)


def _count_groupings(layers, chips):
    """How many groupings :func:`_groupings` yields, without listing them."""
    count = len(layers)

    @functools.lru_cache(maxsize=None)
    def ways(l, left):
        if l == count:
            return 1 if left == 0 else 0
        if left <= 0:
            return 0
        total = sum(ways(l1, left - 1) for l1 in range(l + 1, count + 1))
        total += sum(ways(l + 1, left - k)
                     for k in range(2, min(left, layers[l].geometry.cout) + 1))
        return total

    return ways(0, chips)


def _best_grouping(planner, layers, chips):
    """The grouping with the least estimated slowest chip (a dynamic programme), for
    chains with too many groupings to list; None if none fits."""
    count = len(layers)

    @functools.lru_cache(maxsize=None)
    def best(l, left):
        if l == count:
            return (0, ()) if left == 0 else None
        if left <= 0:
            return None
        index = chips - left
        options = [(("layers", l, l1), l1, 1) for l1 in range(l + 1, count + 1)]
        options += [(("split", l, k), l + 1, k)
                    for k in range(2, min(left, layers[l].geometry.cout) + 1)]
        found = None
        for group, after, used in options:
            rest = best(after, left - used)
            if rest is None:
                continue
            made = planner.group(group, index)
            if made is None:
                continue
            worst = max(made[1], rest[0])
            if found is None or worst < found[0]:
                found = (worst, (group,) + rest[1])
        return found

    found = best(0, chips)
    return None if found is None else list(found[1])


def _ranges(cout, parts):
    """Candidate channel ranges of a layer split ``parts`` ways: lists of (lo, hi)."""
    def as_ranges(sizes):
        edges = [0] + list(itertools.accumulate(sizes))
        return list(zip(edges, edges[1:]))

    if math.comb(cout - 1, parts - 1) <= RANGE_LIMIT:
        for cuts in itertools.combinations(range(1, cout), parts - 1):
            edges = (0,) + cuts + (cout,)
            yield list(zip(edges, edges[1:]))
        return
    even = [cout // parts + (1 if k < cout % parts else 0) for k in range(parts)]
    yield as_ranges(even)
    for k in range(parts - 1):
        for delta in (-1, 1):
            sizes = list(even)
            sizes[k] += delta
            sizes[k + 1] -= delta
            if min(sizes) >= 1:
                yield as_ranges(sizes)


class _Planner:
    """Costs groups of chips with :func:`choose_rows` and :func:`_estimate`, memoized."""

    def __init__(self, layers, boards, batch_size, timing):
        self.layers, self.boards = layers, boards
        self.batch_size, self.timing = batch_size, timing
        self.n = len(boards)
        self.memo = {}
        self.chips = {}
        #: ``(shortfall, why)`` of the nearest miss of a chip (or run of chips) to
        #: fitting its memory, and whether a chip's engines missed its multipliers,
        #: for the error if no chain fits.
        self.misfit = None
        self.short_of_multipliers = False

    def fits(self, misfit):
        """Whether ``misfit`` (:func:`_place`'s or :func:`place_masters`'s) is None;
        else keep it if it is the nearest miss so far."""
        if misfit is not None and (self.misfit is None or misfit < self.misfit):
            self.misfit = misfit
        return misfit is None

    def chip(self, slices, index, part=0, parts=1):
        """A chip with its rows chosen and its estimate, or None if it does not fit."""
        first, last = index == 0, index == self.n - 1
        board = self.boards[index]
        key = (tuple((s.layer.index, s.lo, s.hi) for s in slices), part, parts, first,
               last, board)
        if key in self.chips:
            made = self.chips[key]
            if made is None:
                return None
            chip = replace(made[0], index=index,
                           slices=[replace(s) for s in made[0].slices])
            return chip, made[1]
        chip = ChipSpec(index, slices, part, parts, slots=1)
        self.chips[key] = None
        # Memory grows with the rows (padded tiles) only a little: one-row engines
        # that do not fit with one feature slot, even with a layer's masters moved to
        # the next chip, rule the chip out before its rows are chosen. What the chip in
        # front moves here is placed per chain (place_masters); choose_slots sizes the
        # slots of the chains simulated.
        for s in slices:
            s.fp = s.wu = s.wu_lanes = 1
            s.bp = 1 if s.has_bp else 0
        if not self.fits(_place(chip, self.layers, board, last=last)):
            return None
        msgs = messages(chip, self.layers, chain_first=first, chain_last=last,
                         timing=self.timing)
        fb = choose_rows(chip, self.layers, msgs, board, chain_first=first, chain_last=last,
                         batch_size=self.batch_size, timing=self.timing)
        chip.estimate = fb
        self.short_of_multipliers |= fb is None
        if fb is None or not self.fits(_place(chip, self.layers, board, last=last)):
            return None
        self.chips[key] = (chip, max(fb))
        return self.chip(slices, index, part, parts)

    def sized(self, chips, *, batches=SEARCH_BATCHES):
        """:func:`choose_slots` for a chain of this planner's chips: ``(result, sizing)``."""
        return choose_slots(chips, self.layers, self.boards, batch_size=self.batch_size,
                            batches=batches, timing=self.timing)

    def group(self, group, index):
        """``(chips, estimate)`` of one group starting at chip ``index``, or None."""
        key = (group, index)
        if key not in self.memo:
            self.memo[key] = self._group(group, index)
        return self.memo[key]

    def _group(self, group, index):
        layers = self.layers
        if group[0] == "layers":
            _, l0, l1 = group
            made = self.chip([SliceSpec(layers[l], 0, layers[l].geometry.cout)
                              for l in range(l0, l1)], index)
            return None if made is None else ([made[0]], made[1])
        _, l, parts = group
        best = None
        for ranges in _ranges(layers[l].geometry.cout, parts):
            chips, worst = [], 0
            for part, (lo, hi) in enumerate(ranges):
                made = self.chip([SliceSpec(layers[l], lo, hi)], index + part, part, parts)
                if made is None:
                    break
                chips.append(made[0])
                worst = max(worst, made[1])
            else:
                # The slices must hold what they move on to each other.
                if (best is None or worst < best[1]) and self.fits(place_masters(
                        chips, layers, self.boards[index:index + parts],
                        chain_end=index + parts == self.n)):
                    best = (chips, worst)
        return best


def _copy(chips):
    return [replace(chip, slices=[replace(s) for s in chip.slices]) for chip in chips]


def _refine(planner, chips):
    """Move the channel boundaries inside split layers one channel at a time while
    that lowers the simulated cycles per sample, with the chips' slots (sized by
    :func:`choose_slots`, within what the moved chips' memories hold); returns
    ``(chips, result)``."""
    chips = _copy(chips)
    result = simulate(chips, planner.layers, batch_size=planner.batch_size,
                      batches=SEARCH_BATCHES, timing=planner.timing)
    for _ in range(REFINE_ROUNDS):
        best = None
        for i in range(len(chips) - 1):
            a, b = chips[i], chips[i + 1]
            if not (a.split and b.split and b.part == a.part + 1):
                continue
            layer = a.first_layer
            for delta in (-1, 1):
                edge = a.slices[0].hi + delta
                if not a.slices[0].lo < edge < b.slices[0].hi:
                    continue
                made_a = planner.chip([SliceSpec(layer, a.slices[0].lo, edge)], a.index,
                                      a.part, a.parts)
                made_b = planner.chip([SliceSpec(layer, edge, b.slices[0].hi)], b.index,
                                      b.part, b.parts)
                if made_a is None or made_b is None:
                    continue
                trial = _copy(chips[:i] + [made_a[0], made_b[0]] + chips[i + 2:])
                if place_masters(trial, planner.layers, planner.boards) is not None:
                    continue
                for chip, t, board in zip(chips, trial, planner.boards):
                    t.slots = min(chip.slots, max_slots(t, planner.layers, board))
                trial_result = simulate(trial, planner.layers,
                                        batch_size=planner.batch_size,
                                        batches=SEARCH_BATCHES, timing=planner.timing)
                if trial_result["cycles_per_sample"] < (
                        best[1] if best else result)["cycles_per_sample"]:
                    best = (trial, trial_result)
        if best is None:
            break
        chips, result = best
    return chips, result


def _grow(planner, chips):
    """Grow engines one step at a time while that lowers the simulated cycles per
    sample; returns the chips.

    :func:`choose_rows` sizes each chip alone by the quick estimate, which sees a
    chip's paths but not how the chain's links and waits interleave them: a chip
    whose estimate is bound by its link may still wait on an engine that the chain
    would have it grow. So each round tries, on the :data:`GROW_CHIPS` chips with the
    busiest engines, every engine at its next larger row count (and WU lanes) that
    the chip's multipliers and memory hold, simulates the chain, and keeps the best,
    for :data:`GROW_ROUNDS` rounds at most.
    """
    layers, boards, timing = planner.layers, planner.boards, planner.timing
    n = len(chips)

    def run(trial):
        return simulate(trial, layers, batch_size=planner.batch_size,
                        batches=SEARCH_BATCHES, timing=timing)

    result = run(chips)
    for _ in range(GROW_ROUNDS):
        busiest = sorted(range(n), key=lambda c: -max(
            e["busy_cycles_per_sample"] for e in result["chips"][c]["engines"].values()))
        best = None
        for c in busiest[:GROW_CHIPS]:
            for k, s in enumerate(chips[c].slices):
                knobs = [("fp", s.channels), ("wu", s.channels), ("wu_lanes", s.geometry.wo)]
                # Not the BP whose rows go up a link: the model takes its rows at
                # the serializer's pace and adds only the last row's wait for the
                # link, which holds for an engine the link keeps waiting but not for
                # one it stalls mid-sample (fc1's BP of digits at 2x4 behind a full
                # link: busy 112 cycles per sample measured, 97 modelled).
                if s.has_bp and not (k == 0 and c > 0):
                    knobs.append(("bp", s.layer.geometry.cin))
                for kind, count in knobs:
                    larger = [o for o in _row_options(count) if o > getattr(s, kind)]
                    if not larger:
                        continue
                    trial = _copy(chips)
                    setattr(trial[c].slices[k], kind, larger[0])
                    if trial[c].multipliers(last=c == n - 1, timing=timing) > \
                            boards[c].multipliers:
                        continue
                    # Placed again: a holder keeps the grown slice's masters as it is now.
                    if place_masters(trial, layers, boards) is not None:
                        continue
                    caps = [max_slots(t, layers, board) for t, board in zip(trial, boards)]
                    if min(caps) < 1:
                        continue
                    for t, chip, cap in zip(trial, chips, caps):
                        t.slots = min(chip.slots, cap)
                    trial_result = run(trial)
                    if trial_result["cycles_per_sample"] < (
                            best[1] if best else result)["cycles_per_sample"]:
                        best = (trial, trial_result)
        if best is None:
            break
        chips, result = best
    for c, chip in enumerate(chips):
        msgs = messages(chip, layers, chain_first=c == 0, chain_last=c == n - 1,
                        timing=timing)
        chip.estimate = _estimate(chip, layers, msgs, chain_first=c == 0,
                                  chain_last=c == n - 1, batch_size=planner.batch_size,
                                  timing=timing)
    return chips


def plan_chips(network, boards, *, batch_size, timing=TIMING):
    """Plan ``network`` for the gateware on ``boards`` (one per chip, in chain order).

    Costs every grouping of the layers into chips (whole layers, or one layer split
    by output channels; split channel ranges chosen by the estimate), each chip with
    its engines' rows chosen by :func:`choose_rows`, by the estimate of its slower
    path; runs the :data:`SIMULATED_CANDIDATES` best through :func:`simulate`, each
    with its feature slots sized by :func:`choose_slots`, keeps the fastest, moves
    its split boundaries while the simulation improves (:func:`_refine`), grows its
    engines while the simulation improves (:func:`_grow`), and sizes its slots again
    over :data:`SIMULATED_BATCHES`.

    Returns
    -------
    (layers, chips, result, candidates, sizing)
        ``chips`` carry their ``slots``; ``result`` is :func:`simulate`'s for the
        chosen chain and ``sizing`` :func:`choose_slots`'s; ``candidates`` lists the
        chains simulated, the chosen first: ``{"chips": [description...],
        "estimate", "reference_cycles_per_sample"`` (every chip with as many slots
        as help, :func:`max_slots`), ``"slots"`` (per chip, as sized) and
        ``"cycles_per_sample"`` (with them)``}``; a chain whose reference is no
        faster than a sized one is not sized (``slots`` and ``cycles_per_sample``
        None).

    Raises
    ------
    FpdeepError
        If the network has a layer the gateware cannot build, more chips are asked
        for than it has output channels, or no chain fits the boards.
    """
    layers = gateware_layers(network)
    n = len(boards)
    most = max_chips(layers)
    if n > most:
        raise FpdeepError(f"network {network.name!r} can use at most {most} chips on the "
                          f"gateware target (a split layer gives each chip at least one "
                          f"output channel), not {n}")
    # Every layer's memory (one-row engines, whole, one feature slot) must fit
    # somewhere in the chain: splitting a layer only copies its input map, and
    # grouping shares nothing.
    need = sum(memory_bits(ChipSpec(0, [SliceSpec(layer, 0, layer.geometry.cout,
                                                  bp=1 if layer.index else 0)], slots=1),
                           layers)["total"] for layer in layers)
    have = sum(board.bram_bits for board in boards)
    if need > have:
        raise FpdeepError(f"network {network.name!r} does not fit the gateware on {n} x "
                          f"{boards[0].name}: its feature maps (one slot), errors and "
                          f"weights need at least {need / 1e6:.1f} Mb, the chips have "
                          f"{have / 1e6:.1f} Mb")
    planner = _Planner(layers, boards, batch_size, timing)
    if _count_groupings(layers, n) <= GROUPING_LIMIT:
        groupings = _groupings(layers, n)
    else:
        groupings = [g for g in [_best_grouping(planner, layers, n)] if g is not None]
    scored = []
    for grouping in groupings:
        chips, worst, index = [], 0, 0
        for group in grouping:
            made = planner.group(tuple(group), index)
            if made is None:
                break
            chips += made[0]
            worst = max(worst, made[1])
            index += len(made[0])
        else:
            chips = _copy(chips)
            if planner.fits(place_masters(chips, layers, boards)):
                scored.append((worst, len(scored), chips))
    if not scored:
        why = []
        if planner.short_of_multipliers:
            why.append("has engines within the multipliers of every chip")
        if planner.misfit is not None:
            why.append(f"fits their memories (nearest: {planner.misfit[1]})")
        names = [board.name for board in boards]
        chain = f"{n} x {names[0]}" if len(set(names)) == 1 else " | ".join(names)
        raise FpdeepError(f"network {network.name!r} does not fit the gateware on {chain}: "
                          f"no chain {', or '.join(why)}")
    scored.sort(key=lambda e: (e[0], e[1]))
    # Each candidate's cycles per sample with as many slots as help (its memories'
    # caps) bounds it with its slots sized: only those that could still win are sized.
    simulated = []
    for worst, _, chips in scored[:SIMULATED_CANDIDATES]:
        for chip, board in zip(chips, boards):
            chip.slots = max_slots(chip, layers, board, batch_size=batch_size)
        reference = simulate(chips, layers, batch_size=batch_size, batches=SEARCH_BATCHES,
                             timing=timing)["cycles_per_sample"]
        simulated.append({"chips": chips, "estimate": worst, "reference": reference})
    simulated.sort(key=lambda e: e["reference"])
    fastest = None
    for entry in simulated:
        if fastest is None or entry["reference"] < fastest["cycles_per_sample"]:
            result, _ = planner.sized(entry["chips"])
            entry["cycles_per_sample"] = result["cycles_per_sample"]
            if fastest is None or entry["cycles_per_sample"] < fastest["cycles_per_sample"]:
                fastest = entry
    chips, _ = _refine(planner, fastest["chips"])
    chips = _grow(planner, chips)
    result, sizing = planner.sized(chips, batches=SIMULATED_BATCHES)
    fastest.update(chips=chips, cycles_per_sample=result["cycles_per_sample"])
    simulated.remove(fastest)
    simulated.sort(key=lambda e: e.get("cycles_per_sample", e["reference"]))
    candidates = [{"chips": [chip.describe() for chip in e["chips"]],
                   "slots": [chip.slots for chip in e["chips"]] if "cycles_per_sample" in e
                   else None,
                   "estimate": e["estimate"], "reference_cycles_per_sample": e["reference"],
                   "cycles_per_sample": e.get("cycles_per_sample")}
                  for e in [fastest] + simulated]
    return layers, chips, result, candidates, sizing


def limit(result, chips, *, sizing=None):
    """What holds the chain back: ``(reason, bounds)``.

    ``bounds`` are cycles per sample: ``round_trip`` (the largest over the chips of a
    chip's first sample, first word to backward done, over its ``slots``: its
    forward can only run ``slots`` samples ahead), and ``busiest_chip`` (the largest
    estimated forward or backward path of a chip, :func:`_estimate`).

    With ``sizing`` (:func:`choose_slots`'s), the reason is the feature slots when
    the chain is slower than with unlimited slots by more than the tolerance (a
    chip's memory holds fewer slots than would help); without, the round trip when
    it is the larger bound and the chain runs within 10 % of it. Else the busiest
    chip, if the chain runs within 10 % of it, else ``"links and waits"``.
    """
    trips = [chip["latency_cycles"] / chip["feature_slots"] for chip in result["chips"]]
    slow, round_trip = max(enumerate(trips), key=lambda e: e[1])
    index, busiest = max(enumerate(max(chip.estimate) for chip in chips), key=lambda e: e[1])
    cps = result["cycles_per_sample"]
    bounds = {"round_trip": round_trip, "busiest_chip": busiest}
    unlimited = sizing["unlimited_cycles_per_sample"] if sizing else None
    if sizing and cps > (1 + sizing["tolerance"]) * unlimited:
        # Only a chip whose memory holds fewer slots than the batch keeps the chain
        # from its speed with unlimited slots.
        slow = max(sizing["held_by_memory"],
                   key=lambda c: (result["chips"][c]["slot_wait_per_sample"], -c))
        reason = (f"round trip: chip {slow} waits for a free feature slot "
                  f"({chips[slow].slots} slots, its memory holds at most "
                  f"{sizing['memory_caps'][slow]}); unlimited slots would give "
                  f"{unlimited:.1f} cycles per sample")
    elif sizing is None and round_trip >= busiest and cps <= 1.1 * round_trip:
        reason = (f"round trip: chip {slow} waits for a free feature slot "
                  f"({chips[slow].slots} slots, {result['chips'][slow]['latency_cycles']} "
                  f"cycles from its first word to backward done)")
    elif cps <= 1.1 * busiest:
        side = "forward" if chips[index].estimate[0] >= chips[index].estimate[1] else \
            "backward"
        reason = f"chip {index} ({chips[index].describe()}), its {side} path"
    else:
        reason = "links and waits between chips"
    return reason, bounds
