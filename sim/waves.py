"""VCD and GTKWave save files with signals grouped by chip and by engine, and by link."""

import contextlib
from pathlib import Path


__all__ = ["write_waves", "core_traces", "link_traces"]


def core_traces(core):
    """``{group: signals}`` of an elaborated :class:`~fpdeep.rtl.core.TrainingCore`."""
    groups = {"host": [core.host.busy, core.host.samples, core.host.correct,
                       core.host.batches, core.host.saturations, core.host.loss_sum,
                       core.host.sample],
              # The two sequencers run different samples at once (states by name).
              "pipeline": [core.forward_fsm.state, core.backward_fsm.state,
                           core.perf_slots_peak]}
    if core.loss_unit is not None:
        # The loss stage, between FP and BP on the chip that ends the chain: its FSM,
        # the loss unit, and the error buffer the backward path replays.
        seq, buffer = core.sequencer, core.loss_buffer
        groups["loss"] = [seq.loss_fsm.state, seq.loss.start, seq.loss.busy,
                          seq.through, core.loss_unit.o, core.loss_unit.correct,
                          core.loss_unit.loss_valid, core.loss_unit.loss, seq.replay.start,
                          buffer.busy, buffer.o]
    for name, engine in core.engines_by_name.items():
        signals = [engine.start, engine.busy, engine.step]
        if hasattr(engine, "o"):
            signals.append(engine.o)
        groups[name] = signals
    for spec, unit in zip(core.specs, core.units):
        groups[f"{spec.name}.update"] = [unit.start_sample, unit.start_update, unit.busy,
                                         unit.saturations]
    return groups


def link_traces(link):
    """``{direction: {group: signals}}`` of an elaborated
    :class:`~fpdeep.rtl.link.endpoint.LinkPair` between chips ``k`` (end ``a``) and
    ``k + 1`` (``b``): ``down`` is sent by ``a`` and received by ``b``, ``up`` the
    reverse. Each direction has the groups ``transmit``, ``receive``, ``replay`` and
    ``credits`` (one subgroup per virtual channel)."""
    from ..rtl.link.channels import VirtualChannel
    a, b = link.endpoints
    names = {channel.value: channel.name.lower() for channel in VirtualChannel}
    vcs = [names.get(v, f"vc{v}") for v in range(link.config.vcs)]
    directions = {}
    for direction, sender, receiver in (("down", a, b), ("up", b, a)):
        tx, rx = sender.transmitter, receiver.receiver
        ts, rs = tx.trace_signals, rx.trace_signals
        directions[direction] = {
            "transmit": [ts["send_data"], ts["send_ctrl"], ts["start_seq"], ts["header"],
                         ts["next_seq"], ts["taken"], ts["pack_vc"],
                         *(counter.sent for counter in ts["credit"]), tx.o],
            "receive": [rs["good"], rs["bad"], rx.frames, rx.bad_frames, rx.duplicates,
                        rs["expected"], rx.o.valid, rx.o.payload, receiver.buffers.overflow],
            # A NAK is asked for by the receiving end, then arrives at the sender in
            # the peer state its own receiver decodes (peer.nak with peer_valid).
            "replay": [ts["resend"], tx.replays, ts["timed_out"], tx.timeouts,
                       rs["schedule_nak"], rx.nak, tx.peer_valid, tx.peer, ts["ack_ptr"],
                       ts["tx_ptr"]],
            "credits": {vc: [counter.available, counter.credits, counter.returned,
                             receiver.buffers.freed[v]]
                        for v, (vc, counter) in enumerate(zip(vcs, ts["credit"]))},
        }
    return directions


@contextlib.contextmanager
def write_waves(sim, top, vcd_path):
    """Record ``sim`` into ``vcd_path`` and a ``.gtkw`` beside it, one group per chip and link.

    ``top`` is a :class:`~fpdeep.rtl.core.TrainingCore` or a
    :class:`~fpdeep.rtl.cluster.Cluster`; a cluster's link ``k`` (between chips ``k``
    and ``k + 1``) gets the groups ``link{k}.down`` and ``link{k}.up``
    (:func:`link_traces`), after ``chip{k}``. Both files are written under temporary
    names and renamed only when the simulation finishes
    (:func:`fpdeep.plan.files.atomic_output`).
    """
    from ..plan.files import atomic_output
    vcd_path = Path(vcd_path)
    gtkw_path = vcd_path.with_suffix(".gtkw")
    from ..rtl.cluster import Cluster
    cores, links = (top.chips, top.links) if isinstance(top, Cluster) else ([top], [])
    traces = {}
    for index, core in enumerate(cores):
        traces[f"chip{index}"] = core_traces(core)
        if index < len(links):
            for direction, groups in link_traces(links[index]).items():
                traces[f"link{index}.{direction}"] = groups
    with atomic_output(vcd_path, gtkw_path, what="waveforms") as (vcd_tmp, gtkw_tmp):
        with sim.write_vcd(vcd_tmp, gtkw_tmp, traces=traces):
            yield
        # The save file names the VCD it was written beside; point it at the final name.
        text = Path(gtkw_tmp).read_text().replace(vcd_tmp, str(vcd_path))
        Path(gtkw_tmp).write_text(text)
