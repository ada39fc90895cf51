"""What a simulation measured, next to what the plan's gateware model predicted.

:func:`model_rows` pairs the figures of a :class:`~fpdeep.sim.harness.RunResult`
with the ``predicted.gateware`` and ``summary.gateware`` entries of a gateware
:class:`~fpdeep.plan.plan.Plan` (:mod:`fpdeep.plan.model`), quantity by quantity:
the cycles per sample from a cold start (the same number of mini-batches as the
run, from :meth:`~fpdeep.plan.plan.Plan.run_cycles`, which runs the model for counts
the plan does not hold), each engine's busy cycles per sample (its chip's busy share), the payload
words per sample on each link in each direction (and per batch on the WGT channel
of a link whose far chip holds masters), and each chip's deepest feature-memory use.
"""

from dataclasses import dataclass

__all__ = ["ModelRow", "model_rows", "format_model_rows"]


@dataclass(frozen=True)
class ModelRow:
    quantity: str
    measured: float
    predicted: float

    @property
    def ratio(self):
        if self.predicted == 0:
            return 1.0 if self.measured == 0 else float("inf")
        return self.measured / self.predicted

    def within(self, tolerance):
        return abs(self.ratio - 1) <= tolerance


def model_rows(result, plan, batches):
    """:class:`ModelRow` per measured quantity of ``result`` (``batches`` mini-batches)."""
    samples = max(1, result.samples)
    rows = [ModelRow("cycles per sample (cold start)", result.run_cycles / samples,
                     plan.run_cycles(batches) / samples)]
    for index, chip in enumerate(plan.chips):
        predicted = chip["predicted"]["gateware"]
        prefix = f"chip{index}." if len(plan.chips) > 1 else ""
        measured = {e.name: e.busy_cycles / samples for e in result.engines}
        for name, engine in predicted["engines"].items():
            rows.append(ModelRow(f"chip {index} {name} busy cycles/sample",
                                 measured[prefix + name], engine["busy_cycles_per_sample"]))
        rows.append(ModelRow(f"chip {index} feature slots used (peak)",
                             result.slots_peak[index], predicted["feature_slots_peak"]))
        if index + 1 < len(plan.chips):
            for direction, channel in (("down", "act"), ("up", "err")):
                rows.append(ModelRow(
                    f"link {index} {direction} {channel} words/sample",
                    result.link_words[(index, direction, channel)] / samples,
                    predicted[f"link_{direction}"]["words_per_sample"]))
            for direction in ("down", "up"):
                if predicted[f"wgt_{direction}"]:
                    rows.append(ModelRow(
                        f"link {index} {direction} wgt words/batch",
                        result.link_words[(index, direction, "wgt")] / batches,
                        predicted[f"wgt_{direction}"]["words_per_batch"]))
    return rows


def format_model_rows(rows, tolerance=0.10):
    width = max(len(row.quantity) for row in rows)
    lines = [f"{'quantity':<{width}} {'measured':>10} {'model':>10} {'ratio':>6}"]
    for row in rows:
        mark = "" if row.within(tolerance) else "   <- off by more than " \
            f"{tolerance:.0%}"
        lines.append(f"{row.quantity:<{width}} {row.measured:>10.2f} {row.predicted:>10.2f} "
                     f"{row.ratio:>6.3f}{mark}")
    return "\n".join(lines)
