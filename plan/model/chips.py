"""Chips: what a chip holds (slices, engines, memory) and its engines' runs over a sample."""

import functools
from dataclasses import dataclass

from ..layers import ConvGeometry, GatewareLayer
from .engines import (bp_run, fp_run, loss_cycles, replay_cycles, replay_emit_cycle,
                      sgd_cycles, wu_run)
from .timing import TIMING, row_header_words

__all__ = ["SliceSpec", "DEFAULT_SLOTS", "ChipSpec", "input_shape", "messages", "fp_streamed", "rows_visible", "ChipRuns", "backward_runs", "errors_arriving", "errors_replayed", "chip_runs", "max_chips", "feature_bits", "memory_bits", "master_bits", "max_slots"]


@dataclass
class SliceSpec:
    """Output channels ``[lo, hi)`` of a layer on one chip, and the rows of its engines."""
    layer: GatewareLayer
    lo: int
    hi: int
    fp: int = 1
    bp: int = 0          # 0 for the network's first layer, which has no BP
    wu: int = 1
    #: Output pixels per step of the WU engine (its ``lanes``): ``wu * kw * wu_lanes`` PEs.
    wu_lanes: int = 1

    @property
    def geometry(self):
        return self.layer.geometry.channels(self.lo, self.hi)

    @property
    def has_bp(self):
        return self.layer.index > 0

    @property
    def channels(self):
        return self.hi - self.lo

    def pes(self):
        g = self.geometry
        return (self.fp * g.wo + self.wu * g.kw * self.wu_lanes
                + (self.bp * g.w if self.has_bp else 0))

    def engine_shapes(self):
        """``{kind: (rows, cols)}`` of the engines as built."""
        g = self.geometry
        shapes = {"fp": (self.fp, g.wo), "wu": (self.wu, g.kw * self.wu_lanes)}
        if self.has_bp:
            shapes["bp"] = (self.bp, g.w)
        return shapes


#: Feature-memory slots of a chip nobody sized (``TrainingCore(slots=2)``).
DEFAULT_SLOTS = 2


@dataclass
class ChipSpec:
    """One chip: whole layers (``parts == 1``), or slice ``part`` of ``parts`` of a layer.

    ``slots`` is the depth of its feature memories: how many samples its forward path
    may run ahead of its backward path (:func:`choose_slots` sizes it). ``remote`` and
    ``held`` are its weight balancing (:func:`place_masters` sets them).
    """
    index: int
    slices: list
    part: int = 0
    parts: int = 1
    #: ``(forward, backward)`` cycles per sample by :func:`_estimate`, once planned.
    estimate: tuple = None
    slots: int = DEFAULT_SLOTS
    #: The name of its layer whose masters and velocities the next chip holds, or None.
    remote: str = None
    #: The previous chip's :class:`SliceSpec` whose masters and velocities it holds.
    held: SliceSpec = None

    @property
    def split(self):
        return self.parts > 1

    @property
    def first_layer(self):
        return self.slices[0].layer

    @property
    def last_layer(self):
        return self.slices[-1].layer

    def pes(self):
        return sum(s.pes() for s in self.slices)

    def multipliers(self, *, last, timing=TIMING):
        """PEs plus the multipliers outside the engines."""
        return (self.pes() + timing.reserved_multipliers_per_layer * len(self.slices)
                + (timing.reserved_multipliers_loss if last else 0))

    def describe(self):
        if self.split:
            s = self.slices[0]
            return f"{s.layer.name}[{s.lo}:{s.hi}]"
        return "+".join(s.layer.name for s in self.slices)


def _map_rows(shape):
    """Word counts of a map's rows, as :class:`~fpdeep.rtl.rowlink.MapSender` sends them."""
    c, h, w = shape
    return [w] * (c * h)


def input_shape(layer, layers):
    g = layer.geometry
    return (g.cin, g.h, g.w) if layer.index == 0 else layers[layer.index - 1].out_shape


def messages(chip, layers, *, chain_first, chain_last, timing=TIMING):
    """The traffic of one chip, per sample.

    Returns a dict of row lists: ``act_in`` (the label and input map), ``gather_in``
    (on a slice chip after the first, the slices before it, after the input),
    ``input_out`` (on a slice chip with more of the layer behind it, its input map,
    sent on as its FP starts) and ``act_out`` (the output map of ``out_shape``, sent
    as its rows are written) as word counts per row, the label with the first of a
    message; ``err_in`` and ``err_out`` (``(words, kind, channel)`` per framed row,
    kind ``"error"`` or ``"partial"``).
    """
    first, last = chip.first_layer, chip.last_layer
    x_rows = _map_rows(input_shape(first, layers))
    oc, oh, ow = first.out_shape

    def labelled(rows):
        return [1 + rows[0]] + rows[1:]

    def slices_before(hi):
        return _map_rows((hi, oh, ow)) if hi else []

    def up_rows(part, lo):
        """What slice ``part`` (first channel ``lo``) of ``first`` sends up."""
        rows = [(ow + row_header_words(oc, oh), "error", ch) for ch in range(lo)
                for _ in range(oh)] if part else []
        if first.index > 0:
            g = first.geometry
            words = (timing.partial_words * g.w + 2 if part else
                     g.w + row_header_words(g.cin, g.h))
            rows += [(words, "partial" if part else "error", ch)
                     for ch in range(g.cin) for _ in range(g.h)]
        return rows

    lo, hi = chip.slices[0].lo, chip.slices[0].hi
    lc, lh, lw = last.out_shape
    out_shape = (hi, lh, lw) if chip.split else last.out_shape
    act_in = labelled(x_rows)
    gather_in = slices_before(lo) if chip.split else []
    input_out = []
    if chain_last:
        act_out, err_in = [], []
    elif chip.split and chip.part < chip.parts - 1:
        input_out = labelled(x_rows)
        act_out = slices_before(hi)
        err_in = up_rows(chip.part + 1, hi)
    else:
        act_out = labelled(_map_rows(last.out_shape))
        err_in = [(lw + row_header_words(lc, lh), "error", ch) for ch in range(lc)
                  for _ in range(lh)]
    err_out = up_rows(chip.part if chip.split else 0, lo if chip.split else 0)
    if first.index == 0 and not (chip.split and chip.part):
        err_out = []
    return {"act_in": act_in, "gather_in": gather_in, "input_out": input_out,
            "act_out": act_out, "out_shape": out_shape, "err_in": err_in, "err_out": err_out}


@functools.lru_cache(maxsize=None)
def _fp_cached(g, rows, timing):
    return fp_run(g, rows, timing=timing)


@functools.lru_cache(maxsize=None)
def _wu_cached(g, rows, timing, enter, lanes=1):
    return wu_run(g, rows, lanes=lanes, timing=timing, enter=enter)


@functools.lru_cache(maxsize=None)
def _bp_cached(g, rows, sink, timing, keep_rows=False, enter=None):
    return bp_run(g, rows, sink_period=sink, timing=timing, keep_rows=keep_rows, enter=enter)


@functools.lru_cache(maxsize=None)
def fp_streamed(g, rows, enter, timing):
    """:func:`fp_run` with its input rows entering from ``enter`` (a tuple); the
    pattern repeats from sample to sample, so a cache saves most of the walks."""
    return fp_run(g, rows, timing=timing, enter=enter, keep_rows=True)


def rows_visible(run, sl, timing):
    """Per row of a slice's FP output map (pooled if it pools), the cycle after
    ``start`` from which the next reader sees it: its last channel's row written,
    and with pooling the odd row's pooled row after it."""
    g = sl.geometry
    tiles = -(-g.cout // sl.fp)
    done = [0] * g.ho
    for cycle, n, _ in run.rows:
        done[n // tiles] = max(done[n // tiles], cycle)
    if sl.layer.pool:
        return [done[2 * y + 1] + timing.pool_delay + timing.row_visible
                for y in range(g.ho // 2)]
    return [cycle + timing.row_visible for cycle in done]


@dataclass
class ChipRuns:
    """The engine runs of one chip, and what its backward path sends up.

    The backward path starts every BP and WU engine at once (BACK_START); each
    takes its error rows as the BP behind it stores them, so its timing is that of
    the chip alone: ``bp_span`` and ``wu_end`` count from BACK_START. ``fp``, ``bp``
    and ``wu`` are the engines' runs with every input there (their busy counters
    leave out waits for rows).
    """
    fp: list                  # per slice: EngineRun
    bp: list                  # per slice: EngineRun or None
    bp_span: list             # per slice: until BP is idle and its sink took the last row
    wu: list                  # per slice: EngineRun
    wu_end: list              # per slice: the WU engine's busy end, waits included
    sgd: int                  # busy cycles of the SGD walk (the slowest local layer's)
    exchange: ConvGeometry    # the layer (slice) whose masters the next chip holds, or None
    loss: int                 # 0 unless the chip takes the loss
    up_offsets: list          # per BP row sent up: cycle after BACK_START it is offered
    up_words: int
    up_rows: list             # per BP row sent up: (channel, row), the BP's output order
    recv_period: int          # period of the derivative behind the link
    replay: int = 0           # the error buffer's replay, with the loss


def _errors_stored(run, s, prev, timing):
    """Per row of ``prev``'s conv output map (the error store in front of slice ``s``'s
    BP), the first cycle after BACK_START that a step reading it may enter an
    engine: the derivative takes each BP row as it leaves, a row is complete with
    its last channel, and the store shows it ``row_visible`` later."""
    g = s.geometry.transposed()
    tiles = -(-g.cout // s.bp)
    post = prev.relu or prev.pool
    rows_out = 2 if prev.pool else 1
    delay = timing.deriv_latency if post else 0
    written = {}
    for cycle, n, lane in run.rows:
        channel, y = n % tiles * s.bp + lane, n // tiles
        if channel == g.cout - 1:
            for k in range(rows_out):
                written[y * rows_out + k] = cycle + delay + k
    return tuple(written[r] + timing.row_visible + 1 for r in range(len(written)))


def backward_runs(chip, enter, timing):
    """A chip's backward engines from BACK_START, its last slice's error rows entering
    from ``enter`` (``None``: all in): per slice the BP span and the WU busy end, and
    for the rows its first BP sends up, their offsets and ``(channel, row)``."""
    bp_span, wu_end = [], []
    up_offsets, up_rows = [], []
    for k in reversed(range(len(chip.slices))):
        s = chip.slices[k]
        g = s.geometry
        wu_end.append(_wu_cached(g, s.wu, timing, enter, s.wu_lanes).busy)
        if not s.has_bp:
            bp_span.append(0)
            continue
        if k == 0:
            # Into the serializer (via PartialSum on a chip that adds the slices after it).
            run = _bp_cached(g, s.bp, _bp_sink(chip, k, timing), timing, True, enter)
            adds = chip.split and chip.part < chip.parts - 1
            delay = 1 + (timing.partial_latency if adds else 0)
            up_offsets = [cycle + delay for cycle, _, _ in run.rows]
            tiles = -(-g.cin // s.bp)
            up_rows = [(n % tiles * s.bp + lane, n // tiles) for _, n, lane in run.rows]
            bp_span.append(run.busy)
        else:
            # BACK_WAIT also waits for the derivative to take the last row and be
            # ready again, ``period`` cycles after.
            prev = chip.slices[k - 1].layer
            period = _bp_sink(chip, k, timing)
            run = _bp_cached(g, s.bp, period, timing, True, enter)
            bp_span.append(max(run.busy, run.rows[-1][0] + period - 1))
            enter = _errors_stored(run, s, prev, timing)
    return bp_span[::-1], wu_end[::-1], up_offsets, up_rows


def _up_words(chip, timing):
    """Words per row that the chip's first BP sends up (raw partial sums on a slice
    chip after the first of its layer)."""
    g = chip.slices[0].geometry
    raw = chip.split and chip.part > 0
    return timing.partial_words * g.w + 2 if raw else g.w + row_header_words(g.cin, g.h)


def _bp_sink(chip, k, timing):
    """Cycles per row the consumer of slice ``k``'s BP takes: the serializer up the
    link for the chip's first slice, else the derivative of the layer in front."""
    if k == 0:
        return _up_words(chip, timing) + timing.serializer_gap
    prev = chip.slices[k - 1].layer
    return timing.deriv(prev.relu, prev.pool)


def errors_arriving(chip, rows, row_ends, start, timing):
    """``enter`` (for :func:`backward_runs`) of the error rows a chip takes from the link:
    ``rows`` are the received rows in order, ``(words, kind, channel, row)``, and
    ``row_ends`` the cycle each one's last word was taken. A row leaves the
    deserializer into the last layer's derivative, then its store; ``start`` is
    BACK_START."""
    last = chip.last_layer
    hi = chip.slices[-1].hi
    post = last.relu or last.pool
    rows_out = 2 if last.pool else 1
    delay = timing.deser_latency + (timing.deriv_latency if post else 0)
    written = {}
    for (_, kind, channel, row), end in zip(rows, row_ends):
        if kind == "error" and channel == hi - 1:
            for k in range(rows_out):
                written[row * rows_out + k] = end + delay + k
    return tuple(written[r] + timing.row_visible + 1 - start for r in range(len(written)))


def errors_replayed(chip, classes, timing):
    """``enter`` (for :func:`backward_runs`) of the error map the loss's buffer replays
    from BACK_START on the chip that ends the chain (a 1x1 map: one row, complete with
    the last class; it passes the last layer's derivative into its store)."""
    last = chip.last_layer
    post = last.relu or last.pool
    rows_out = 2 if last.pool else 1
    end = replay_emit_cycle(classes, classes - 1, timing=timing) + (
        timing.deriv_latency if post else 0)
    return tuple(end + k + timing.row_visible + 1 for k in range(rows_out))


def chip_runs(chip, layers, *, chain_last, timing):
    fp = [_fp_cached(s.geometry, s.fp, timing) for s in chip.slices]
    wu = [_wu_cached(s.geometry, s.wu, timing, None, s.wu_lanes) for s in chip.slices]
    bp = []
    for k, s in enumerate(chip.slices):
        if not s.has_bp:
            bp.append(None)
            continue
        bp.append(_bp_cached(s.geometry, s.bp, _bp_sink(chip, k, timing), timing))
    bp_span, wu_end, up_offsets, up_rows = backward_runs(chip, None, timing)
    sgd = max((sgd_cycles(s.geometry, timing=timing) for s in chip.slices
               if s.layer.name != chip.remote), default=0)
    exchange = next((s.geometry for s in chip.slices if s.layer.name == chip.remote), None)
    classes = layers[-1].geometry.cout
    loss = loss_cycles(classes, timing=timing) if chain_last else 0
    replay = replay_cycles(classes, timing=timing) if chain_last else 0
    last = chip.last_layer
    return ChipRuns(fp, bp, bp_span, wu, wu_end, sgd, exchange, loss, up_offsets,
                    _up_words(chip, timing), up_rows, timing.deriv(last.relu, last.pool),
                    replay)


def max_chips(layers):
    """Most chips the gateware can spread ``layers`` over: one output channel each."""
    return sum(layer.geometry.cout for layer in layers)


def feature_bits(chip, layers):
    """Block RAM bits of one feature slot of a chip: one sample's copy of its first
    layer's input map, each local layer's output map (and the pooled map), and on a
    slice chip the slices of the chips before it (``TrainingCore``'s feature
    memories, which hold ``slots`` of these)."""
    bits = 0
    for k, s in enumerate(chip.slices):
        g = s.geometry
        if k == 0:
            c, h, w = input_shape(s.layer, layers)
            bits += c * h * w * 16
        bits += g.cout * g.ho * g.wo * 16
        if s.layer.pool:
            bits += g.cout * (g.ho // 2) * (g.wo // 2) * 16
    if chip.split:
        _, h, w = chip.first_layer.out_shape
        bits += chip.slices[0].lo * h * w * 16
    return bits


def memory_bits(chip, layers, *, slots=None):
    """Block RAM bits one chip needs, roughly, by use.

    ``features``: ``slots`` (by default the chip's) feature slots
    (:func:`feature_bits`); ``errors``: the error stores (lane and row layouts) and,
    on the chip that ends the chain, the loss's error buffer (the next sample's
    errors, while BP and WU read the store's); ``weights``: per weight the FP and BP
    16-bit copies and the 48-bit gradient sum, and unless the layer is the chip's ``remote`` one its masters and velocities
    (:func:`master_bits`); ``relay``: on a slice chip after the first of a layer with
    BP, the 48-bit partial sums it adds; ``held``: the masters and velocities it holds
    for the previous chip.
    """
    slots = chip.slots if slots is None else slots
    out = dict.fromkeys(("features", "errors", "weights", "relay", "held"), 0)
    out["features"] = feature_bits(chip, layers) * slots
    for s in chip.slices:
        g = s.geometry
        maps = g.cout * g.ho * g.wo
        out["errors"] += -(-g.cout // s.wu) * s.wu * g.ho * g.wo * 16
        if s.has_bp:
            out["errors"] += maps * 16
            out["weights"] += -(-g.cin // s.bp) * s.bp * g.cout * g.kh * g.kw * 16
        out["weights"] += -(-g.cout // s.fp) * s.fp * (g.cin * g.kh * g.kw + 1) * 16
        # The gradient sums; an FC slice's lanes round its channels up to wu_rows.
        sums = -(-g.cout // s.wu) * s.wu if g.is_matvec else g.cout
        out["weights"] += sums * (g.cin * g.kh + 1) * g.kw * 48
        if s.layer.name != chip.remote:
            out["weights"] += master_bits(g)
    last = chip.slices[-1]
    if last.layer.index == len(layers) - 1 and last.hi == last.layer.geometry.cout:
        out["errors"] += last.layer.geometry.cout * 16       # the loss's error buffer
    if chip.split and chip.first_layer.index > 0:
        g = chip.first_layer.geometry
        out["relay"] += g.cin * g.h * g.w * 48
    if chip.held is not None:
        out["held"] = master_bits(chip.held.geometry)
    out["total"] = sum(out.values())
    return out


def master_bits(g):
    """Bits of a layer's (slice's) 32-bit masters and 32-bit velocities: ``kw`` per
    gradient word, the bias padded to a word, as
    :class:`~fpdeep.rtl.weight_update.WeightUpdateUnit` and
    :class:`~fpdeep.rtl.weight_holder.WeightHolder` store them."""
    return g.cout * (g.cin * g.kh + 1) * g.kw * (32 + 32)


def max_slots(chip, layers, board, *, batch_size=None):
    """The most feature slots that fit the chip's memory with everything else it holds
    (0 if not even one does); at most ``batch_size`` when given, as more never help."""
    rest = memory_bits(chip, layers, slots=0)["total"]
    fit = max(0, (board.bram_bits - rest) // feature_bits(chip, layers))
    return fit if batch_size is None else min(fit, batch_size)
