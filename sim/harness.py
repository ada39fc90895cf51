"""Simulate a training core or a cluster against the NumPy reference.

:class:`CoreRun` builds a :class:`~fpdeep.rtl.core.TrainingCore` (or a
:class:`~fpdeep.rtl.cluster.Cluster` of them), feeds it samples through its host
port in Amaranth's simulator (or, with ``backend="verilator"``, in Verilator:
:mod:`fpdeep.sim.verilator`), and returns what it measured: the master weights
after training, the host counters, and the per-chip, per-engine and per-link
performance counters. :func:`compare_weights` checks them against
:class:`~fpdeep.sim.reference.Reference` in int mode, bit for bit.
"""

from dataclasses import dataclass, field
import random
import time

import numpy as np
from amaranth.sim import Simulator

from ..plan.errors import FpdeepError
from ..rtl.cluster import Cluster
from ..rtl.core import TrainingCore
from ..rtl.link.phy import BitErrorInjector
from ..rtl.numerics import DEFAULT_NUMERICS
from ..rtl.rowlink import map_words
from .reference import Reference, init_masters

#: The host counters a run reads back.
COUNTERS = ("samples", "correct", "batches", "saturations", "loss_sum")
#: The link-status counters a cluster's run reads back, per link end
#: (:data:`~fpdeep.rtl.link.endpoint.LinkStatus`; the Verilator driver's ``link_*`` ports).
LINK_STATUS = ("replays", "timeouts", "bad_frames")

__all__ = ["CoreRun", "RunResult", "EngineFigures", "compare_weights", "digits_samples",
           "send_sample", "read_masters", "link_status", "status_ports", "LINK_STATUS"]


def digits_samples(count, *, seed=0):
    """``count`` samples of ``sklearn``'s 8x8 digits as float (1, 8, 8) maps in [0, 1]."""
    from sklearn.datasets import load_digits
    digits = load_digits()
    order = np.random.default_rng(seed).permutation(len(digits.target))[:count]
    return digits.images[order][:, None] / 16.0, digits.target[order]


@dataclass
class EngineFigures:
    name: str
    pes: int
    busy_cycles: int
    steps: int
    macs_per_sample: int


@dataclass
class RunResult:
    masters: dict
    samples: int
    correct: int
    batches: int
    saturations: int
    #: Sum of per-sample cross-entropies in bits, Q8.8 (:func:`~fpdeep.rtl.numerics.cross_entropy_np`).
    loss_sum: int
    #: Cycles between one sample's completion (its WU done) and the next's.
    sample_cycles: list
    total_cycles: int
    engines: list = field(default_factory=list)
    #: Per chip, the most feature-memory slots in use at once.
    slots_peak: list = field(default_factory=list)
    #: Cycles from the first sample word to the last chip going idle.
    run_cycles: int = 0
    #: Per chip, its busy cycles (``perf_cycles``).
    chip_cycles: list = field(default_factory=list)
    #: ``{(link, "down"|"up", "act"|"err"|"wgt"|"ctl"): payload words}`` (clusters).
    link_words: dict = field(default_factory=dict)
    #: Seconds the simulation took (Verilator: the simulator process, build excluded).
    wall_seconds: float = 0.0
    backend: str = "pysim"
    #: Verilator only: Verilog conversion plus the C++ build (0 build when cached).
    build_seconds: float = 0.0
    #: Clusters: ``{(link, "a"|"b"): {"replays", "timeouts", "bad_frames": count}}``
    #: of each link end (``a`` sends down, ``b`` up), 16-bit counters that wrap.
    link_status: dict = field(default_factory=dict)
    #: Clock cycles simulated in all, weight reads and checkpoints included.
    clocks: int = 0

    @property
    def cycles_per_sample(self):
        """Busy cycles per sample, SGD steps included (amortized over their batch)."""
        return self.total_cycles / max(1, self.samples)

    def utilization_table(self):
        """Rows of ``(engine, PEs, active, step fraction, useful-MAC fraction)`` per sample."""
        period = self.cycles_per_sample
        rows = []
        for e in self.engines:
            rows.append((e.name, e.pes, e.busy_cycles / self.samples / period,
                         e.steps / self.samples / period,
                         e.macs_per_sample / (e.pes * period)))
        return rows


class CoreRun:
    """A training run on one chip or a chain of them, in Amaranth's simulator or Verilator.

    Parameters
    ----------
    network : Network
    batch_size, lr, momentum, seed :
        As :class:`~fpdeep.rtl.core.TrainingCore`; ``seed`` picks the initial weights.
    engines : dict, optional
        Engine sizes per layer.
    splits : list of (first, stop), optional
        Weighted layers per chip. With more than one chip the design is a
        :class:`~fpdeep.rtl.cluster.Cluster`.
    """

    def __init__(self, network, *, batch_size=8, lr=0.02, momentum=0.9, seed=0, engines=None,
                 numerics=DEFAULT_NUMERICS, splits=None, slots=2, held=None):
        self.network, self.numerics = network, numerics
        self.batch_size, self.lr, self.momentum = batch_size, lr, momentum
        self.masters = init_masters(network, numerics, seed)
        args = dict(masters=self.masters, numerics=numerics, batch_size=batch_size, lr=lr,
                    momentum=momentum, engines=engines, slots=slots)
        if splits is not None and len(splits) > 1:
            self.top = Cluster(network, splits=splits, held=held or {}, **args)
            self.chips = self.top.chips
        else:
            # One chip: per-chip lists (as a plan gives them) have one entry.
            for key in ("engines", "slots"):
                if isinstance(args[key], (list, tuple)):
                    args[key] = args[key][0]
            self.top = TrainingCore(network, **args)
            self.chips = [self.top]
        self.core = self.chips[0]

    def reference(self):
        return Reference(self.network, mode="int", numerics=self.numerics, lr=self.lr,
                         momentum=self.momentum, batch_size=self.batch_size,
                         masters=self.masters)

    def run(self, samples, labels, *, progress=None, vcd=None, max_cycles_per_sample=10**6,
            backend="pysim", checkpoints=(), on_checkpoint=None, link_ber=0.0, link_seed=0):
        """Train on quantized ``samples`` (int arrays) with ``labels``; returns a :class:`RunResult`.

        ``backend`` is ``"pysim"`` (Amaranth's simulator) or ``"verilator"``
        (:mod:`fpdeep.sim.verilator`: built once per design into a cache, about
        two orders of magnitude faster). Both give the same result, cycle for
        cycle, on one chip or a cluster; Verilator reads the masters through the
        host port (a cluster's reaches every chip's over the links) and does not
        write a VCD yet.

        ``checkpoints``: sample counts (increasing, below ``len(samples)``, e.g.
        epoch ends) at which sending stops until the chips are idle, and
        ``on_checkpoint(samples_done, masters, counters)`` is called with every
        master weight and the host counters (Verilator: every output port) then.
        ``link_ber``: each bit of each link wire flips with this probability, drawn
        from generators seeded by ``link_seed``, reproducibly; each backend has its
        own generator (:class:`~fpdeep.rtl.link.phy.BitErrorInjector` in pysim, the
        driver's in Verilator), so their error patterns and cycles differ, not
        their weights.
        """
        checkpoints = [int(c) for c in checkpoints]
        if checkpoints != sorted(set(checkpoints)) or any(not 0 < c < len(samples)
                                                          for c in checkpoints):
            raise FpdeepError(f"checkpoints must increase within 1 .. {len(samples) - 1}, "
                              f"not {checkpoints}")
        if not 0 <= link_ber < 1:
            raise FpdeepError(f"the link bit-error rate must be in [0, 1), not {link_ber!r}")
        if link_ber and not isinstance(self.top, Cluster):
            raise FpdeepError("a bit-error rate needs links: a cluster of at least 2 chips")
        if backend == "verilator":
            return self._run_verilator(samples, labels, progress=progress, vcd=vcd,
                                       max_cycles_per_sample=max_cycles_per_sample,
                                       checkpoints=checkpoints, on_checkpoint=on_checkpoint,
                                       link_ber=link_ber, link_seed=link_seed)
        if backend != "pysim":
            raise FpdeepError(f"unknown simulation backend {backend!r}: "
                              f"choose 'pysim' or 'verilator'")
        top, chips = self.top, self.chips
        result = {}
        start = time.perf_counter()
        stops = checkpoints + [len(labels)]
        resumed = [0]       # the checkpoints passed; the producer waits for each

        async def producer(ctx):
            # Samples go in back to back: the core takes the next one as soon as it
            # has a free feature-memory slot, so FP overlaps earlier samples' BP.
            for index, (x, label) in enumerate(zip(samples, labels)):
                while index >= stops[resumed[0]]:
                    await ctx.tick()
                await send_sample(ctx, top.host.sample, x, label)

        async def drain(ctx):
            while ctx.get(top.host.busy):
                await ctx.tick()
                result["clocks"] += 1

        def masters_now(ctx):
            masters = {}
            for chip in chips:
                read_masters(ctx, chip, into=masters)
            return masters

        def statuses_now(ctx):
            return {(k, end): {name: int(getattr(ctx.get(getattr(link, f"{end}_status")), name))
                               for name in LINK_STATUS}
                    for k, link in enumerate(top.links) for end in ("a", "b")}

        async def testbench(ctx):
            sample_cycles, finished, cycles, idle = [], 0, 0, 0
            result["clocks"] = 0
            while finished < len(labels):
                if finished == stops[resumed[0]]:
                    await drain(ctx)
                    if on_checkpoint:
                        counters = {f"host__{name}": ctx.get(getattr(top.host, name))
                                    for name in COUNTERS}
                        if isinstance(top, Cluster):
                            counters.update(status_ports(top, statuses_now(ctx)))
                        on_checkpoint(finished, masters_now(ctx), counters)
                    resumed[0] += 1
                    idle = 0
                await ctx.tick()
                cycles += 1
                result["clocks"] += 1
                idle += 1
                done = ctx.get(top.host.samples)
                for index in range(finished, done):
                    sample_cycles.append(idle)
                    idle = 0
                    if progress:
                        progress(index + 1, len(labels), sample_cycles[-1])
                finished = done
                if idle > max_cycles_per_sample:
                    raise FpdeepError(f"the core did not finish sample {finished} within "
                                      f"{max_cycles_per_sample} cycles")
            while ctx.get(top.host.busy):
                await ctx.tick()
                cycles += 1
                result["clocks"] += 1
            result["run_cycles"] = cycles
            result["chip_cycles"] = [ctx.get(chip.perf_cycles) for chip in chips]
            if isinstance(top, Cluster):
                result["link_words"] = _link_words(top, [ctx.get(words)
                                                         for words in top.perf_link_words])
                result["link_status"] = statuses_now(ctx)
            result["sample_cycles"] = sample_cycles
            result["counters"] = {name: ctx.get(getattr(top.host, name))
                                  for name in COUNTERS}
            # Chip 0 is busy from a sample's first word until its errors are back.
            result["total_cycles"] = max(ctx.get(chip.perf_cycles) for chip in chips)
            result["slots_peak"] = [ctx.get(chip.perf_slots_peak) for chip in chips]
            result["busy"] = [ctx.get(chip.perf_busy[k]) for chip in chips
                              for k in range(len(chip.engine_names))]
            result["steps"] = [ctx.get(chip.perf_steps[k]) for chip in chips
                               for k in range(len(chip.engine_names))]
            result["masters"] = {}
            for chip in chips:
                read_masters(ctx, chip, into=result["masters"])

        sim = Simulator(top)
        sim.add_clock(1e-8)
        sim.add_testbench(producer, background=True)
        sim.add_testbench(testbench)
        if link_ber:
            for k, mask in enumerate(top.err_masks):
                injector = BitErrorInjector(len(mask), link_ber,
                                            random.Random(link_seed * len(top.err_masks) + k))
                sim.add_testbench(injector.testbench(mask), background=True)
        if vcd:
            from .waves import write_waves
            with write_waves(sim, top, vcd):
                sim.run()
        else:
            sim.run()

        return _run_result(chips, result, wall_seconds=time.perf_counter() - start)

    def _run_verilator(self, samples, labels, *, progress, vcd, max_cycles_per_sample,
                       checkpoints, on_checkpoint, link_ber, link_seed):
        from . import verilator
        if vcd:
            raise FpdeepError("the Verilator backend does not write a VCD yet; use "
                              "backend 'pysim' (fpdeep sim --backend pysim) for waveforms")
        # A design elaborates once, so one build serves every Verilator run of this
        # CoreRun; each run starts a fresh simulator from the initial masters.
        build = getattr(self, "verilator_build", None) or verilator.build_top(self.top)
        self.verilator_build = build
        raw, build, seconds = verilator.run_top(self.top, samples, labels, progress=progress,
                                                max_cycles_per_sample=max_cycles_per_sample,
                                                build=build, checkpoints=checkpoints,
                                                on_checkpoint=on_checkpoint,
                                                link_ber=link_ber, link_seed=link_seed)
        # The ports of verilator.DriverTop: every chip's counters, in chip order.
        outputs, chips = raw["outputs"], len(self.chips)
        engines = sum(len(chip.engine_names) for chip in self.chips)
        chip_cycles = verilator.port_array(outputs["perf_cycles"], chips)
        result = {
            "sample_cycles": raw["sample_cycles"],
            "counters": {name: outputs[f"host__{name}"] for name in COUNTERS},
            "total_cycles": max(chip_cycles),
            "run_cycles": raw["run_cycles"],
            "chip_cycles": chip_cycles,
            "slots_peak": verilator.port_array(outputs["perf_slots_peak"], chips),
            "busy": verilator.port_array(outputs["perf_busy"], engines),
            "steps": verilator.port_array(outputs["perf_steps"], engines),
            "masters": raw["masters"],
            "clocks": raw["clocks"],
        }
        if isinstance(self.top, Cluster):
            result["link_words"] = _link_words(self.top, verilator.port_array(
                outputs["perf_link_words"], len(self.top.perf_link_words)))
            result["link_status"] = link_status(self.top, outputs)
        return _run_result(self.chips, result, wall_seconds=seconds, backend="verilator",
                           build_seconds=build.build_seconds + build.convert_seconds)


def link_status(cluster, outputs):
    """``{(link, "a"|"b"): {field: count}}`` from :class:`~fpdeep.sim.verilator.DriverTop`'s
    ``link_*`` port values ``outputs`` (as a Verilator run or checkpoint dumps them)."""
    from .verilator import port_array
    wires = 2 * len(cluster.links)
    fields = {name: port_array(outputs[f"link_{name}"], wires, 16) for name in LINK_STATUS}
    return {(k, end): {name: fields[name][2 * k + j] for name in LINK_STATUS}
            for k in range(len(cluster.links)) for j, end in enumerate(("a", "b"))}


def status_ports(cluster, statuses):
    """The inverse of :func:`link_status`: ``{"link_<field>": packed value}``."""
    if not statuses:        # one chip: no links
        return {}
    wires = [statuses[(k, end)] for k in range(len(cluster.links)) for end in ("a", "b")]
    return {f"link_{name}": sum(status[name] << (16 * w) for w, status in enumerate(wires))
            for name in LINK_STATUS}


def _link_words(cluster, counts):
    """``{(link, direction, channel): words}`` from a cluster's ``perf_link_words`` values."""
    traffic = cluster.LINK_TRAFFIC
    return {(k, direction, vc): counts[k * len(traffic) + j]
            for k in range(len(cluster.links)) for j, (direction, vc) in enumerate(traffic)}


def _run_result(chips, result, *, wall_seconds, backend="pysim", build_seconds=0.0):
    """A :class:`RunResult` from what a backend measured (the same fields for each)."""
    names, pes, macs = [], [], []
    for k, chip in enumerate(chips):
        shapes, chip_macs = chip.engine_array_shapes(), chip.engine_macs()
        prefix = f"chip{k}." if len(chips) > 1 else ""
        for name in chip.engine_names:
            names.append(prefix + name)
            pes.append(shapes[name][0] * shapes[name][1])
            macs.append(chip_macs[name])
    engines = [EngineFigures(*figures)
               for figures in zip(names, pes, result["busy"], result["steps"], macs)]
    counters = result["counters"]
    return RunResult(masters=result["masters"], samples=counters["samples"],
                     correct=counters["correct"], batches=counters["batches"],
                     saturations=counters["saturations"], loss_sum=counters["loss_sum"],
                     sample_cycles=result["sample_cycles"],
                     total_cycles=result["total_cycles"], engines=engines,
                     wall_seconds=wall_seconds, backend=backend, build_seconds=build_seconds,
                     slots_peak=result["slots_peak"], run_cycles=result.get("run_cycles", 0),
                     chip_cycles=result.get("chip_cycles", []),
                     link_words=result.get("link_words", {}),
                     link_status=result.get("link_status", {}),
                     clocks=result.get("clocks", 0))


async def send_sample(ctx, port, x, label):
    """Send a label and a quantized sample's values, in stream order, on a host sample stream."""
    ctx.set(port.valid, 1)
    for word in [int(label)] + map_words(x):
        ctx.set(port.payload, word)
        await ctx.tick().until(port.ready)
    ctx.set(port.valid, 0)


def read_masters(ctx, core, into=None):
    """The master weights of every layer, read from the simulated memories.

    A chip holding a slice of a layer's output channels fills that slice of the
    layer's arrays in ``into`` (made full size on first sight).
    """
    masters = {} if into is None else into
    stores = [(spec.name, spec.geometry, unit, core.lo, core.hi, core.split)
              for spec, unit in zip(core.specs, core.units) if unit.master is not None]
    if core.holder is not None:         # a neighbour's masters, held here
        layer, lo, hi = core.held
        stores.append((layer, core.held_geometry, core.holder, lo, hi, True))
    for name, g, store, lo, hi, partial in stores:
        w = np.zeros((g.cout, g.cin, g.kh, g.kw), dtype=np.int64)
        b = np.zeros(g.cout, dtype=np.int64)
        for o in range(g.cout):
            base = o * store.words_per_channel
            for i in range(g.cin):
                for ky in range(g.kh):
                    w[o, i, ky] = list(ctx.get(store.master.data[base + i * g.kh + ky]))
            b[o] = ctx.get(store.master.data[base + g.cin * g.kh])[0]
        if not partial:
            masters[name] = (w, b)
            continue
        channels = dict(core.network_layer_channels)[name]
        full = masters.setdefault(name, (
            np.zeros((channels,) + w.shape[1:], dtype=np.int64),
            np.zeros(channels, dtype=np.int64)))
        full[0][lo:hi], full[1][lo:hi] = w, b
    return masters


def compare_weights(masters, reference):
    """``(equal, total, first_mismatch)`` of gateware masters against the reference's."""
    equal = total = 0
    first = None
    for name, (w, b) in masters.items():
        rw, rb = reference.params[name]
        for got, want, kind in ((w, rw.reshape(w.shape), "W"), (b, rb, "b")):
            same = got == want
            equal += int(same.sum())
            total += same.size
            if first is None and not same.all():
                index = tuple(int(v) for v in np.argwhere(~same)[0])
                first = f"{name}.{kind}{list(index)}: {int(got[index])} != {int(want[index])}"
    return equal, total, first
