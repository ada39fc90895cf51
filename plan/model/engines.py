"""Engines: the exact busy cycles of the FP, BP and WU arrays, the loss and the SGD walk."""

from dataclasses import dataclass

from .timing import TIMING

__all__ = ["EngineRun", "array_run", "fp_tiles", "fp_waits", "wu_groups", "wu_tiles", "wu_waits", "fp_run", "bp_run", "fc_bp_tiles", "wu_run", "loss_cycles", "loss_emit_cycle", "replay_cycles", "replay_emit_cycle", "sgd_cycles", "map_sender_cycles", "exchange_runs"]


@dataclass(frozen=True)
class EngineRun:
    """One run of an engine over a sample.

    ``busy`` counts the cycles its ``busy`` output is high (from the cycle after
    ``start``); ``steps`` the steps through its array; ``rows`` the cycle (after
    ``start``) at which each used result row left, in output order, with its
    ``(channel, row)``.
    """
    busy: int
    steps: int
    rows: tuple = ()


def array_run(tiles, rows, cols, *, sink_period=1, timing=TIMING, keep_rows=False,
              enter=None, latency=None):
    """Busy cycles of an engine that feeds ``tiles`` through a ``rows × cols`` array.

    ``tiles`` is a sequence of runs ``(steps, used, count, tag)``: ``count`` tiles
    (accumulations) of ``steps`` steps each, of which ``used`` of the ``rows``
    result rows are used (lanes past the layer's channels drain in one cycle each,
    unseen). ``tag`` is the index of the run's first tile in the engine's order;
    tile ``j`` of the run is ``tag + j``. A used row leaves when the sink is ready:
    at most one per ``sink_period`` cycles.

    ``enter``, if given, maps a tile's index to its steps' waits: ``(step, cycle)``
    pairs, in step order, saying that step (counted from 0 in the tile) enters the
    array no earlier than ``cycle``, as an FP engine's step waits for its input row.

    This follows :class:`~fpdeep.rtl.systolic.SystolicArray` cycle by cycle: steps
    enter one per cycle from :attr:`GatewareTiming.first_step`; a tile's result
    rows are offered ``rows + cols + 1 + drain_delay`` cycles after its last step
    and leave one per cycle; with two result banks, a tile's last step waits until
    the tile two before it has drained. Within a run the recurrence is shift
    invariant, so once one tile moves the whole state by the same number of cycles
    the rest of the run follows in one step, exactly (without waits).

    ``latency``: the array's tile latency if not the systolic ``rows + cols + 1``
    (:class:`~fpdeep.rtl.fc.MatVecArray`'s :attr:`GatewareTiming.matvec_latency`).
    """
    latency = (rows + cols + 1 if latency is None else latency) + timing.drain_delay
    period = sink_period
    prev_last = timing.first_step - 1      # the last step of the "previous" tile
    d1 = d2 = None                         # the last two tiles' final result rows
    sink_free = 0
    steps = 0
    out = []
    for run_steps, used, count, tag in tiles:
        j = 0
        while j < count:
            before = (prev_last, d1, d2, sink_free)
            waits = enter(tag + j) if enter is not None else ()
            at, step = prev_last, -1       # the cycle step ``step`` entered
            for k, cycle in waits:
                if k < run_steps - 1:
                    at, step = max(at + k - step, cycle), k
            last = at + run_steps - 1 - step
            if waits and waits[-1][0] == run_steps - 1:
                last = max(last, waits[-1][1])
            if d2 is not None:
                last = max(last, d2 + 1)
            offered = last + latency
            if d1 is not None:
                offered = max(offered, d1 + 1)
            first = max(offered, sink_free)
            last_used = first + (used - 1) * period
            sink_free = last_used + period
            d2, d1 = d1, last_used + rows - used
            prev_last = last
            steps += run_steps
            if keep_rows:
                out += [(first + r * period, tag + j, r) for r in range(used)]
            j += 1
            after = (prev_last, d1, d2, sink_free)
            if j < count and None not in before and enter is None:
                deltas = {a - b for a, b in zip(after, before)}
                if len(deltas) == 1:
                    delta, rest = deltas.pop(), count - j
                    if keep_rows:
                        base = out[-used:]
                        for k in range(1, rest + 1):
                            out += [(cycle + k * delta, tag + j - 1 + k, r)
                                    for cycle, _, r in base]
                    prev_last += rest * delta
                    d1 += rest * delta
                    d2 += rest * delta
                    sink_free += rest * delta
                    steps += rest * run_steps
                    j = count
    return EngineRun(busy=d1, steps=steps, rows=tuple(out))


def _valid_rows(g, ky):
    """Output rows whose input row ``y + ky - ph`` is in range (at least one)."""
    lo = max(0, g.ph - ky)
    hi = min(g.ho - 1, g.h - 1 + g.ph - ky)
    return max(1, hi - lo + 1)


def _valid_taps(g, y):
    """Kernel rows with an input row in range for output row ``y``."""
    lo = max(0, g.ph - y)
    hi = min(g.kh - 1, g.h - 1 + g.ph - y)
    return max(1, hi - lo + 1)


def _runs(items):
    """Run-length encode ``(steps, used, tag)`` tiles into ``(steps, used, count, tag)``."""
    runs = []
    for steps, used, tag in items:
        if runs and runs[-1][:2] == (steps, used):
            runs[-1][2] += 1
        else:
            runs.append([steps, used, 1, tag])
    return [tuple(run) for run in runs]


def fp_tiles(g, rows, *, bias=True):
    """Tiles of :class:`~fpdeep.rtl.conv.ConvEngine` in its order: per output row
    ``y``, per tile ``t`` of ``rows`` output channels, ``cin * (valid kernel rows) *
    kw`` steps (+1 bias). Tile ``n`` is row ``n // tiles``, channel tile ``n % tiles``.

    Returned as runs for :func:`array_run`.
    """
    tiles = -(-g.cout // rows)
    return _runs((g.cin * _valid_taps(g, y) * g.kw + (1 if bias else 0),
                  min(rows, g.cout - t * rows), y * tiles + t)
                 for y in range(g.ho) for t in range(tiles))


def fp_waits(g, rows, enter):
    """The waits (for :func:`array_run`) of an FP engine whose input row ``r`` can be
    read by steps entering the array from cycle ``enter[r]`` on.

    A tile of output row ``y`` reads input row ``y + ky - ph`` for each valid ``ky``
    in turn, every input channel of it (``cin * kw`` steps); rows arrive for every
    channel at once, so only a kernel row's first step can wait.
    """
    tiles = -(-g.cout // rows)

    def waits(n):
        y = n // tiles
        lo = max(0, g.ph - y)
        hi = min(g.kh - 1, g.h - 1 + g.ph - y)
        return [((ky - lo) * g.cin * g.kw, enter[y + ky - g.ph]) for ky in range(lo, hi + 1)]
    return waits


def wu_groups(g, lanes=1):
    """Steps per output row of a WU engine with ``lanes`` pixels per step."""
    return -(-g.wo // lanes)


def wu_tiles(g, rows, lanes=1):
    """Tiles of :class:`~fpdeep.rtl.weight_update.WeightGradientEngine` in its order:
    per tile of ``rows`` output channels, one per ``(i, ky)`` of ``(valid output
    rows) * ceil(wo / lanes)`` steps, then the bias over all ``ho`` rows; tile ``n``
    is channel tile ``n // (cin * kh + 1)``. Returned as runs."""
    per = g.cin * g.kh + 1
    wo = wu_groups(g, lanes)
    return _runs((g.ho * wo if j == per - 1 else _valid_rows(g, j % g.kh) * wo,
                  min(rows, g.cout - t * rows), t * per + j)
                 for t in range(-(-g.cout // rows)) for j in range(per))


def wu_waits(g, enter, lanes=1):
    """The waits (for :func:`array_run`) of a WU engine whose error row ``y`` can be
    read by steps entering from cycle ``enter[y]``: each tile walks its valid
    output rows in order, ``ceil(wo / lanes)`` steps a row."""
    per = g.cin * g.kh + 1
    wo = wu_groups(g, lanes)

    def waits(n):
        j = n % per
        lo, hi = 0, g.ho - 1
        if j != per - 1:
            ky = j % g.kh
            lo = max(0, g.ph - ky)
            hi = min(g.ho - 1, g.h - 1 + g.ph - ky)
        return [((y - lo) * wo, enter[y]) for y in range(lo, hi + 1)]
    return waits


def fp_run(g, rows, *, timing=TIMING, enter=None, keep_rows=False):
    """The FP engine (``rows × wo``) over one sample; its sink never stalls.

    ``enter``: per input row, the first cycle (after ``start``) a step reading it
    may enter the array (:func:`fp_waits`); by default every row is there.
    """
    waits = fp_waits(g, rows, enter) if enter is not None else None
    return array_run(fp_tiles(g, rows), rows, g.wo, timing=timing, enter=waits,
                     keep_rows=keep_rows)


def bp_run(g, rows, *, sink_period=1, timing=TIMING, keep_rows=False, enter=None):
    """The BP engine (``rows × w``): the FP engine on the transposed geometry, no bias.

    ``sink_period``: cycles per row its consumer takes (:meth:`GatewareTiming.deriv`,
    or a serializer's row time). With ``keep_rows`` the run lists each row's
    ``(cycle, tile, lane)``, tiles numbered as :func:`fp_tiles` does. ``enter``: per
    error row, the first cycle a step reading it may enter (as :func:`fp_run`).
    """
    if g.is_matvec:
        return _fc_bp_run(g, rows, sink_period=sink_period, timing=timing,
                          keep_rows=keep_rows, enter=enter)
    t = g.transposed()
    waits = fp_waits(t, rows, enter) if enter is not None else None
    return array_run(fp_tiles(t, rows, bias=False), rows, t.wo, sink_period=sink_period,
                     timing=timing, keep_rows=keep_rows, enter=waits)


def fc_bp_tiles(g, rows):
    """Tiles of :class:`~fpdeep.rtl.fc.FcBackpropEngine` in its order: per input row
    ``y``, per tile ``t`` of ``rows`` input channels, ``cout`` steps; tile ``n`` is row
    ``n // tiles``, channel tile ``n % tiles`` (as :func:`fp_tiles` numbers the
    transposed convolution's). Returned as runs."""
    tiles = -(-g.cin // rows)
    return _runs((g.cout, min(rows, g.cin - t * rows), y * tiles + t)
                 for y in range(g.h) for t in range(tiles))


def _fc_bp_run(g, rows, *, sink_period, timing, keep_rows, enter):
    """:func:`bp_run` of a one-pixel-output layer, on the matrix-vector engine
    (``rows × w``): every step reads the one error row, so each tile's first step
    waits for it."""
    waits = (lambda n: [(0, enter[0])]) if enter is not None else None
    return array_run(fc_bp_tiles(g, rows), rows, g.w, sink_period=sink_period,
                     timing=timing, keep_rows=keep_rows, enter=waits,
                     latency=timing.matvec_latency)


def wu_run(g, rows, *, lanes=1, timing=TIMING, enter=None):
    """The WU engine (``rows × kw``, ``lanes`` products per PE) over one sample; its
    sink never stalls. A one-pixel-output layer's is the
    :class:`~fpdeep.rtl.weight_update.FcGradientEngine` (no lanes: its output has one
    pixel). ``enter``: per error row, as :func:`bp_run`. The lanes shorten the tiles;
    the systolic latency stays that of ``rows × kw``."""
    if g.is_matvec:
        # FcGradientEngine: one beat per (tile, gradient row), back to back from the
        # first (which waits for the errors), busy until the last.
        beats = -(-g.cout // rows) * (g.cin * g.kh + 1)
        first = timing.first_step if enter is None else max(timing.first_step, enter[0])
        return EngineRun(busy=first + beats - 1, steps=beats)
    waits = wu_waits(g, enter, lanes) if enter is not None else None
    return array_run(wu_tiles(g, rows, lanes), rows, g.kw, timing=timing, enter=waits)


def loss_cycles(classes, *, timing=TIMING):
    """Cycles :class:`~fpdeep.rtl.loss.LossUnit` is busy (its output never stalls)."""
    return timing.loss_base + timing.error_frac + classes * timing.loss_per_class


def loss_emit_cycle(classes, index, *, timing=TIMING):
    """Cycle (after ``start``) at which the loss emits class ``index``'s error: the
    division pipeline delivers one class per cycle, the last in the last busy cycle."""
    return loss_cycles(classes, timing=timing) - classes + 1 + index


def replay_cycles(classes, *, timing=TIMING):
    """Cycles :class:`~fpdeep.rtl.loss.ErrorBuffer` is busy replaying (no stalls)."""
    return classes + timing.replay_tail


def replay_emit_cycle(classes, index, *, timing=TIMING):
    """Cycle (after ``start``) at which the replay emits class ``index``'s error, the
    last in the last busy cycle."""
    return replay_cycles(classes, timing=timing) - classes + 1 + index


def sgd_cycles(g, *, timing=TIMING):
    """Busy cycles of one SGD walk over a layer (slice): one per gradient word (a
    row of ``kw`` weights, or a bias) plus one per weight, plus the drain."""
    words = g.cout * (g.cin * g.kh + 1)
    return words + g.weights + timing.sgd_drain


def map_sender_cycles(rows, width):
    """Cycles :class:`~fpdeep.rtl.rowlink.MapSender` is busy with an always-ready sink
    and every row ready: the label, then every word, one per cycle."""
    return 1 + rows * width


def exchange_runs(g, *, timing=TIMING):
    """Words of the gradient sums an owner sends its holder per batch, in the runs its
    :class:`~fpdeep.rtl.weight_update.WeightUpdateUnit` offers them back to back: the
    op word with the first master word's sums, then one run per master word (in
    :class:`~fpdeep.rtl.weight_update.WeightWalk` order: per output channel, ``cin *
    kh`` words of ``kw`` weights, then the bias), a read cycle between runs;
    ``exchange_words`` words per weight."""
    runs = [timing.exchange_words * k for k in ([g.kw] * (g.cin * g.kh) + [1]) * g.cout]
    runs[0] += 1
    return runs
