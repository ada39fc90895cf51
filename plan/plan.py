"""The Plan: the one artefact between the planner and everything downstream.

:func:`plan_network` partitions a network over a cluster (:mod:`.partition`),
places weights that do not fit (weight balancing), and predicts performance
(:mod:`.perf`). :class:`Plan` saves and loads it as JSON.

Schema (``version`` 1; keys are stable)::

    {"version": 1,
     "network": Network.to_dict(),
     "cluster": Cluster.to_dict(),           # boards, link Gb/s, latency, BER
     "batch_size": B,
     "chips": [{
        "index": i, "board": name,
        "slices": [{
            "layer": name, "kind": "conv" | "linear",
            "split": "channels" | "rows" | "inputs", "reason": str,
            "out_channels": [lo, hi], "rows": [lo, hi],   # output rows; both always
            "in_channels": [lo, hi],     # input channels read; all but for "inputs"
            "in_features": [lo, hi],     # slice of the flattened input (Cin*H*W) read
            "post_ops": [names of ReLU / max-pool / loss run by this slice],
            "engines": {"fp"|"bp"|"wu": {"rows": R, "cols": C, "pes": R*C,
                                          "macs": m, "cycles_per_sample": c}},
                                          # "wu" also "lanes": L (cols = kw * L)
                                          # no "bp" in the first layer
        }],
        "weights": {"local": [{"layer": name, "count": n}],   # held by this chip
                    "stored_for": [{"chip": j, "layer": name, "count": n}],
                    "stored_at": [{"chip": j | "dram", "layer": name, "count": n}]},
        "buffers": {"feature_cache_bits", "line_buffer_bits", "batch_buffer_bits"},
        "predicted": {"cycles_per_sample", "pes", "macs_per_sample", "memory_bits",
                      "memory_capacity_bits", "weight_bits", "dram_bits_per_sample",
                      "link_bits_per_sample": {          # on the link to chip i + 1
                          "fwd": {"act", "weights"}, "bwd": {"err", "weights"},
                          "weights": fwd + bwd weights}}
     }],
     "summary": {"balance", "images_per_s", "images_per_s_steady", "gops",
                 "limiting_factor": "compute" | "link" | "memory",
                 "latency_cycles", "latency_s", "bubble_cycles_per_batch",
                 "bounds_images_per_s": {"compute", "link", "memory"},
                 "link_utilisation", "pe_utilisation", "macs_per_sample", ...}}

Every plan has a top-level ``"target"``: ``"paper"`` (the default: paper-scale
engines, the schema above) or ``"gateware"`` (what :mod:`fpdeep.rtl` builds; see
below).

``out_channels`` and ``rows`` are half-open ranges of the layer's output map
(before its post-ops); ``in_channels`` the input channels the slice reads. Cycle
counts are in the chip's own clock.

An ``"inputs"`` slice (linear layers only, see :mod:`.partition`) covers all
output channels over its ``in_features`` slice of the K = Cin·H·W reduction
(whole rows of the input map, so a multiple of W; ``in_channels`` are the input
channels it touches, and two neighbours may share one): it
adds its partial sums to those arriving from the previous chip and passes them
on; the layer's last chip holds the full sums and runs the post-ops. Its weights
are the columns of its K-slice (plus the biases on the chip with input feature
0). Link traffic counts the partial sums (``out`` words per sample per cut
inside the layer) as activations and the output error sent back to every chip
of the layer as errors. Its buffers hold its slice of the input for WU, the
output error and the partial sums.

The gateware target
-------------------
``plan_network(..., target="gateware")`` plans what the gateware builds
(:mod:`.model`, :mod:`.partition`): a chip holds whole layers (``"split": "layers"``) or one slice
of one layer split by output channels (``"split": "channels"``, contiguous ranges
on consecutive chips). Each slice's ``engines`` give the rows and columns as
built: FP ``rows x Wo``, BP ``rows x W`` (rows = input channels at once; none in
the network's first layer), WU ``rows x kw``; ``cycles_per_sample`` is the
engine's busy cycles per sample. Each chip's ``buffers.feature_slots`` is the
depth of its feature memories, the fewest slots that keep the chain within
``slot_tolerance`` of its speed with unlimited slots, within the chip's memory
(:func:`.partition.choose_slots`). A chip that does not fit its memory even with
one slot keeps one of its layers' masters and velocities on the next chip
(:func:`.partition.place_masters`): ``weights.stored_at`` on the owner and
``stored_for`` on the holder, each ``[{"chip", "layer", "count"}]``, and ``local``
lists the layers whose masters stay. The elaborator reads
:meth:`Plan.gateware_slices`, ``feature_slots`` and ``stored_at``. Predictions come
from :func:`.model.simulate`::

    "target": "gateware",
    "chips": [{...,
        "buffers": {"feature_slots": k,            # samples its FP may run ahead of BP/WU
                    "feature_slot_bits": b,        # one slot of its feature memories
                    "feature_cache_bits": k * b, ...},
        "predicted": {..., "multipliers": n,
            "gateware": {"cycles_per_sample", "engines": {"conv1.fp": {"rows", "cols",
                             "pes", "busy_cycles_per_sample", "steps_per_sample",
                             "busy_fraction", "step_fraction"}, ...},
                         "phases_per_sample": {"load", "fp", "done", "idle", "loss",
                             "bp", "wu_wait", "sgd"},
                         "loss_cycles", "sgd_cycles_per_batch",
                         "feature_slots", "feature_slots_peak", "slots_in_use_max",
                         "slot_wait_per_sample", "latency_cycles",
                         "link_down": {"words_per_sample", "frames_per_sample",
                                       "symbols_per_sample"} | null,   # ACT to i + 1
                         "link_up": {...} | null,                      # ERR from i + 1
                         "wgt_down": {"words_per_batch", "frames_per_batch",
                                      "symbols_per_batch"} | null,  # sums to i + 1
                         "wgt_up": {...} | null,                    # copies from i + 1
                         "estimate": {"forward", "backward"},
                         "memory_bits": {"features", "errors", "weights", "relay",
                                         "held", "total"}}}}],
    "summary": {..., "gateware": {"cycles_per_sample", "images_per_s", "latency_cycles",
                                  "run_cycles": {"1": c, ...},
                                  "perf_cycles": {"1": c, ...},
                                  "slots": [per chip], "slots_memory_caps": [per chip],
                                  "slot_tolerance", "limit",
                                  "bounds": {"round_trip", "busiest_chip"},
                                  "with_more_slots": {"each_plus_1": c, "unlimited": c},
                                  "candidates": [...], "timing": {...}}}
"""

import json
import math
import os
from dataclasses import dataclass, field

from .errors import FpdeepError
from .files import atomic_write_text, check_nesting, read_text
from .network import Network
from .paper_partition import partition, ACT_BITS
from . import perf
from .boards import Cluster

__all__ = ["Plan", "plan_network", "validate", "PLAN_VERSION", "TARGETS"]

PLAN_VERSION = 1


@dataclass
class Plan:
    """A saved plan: a JSON-compatible dict with accessors (see module docstring)."""
    data: dict
    #: Modelled run cycles per batch count beyond the saved ones (:meth:`run_cycles`).
    _runs: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def summary(self):
        return self.data["summary"]

    @property
    def chips(self):
        return self.data["chips"]

    @property
    def network(self):
        return Network.from_dict(self.data["network"])

    @property
    def target(self):
        """``"paper"`` or ``"gateware"`` (plans saved before targets existed are paper)."""
        return self.data.get("target", "paper")

    def check_network(self, network):
        """Check that this is a gateware plan, made for ``network``, that the gateware
        can build.

        Raises
        ------
        FpdeepError
            In one line, if the plan is not a gateware plan, was made for another
            network, or its chips do not form a buildable chain for it.
        """
        self._require_gateware()
        mine = self.data["network"]
        if network.to_dict() != mine:
            name = mine.get("name") if isinstance(mine, dict) else None
            if name == network.name:
                raise FpdeepError(f"the plan was made for another network called {name!r}: "
                                  f"its layers differ from the one given")
            raise FpdeepError(f"the plan was made for network {name!r}, not "
                              f"{network.name!r}")
        _check_gateware_chips(self.gateware_slices(), network)

    def gateware_slices(self):
        """Per chip, its slices as the elaborator builds them.

        Returns
        -------
        list of list of (layer, (lo, hi), {"fp": rows, "bp": rows, "wu": rows, "wu_lanes": lanes})
            ``(lo, hi)`` are the slice's output channels; ``"bp"`` is 0 for the
            network's first layer, which has no BP engine; ``"wu_lanes"`` is the WU
            engine's ``lanes`` (1 when the plan does not give them).

        Raises
        ------
        FpdeepError
            If this is not a gateware plan, or a slice lacks its channels or rows.
        """
        self._require_gateware()
        out = []
        for chip in self.chips:
            slices = []
            for sl in chip.get("slices", []):
                engines = sl.get("engines", {})
                try:
                    rows = {kind: int(engines[kind]["rows"]) if kind in engines else 0
                            for kind in ("fp", "bp", "wu")}
                    rows["wu_lanes"] = int(engines.get("wu", {}).get("lanes", 1))
                    lo, hi = (int(v) for v in sl["out_channels"])
                except (KeyError, TypeError, ValueError):
                    raise FpdeepError(f"plan: chip {chip.get('index')}: slice "
                                      f"{sl.get('layer')!r} lacks its channels or engine "
                                      f"rows") from None
                slices.append((sl.get("layer"), (lo, hi), rows))
            out.append(slices)
        return out

    def model_chain(self):
        """The chips and layers of this gateware plan as the model (:mod:`.model`) takes
        them: ``(chips, layers, timing)``, read from the plan, not re-planned.

        Raises
        ------
        FpdeepError
            If this is not a gateware plan or does not describe a buildable chain.
        """
        from .layers import gateware_layers
        from .model import ChipSpec, GatewareTiming, SliceSpec
        network = self.network
        self.check_network(network)
        layers = {layer.name: layer for layer in gateware_layers(network)}
        timing = GatewareTiming.from_dict(self.summary["gateware"]["timing"])
        chips = []
        for index, (chip, slices) in enumerate(zip(self.chips, self.gateware_slices())):
            # Every engine parameter the slices give (WU lanes, where the plan has them).
            specs = [SliceSpec(layers[name], lo, hi, **rows)
                     for name, (lo, hi), rows in slices]
            chips.append(ChipSpec(index, specs, slots=chip["buffers"]["feature_slots"]))
        # A split layer's chips: their part and the layer's number of parts.
        start = 0
        while start < len(chips):
            s = chips[start].slices[0]
            stop = start + 1
            if (s.lo, s.hi) != (0, s.layer.geometry.cout):
                while stop < len(chips) and chips[stop].slices[0].layer is s.layer:
                    stop += 1
                for part, c in enumerate(range(start, stop)):
                    chips[c].part, chips[c].parts = part, stop - start
            start = stop
        for index, chip in enumerate(self.chips):
            for place in chip["weights"]["stored_at"]:
                mine = [s for s in chips[index].slices if s.layer.name == place["layer"]]
                if (place.get("chip") != index + 1 or index + 1 >= len(chips) or not mine
                        or chips[index].remote is not None):
                    raise FpdeepError(f"plan: chip {index}: weights stored at {place!r}: the "
                                      f"gateware stores one of a chip's layers on the next "
                                      f"chip")
                chips[index].remote = place["layer"]
                chips[index + 1].held = mine[0]
        return chips, list(layers.values()), timing

    def run_cycles(self, batches):
        """Modelled cycles from a cold start to the end of batch ``batches``' SGD step
        on every chip (``summary.gateware.run_cycles``, which holds 1 to 4 batches; the
        model runs any other count).

        Raises
        ------
        FpdeepError
            If ``batches`` is not a positive int, or as :meth:`model_chain`.
        """
        from .model import simulate
        if not isinstance(batches, int) or isinstance(batches, bool) or batches < 1:
            raise FpdeepError(f"batches must be a positive int, not {batches!r}")
        saved = self.summary["gateware"]["run_cycles"]
        if str(batches) in saved:
            return saved[str(batches)]
        if batches in self._runs:
            return self._runs[batches]
        chips, layers, timing = self.model_chain()
        # Later samples never delay earlier ones, so a longer run's first batches are
        # the short run's; the model needs at least 3 batches for its steady state.
        result = simulate(chips, layers, batch_size=self.data["batch_size"],
                          batches=max(3, batches), timing=timing)
        self._runs.update(result["run_cycles"])
        return result["run_cycles"][batches]

    def _require_gateware(self):
        if self.target != "gateware":
            raise FpdeepError(f"the plan is for the {self.target!r} target, not the "
                              f"gateware; make one with 'fpdeep plan --target gateware'")

    def to_dict(self):
        return self.data

    def save(self, path):
        """Write the plan as JSON through a temporary file and a rename.

        Raises
        ------
        FpdeepError
            If the plan holds a NaN or infinite number (JSON has none), or the path
            cannot be written (:func:`.files.output_target`).
        """
        try:
            text = json.dumps(self.data, indent=1, allow_nan=False) + "\n"
        except ValueError:
            raise FpdeepError(f"plan for {path!r} holds a NaN or infinite number; "
                              f"not written") from None
        atomic_write_text(os.fspath(path), text, what="plan")

    @classmethod
    def load(cls, path):
        """Read and validate a plan file (:func:`validate`).

        Raises
        ------
        FpdeepError
            In one line naming the file and the offending key: unreadable, not UTF-8,
            not JSON, NaN or Infinity, nested too deeply, or not a valid plan.
        """
        path = os.fspath(path)
        text = read_text(path, what="plan")
        check_nesting(text, what="plan", path=path)
        try:
            data = json.loads(text, parse_constant=_refuse_constant)
        except RecursionError:
            raise FpdeepError(f"malformed plan {path!r}: nested too deeply") from None
        except ValueError as error:     # json.JSONDecodeError is one
            raise FpdeepError(f"malformed plan {path!r}: {error}") from None
        validate(data, source=f"plan {path!r}")
        return cls(data)

    def check_resources(self):
        """Check that every chip's engines fit its board's multipliers and its memories
        (with their feature slots) its block RAM, as the model counts them: an absurd
        engine or slot count is refused here rather than elaborated.

        Raises
        ------
        FpdeepError
            Naming the chip, what it needs and what its board has.
        """
        from .model import memory_bits
        chips, layers, timing = self.model_chain()
        boards = Cluster.from_dict(self.data["cluster"]).boards
        for c, (chip, board) in enumerate(zip(chips, boards)):
            need = chip.multipliers(last=c == len(chips) - 1, timing=timing)
            if need > board.multipliers:
                raise FpdeepError(f"plan: chip {c} ({chip.describe()}) needs {need} "
                                  f"multipliers for its engines, {board.name} has "
                                  f"{board.multipliers}")
            bits = memory_bits(chip, layers)["total"]
            if bits > board.bram_bits:
                raise FpdeepError(f"plan: chip {c} ({chip.describe()}) needs {bits} bits "
                                  f"of memory with {chip.slots} feature slots, "
                                  f"{board.name} has {board.bram_bits}")


def _refuse_constant(name):
    # json accepts NaN, Infinity and -Infinity, which JSON itself does not.
    raise ValueError(f"{name} is not a number JSON allows")


#: The largest engine row count, feature-slot count or timing constant a plan may
#: give before its board is even consulted (each is far below what fits a board).
PLAN_LIMIT = 1 << 20


def _need(value, kind, where):
    """``value`` if it is of ``kind``, else FpdeepError naming ``where``.

    Kinds: ``"size"`` (int 1..PLAN_LIMIT), ``"count"`` (int 0..PLAN_LIMIT), ``"number"``
    (finite int or float), ``"str"``, ``"dict"``, ``"list"``, ``"range"`` (two counts).
    """
    is_int = isinstance(value, int) and not isinstance(value, bool)
    ok = {"size": is_int and 1 <= value <= PLAN_LIMIT,
          "count": is_int and 0 <= value <= PLAN_LIMIT,
          "number": (is_int or isinstance(value, float)) and math.isfinite(value),
          "str": isinstance(value, str),
          "dict": isinstance(value, dict),
          "list": isinstance(value, list),
          "range": isinstance(value, list) and len(value) == 2 and all(
              isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= PLAN_LIMIT
              for v in value)}[kind]
    if not ok:
        want = {"size": f"an int from 1 to {PLAN_LIMIT}",
                "count": f"an int from 0 to {PLAN_LIMIT}", "number": "a finite number",
                "str": "a string", "dict": "a mapping", "list": "a list",
                "range": "a pair of ints [lo, hi]"}[kind]
        shown = repr(value)
        raise FpdeepError(f"{where} must be {want}, not "
                          f"{shown if len(shown) <= 40 else shown[:37] + '...'}")
    return value


def _key(mapping, key, kind, where):
    if key not in mapping:
        raise FpdeepError(f"{where} lacks {key!r}")
    return _need(mapping[key], kind, f"{where}.{key}")


def validate(data, *, source="plan"):
    """The one validator of a plan's JSON: raise FpdeepError in one line, naming
    ``source`` and the key, unless ``data`` has every key of the schema (module
    docstring) that the tools downstream read, with its type. A gateware plan is
    checked through: its network, cluster, chips, slices, engines, weights, feature
    slots, predictions and timing."""
    _need(data, "dict", source)
    if data.get("version") != PLAN_VERSION:
        raise FpdeepError(f"{source}: not a version {PLAN_VERSION} plan "
                          f"(version {data.get('version')!r})")
    for key in ("network", "cluster", "summary"):
        _key(data, key, "dict", source)
    chips = _key(data, "chips", "list", source)
    target = data.get("target", "paper")
    if target not in TARGETS:
        raise FpdeepError(f"{source}: unknown target {target!r}")
    # Every target: the BER sets the paper planner's link payload; absent in plans
    # written before it was recorded, which assumed none.
    if "link_ber" in data["cluster"]:
        ber = _key(data["cluster"], "link_ber", "number", f"{source}: cluster")
        if not 0 <= ber < 1:
            raise FpdeepError(f"{source}: cluster.link_ber must be in [0, 1), not {ber!r}")
    if target != "gateware":
        return
    try:
        Network.from_dict(data["network"], source="network")
        cluster = Cluster.from_dict(data["cluster"])
    except FpdeepError as error:
        raise FpdeepError(f"{source}: {error}") from None
    if len(cluster) != len(chips) or not chips:
        raise FpdeepError(f"{source}: {len(chips)} chips for a cluster of {len(cluster)}")
    _key(data, "batch_size", "size", source)
    for c, chip in enumerate(chips):
        where = f"{source}: chips[{c}]"
        _need(chip, "dict", where)
        if chip.get("index") != c:
            raise FpdeepError(f"{where}.index must be {c}, not {chip.get('index')!r}")
        board = _key(chip, "board", "str", where)
        # The cluster's boards are what is built and timed; a chip naming another
        # board would be silently ignored.
        if board != cluster.board(c).name:
            raise FpdeepError(f"{where}.board is {board!r}, but the cluster's chip {c} is "
                              f"a {cluster.board(c).name!r}")
        names = set()
        for k, sl in enumerate(_key(chip, "slices", "list", where)):
            at = f"{where}.slices[{k}]"
            _need(sl, "dict", at)
            layer = _key(sl, "layer", "str", at)
            _key(sl, "out_channels", "range", at)
            for kind, engine in _key(sl, "engines", "dict", at).items():
                if kind not in ("fp", "bp", "wu"):
                    raise FpdeepError(f"{at}.engines has unknown engine {kind!r}")
                _need(engine, "dict", f"{at}.engines.{kind}")
                _key(engine, "rows", "size", f"{at}.engines.{kind}")
                _key(engine, "cols", "size", f"{at}.engines.{kind}")
                if "lanes" in engine:
                    _key(engine, "lanes", "size", f"{at}.engines.{kind}")
                names.add(f"{layer}.{kind}")
        weights = _key(chip, "weights", "dict", where)
        for key in ("local", "stored_for", "stored_at"):
            for k, place in enumerate(_key(weights, key, "list", f"{where}.weights")):
                at = f"{where}.weights.{key}[{k}]"
                _need(place, "dict", at)
                _key(place, "layer", "str", at)
                _key(place, "count", "count", at)
                if key != "local" and not (isinstance(place.get("chip"), int)
                                           or place.get("chip") == "dram"):
                    raise FpdeepError(f"{at}.chip must be a chip index, not "
                                      f"{place.get('chip')!r}")
        _key(_key(chip, "buffers", "dict", where), "feature_slots", "size",
             f"{where}.buffers")
        g = _key(_key(chip, "predicted", "dict", where), "gateware", "dict",
                 f"{where}.predicted")
        at = f"{where}.predicted.gateware"
        engines = _key(g, "engines", "dict", at)
        if set(engines) != names:
            raise FpdeepError(f"{at}.engines names {sorted(engines)}, the slices' engines "
                              f"are {sorted(names)}")
        for name, engine in engines.items():
            _need(engine, "dict", f"{at}.engines.{name}")
            _key(engine, "busy_cycles_per_sample", "number", f"{at}.engines.{name}")
        _key(g, "feature_slots_peak", "number", at)
        for key, figure in (("link_down", "words_per_sample"), ("link_up", "words_per_sample"),
                            ("wgt_down", "words_per_batch"), ("wgt_up", "words_per_batch")):
            if g.get(key) is not None:
                _key(_need(g[key], "dict", f"{at}.{key}"), figure, "number", f"{at}.{key}")
            elif key.startswith("link") and c + 1 < len(chips):
                raise FpdeepError(f"{at}.{key} is missing for the link to chip {c + 1}")
    summary = _key(data["summary"], "gateware", "dict", f"{source}: summary")
    at = f"{source}: summary.gateware"
    for key, value in _key(summary, "run_cycles", "dict", at).items():
        _need(value, "number", f"{at}.run_cycles[{key!r}]")
    timing = _key(summary, "timing", "dict", at)
    from .model import TIMING, GatewareTiming
    for key, value in timing.items():
        _need(value, "count", f"{at}.timing.{key}")
        if value == 0 and getattr(TIMING, key, 0) > 0:
            raise FpdeepError(f"{at}.timing.{key} must be at least 1, not 0")
    try:
        GatewareTiming.from_dict(timing)
    except FpdeepError as error:
        raise FpdeepError(f"{at}: {error}") from None


def _chip_weights(chip):
    """Weights per layer held by a chip (row-split layers: all of them, once)."""
    held = {}
    for tile in chip.tiles:
        w = tile.layer.work
        if tile.layer.mode == "rows":
            held[w.name] = w.weights
        elif tile.layer.mode == "inputs":
            held[w.name] = held.get(w.name, 0) + tile.weights
        else:
            channels = held.setdefault(("ch", w.name), set())
            channels.update(range(*tile.channels))
    out = {}
    for key, value in held.items():
        if isinstance(key, tuple):
            lu = next(t.layer for t in chip.tiles if t.layer.work.name == key[1])
            out[key[1]] = len(value) * (lu.work.weights // lu.work.out_channels)
        else:
            out[key] = value
    return out


def _input_rows(w, r0, r1):
    """Input rows [lo, hi) a conv needs for output rows [r0, r1)."""
    ph = w.padding[0]
    lo = max(0, r0 * w.stride - ph)
    hi = min(w.in_shape[1], (r1 - 1) * w.stride - ph + w.kernel[0])
    return lo, hi


def _buffers(chip):
    """Feature cache and line-buffer bits of one chip."""
    cache = line = 0
    seen = set()
    for tile in chip.tiles:
        w = tile.layer.work
        cin, h, width = w.in_shape
        if tile.layer.mode == "inputs":
            # The slice's inputs for WU, the output error, the partial sums.
            cache += tile.n_in_features * ACT_BITS * perf.CACHE_SAMPLES
            cache += w.out_channels * (perf.ERR_BITS + ACT_BITS)
            continue
        if w.kind == "linear":
            if w.name not in seen:
                cache += w.activations_in * ACT_BITS * perf.CACHE_SAMPLES
                seen.add(w.name)
            cache += tile.n_channels * perf.ERR_BITS
            continue
        if tile.layer.mode == "rows":
            lo, hi = _input_rows(w, *tile.rows)
            cache += cin * (hi - lo) * width * ACT_BITS * perf.CACHE_SAMPLES
        elif w.name not in seen:
            cache += w.activations_in * ACT_BITS * perf.CACHE_SAMPLES
        if w.name not in seen:
            line += w.kernel[0] * width * cin * ACT_BITS         # FP input line buffer
            seen.add(w.name)
        # Errors stream into BP and WU as they arrive; BP keeps kh rows of them.
        line += w.kernel[0] * w.out_cols * tile.n_channels * perf.ERR_BITS
    return cache, line


def _fractions(layers, chips):
    """Per layer, per chip: fraction of its output produced, and of its input needed."""
    produced = {lu.work.name: [0.0] * len(chips) for lu in layers}
    needed = {lu.work.name: [0.0] * len(chips) for lu in layers}
    for chip in chips:
        for tile in chip.tiles:
            lu, w = tile.layer, tile.layer.work
            if lu.mode == "inputs":
                # Only the layer's last chip holds the full sums.
                produced[w.name] = [0.0] * len(chips)
                produced[w.name][chip.index] = 1.0
                needed[w.name][chip.index] += tile.n_in_features / w.activations_in
                continue
            produced[w.name][chip.index] += tile.lines / lu.count
            if lu.mode == "rows" and w.kind == "conv":
                lo, hi = _input_rows(w, *tile.rows)
                needed[w.name][chip.index] = min(1.0, needed[w.name][chip.index]
                                                 + (hi - lo) / w.in_shape[1])
            else:
                needed[w.name][chip.index] = 1.0
    return produced, needed


def _link_traffic(layers, chips, batch):
    """Bits per sample crossing each cut (i, i+1): list of dicts."""
    n = len(chips)
    cuts = [{"act": 0.0, "err": 0.0, "w_fwd": 0.0, "w_bwd": 0.0} for _ in range(n - 1)]
    produced, needed = _fractions(layers, chips)
    for index, lu in enumerate(layers):
        w = lu.work
        size = w.activations_in
        prev = produced[layers[index - 1].work.name] if index else None
        need = needed[w.name]
        prod_here = produced[w.name]
        for c in range(n - 1):
            left = 1.0 if prev is None else sum(prev[:c + 1])
            right_need = min(1.0, sum(need[c + 1:]))
            cuts[c]["act"] += size * ACT_BITS * min(left, 1.0) * right_need
            if index and lu.mode == "inputs":
                # Each chip sends back the errors of its own input slice.
                cuts[c]["err"] += size * perf.ERR_BITS * min(left, 1.0) * right_need
            elif index:
                right_prod = sum(prod_here[c + 1:])
                if right_prod > 0:
                    factor = 1.0 if lu.mode == "channels" else right_prod
                    cuts[c]["err"] += size * perf.ERR_BITS * min(left, 1.0) * min(factor, 1.0)
        # Row-split layers, and channels shared by two chips: sum gradients per batch.
        holders = [c.index for c in chips if any(t.layer is lu for t in c.tiles)]
        if lu.mode == "inputs":
            # Partial sums flow forward, the output error back, inside the layer.
            for c in range(holders[0], holders[-1]):
                cuts[c]["act"] += w.out_channels * ACT_BITS
                cuts[c]["err"] += w.out_channels * perf.ERR_BITS
        elif lu.mode == "rows" and len(holders) > 1:
            for c in range(holders[0], holders[-1]):
                cuts[c]["w_bwd"] += w.weights * perf.ROW_REDUCE_BITS["bwd"] / batch
                cuts[c]["w_fwd"] += w.weights * perf.ROW_REDUCE_BITS["fwd"] / batch
        elif lu.mode == "channels":
            per_channel = w.weights // w.out_channels
            for a, b in zip(chips, chips[1:]):
                ta = [t for t in a.tiles if t.layer is lu]
                tb = [t for t in b.tiles if t.layer is lu]
                if ta and tb and ta[-1].channels[1] > tb[0].channels[0]:
                    cuts[a.index]["w_bwd"] += per_channel * perf.ROW_REDUCE_BITS["bwd"] / batch
                    cuts[a.index]["w_fwd"] += per_channel * perf.ROW_REDUCE_BITS["fwd"] / batch
    return cuts


def _place_weights(layers, chips, boards, needs, batch, cuts):
    """Weight balancing: move each chip's excess weights into neighbours' spare memory.

    Linear-layer weights move first (they stream once per mini-batch), then conv
    weights (per sample); nearest neighbours first. Weights that fit nowhere on chip
    go to the owner's DRAM if its board has some (streamed at the same rates, over
    the DRAM bandwidth); that makes DRAM bandwidth the "memory" limit.

    Returns per-chip placement records and DRAM bits per sample.
    """
    n = len(chips)
    kinds = {lu.work.name: lu.work.kind for lu in layers}
    capacity = [b.bram_bits for b in boards]
    used = [needs[i]["buffers"] + needs[i]["weight_bits"] for i in range(n)]
    local = [dict(needs[i]["weights"]) for i in range(n)]
    stored_for = [[] for _ in range(n)]
    stored_at = [[] for _ in range(n)]
    dram_used = [0] * n
    dram_bps = [0.0] * n
    bits = perf.LOCAL_WEIGHT_BITS
    for i in range(n):
        if needs[i]["buffers"] > capacity[i]:
            raise FpdeepError(f"does not fit: chip {i} ({boards[i].name}) needs "
                              f"{needs[i]['buffers'] / 1e6:.1f} Mb of feature and line "
                              f"buffers, it has {capacity[i] / 1e6:.1f} Mb")
    for i in range(n):
        excess = used[i] - capacity[i]
        if excess <= 0:
            continue
        order = sorted(local[i], key=lambda name: kinds[name] != "linear")
        for name in order:
            if excess <= 0:
                break
            for distance in range(1, n):
                for j in (i - distance, i + distance):
                    if excess <= 0 or not 0 <= j < n:
                        continue
                    spare = capacity[j] - used[j]
                    count = min(local[i][name], math.ceil(excess / bits), spare // bits)
                    if count <= 0:
                        continue
                    local[i][name] -= count
                    used[i] -= count * bits
                    used[j] += count * bits
                    excess -= count * bits
                    stored_for[j].append({"chip": i, "layer": name, "count": count})
                    stored_at[i].append({"chip": j, "layer": name, "count": count})
                    if kinds[name] == "linear":
                        to_user = count * perf.REMOTE_LINEAR_BITS["to_user"] / batch
                        to_store = count * perf.REMOTE_LINEAR_BITS["to_store"] / batch
                    else:
                        to_user = count * perf.REMOTE_CONV_BITS["to_user"]
                        to_store = count * perf.REMOTE_CONV_BITS["to_store"]
                    lo, hi = min(i, j), max(i, j)
                    for c in range(lo, hi):
                        # The store is at j: towards the user is fwd when j < i.
                        if j < i:
                            cuts[c]["w_fwd"] += to_user
                            cuts[c]["w_bwd"] += to_store
                        else:
                            cuts[c]["w_bwd"] += to_user
                            cuts[c]["w_fwd"] += to_store
                if excess <= 0 or local[i][name] == 0:
                    break
        if excess > 0:
            board = boards[i]
            for name in order:
                if excess <= 0:
                    break
                if not board.dram_bits:
                    continue
                count = min(local[i][name], math.ceil(excess / bits),
                            (board.dram_bits - dram_used[i]) // bits)
                if count <= 0:
                    continue
                local[i][name] -= count
                used[i] -= count * bits
                excess -= count * bits
                dram_used[i] += count * bits
                stored_at[i].append({"chip": "dram", "layer": name, "count": count})
                if kinds[name] == "linear":
                    dram_bps[i] += count * (perf.REMOTE_LINEAR_BITS["to_user"]
                                            + perf.REMOTE_LINEAR_BITS["to_store"]) / batch
                else:
                    dram_bps[i] += count * (perf.REMOTE_CONV_BITS["to_user"]
                                            + perf.REMOTE_CONV_BITS["to_store"])
        if excess > 0:
            total_need = sum(needs[k]["buffers"] + needs[k]["weight_bits"] for k in range(n))
            raise FpdeepError(
                f"does not fit: chip {i} ({boards[i].name}) is {excess / 1e6:.1f} Mb over its "
                f"{capacity[i] / 1e6:.1f} Mb and no neighbour has room (the network needs "
                f"{total_need / 1e6:.1f} Mb on chip in all, the cluster has "
                f"{sum(capacity) / 1e6:.1f} Mb); use more chips or a larger board")
    # Linear slices with remote weights run batch-wise: buffer the batch's vectors.
    batch_buffers = [0] * n
    for i in range(n):
        remote = {rec["layer"] for rec in stored_at[i]}
        for tile in chips[i].tiles:
            w = tile.layer.work
            if w.name in remote and w.kind == "linear":
                inputs = tile.n_in_features
                vectors = (inputs + tile.n_channels) * ACT_BITS
                if boards[i].dram_bits:
                    # Parked in DRAM: written once and read once per sample.
                    dram_bps[i] += 2 * vectors
                else:
                    batch_buffers[i] += batch * vectors
    return local, stored_for, stored_at, used, dram_bps, batch_buffers


def _model(layers, chips, boards, cluster, batch_size):
    """The full model of one partition: memory, link traffic, bounds and images/s.

    Raises
    ------
    FpdeepError
        If the weights or buffers do not fit.
    """
    n = len(chips)
    needs = []
    for chip in chips:
        weights = _chip_weights(chip)
        cache, line = _buffers(chip)
        needs.append({"weights": weights, "buffers": cache + line, "cache": cache,
                      "line": line,
                      "weight_bits": sum(weights.values()) * perf.LOCAL_WEIGHT_BITS})
    cuts = _link_traffic(layers, chips, batch_size)
    local, stored_for, stored_at, used, dram_bps, batch_buffers = _place_weights(
        layers, chips, boards, needs, batch_size, cuts)
    for i in range(n):
        used[i] += batch_buffers[i]
        if used[i] > boards[i].bram_bits:
            raise FpdeepError(f"does not fit: chip {i} ({boards[i].name}) needs "
                              f"{used[i] / 1e6:.1f} Mb with its batch buffers, it has "
                              f"{boards[i].bram_bits / 1e6:.1f} Mb")

    # Bounds on images/s.
    times = [chip.cycles / b.clock_hz for chip, b in zip(chips, boards)]
    compute = 1 / max(times)
    link = math.inf
    link_use = []
    for c, cut in enumerate(cuts):
        fwd = cut["act"] + cut["w_fwd"]
        bwd = cut["err"] + cut["w_bwd"]
        bps = perf.link_payload_bps(cluster.link_bps(c), cluster.link_ber)
        if max(fwd, bwd) > 0:
            link = min(link, bps / max(fwd, bwd))
        link_use.append((fwd, bwd, bps))
    dram = math.inf
    for i, b in enumerate(boards):
        if dram_bps[i]:
            dram = min(dram, b.dram_gbps * 1e9 / dram_bps[i])
    steady, factor = perf.throughput(compute, link, dram)
    latency_s = perf.latency(chips, boards, cluster.link_latency_ns * 1e-9)
    images = batch_size / (batch_size / steady + latency_s)
    return {"needs": needs, "cuts": cuts, "local": local, "stored_for": stored_for,
            "stored_at": stored_at, "used": used, "dram_bps": dram_bps,
            "batch_buffers": batch_buffers, "times": times, "compute": compute,
            "link": link, "link_use": link_use, "dram": dram, "steady": steady,
            "factor": factor, "latency_s": latency_s, "images": images}


TARGETS = ("paper", "gateware")


def plan_network(network, cluster, batch_size=64, *, efficiency=None, target="paper"):
    """Plan training of ``network`` on ``cluster`` with mini-batches of ``batch_size``.

    ``target`` is ``"paper"`` (paper-scale engines, :mod:`.partition`) or
    ``"gateware"`` (what :mod:`fpdeep.rtl` builds, its timing predicted by
    :mod:`.partition`; ``efficiency`` does not apply).

    Raises
    ------
    FpdeepError
        If the batch size is not positive, the target unknown, the network has fewer
        work units than chips, a chip cannot hold its engines, or the weights do not
        fit; for the gateware also if it cannot build a layer.
    """
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise FpdeepError(f"batch size must be a positive integer, not {batch_size!r}")
    if not isinstance(cluster, Cluster):
        raise FpdeepError("plan_network needs a Cluster")
    if target not in TARGETS:
        raise FpdeepError(f"unknown plan target {target!r}; choose one of "
                          f"{', '.join(TARGETS)}")
    if target == "gateware":
        return _gateware_plan(network, cluster, batch_size)
    efficiency = dict(efficiency or perf.ENGINE_EFFICIENCY)
    n = len(cluster)
    boards = [cluster.board(i) for i in range(n)]

    def score(layers, chips):
        try:
            return _model(layers, chips, boards, cluster, batch_size)["images"]
        except FpdeepError:
            return 0.0

    layers, chips = partition(network, boards, efficiency=efficiency, score=score)
    m = _model(layers, chips, boards, cluster, batch_size)
    needs, cuts, local, stored_for, stored_at, used, dram_bps, batch_buffers = (
        m["needs"], m["cuts"], m["local"], m["stored_for"], m["stored_at"], m["used"],
        m["dram_bps"], m["batch_buffers"])
    times, compute, link, link_use, dram = (m["times"], m["compute"], m["link"],
                                            m["link_use"], m["dram"])
    steady, factor, latency_s, images = m["steady"], m["factor"], m["latency_s"], m["images"]
    clock0 = boards[0].clock_hz
    bubble_s = latency_s
    macs = sum(lu.count * lu.line_macs for lu in layers)
    mean_t = sum(times) / n
    link_utilisation = [max(f, b_) * steady / bps if bps else 0.0 for f, b_, bps in link_use]

    chip_dicts = []
    for i, chip in enumerate(chips):
        slices = []
        for tile in chip.tiles:
            lu, w = tile.layer, tile.layer.work
            slices.append({
                "layer": w.name, "kind": w.kind, "split": lu.mode, "reason": lu.reason,
                "out_channels": list(tile.channels), "rows": list(tile.rows),
                "in_channels": list(tile.inputs), "in_features": list(tile.in_features),
                "post_ops": list(w.post_ops),
                "engines": {e.kind: {"rows": e.rows, "cols": e.cols, "pes": e.pes,
                                     "macs": e.macs, "cycles_per_sample": e.cycles}
                            for e in tile.engines.values()},
            })
        cut = cuts[i] if i < n - 1 else {"act": 0.0, "err": 0.0, "w_fwd": 0.0, "w_bwd": 0.0}
        chip_dicts.append({
            "index": i, "board": boards[i].name, "slices": slices,
            "weights": {"local": [{"layer": k, "count": v} for k, v in local[i].items()],
                        "stored_for": stored_for[i], "stored_at": stored_at[i]},
            "buffers": {"feature_cache_bits": needs[i]["cache"],
                        "line_buffer_bits": needs[i]["line"],
                        "batch_buffer_bits": batch_buffers[i]},
            "predicted": {
                "cycles_per_sample": chip.cycles, "pes": chip.pes,
                "macs_per_sample": chip.macs,
                "pe_utilisation": chip.macs / (boards[i].multipliers * chip.cycles)
                if chip.cycles else 0.0,
                "memory_bits": used[i], "memory_capacity_bits": boards[i].bram_bits,
                "weight_bits": sum(local[i].values()) * perf.LOCAL_WEIGHT_BITS,
                "dram_bits_per_sample": dram_bps[i],
                "link_bits_per_sample": {
                    "fwd": {"act": cut["act"], "weights": cut["w_fwd"]},
                    "bwd": {"err": cut["err"], "weights": cut["w_bwd"]},
                    "weights": cut["w_fwd"] + cut["w_bwd"]},
                "link_utilisation": link_utilisation[i] if i < n - 1 else 0.0,
            },
        })
    summary = {
        "chips": n,
        "balance": max(times) / mean_t,
        "images_per_s": images,
        "images_per_s_steady": steady,
        "gops": images * macs * perf.OPS_PER_MAC / 1e9,
        "limiting_factor": factor,
        "bounds_images_per_s": {"compute": compute, "link": link if math.isfinite(link)
                                else None, "memory": dram if math.isfinite(dram) else None},
        "cycles_per_sample": max(times) * clock0,
        "latency_cycles": latency_s * clock0,
        "latency_s": latency_s,
        "bubble_cycles_per_batch": bubble_s * clock0,
        "macs_per_sample": macs,
        "pe_utilisation": macs * steady / sum(b.multipliers * b.clock_hz for b in boards),
        "link_utilisation_max": max(link_utilisation, default=0.0),
        "link_bits_per_sample_max": max((max(f, b_) for f, b_, _ in link_use), default=0.0),
        "memory_bits_max": max(used),
        "row_split_layers": {lu.work.name: lu.reason for lu in layers if lu.mode == "rows"},
        "input_split_layers": {lu.work.name: lu.reason for lu in layers
                               if lu.mode == "inputs"},
        "efficiency": efficiency,
        "assumptions": {"link_ber": cluster.link_ber,
                        "link_efficiency": perf.link_efficiency(cluster.link_ber),
                        "local_weight_bits": perf.LOCAL_WEIGHT_BITS,
                        "cache_samples": perf.CACHE_SAMPLES},
    }
    return Plan({"version": PLAN_VERSION, "target": "paper", "network": network.to_dict(),
                 "cluster": cluster.to_dict(), "batch_size": batch_size,
                 "chips": chip_dicts, "summary": summary})


def _check_gateware_chips(chips, network):
    """Raise FpdeepError unless ``chips`` (as :meth:`Plan.gateware_slices`) cover the
    network's weighted layers as the gateware builds them: whole layers in order, or
    one layer's output channels in contiguous ranges on consecutive chips, one slice
    per such chip; FP and WU rows positive, BP rows positive except in the first
    layer (0)."""
    from .layers import gateware_layers
    layers = gateware_layers(network)
    index, channel = 0, 0
    for c, slices in enumerate(chips):
        if not slices:
            raise FpdeepError(f"plan: chip {c} holds no layer")
        for name, (lo, hi), rows in slices:
            if index >= len(layers):
                raise FpdeepError(f"plan: chip {c}: layer {name!r} is past the network's "
                                  f"last weighted layer")
            layer = layers[index]
            cout = layer.geometry.cout
            if name != layer.name:
                raise FpdeepError(f"plan: chip {c} holds {name!r} where the chain needs "
                                  f"{layer.name!r}")
            if lo != channel or not lo < hi <= cout:
                raise FpdeepError(f"plan: chip {c}: channels [{lo}, {hi}) of {name!r} do not "
                                  f"continue the layer's channels at {channel} (of {cout})")
            if (lo, hi) != (0, cout) and len(slices) != 1:
                raise FpdeepError(f"plan: chip {c} holds a slice of {name!r} and other "
                                  f"layers; a chip with a slice holds nothing else")
            for kind in ("fp", "wu") + (("bp",) if index else ()):
                if rows[kind] < 1:
                    raise FpdeepError(f"plan: chip {c}: {name!r} needs a {kind} engine of "
                                      f"at least one row, not {rows[kind]}")
            if not 1 <= rows.get("wu_lanes", 1) <= layer.geometry.wo:
                raise FpdeepError(f"plan: chip {c}: {name!r} needs WU lanes from 1 to "
                                  f"{layer.geometry.wo}, not {rows['wu_lanes']}")
            if not index and rows["bp"]:
                raise FpdeepError(f"plan: chip {c}: {name!r} is the first layer and has no "
                                  f"BP engine, not {rows['bp']} rows")
            if hi == cout:
                index, channel = index + 1, 0
            else:
                channel = hi
    if index < len(layers):
        raise FpdeepError(f"plan: the chips stop before layer {layers[index].name!r}")


def _gateware_plan(network, cluster, batch_size):
    """:func:`plan_network` for ``target="gateware"``: see :mod:`.partition`."""
    from . import model
    from .partition import limit, plan_chips
    from .workload import workload
    n = len(cluster)
    boards = [cluster.board(i) for i in range(n)]
    timing = model.TIMING
    layers, chips, result, candidates, sizing = plan_chips(
        network, boards, batch_size=batch_size, timing=timing)
    works = {w.name: w for w in workload(network)}
    reason, bounds = limit(result, chips, sizing=sizing)
    cps = result["cycles_per_sample"]
    clock = boards[0].clock_hz
    chip_dicts = []
    total_macs = 0
    for c, chip in enumerate(chips):
        r = result["chips"][c]
        board = boards[c]
        memory = model.memory_bits(chip, layers)
        slices, macs = [], 0
        for s in chip.slices:
            g, layer = s.geometry, s.layer
            engines = {}
            for kind, (rows, cols) in s.engine_shapes().items():
                kind_macs = g.macs + (0 if kind == "bp" else g.cout * g.ho * g.wo)
                macs += kind_macs
                engines[kind] = {"rows": rows, "cols": cols, "pes": rows * cols,
                                 "macs": kind_macs, "cycles_per_sample":
                                     r["engines"][f"{layer.name}.{kind}"]
                                     ["busy_cycles_per_sample"]}
                if kind == "wu":
                    # cols = kw * lanes: the lanes' multipliers are the engine's PEs.
                    engines[kind]["lanes"] = s.wu_lanes
            if chip.split:
                first = c - chip.part
                why = (f"split by output channels over chips {first}..{first + chip.parts - 1}: "
                       f"the fastest chain simulated (the gateware splits layers by output "
                       f"channels only)")
            else:
                why = "whole layer"
            slices.append({
                "layer": layer.name, "kind": layer.kind,
                "split": "channels" if chip.split else "layers", "reason": why,
                "out_channels": [s.lo, s.hi], "rows": [0, g.ho],
                "in_channels": [0, g.cin], "in_features": [0, g.cin * g.h * g.w],
                "post_ops": list(works[layer.name].post_ops),
                "engines": engines,
            })
        total_macs += macs
        # Words and symbols per sample on the link to chip c + 1: ACT down, ERR up, and
        # the held layer's WGT exchange, once per batch.
        link = {}
        for way in ("down", "up"):
            act, wgt = r[f"link_{way}"] or {}, r[f"wgt_{way}"] or {}
            link[way] = {what: (act.get(f"{what}_per_sample", 0.0),
                                wgt.get(f"{what}_per_batch", 0.0) / batch_size)
                         for what in ("words", "symbols")}
        symbols = max(sum(link[way]["symbols"]) for way in link)
        gateware = dict(r)
        gateware["estimate"] = {"forward": chip.estimate[0], "backward": chip.estimate[1]}
        gateware["memory_bits"] = memory
        weights = sum(s.geometry.weights for s in chip.slices)
        held = [{"chip": c - 1, "layer": chip.held.layer.name,
                 "count": chip.held.geometry.weights}] if chip.held else []
        chip_dicts.append({
            "index": c, "board": board.name, "slices": slices,
            "weights": {"local": [{"layer": s.layer.name, "count": s.geometry.weights}
                                  for s in chip.slices if s.layer.name != chip.remote],
                        "stored_for": held,
                        "stored_at": [{"chip": c + 1, "layer": s.layer.name,
                                       "count": s.geometry.weights}
                                      for s in chip.slices if s.layer.name == chip.remote]},
            "buffers": {"feature_slots": chip.slots,
                        "feature_slot_bits": model.feature_bits(chip, layers),
                        "feature_cache_bits": memory["features"], "line_buffer_bits": 0,
                        "batch_buffer_bits": 0},
            "predicted": {
                "cycles_per_sample": r["cycles_per_sample"], "pes": chip.pes(),
                "multipliers": chip.multipliers(last=c == n - 1, timing=timing),
                "multipliers_capacity": board.multipliers,
                "macs_per_sample": macs,
                "pe_utilisation": macs / (chip.pes() * r["cycles_per_sample"]),
                "memory_bits": memory["total"], "memory_capacity_bits": board.bram_bits,
                "weight_bits": memory["weights"] + memory["held"], "weights": weights,
                "dram_bits_per_sample": 0.0,
                "link_bits_per_sample": {
                    "fwd": {"act": link["down"]["words"][0] * 16,
                            "weights": link["down"]["words"][1] * 16},
                    "bwd": {"err": link["up"]["words"][0] * 16,
                            "weights": link["up"]["words"][1] * 16},
                    "weights": (link["down"]["words"][1] + link["up"]["words"][1]) * 16},
                "link_utilisation": symbols / r["cycles_per_sample"],
                "gateware": gateware,
            },
        })
    estimates = [max(chip.estimate) for chip in chips]
    images = clock / cps
    limiting = ("slots" if reason.startswith("round trip") else
                "compute" if reason.startswith("chip") else "link")
    summary = {
        "chips": n,
        "balance": max(estimates) / (sum(estimates) / n),
        "images_per_s": images,
        "images_per_s_steady": images,
        "gops": images * total_macs * perf.OPS_PER_MAC / 1e9,
        "limiting_factor": limiting,
        "cycles_per_sample": cps,
        "latency_cycles": result["latency_cycles"],
        "latency_s": result["latency_cycles"] / clock,
        "bubble_cycles_per_batch": max(0.0, batch_size * (cps - max(estimates))),
        "macs_per_sample": total_macs,
        "pe_utilisation": total_macs / (sum(chip.pes() for chip in chips) * cps),
        "link_utilisation_max": max((d["predicted"]["link_utilisation"] for d in chip_dicts),
                                    default=0.0),
        "memory_bits_max": max(d["predicted"]["memory_bits"] for d in chip_dicts),
        "row_split_layers": {},
        "input_split_layers": {},
        "gateware": {
            "cycles_per_sample": cps,
            "images_per_s": images,
            "latency_cycles": result["latency_cycles"],
            "run_cycles": {str(k): v for k, v in result["run_cycles"].items()},
            "perf_cycles": {str(k): v for k, v in result["perf_cycles"].items()},
            "slots": [chip.slots for chip in chips],
            "slots_memory_caps": sizing["memory_caps"],
            "slot_tolerance": sizing["tolerance"],
            "batch_size": batch_size,
            "limit": reason,
            "bounds": bounds,
            "with_more_slots": {
                "each_plus_1": model.simulate(chips, layers, batch_size=batch_size,
                                           slots=[chip.slots + 1 for chip in chips],
                                           timing=timing)["cycles_per_sample"],
                "unlimited": sizing["unlimited_cycles_per_sample"]},
            "candidates": candidates,
            "timing": timing.to_dict(),
        },
    }
    return Plan({"version": PLAN_VERSION, "target": "gateware", "network": network.to_dict(),
                 "cluster": cluster.to_dict(), "batch_size": batch_size,
                 "chips": chip_dicts, "summary": summary})
