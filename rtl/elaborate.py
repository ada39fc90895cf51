"""The elaborator: a gateware Plan (``fpdeep plan --target gateware``) to chips.

The plan says, per chip, which layers or which output channels of one layer it
trains, how many rows each of its FP, BP and WU engines has, how many samples
its feature memories hold, and whose weights it stores (``weights.stored_at``:
a layer's masters on the next chip, see :class:`~fpdeep.rtl.cluster.Cluster`). :func:`chain_from_plan` reads exactly that,
without re-deriving any of it, into the arguments of
:class:`~fpdeep.rtl.cluster.Cluster` (or of one
:class:`~fpdeep.rtl.core.TrainingCore`); :func:`build_from_plan` builds it.
"""

from dataclasses import dataclass

from ..plan.errors import FpdeepError
from .cluster import Cluster
from .core import EngineSizes, TrainingCore, network_layers

__all__ = ["ChainLayout", "chain_from_plan", "build_from_plan"]


@dataclass(frozen=True)
class ChainLayout:
    """What each chip of a chain holds, as :class:`Cluster` takes it."""
    #: Per chip, ``(first, stop)`` weighted layers, or ``(layer, layer + 1, (lo, hi))``.
    splits: list
    #: Per chip, ``{layer: EngineSizes}``.
    engines: list
    #: Per chip, feature-memory slots (samples FP may run ahead of BP/WU).
    slots: list
    #: ``{chip: layer}``: the layer whose masters the next chip holds.
    held: dict


def chain_from_plan(plan, network):
    """The :class:`ChainLayout` of a gateware ``plan`` for ``network``.

    Raises
    ------
    FpdeepError
        In one line, if the plan is not a gateware plan, was made for another
        network, or does not describe a buildable chain.
    """
    plan.check_network(network)
    names = [spec.name for spec in network_layers(network)]
    splits, engines, slots, held = [], [], [], {}
    for index, (chip, slices) in enumerate(zip(plan.chips, plan.gateware_slices())):
        if not slices:
            raise FpdeepError(f"plan: chip {index} holds no layer")
        layers = [names.index(layer) for layer, _, _ in slices]
        first, stop = layers[0], layers[-1] + 1
        if layers != list(range(first, stop)):
            raise FpdeepError(f"plan: chip {index}: its layers {[s[0] for s in slices]} are "
                              f"not consecutive")
        if len(slices) == 1:
            splits.append((first, stop, slices[0][1]))
        else:
            splits.append((first, stop))
        engines.append({layer: EngineSizes(fp=rows["fp"], bp=rows["bp"], wu=rows["wu"],
                                             wu_lanes=rows.get("wu_lanes", 1))
                        for layer, _, rows in slices})
        slots.append(_feature_slots(chip, index))
        for place in (chip.get("weights") or {}).get("stored_at", []):
            if not isinstance(place, dict) or place.get("chip") != index + 1 or \
                    place.get("layer") not in [layer for layer, _, _ in slices] or \
                    index in held:
                raise FpdeepError(f"plan: chip {index}: weights stored at {place!r}: the "
                                  f"gateware stores one of a chip's layers on the next chip")
            held[index] = place["layer"]
    return ChainLayout(splits, engines, slots, held)


def _feature_slots(chip, index):
    try:
        slots = chip["buffers"]["feature_slots"]
    except (KeyError, TypeError):
        raise FpdeepError(f"plan: chip {index} has no buffers.feature_slots") from None
    if not isinstance(slots, int) or slots < 1:
        raise FpdeepError(f"plan: chip {index}: feature_slots must be a positive int, "
                          f"not {slots!r}")
    return slots


def build_from_plan(plan, network, **core_args):
    """The gateware of a plan: a :class:`Cluster`, or a :class:`TrainingCore` for one chip.

    ``core_args`` (masters, numerics, batch_size, lr, momentum, seed) go to every chip.
    """
    layout = chain_from_plan(plan, network)
    if len(layout.splits) == 1:
        return TrainingCore(network, engines=layout.engines[0], slots=layout.slots[0],
                            **core_args)
    return Cluster(network, splits=layout.splits, engines=layout.engines, slots=layout.slots,
                   held=layout.held, **core_args)
