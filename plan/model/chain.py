"""The chain: both sequencers of every chip, sample by sample, over a few mini-batches."""

import itertools

from .chips import (backward_runs, chip_runs, errors_arriving, errors_replayed, fp_streamed,
                    input_shape, messages, rows_visible)
from .engines import loss_emit_cycle, replay_emit_cycle
from .links import LinkDirection, exchange_cached
from .timing import TIMING, row_header_words

__all__ = ["simulate"]


def simulate(chips, layers, *, batch_size, batches=4, slots=None, timing=TIMING):
    """Run the chain's schedule over ``batches`` mini-batches and return its figures.

    Samples are walked in order: the forward path of sample ``s`` on every chip,
    front to back, then its backward path, back to front. That order respects every
    dependency of the schedule (forward of ``s`` waits at most for backward of
    ``s - 1``; backward of ``s`` never waits for a later sample).

    Parameters
    ----------
    chips : list of ChipSpec
    layers : list of GatewareLayer
    batch_size : int
    batches : int
        At least 3; the steady state is measured between the end of the SGD steps
        of the second and of the last batch.
    slots : list of int, optional
        Feature-memory slots per chip; by default each chip's ``slots``.

    Returns
    -------
    dict
        ``cycles_per_sample`` of the cluster (steady state, SGD amortized),
        ``latency_cycles`` (chip 0, first sample, load to backward done),
        ``run_cycles`` (per ``k``, cycles from the first load to the end of
        batch ``k``'s SGD step on every chip), ``perf_cycles`` (per ``k``, the
        largest ``perf_cycles`` counter of a chip after ``k`` batches from a cold
        start: a chip counts from its first word; ``fpdeep sim`` reports it over
        the samples), ``slots`` (per chip, as simulated), and per chip in ``chips``:
        ``cycles_per_sample``, ``engines`` (busy cycles, steps and busy fraction per
        sample), ``phases_per_sample`` (cycles per sample each sequencer spends
        per phase), ``feature_slots`` (the depth simulated),
        ``feature_slots_peak`` (as ``perf_slots_peak``: the most samples forwarded
        and not yet backed), ``slots_in_use_max`` (counting the sample being
        loaded), ``slot_wait_per_sample`` (cycles per sample its forward path could
        have loaded, the sample offered, but waited for a free slot),
        ``latency_cycles`` (its first sample, first word to backward done), ``link_down``
        / ``link_up`` (on the link to the next chip: payload words, frames and wire
        symbols per sample).

    Raises
    ------
    ValueError
        If ``batches`` is below 3, or ``slots`` does not give every chip at least one.
    """
    if batches < 3:
        raise ValueError("simulate needs at least 3 batches")
    n = len(chips)
    slots = [chip.slots for chip in chips] if slots is None else list(slots)
    if len(slots) != n or not all(isinstance(k, int) and k >= 1 for k in slots):
        raise ValueError(f"slots must be a positive int per chip ({n}), not {slots!r}")
    msgs = [messages(chip, layers, chain_first=c == 0, chain_last=c == n - 1, timing=timing)
            for c, chip in enumerate(chips)]
    runs = [chip_runs(chip, layers, chain_last=c == n - 1, timing=timing)
            for c, chip in enumerate(chips)]
    _order_errors(chips, layers, msgs, runs)
    down = [LinkDirection(timing) for _ in range(n - 1)]   # chip c -> c + 1: activations
    up = [LinkDirection(timing) for _ in range(n - 1)]     # chip c + 1 -> c: errors
    # The WGT channel: it never shares the wire with ACT or ERR (see exchange_step).
    wgt = [[] for _ in range(n)]      # chip c -> c + 1 and back: (down, up) per exchange
    samples = batches * batch_size
    ox = timing.engine_overhead

    first_word = [0] * n               # the cycle each chip takes its first word
    fwd_free = [0] * n                 # first cycle the forward path may load
    idle_from = [0] * n                # first cycle of the backward path's IDLE
    load = [[0] * samples for _ in range(n)]
    fdone = [[0] * samples for _ in range(n)]
    bdone = [[0] * samples for _ in range(n)]
    sgd_done = [[] for _ in range(n)]
    unblocked = [0] * n                # when each chip could load but for its slots
    bp_stall = [0] * n                 # cycles the first layer's BP waited for the link
    backward_cache = {}                # (chip, error rows' arrival pattern): backward_runs
    slot_wait = [0] * n
    # The last chip's loss stage: the first cycle it may start the next sample (the
    # buffer freed by the backward path's BACK_START the cycle before).
    loss_free = 0
    lossed = [0] * samples             # when the buffer shows sample s's errors
    phase_names = ("load", "fp", "done", "idle", "loss", "bp", "wu_wait", "sgd")
    phases = [dict.fromkeys(phase_names, 0) for _ in range(n)]

    for s in range(samples):
        batch, index = divmod(s, batch_size)
        # ---- forward: the first cycle each chip may load sample s, then chip by chip.
        for c in range(n):
            start = fwd_free[c]
            if index == 0 and batch:
                start = max(start, sgd_done[c][batch - 1])
            unblocked[c] = start
            if s >= slots[c]:
                start = max(start, bdone[c][s - slots[c]] + 1)
            load[c][s] = start
        slot_wait[0] += load[0][s] - unblocked[0]
        arrived = gathered = None       # what chip c takes from chip c - 1 (words' cycles)
        for c, chip in enumerate(chips):
            r, p, m = runs[c], phases[c], msgs[c]
            start = load[c][s]
            if c == 0:
                words = sum(m["act_in"])
                arrived = [start + k // timing.host_words_per_cycle for k in range(words)]
                first_word[0] = load[0][0]
            elif s == 0:
                first_word[c] = arrived[0]
            # FP starts with the label, or once the whole input is in on a chip that
            # sends it on; then every part of the forward path runs at once.
            sends_input = bool(m["input_out"])
            fp_start = (arrived[-1] if sends_input else arrived[0]) + 1
            p["load"] += fp_start - start
            x_shape = input_shape(chip.first_layer, layers)
            visible = [fp_start] * x_shape[1] if sends_input else [
                arrived[(y + 1) * x_shape[0] * x_shape[2]] + timing.row_visible
                for y in range(x_shape[1])]
            idle = [arrived[-1] + 1]
            for k, sl in enumerate(chip.slices):
                enter = tuple(v - fp_start + 1 for v in visible)
                run = fp_streamed(sl.geometry, sl.fp, enter, timing)
                idle.append(fp_start + run.busy + 1)
                visible = [fp_start + v for v in rows_visible(run, sl, timing)]
            if m["gather_in"]:
                # Channels 0 .. lo from the slices in front, then row by row as own.
                lo = chip.slices[0].lo
                ow = chip.last_layer.out_shape[2]
                visible = [max(v, gathered[(y + 1) * lo * ow - 1] + timing.row_visible)
                           for y, v in enumerate(visible)]
                idle.append(gathered[-1] + 1)
            if c < n - 1:
                # The label leaves as FP starts, each row of the output map once written
                # (row y of every channel in turn); a chip that sends its input on
                # sends the label and input first, the channels so far after it.
                oc, oh, ow = m["out_shape"]
                rows = [(v + 1, ow, 0) for v in visible for _ in range(oc)]
                offer = fp_start + 1
                slot_wait[c + 1] += max(0, load[c + 1][s] - max(unblocked[c + 1], offer))
                if sends_input:
                    accepted, arrived = down[c].send([(offer, sum(m["input_out"]), 0)],
                                                     load[c + 1][s])
                    rows[0] = (max(rows[0][0], fp_start + 2, accepted[-1] + 1),) + rows[0][1:]
                    # Chip c + 1 gathers from its own FP start on.
                    gather_ready = (arrived[-1] if msgs[c + 1]["input_out"] else
                                    arrived[0]) + 2
                    accepted, gathered = down[c].send(rows, gather_ready)
                else:
                    accepted, arrived = down[c].send([(offer, 1, 0)] + rows, load[c + 1][s])
                idle.append(accepted[-1] + 1)
            t = max(idle) + timing.fp_wait_tail
            p["fp"] += t - fp_start
            fdone[c][s] = t
            p["done"] += timing.done_cycles
            fwd_free[c] = t + timing.done_cycles
        # ---- the loss stage (last chip): it sees the sample forwarded a cycle after
        # DONE and runs once the buffer is free; the buffer is full two cycles after
        # the loss unit's busy ends (see Sequencer).
        # With the backward path idle as it starts (waiting for this sample), the loss
        # writes the store itself and the backward path waits in LOSS_WAIT.
        # A slice of a split last layer runs the loss only so (see Sequencer).
        r = runs[n - 1]
        start = max(fdone[n - 1][s] + 1, loss_free)
        if chips[n - 1].split:
            start = max(start, idle_from[n - 1])
        through = idle_from[n - 1] <= start
        lossed[s] = start + r.loss + timing.loss_overhead
        loss_free = lossed[s]
        # ---- backward: from the last chip to the first; the last chip's IDLE waits
        # for the sample's errors in the buffer.
        begin = [max(idle_from[c], (lossed[s] if c == n - 1 else fdone[c][s] + 1))
                 + timing.idle_cycles for c in range(n)]
        if through:
            begin[n - 1] = start + timing.idle_cycles
        arrived = None
        for c in reversed(range(n)):
            chip, r, p = chips[c], runs[c], phases[c]
            t = begin[c]
            p["idle"] += t - idle_from[c]
            relay = []                  # rows of other slices' errors, sent on up
            bp_span, wu_end, up_offsets = r.bp_span, r.wu_end, r.up_offsets
            received = t
            rows_in, row_ends = [], []       # the error rows this chip takes, and when
            if c == n - 1 and through:
                # LOSS_WAIT: the loss's errors straight into the store, all in by
                # BACK_START (it sees the loss idle the cycle the loss stage does).
                if chip.split:
                    classes = layers[-1].geometry.cout
                    relay = [(t + loss_emit_cycle(classes, k, timing=timing),
                              1 + row_header_words(classes, 1),
                              timing.serializer_gap) for k in range(chip.slices[0].lo)]
                t += r.loss + timing.loss_overhead - 1
                p["loss"] += r.loss + timing.loss_overhead - 1
                received = t
            elif c == n - 1:
                # BACK_START with the buffer's replay: the engines take its rows as
                # they are stored; BACK_WAIT waits for the replay too.
                classes = layers[-1].geometry.cout
                if chip.split:
                    relay = [(t + replay_emit_cycle(classes, k, timing=timing) + 1,
                              1 + row_header_words(classes, 1),
                              timing.serializer_gap) for k in range(chip.slices[0].lo)]
                enter = errors_replayed(chip, classes, timing)
                if (c, enter) not in backward_cache:
                    backward_cache[c, enter] = backward_runs(chip, enter, timing)
                bp_span, wu_end, up_offsets, _ = backward_cache[c, enter]
                received = t + r.replay + ox
                # The buffer is free as the replay's busy falls; the loss sees it a
                # cycle later.
                loss_free = t + r.replay + 2
            else:
                # BACK_START right away: the engines take the error rows as they come.
                rows_in = msgs[c]["err_in_rows"]
                row_ends = [arrived[end - 1] for end in
                            itertools.accumulate(words for words, *_ in rows_in)]
                if chip.split and chip.part:
                    relay = [(end + 2, words, timing.serializer_gap)
                             for (words, kind, channel, _), end in zip(rows_in, row_ends)
                             if kind == "error" and channel < chip.slices[0].lo]
                enter = errors_arriving(chip, rows_in, row_ends, t, timing)
                if (c, enter) not in backward_cache:
                    backward_cache[c, enter] = backward_runs(chip, enter, timing)
                bp_span, wu_end, up_offsets, _ = backward_cache[c, enter]
                # BACK_WAIT sees the whole map in (the last row through the derivative).
                received = arrived[-1] + timing.receive_tail + r.recv_period + ox - 2
            # BACK_START: every BP and WU engine at once (see ChipRuns).
            wu_idle = max(t + end + timing.rmw_tail + 1 for end in wu_end)
            end = max(t + max(bp_span) + ox, received)
            if c > 0:
                offers = [t + offset for offset in up_offsets]
                # PartialSum adds the n-th incoming partial row to the n-th own one, so
                # an own row leaves no earlier than its partner is stored.
                partners = [end for (_, kind, _, _), end in zip(rows_in, row_ends)
                            if kind == "partial"]
                for k, end in enumerate(partners[:len(offers)]):
                    offers[k] = max(offers[k], end + timing.deser_latency +
                                    timing.row_visible + 1 + timing.partial_latency)
                rows = relay + [(offer, r.up_words, timing.serializer_gap) for offer in offers]
                accepted, arrived = up[c - 1].send(rows, begin[c - 1])
                if up_offsets:
                    end = max(end, accepted[-1] + ox)
                    # A link short of credits holds the serializer, which holds the
                    # BP engine's rows: its busy ends as late as its last row leaves.
                    nominal = t + up_offsets[-1]
                    before = len(accepted) - r.up_words - 1
                    if before >= 0:
                        bp_stall[c] += max(0, accepted[before] + 1 +
                                           timing.serializer_gap - nominal)
            p["bp"] += end - t
            t = end
            done = max(t, wu_idle)
            p["wu_wait"] += done - t + 1
            bdone[c][s] = done
            if index == batch_size - 1:
                finished = done + r.sgd + timing.sgd_overhead
                if r.exchange is not None:
                    end, *directions = exchange_cached(r.exchange, timing)
                    wgt[c].append(directions)
                    finished = max(finished, done + end)
                p["sgd"] += finished - done - 1
                sgd_done[c].append(finished)
                idle_from[c] = finished
            else:
                idle_from[c] = done + 1

    per = batch_size * (batches - 2)
    out = []
    for c, chip in enumerate(chips):
        r = runs[c]
        period = (sgd_done[c][-1] - sgd_done[c][1]) / per
        engines = {}
        for k, s_ in enumerate(chip.slices):
            for kind, run in (("fp", r.fp[k]), ("bp", r.bp[k]), ("wu", r.wu[k])):
                if run is None:
                    continue
                rows, cols = s_.engine_shapes()[kind]
                busy = run.busy + (bp_stall[c] / samples if kind == "bp" and k == 0 else 0)
                engines[f"{s_.layer.name}.{kind}"] = {
                    "rows": rows, "cols": cols, "pes": rows * cols,
                    "busy_cycles_per_sample": busy, "steps_per_sample": run.steps,
                    "busy_fraction": busy / period,
                    "step_fraction": run.steps / period}
        out.append({
            "cycles_per_sample": period,
            "engines": engines,
            "phases_per_sample": {k: v / samples for k, v in phases[c].items()},
            "feature_slots": slots[c],
            "loss_cycles": r.loss,
            "sgd_cycles_per_batch": r.sgd,
            "feature_slots_peak": _peak([(fdone[c][s] + 1, 1) for s in range(samples)] +
                                        [(bdone[c][s] + 1, -1) for s in range(samples)]),
            "slots_in_use_max": _peak([(load[c][s], 1) for s in range(samples)] +
                                      [(bdone[c][s] + 1, -1) for s in range(samples)]),
            "slot_wait_per_sample": slot_wait[c] / samples,
            "latency_cycles": bdone[c][0] - first_word[c],
            "link_down": _link_figures([down[c]], samples) if c < n - 1 else None,
            "link_up": _link_figures([up[c]], samples) if c < n - 1 else None,
            "wgt_down": (_link_figures([d for d, _ in wgt[c]], batches, "batch")
                         if wgt[c] else None),
            "wgt_up": (_link_figures([u for _, u in wgt[c]], batches, "batch")
                       if wgt[c] else None),
        })
    first = load[0][0]
    return {"cycles_per_sample": max(chip["cycles_per_sample"] for chip in out),
            "latency_cycles": bdone[0][0] - first,
            "run_cycles": {k + 1: max(sgd_done[c][k] for c in range(n)) - first
                           for k in range(batches)},
            "perf_cycles": {k + 1: max(sgd_done[c][k] - first_word[c] - 1 for c in range(n))
                            for k in range(batches)},
            "slots": slots,
            "chips": out}


def _order_errors(chips, layers, msgs, runs):
    """Put each chip's error rows in the order they travel: relayed rows in the order
    they arrived (classes in order from the loss), then BP rows in the engine's
    output order (tile, row, lane)."""
    n = len(chips)
    for c in reversed(range(1, n)):
        chip = chips[c]
        relay = []
        if chip.split and chip.part:
            lo = chip.slices[0].lo
            if c == n - 1:
                classes = layers[-1].geometry.cout
                relay = [(1 + row_header_words(classes, 1), "error", k, 0) for k in range(lo)]
            else:
                relay = [row for row in msgs[c]["err_in_rows"]
                         if row[1] == "error" and row[2] < lo]
        kind = "partial" if chip.split and chip.part else "error"
        bp = [(runs[c].up_words, kind, channel, y) for channel, y in runs[c].up_rows]
        rows = relay + bp
        if sorted(row[:3] for row in rows) != sorted(msgs[c]["err_out"]):
            raise AssertionError(f"chip {c}: error rows out of step with the message plan")
        msgs[c]["err_out"] = [row[:3] for row in rows]
        msgs[c - 1]["err_in"] = [row[:3] for row in rows]
        msgs[c - 1]["err_in_rows"] = rows


def _peak(events):
    """Most intervals open at once; ``events`` are ``(cycle, +1 / -1)``, ends first on ties."""
    level = peak = 0
    for _, delta in sorted(events, key=lambda e: (e[0], e[1])):
        level += delta
        peak = max(peak, level)
    return peak


def _link_figures(links, count, per="sample"):
    """Payload words, frames and wire symbols of ``links`` (directions), per ``count``."""
    return {f"{what}_per_{per}": sum(getattr(link, what) for link in links) / count
            for what in ("words", "frames", "symbols")}
