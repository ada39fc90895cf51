"""VCD and GTKWave save files with signals grouped by chip and by engine."""

import contextlib
from pathlib import Path


__all__ = ["write_waves", "core_traces"]


def core_traces(core):
    """``{group: signals}`` of an elaborated :class:`~fpdeep.rtl.core.TrainingCore`."""
    groups = {"host": [core.host.busy, core.host.samples, core.host.correct,
                       core.host.batches, core.host.saturations, core.host.loss_sum,
                       core.host.sample],
              # The two sequencers run different samples at once (states by name).
              "pipeline": [core.forward_fsm.state, core.backward_fsm.state,
                           core.perf_slots_peak]}
    for name, engine in core.engines_by_name.items():
        signals = [engine.start, engine.busy, engine.step]
        if hasattr(engine, "o"):
            signals.append(engine.o)
        groups[name] = signals
    for spec, unit in zip(core.specs, core.units):
        groups[f"{spec.name}.update"] = [unit.start_sample, unit.start_update, unit.busy,
                                         unit.saturations]
    if core.loss_unit is not None:
        groups["loss"] = [core.loss_unit.start, core.loss_unit.busy, core.loss_unit.o,
                          core.loss_unit.correct]
    return groups


@contextlib.contextmanager
def write_waves(sim, cores, vcd_path):
    """Record ``sim`` into ``vcd_path`` and a ``.gtkw`` beside it, one group per chip.

    ``cores`` is one core or a list of them (chip 0 first). Both files are written
    under temporary names and renamed only when the simulation finishes
    (:func:`fpdeep.plan.files.atomic_output`).
    """
    from ..plan.files import atomic_output
    vcd_path = Path(vcd_path)
    gtkw_path = vcd_path.with_suffix(".gtkw")
    if not isinstance(cores, (list, tuple)):
        cores = [cores]
    traces = {f"chip{index}": core_traces(core) for index, core in enumerate(cores)}
    with atomic_output(vcd_path, gtkw_path, what="waveforms") as (vcd_tmp, gtkw_tmp):
        with sim.write_vcd(vcd_tmp, gtkw_tmp, traces=traces):
            yield
        # The save file names the VCD it was written beside; point it at the final name.
        text = Path(gtkw_tmp).read_text().replace(vcd_tmp, str(vcd_path))
        Path(gtkw_tmp).write_text(text)
