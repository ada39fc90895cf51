"""The single-chip training core: FP, loss, BP and WU of a whole network on one FPGA."""

from dataclasses import dataclass, replace

from amaranth import *
from amaranth.lib import wiring, data, memory, stream
from amaranth.lib.wiring import In, Out

from ..plan.errors import FpdeepError
from ..plan.layers import gateware_layers
from .activation import ActivationWriter
from .backprop import ErrorDerivative, ErrorStore
from .conv import ConvEngine, RowLayout
from .host import HostSignature
from .loss import LossUnit
from .masters import init_masters
from .numerics import DEFAULT_NUMERICS, saturating_add_hw
from .partial import PartialSum
from .rowlink import WORD, MapReceiver, MapSender, RowDeserializer, RowSerializer
from .weight_holder import WeightHolder
from .weight_update import WeightUpdateUnit

__all__ = ["EngineSizes", "TrainingCore", "network_layers"]


@dataclass(frozen=True)
class EngineSizes:
    """Rows of the FP, BP and WU arrays of one layer (columns follow from the layer)."""
    fp: int
    bp: int
    wu: int


#: Weighted layers with their post-ops, as the chips and the planner's model see them.
network_layers = gateware_layers


def _connect_rows(m, source, sink):
    """Join a stream of rows to a sink that takes channel, row and values only.

    Returns the saturation events of this cycle's transfer (0 if the source counts none).
    """
    m.d.comb += [
        sink.valid.eq(source.valid),
        sink.payload.channel.eq(source.payload.channel),
        sink.payload.row.eq(source.payload.row),
        sink.payload.values.eq(source.payload.values),
        source.ready.eq(sink.ready),
    ]
    if "saturated" not in source.payload.shape().members:
        return 0
    return Mux(source.valid & source.ready, source.payload.saturated, 0)


def _connect_slot(m, port, mem_port, offset):
    """Join a component's memory port to a memory port at address ``addr + offset``.

    The feature memories hold ``slots`` maps one after another; ``offset`` picks the
    slot (``slot * depth``) of the side, forward or backward, that owns ``port``.
    """
    m.d.comb += [mem_port.addr.eq(port.addr + offset), mem_port.en.eq(port.en)]
    if isinstance(mem_port, memory.ReadPort):
        m.d.comb += port.data.eq(mem_port.data)
    else:
        m.d.comb += mem_port.data.eq(port.data)


def default_engine_sizes(spec, first):
    g = spec.geometry
    return EngineSizes(fp=min(g.cout, 16), bp=0 if first else min(g.cin, 16),
                       wu=min(g.cout, 16))


class TrainingCore(wiring.Component):
    """Trains a network with synchronous mini-batch SGD on one chip.

    Per sample, in order: load the sample from the host; FP of every layer
    (:class:`~fpdeep.rtl.conv.ConvEngine` with :class:`~fpdeep.rtl.activation.ActivationWriter`),
    all layers at once as a row pipeline (a layer's steps wait for their input rows,
    counted by the writer in front, and the sample's rows feed the first as they
    arrive); the loss (:class:`~fpdeep.rtl.loss.LossUnit`); then from the last layer back,
    BP of layer ``l`` (a transposed :class:`ConvEngine`, :class:`ErrorDerivative`,
    :class:`ErrorStore`) while the WU engine of layer ``l`` (inside its
    :class:`~fpdeep.rtl.weight_update.WeightUpdateUnit`) sums that layer's gradients.
    After every ``batch_size`` samples, all layers step SGD at once. The results
    equal :class:`fpdeep.sim.reference.Reference` in int mode bit for bit.

    Every engine has its own array. A forward sequencer (load, FP, send) and a
    backward one (loss or receive, BP, WU) run different samples at once; the
    feature memories they share have ``slots`` copies, so forward runs at most
    ``slots`` samples ahead, and it waits at each mini-batch's end for the SGD step.

    A core may train only a range of the weighted layers (``layers``), as one chip
    of a :class:`~fpdeep.rtl.cluster.Cluster`: it then loads the previous chip's
    output map instead of a sample, sends its own output map on ``act_out``, takes
    the errors of that map back on ``err_in`` and sends the errors at its input on
    ``err_out`` (formats in :mod:`fpdeep.rtl.rowlink`). With ``channels`` it trains
    output channels ``lo .. hi`` of one layer (see :class:`~fpdeep.rtl.cluster.Cluster`);
    with ``remote`` a neighbour holds one layer's masters (``wgt_out``/``wgt_in``),
    with ``hold`` this chip holds a neighbour's (``held_in``/``held_out``).

    Parameters
    ----------
    network : Network
    numerics : Numerics
    batch_size : int
    lr, momentum : float
    masters : dict, optional
        Initial masters ``{layer: (W, b)}``; by default
        :func:`fpdeep.rtl.masters.init_masters` with ``seed``.
    engines : dict, optional
        ``{layer: EngineSizes}``; by default one tile of up to 16 channels each.
    layers : (first, stop), optional
        The weighted layers this core trains; by default all of them.
    channels : (lo, hi), optional
        Output channels of the (only) layer, when a layer is split across chips.
    slots : int
        Feature-memory copies: how many samples FP may run ahead of BP/WU.
    remote : tuple of str
        At most one local layer whose masters the next chip holds.
    hold : dict, optional
        ``layer, lo, hi, geometry, masters`` of the previous chip's layer held here.

    Members
    -------
    host : Out(HostSignature())
        Samples in, counters and weights out. Weight address of layer ``l``'s
        weight ``(o, i, ky, kx)``: ``base[l] + ((o * (cin*kh + 1) + i*kh + ky) << kx_bits) + kx``;
        bias ``o``: the word ``o * (cin*kh + 1) + cin*kh``, ``kx = 0`` (:meth:`weight_address`).
    perf_cycles : Out(32)
        Cycles spent on samples and updates.
    perf_busy, perf_steps : Out(ArrayLayout(32, engine count))
        Per engine (:attr:`engine_names`), cycles busy (less waits for input rows) and steps.
    act_out : Out(stream.Signature(signed(16)))
        Unless the core ends the network: label and output map, in stream order
        (:func:`~fpdeep.rtl.rowlink.map_words`), rows as they are written.
    err_in : In(stream.Signature(signed(16)))
        Unless the core ends the network: framed rows of the output map's errors.
    err_out : Out(stream.Signature(signed(16)))
        Unless the core starts the network: framed rows of the errors at its input.
    """

    def __init__(self, network, *, masters=None, numerics=DEFAULT_NUMERICS, batch_size=8,
                 lr=0.02, momentum=0.9, engines=None, seed=0, layers=None, channels=None,
                 slots=2, remote=(), hold=None):
        self.network, self.numerics = network, numerics
        if not isinstance(slots, int) or slots < 1:
            raise FpdeepError(f"feature-memory slots must be a positive int, not {slots!r}")
        self.slots = slots
        if masters is None:
            masters = init_masters(network, numerics, seed)
        all_specs = network_layers(network)
        first, stop = layers if layers is not None else (0, len(all_specs))
        if not (isinstance(first, int) and isinstance(stop, int) and
                0 <= first < stop <= len(all_specs)):
            raise FpdeepError(f"layers {layers!r} is not a range of the {len(all_specs)} "
                              f"weighted layers of network {network.name!r}")
        self.first_layer, self.stop_layer = first, stop
        #: ``(layer, output channels)`` of every weighted layer of the network.
        self.network_layer_channels = [(s.name, s.geometry.cout) for s in all_specs]
        self.is_last = stop == len(all_specs)
        self.specs = all_specs[first:stop]
        # A slice of output channels [lo, hi) of a layer split across chips: the
        # chip holds that layer alone. Its neighbours in the split hold the others.
        layer_channels = self.specs[-1].geometry.cout
        lo, hi = channels if channels is not None else (0, layer_channels)
        if not (isinstance(lo, int) and isinstance(hi, int) and 0 <= lo < hi <= layer_channels):
            raise FpdeepError(f"channels {channels!r} is not a range of the {layer_channels} "
                              f"output channels of layer {self.specs[-1].name!r}")
        self.split = (lo, hi) != (0, layer_channels)
        if self.split and stop - first != 1:
            raise FpdeepError(f"a chip holding channels {lo}..{hi} of layer "
                              f"{self.specs[-1].name!r} must hold that layer alone")
        self.lo, self.hi, self.layer_channels = lo, hi, layer_channels
        if self.split:
            spec = self.specs[-1]
            self.specs = [replace(spec, geometry=spec.geometry.channels(lo, hi))]
        #: The chip ends the chain: it holds the loss (the last slice of the last layer).
        self.has_loss = self.is_last and hi == layer_channels
        #: Channels above this slice are computed by the chips behind, those below in front.
        self.group_first, self.group_last = lo == 0, hi == layer_channels
        self.input_shape = network.input_shape if first == 0 else all_specs[first - 1].out_shape
        if not isinstance(batch_size, int) or batch_size < 1:
            raise FpdeepError(f"batch size must be a positive int, not {batch_size!r}")
        self.batch_size = batch_size
        self.rate_q = numerics.rate_from_float(lr / batch_size)
        self.momentum_q = numerics.rate_from_float(momentum, name="momentum") if momentum else 0
        engines = dict(engines or {})
        self.sizes = []
        for index, spec in enumerate(self.specs):
            size = engines.pop(spec.name, None) or default_engine_sizes(
                spec, not self.has_bp(index))
            for kind in ("fp", "wu") + (("bp",) if self.has_bp(index) else ()):
                rows = getattr(size, kind)
                if not isinstance(rows, int) or rows < 1:
                    raise FpdeepError(f"layer {spec.name!r}: {kind} engine rows must be a "
                                      f"positive int, not {rows!r}")
            self.sizes.append(size)
        if engines:
            raise FpdeepError(f"engine sizes given for unknown layers: {sorted(engines)}")

        n = numerics
        self.units = []
        for index, (spec, size) in enumerate(zip(self.specs, self.sizes)):
            if spec.name not in masters:
                raise FpdeepError(f"no initial weights for layer {spec.name!r}")
            weights, biases = masters[spec.name]
            if self.split:
                weights, biases = weights[lo:hi], biases[lo:hi]
            self.units.append(WeightUpdateUnit(
                geometry=spec.geometry, wu_rows=size.wu, fp_rows=size.fp,
                bp_rows=size.bp if self.has_bp(index) else None, numerics=n,
                masters=(weights, biases), remote=spec.name in remote,
                rate_q=self.rate_q, momentum_q=self.momentum_q, batch_size=batch_size))
        # Weight balancing: a neighbour may hold the masters (and velocities) of one of
        # this chip's layers, and run its SGD step: gradient sums go out on the link's
        # WGT channel once per mini-batch, the new 16-bit copies come back.
        remote = tuple(remote)
        unknown = sorted(set(remote) - {spec.name for spec in self.specs})
        if unknown or len(remote) > 1:
            raise FpdeepError(f"remote weights {list(remote)!r}: a chip can have the masters "
                              f"of one of its own layers ({[s.name for s in self.specs]}) held "
                              f"by a neighbour")
        self.remote_layer = remote[0] if remote else None
        #: ``(layer, lo, hi)``: the neighbour's layer (channels) whose masters this chip holds.
        self.held = None
        self.holder = None
        if hold is not None:
            self.held = (hold["layer"], hold["lo"], hold["hi"])
            self.held_geometry = hold["geometry"]
            self.holder = WeightHolder(geometry=hold["geometry"], numerics=n,
                                       masters=hold["masters"], rate_q=self.rate_q,
                                       momentum_q=self.momentum_q, batch_size=batch_size)
        self.bases = []
        base = 0
        for unit in self.units:
            self.bases.append(base)
            base += unit.host_span
        self.holder_base = base
        if self.holder is not None:
            base += self.holder.host_span
        self.weight_space = base
        if base > 1 << 20:
            raise FpdeepError(f"{base} weight addresses exceed the host's 20-bit space")

        self.engine_names = []
        for index, spec in enumerate(self.specs):
            self.engine_names += [f"{spec.name}.fp", f"{spec.name}.wu"]
            if self.has_bp(index):
                self.engine_names.append(f"{spec.name}.bp")
        members = {
            "host": Out(HostSignature()),
            "perf_cycles": Out(32),
            "perf_slots_peak": Out(range(slots + 1)),
            "perf_busy": Out(data.ArrayLayout(32, len(self.engine_names))),
            "perf_steps": Out(data.ArrayLayout(32, len(self.engine_names))),
        }
        if not self.has_loss:
            members["act_out"] = Out(stream.Signature(WORD))
            members["err_in"] = In(stream.Signature(WORD))
        if first > 0 or lo > 0:
            members["err_out"] = Out(stream.Signature(WORD))
        if self.remote_layer is not None:
            members["wgt_out"] = Out(stream.Signature(WORD))      # gradient sums, per batch
            members["wgt_in"] = In(stream.Signature(WORD))        # the new 16-bit copies
        if self.holder is not None:
            members["held_in"] = In(stream.Signature(WORD))
            members["held_out"] = Out(stream.Signature(WORD))
        # A write to weights beyond this chip passed by: a neighbour may hold ours.
        members["refresh_request"] = In(1)
        super().__init__(members)

    def _route_errors(self, m, source, own, passed_up, gate=C(1)):
        """Rows of errors at the last layer's output: this chip's channels (from ``lo``)
        to ``own``, renumbered from 0; those below ``lo`` to ``passed_up``."""
        mine = source.payload.channel >= self.lo
        m.d.comb += [own.valid.eq(source.valid & gate & mine),
                     own.payload.channel.eq(source.payload.channel - self.lo),
                     own.payload.row.eq(source.payload.row),
                     own.payload.values.eq(source.payload.values)]
        if passed_up is None:
            m.d.comb += source.ready.eq(gate & own.ready)
            return
        m.d.comb += [passed_up.i.valid.eq(source.valid & gate & ~mine),
                     passed_up.i.payload.channel.eq(source.payload.channel),
                     passed_up.i.payload.row.eq(source.payload.row),
                     passed_up.i.payload.values.eq(source.payload.values),
                     source.ready.eq(gate & Mux(mine, own.ready, passed_up.i.ready))]

    def has_bp(self, index):
        """Whether local layer ``index`` back-propagates (every layer but the network's first)."""
        return self.first_layer + index > 0

    def weight_address(self, layer, o, i=None, ky=0, kx=0, *, held=False):
        """Host address of weight ``(o, i, ky, kx)`` of ``layer``, or of bias ``o`` if ``i`` is None.

        With ``held``, of the neighbour's ``layer`` held here (``o`` counted from its ``lo``).
        """
        if held:
            if self.held is None or layer != self.held[0]:
                raise FpdeepError(f"this chip holds no masters of layer {layer!r}")
            store, base, g = self.holder, self.holder_base, self.held_geometry
        else:
            index = [s.name for s in self.specs].index(layer)
            store, base, g = self.units[index], self.bases[index], self.specs[index].geometry
            if store.host_span == 0:
                raise FpdeepError(f"layer {layer!r}: its masters are held by a neighbour")
        row = g.cin * g.kh if i is None else i * g.kh + ky
        word = o * store.words_per_channel + row
        return base + (word << store.kx_bits) + (0 if i is None else kx)

    def engine_array_shapes(self):
        """``{engine name: (rows, cols)}``: the PEs of each engine."""
        shapes = {}
        for index, (spec, size) in enumerate(zip(self.specs, self.sizes)):
            g = spec.geometry
            shapes[f"{spec.name}.fp"] = (size.fp, g.wo)
            shapes[f"{spec.name}.wu"] = (size.wu, g.kw)
            if self.has_bp(index):
                shapes[f"{spec.name}.bp"] = (size.bp, g.w)
        return shapes

    def engine_macs(self):
        """``{engine name: useful MACs per sample}`` (biases count as MACs)."""
        macs = {}
        for index, spec in enumerate(self.specs):
            g = spec.geometry
            macs[f"{spec.name}.fp"] = g.macs + g.cout * g.ho * g.wo
            macs[f"{spec.name}.wu"] = g.macs + g.cout * g.ho * g.wo
            if self.has_bp(index):
                macs[f"{spec.name}.bp"] = g.macs
        return macs

    def elaborate(self, platform):
        m = Module()
        n, specs = self.numerics, self.specs
        host = self.host
        count = len(specs)

        # ---- memories between the engines. What the forward path writes and the
        # backward path reads again (the input map, each layer's activations) has
        # ``slots`` copies, so that the FP of later samples overlaps the BP and WU of
        # earlier ones; the error memories belong to the backward path alone.
        slots = self.slots
        fslot = Signal(range(slots))        # the slot the forward path fills
        bslot = Signal(range(slots))        # the slot the backward path reads
        c0, h0, w0 = self.input_shape
        sample_layout = RowLayout(c0, h0, w0, n.act)
        m.submodules.sample = sample_mem = memory.Memory(
            shape=sample_layout.shape, depth=sample_layout.depth * slots, init=[])
        act_full, act_out, err_lane, err_row = [], [], [], []
        full_depths, out_depths = [], []
        # The last layer's output map also gathers the channels the chips in front
        # compute (``0 .. lo``, when the layer is split): it holds ``hi`` channels,
        # this chip's from ``lo`` on. ``full_base``/``out_base`` are those offsets.
        full_base, out_base = [], []
        for index, spec in enumerate(specs):
            g = spec.geometry
            out_channels = self.hi if index == count - 1 else g.cout
            offset = self.lo if index == count - 1 else 0
            full_channels = g.cout if spec.pool else out_channels
            full_base.append(0 if spec.pool else offset * g.ho)
            out_base.append(offset * (g.ho // 2 if spec.pool else g.ho))
            full_depths.append(full_channels * g.ho)
            full = memory.Memory(shape=RowLayout(full_channels, g.ho, g.wo, n.act).shape,
                                 depth=full_channels * g.ho * slots, init=[])
            m.submodules[f"{spec.name}_act"] = full
            act_full.append(full)
            if spec.pool:
                out_depths.append(out_channels * (g.ho // 2))
                pooled = memory.Memory(shape=RowLayout(out_channels, g.ho // 2, g.wo // 2,
                                                       n.act).shape,
                                       depth=out_channels * (g.ho // 2) * slots, init=[])
                m.submodules[f"{spec.name}_pooled"] = pooled
                act_out.append(pooled)
            else:
                out_depths.append(full_depths[-1])
                act_out.append(full)
            unit = self.units[index]
            lanes = unit.engine.e_layout
            lane_mem = memory.Memory(shape=lanes.shape, depth=lanes.depth, init=[])
            m.submodules[f"{spec.name}_err_lanes"] = lane_mem
            err_lane.append(lane_mem)
            if self.has_bp(index):
                row_mem = memory.Memory(shape=RowLayout(g.cout, g.ho, g.wo, n.error).shape,
                                        depth=g.cout * g.ho, init=[])
                m.submodules[f"{spec.name}_err_rows"] = row_mem
                err_row.append(row_mem)
            else:
                err_row.append(None)
        inputs = [sample_mem] + act_out[:-1]
        input_depths = [sample_layout.depth] + out_depths[:-1]

        # ---- engines.
        fp_engines, bp_engines, writers, stores, derivs = [], [], [], [], []
        sat_events = []
        for index, spec in enumerate(specs):
            g, size, unit = spec.geometry, self.sizes[index], self.units[index]
            m.submodules[f"{spec.name}_wu"] = unit
            fp = ConvEngine(geometry=g, rows=size.fp, in_fmt=n.act, weight_fmt=n.weight,
                            out_fmt=n.act, acc_width=n.acc_width, bias=True)
            m.submodules[f"{spec.name}_fp"] = fp
            fp_engines.append(fp)
            wiring.connect(m, fp.w_rd, unit.fp_weights.read_port())
            _connect_slot(m, fp.x_rd, inputs[index].read_port(), fslot * input_depths[index])
            _connect_slot(m, unit.x_rd, inputs[index].read_port(),
                          bslot * input_depths[index])
            wiring.connect(m, unit.e_rd, err_lane[index].read_port())

            writer = ActivationWriter(channels=g.cout, h=g.ho, w=g.wo, fmt=n.act,
                                      relu=spec.relu, pool=spec.pool)
            m.submodules[f"{spec.name}_post"] = writer
            writers.append(writer)
            sat_events.append(_connect_rows(m, fp.o, writer.i))
            full_offset = fslot * full_depths[index] + full_base[index]
            _connect_slot(m, writer.full_wr, act_full[index].write_port(), full_offset)
            if spec.pool:
                _connect_slot(m, writer.full_rd, act_full[index].read_port(), full_offset)
                _connect_slot(m, writer.pooled_wr, act_out[index].write_port(),
                              fslot * out_depths[index] + out_base[index])

            store = ErrorStore(channels=g.cout, h=g.ho, w=g.wo, fmt=n.error, lanes=size.wu,
                               rows=self.has_bp(index))
            m.submodules[f"{spec.name}_err_store"] = store
            stores.append(store)
            wiring.connect(m, store.lane_wr, err_lane[index].write_port(granularity=g.wo))
            if self.has_bp(index):
                wiring.connect(m, store.row_wr, err_row[index].write_port())

        # BP engines: layer l's BP emits the error at its input, which is the output of
        # layer l-1's post-ops. On this chip it goes through layer l-1's derivative into
        # its error store; for the chip's first layer it leaves over the link. A split
        # layer's slice emits exact partial sums instead, over its own channels: the
        # chip behind adds its sums first (``partial_in``), and the first slice's chip
        # requantizes the total (:class:`~fpdeep.rtl.partial.PartialSum`).
        bp_out = []
        partial_sum = partial_mem = None
        for index, spec in enumerate(specs):
            if not self.has_bp(index):
                bp_engines.append(None)
                bp_out.append(None)
                continue
            g, size, unit = spec.geometry, self.sizes[index], self.units[index]
            bp = ConvEngine(geometry=g.transposed(), rows=size.bp, in_fmt=n.error,
                            weight_fmt=n.weight, out_fmt=n.error, acc_width=n.acc_width,
                            bias=False, raw=self.split)
            m.submodules[f"{spec.name}_bp"] = bp
            bp_engines.append(bp)
            wiring.connect(m, bp.w_rd, unit.bp_weights.read_port())
            wiring.connect(m, bp.x_rd, err_row[index].read_port())
            bp_out.append(bp.o)
            if self.split:
                partial_layout = bp.out_layout
                partial_sum = PartialSum(layout=partial_layout, incoming=not self.group_last,
                                         requantize=self.group_first,
                                         out_fmt=n.error if self.group_first else None)
                m.submodules.partial_sum = partial_sum
                _connect_rows(m, bp.o, partial_sum.i)
                bp_out[index] = partial_sum.o
                if not self.group_last:
                    partial_mem = memory.Memory(shape=partial_layout.shape,
                                                depth=partial_layout.depth, init=[])
                    m.submodules.partial_in = partial_mem
                    wiring.connect(m, partial_sum.rd, partial_mem.read_port())

        # Each layer's errors (except the loss's) arrive after its post-ops and go
        # through their derivative into the layer's error store. The last layer's
        # come from the loss, or from the chip behind; of those, the rows of channels
        # below ``lo`` belong to the chips in front and are passed on up.
        receiving = Signal()            # the backward path takes error rows from the link
        receiving_partials = Signal()   # ... and partial-sum rows
        taking_errors = Signal()        # in BACK_START / BACK_WAIT
        for index, spec in enumerate(specs):
            if index == count - 1 and self.has_loss:
                derivs.append(None)
                continue
            g = spec.geometry
            deriv = ErrorDerivative(channels=g.cout, h=g.ho, w=g.wo, act_fmt=n.act,
                                    error_fmt=n.error, relu=spec.relu, pool=spec.pool)
            m.submodules[f"{spec.name}_deriv"] = deriv
            derivs.append(deriv)
            full_offset = bslot * full_depths[index] + full_base[index]
            if spec.relu or spec.pool:
                _connect_slot(m, deriv.full_rd0, act_full[index].read_port(), full_offset)
            if spec.pool:
                _connect_slot(m, deriv.full_rd1, act_full[index].read_port(), full_offset)
            wiring.connect(m, deriv.o, stores[index].i)
            if index < count - 1:
                sat_events.append(_connect_rows(m, bp_out[index + 1], deriv.i))

        oc, oh, ow = specs[-1].out_shape
        last_in = derivs[-1].i if derivs[-1] is not None else stores[-1].i
        passed_up = None
        if self.lo > 0:
            passed_up = RowSerializer(channels=self.hi, h=oh, w=ow, fmt=n.error)
            m.submodules.errors_up = passed_up
        err_source = None
        if not self.has_loss:
            partial_rows = (bp_engines[0].out_layout if self.split and self.has_bp(0) and
                            not self.group_last else None)
            err_source = RowDeserializer(channels=self.hi, h=oh, w=ow, fmt=n.error,
                                         partial=partial_rows)
            m.submodules.err_in = err_source
            wiring.connect(m, wiring.flipped(self.err_in), err_source.i)
            # Errors are taken only while the backward path waits for them: the chip
            # behind may already be sending a later sample's.
            self._route_errors(m, err_source.o, last_in, passed_up, gate=receiving)
            if partial_rows is not None:
                partial_wr = partial_mem.write_port()
                p = err_source.partial
                m.d.comb += [p.ready.eq(receiving_partials),
                             partial_wr.en.eq(p.valid & receiving_partials),
                             partial_wr.addr.eq(p.payload.channel * partial_rows.h +
                                                p.payload.row),
                             partial_wr.data.eq(p.payload.values)]

        # Up the chain: the errors passed on, then this chip's BP output.
        err_sink = None
        if self.has_bp(0):
            g = specs[0].geometry
            raw = self.split and not self.group_first
            err_sink = RowSerializer(channels=g.cin, h=g.h, w=g.w,
                                     fmt=bp_engines[0].acc_fmt if raw else n.error,
                                     partial=raw)
            m.submodules.err_out = err_sink
            sat_events.append(_connect_rows(m, bp_out[0], err_sink.i))
        if passed_up is not None and err_sink is not None:
            # Both run at once (BP takes the errors as they pass): whole frames from
            # one or the other. A serializer offers a frame's words exactly while it
            # is busy and idles a cycle between frames, so the link changes hands only
            # when its holder is between frames, and the other's frame starts whole.
            passed_owns = Signal()
            keep = Mux(passed_owns, passed_up.busy, err_sink.busy)
            choose_passed = Mux(keep, passed_owns, passed_up.busy)
            m.d.sync += passed_owns.eq(choose_passed)
            m.d.comb += [self.err_out.valid.eq(Mux(choose_passed, passed_up.o.valid,
                                                   err_sink.o.valid)),
                         self.err_out.payload.eq(Mux(choose_passed, passed_up.o.payload,
                                                     err_sink.o.payload)),
                         passed_up.o.ready.eq(choose_passed & self.err_out.ready),
                         err_sink.o.ready.eq(~choose_passed & self.err_out.ready)]
        elif passed_up is not None or err_sink is not None:
            source = passed_up if passed_up is not None else err_sink
            wiring.connect(m, source.o, wiring.flipped(self.err_out))

        if self.has_loss:
            loss = LossUnit(classes=self.network.num_classes, numerics=n)
            m.submodules.loss_unit = loss
            _connect_slot(m, loss.z_rd, act_full[-1].read_port(), bslot * full_depths[-1])
            self._route_errors(m, loss.o, stores[-1].i, passed_up)
        else:
            loss = None
            # Rows of errors the chip behind sends back per sample (own and passed up).
            err_rows_expected = self.hi * oh
            err_rows = Signal(range(err_rows_expected + 1))
            partial_expected = partial_rows.depth if partial_rows is not None else 0
            partial_count = Signal(range(partial_expected + 1))
            if partial_rows is not None:
                with m.If(err_source.partial.valid & err_source.partial.ready):
                    m.d.sync += partial_count.eq(partial_count + 1)

        # Down the chain: the output map with a label (the layer's last slice), or,
        # for a slice with more behind it, the label and the input map, then the
        # channels gathered so far (``0 .. hi``, no label).
        act_sender = input_sender = None
        if not self.has_loss:
            if self.group_last:
                act_sender = MapSender(layout=RowLayout(self.hi, oh, ow, n.act))
            else:
                act_sender = MapSender(layout=RowLayout(self.hi, oh, ow, n.act), label=False)
                input_sender = MapSender(layout=sample_layout)
                m.submodules.input_out = input_sender
                _connect_slot(m, input_sender.rd, sample_mem.read_port(),
                              fslot * sample_layout.depth)
            m.submodules.act_out = act_sender
            _connect_slot(m, act_sender.rd, act_out[-1].read_port(), fslot * out_depths[-1])
            if input_sender is None:
                wiring.connect(m, act_sender.o, wiring.flipped(self.act_out))
            else:
                first_out = input_sender.busy
                m.d.comb += [
                    self.act_out.valid.eq(Mux(first_out, input_sender.o.valid,
                                              act_sender.o.valid)),
                    self.act_out.payload.eq(Mux(first_out, input_sender.o.payload,
                                                act_sender.o.payload)),
                    input_sender.o.ready.eq(first_out & self.act_out.ready),
                    act_sender.o.ready.eq(~first_out & self.act_out.ready),
                ]
        # From the chip in front, after the input map: its gathered channels 0 .. lo.
        gatherer = None
        if self.lo > 0:
            gatherer = MapReceiver(layout=RowLayout(self.hi, oh, ow, n.act), channels=self.lo)
            m.submodules.gather = gatherer
            _connect_slot(m, gatherer.wr, act_out[-1].write_port(), fslot * out_depths[-1])

        # Error rows ready, layer to layer backwards: each layer's BP and WU take the
        # rows of its error map as they are stored.
        for index, (unit, store) in enumerate(zip(self.units, stores)):
            m.d.comb += unit.e_ready.eq(store.rows_ready)
            if self.has_bp(index):
                m.d.comb += bp_engines[index].x_ready.eq(store.rows_ready)

        # Rows ready, layer to layer: each FP takes the rows the layer in front has
        # written so far, and the output map leaves as its rows (own and gathered) are in.
        for fp, writer in zip(fp_engines[1:], writers):
            m.d.comb += fp.x_ready.eq(writer.rows_ready)
        if act_sender is not None:
            rows_ready = writers[-1].rows_ready
            if gatherer is not None:
                rows_ready = Mux(gatherer.rows_ready < rows_ready, gatherer.rows_ready,
                                 rows_ready)
            m.d.comb += act_sender.rows_ready.eq(rows_ready)

        # ---- sample loader: a label word, then pixels in stream order (row y of each
        # channel, then row y + 1), assembled into rows.
        sample_wr = sample_mem.write_port()
        label = Signal(range(self.network.num_classes))
        have_label = Signal()
        pixel_x = Signal(range(w0))
        pixel_c = Signal(range(c0))
        rows_loaded = Signal(range(h0 + 1))     # rows of every channel written so far
        row_buffer = Signal(sample_layout.shape)
        loading = Signal()
        # The first layer's FP starts with the label and takes the input rows as they
        # arrive (``filling``), unless this chip sends its input on as FP starts.
        stream_input = input_sender is None
        filling = Signal()
        taking = loading | filling
        if gatherer is not None:
            # The slices in front send their channels after the input.
            m.d.comb += [gatherer.i.valid.eq(host.sample.valid & ~taking),
                         gatherer.i.payload.eq(host.sample.payload),
                         host.sample.ready.eq(taking | gatherer.i.ready)]
        else:
            m.d.comb += host.sample.ready.eq(taking)
        m.d.comb += fp_engines[0].x_ready.eq(Mux(filling, rows_loaded, h0))
        last_word = (have_label & (pixel_x == w0 - 1) & (pixel_c == c0 - 1) &
                     (rows_loaded == h0 - 1))
        with m.If(host.sample.valid & taking):
            with m.If(~have_label):
                m.d.sync += [label.eq(host.sample.payload), have_label.eq(1)]
            with m.Else():
                with m.Switch(pixel_x):
                    for x in range(w0):
                        with m.Case(x):
                            m.d.sync += row_buffer[x].eq(host.sample.payload)
                m.d.sync += pixel_x.eq(Mux(pixel_x == w0 - 1, 0, pixel_x + 1))
                with m.If(pixel_x == w0 - 1):
                    m.d.comb += [sample_wr.addr.eq(pixel_c * h0 + rows_loaded +
                                                   fslot * sample_layout.depth),
                                 sample_wr.en.eq(1)]
                    for x in range(w0 - 1):
                        m.d.comb += sample_wr.data[x].eq(row_buffer[x])
                    m.d.comb += sample_wr.data[w0 - 1].eq(host.sample.payload)
                    m.d.sync += pixel_c.eq(Mux(pixel_c == c0 - 1, 0, pixel_c + 1))
                    with m.If(pixel_c == c0 - 1):
                        m.d.sync += rows_loaded.eq(rows_loaded + 1)
            if stream_input:
                with m.If(last_word):
                    m.d.sync += [rows_loaded.eq(0), have_label.eq(0), filling.eq(0)]

        # ---- host weight access, routed by address to the masters' stores: the
        # layers' update units, and the neighbour's layer this chip holds.
        masters_at = [(unit, base) for unit, base in zip(self.units, self.bases)
                  if unit.host_span]
        if self.holder is not None:
            m.submodules.held_weights = self.holder
            masters_at.append((self.holder, self.holder_base))
            wiring.connect(m, wiring.flipped(self.held_in), self.holder.grads_in)
            wiring.connect(m, self.holder.copies_out, wiring.flipped(self.held_out))
        host_store = Signal(range(max(2, len(masters_at))))
        for index, (store, base) in enumerate(masters_at):
            selected = (host.weight_addr >= base) & (host.weight_addr < base + store.host_span)
            m.d.comb += [
                store.host_addr.eq(host.weight_addr - base),
                store.host_read.eq(host.weight_read & selected),
                store.host_write.eq(host.weight_write & selected),
                store.host_wdata.eq(host.weight_wdata),
            ]
            with m.If(host.weight_read & selected):
                m.d.sync += host_store.eq(index)
        with m.Switch(host_store):
            for index, (store, _) in enumerate(masters_at):
                with m.Case(index):
                    m.d.comb += [host.weight_rdata.eq(store.host_rdata),
                                 host.weight_rvalid.eq(store.host_rvalid)]
        m.d.comb += host.weight_count.eq(self.weight_space)
        for unit, spec in zip(self.units, specs):
            if spec.name == self.remote_layer:
                wiring.connect(m, unit.grads_out, wiring.flipped(self.wgt_out))
                wiring.connect(m, wiring.flipped(self.wgt_in), unit.copies_in)
        # The host wrote masters (here, or beyond: the neighbour holding ours may have
        # been written); the 16-bit copies need a refresh before the next sample.
        dirty = Signal()
        with m.If(host.weight_write | (self.refresh_request if self.remote_layer else 0)):
            m.d.sync += dirty.eq(1)

        # ---- the sequencers: a forward path (load, FP, send) and a backward path
        # (loss or receive, BP and WU), each walking the samples in order. Forward
        # may run up to ``slots`` samples ahead; it waits at the end of a mini-batch
        # until the backward path has stepped SGD, so that every FP of a batch sees
        # the same weights (synchronous mini-batch SGD).
        ahead = Signal(range(slots + 1))    # samples forward is ahead of backward
        forwarded = Signal()                # pulses as forward finishes a sample
        backed = Signal()                   # pulses as backward finishes a sample
        m.d.sync += ahead.eq(ahead + forwarded - backed)
        labels = Array(Signal(range(self.network.num_classes), name=f"label{k}")
                       for k in range(slots))
        fwd_in_batch = Signal(range(self.batch_size + 1))
        fwd_batches = Signal(32)            # batches forward has finished
        bwd_in_batch = Signal(range(self.batch_size + 1))
        fsettle = Signal(2)
        bsettle = Signal(2)

        def next_slot(slot):
            return Mux(slot == slots - 1, 0, slot + 1)

        def bp_idle(i):
            if i == 0:
                idle = ~bp_engines[0].busy & ~err_sink.busy
                return idle & ~partial_sum.busy if partial_sum is not None else idle
            return ~bp_engines[i].busy & derivs[i - 1].i.ready

        all_wu_idle = Cat(*[~unit.busy for unit in self.units]).all()
        with m.FSM(name="forward") as fwd:
            with m.State("LOAD"):
                # A free slot, and the previous batch's SGD step done.
                m.d.comb += loading.eq(~dirty & (ahead < slots) &
                                       (host.batches == fwd_batches))
                # Refresh the 16-bit copies only when a sample arrives, so that host
                # weight accesses between samples are never refused for being busy.
                with m.If(dirty & host.sample.valid & all_wu_idle & (ahead == 0)):
                    for unit in self.units:
                        m.d.comb += unit.start_refresh.eq(1)
                    m.d.sync += dirty.eq(0)
                    m.next = "REFRESH"
                if stream_input:
                    with m.Elif(host.sample.valid & loading):
                        m.d.sync += [labels[fslot].eq(host.sample.payload), filling.eq(1)]
                        m.next = "FP_START"
                else:
                    with m.Elif(host.sample.valid & loading & last_word):
                        m.d.sync += [rows_loaded.eq(0), have_label.eq(0),
                                     labels[fslot].eq(label)]
                        m.next = "FP_START"
            with m.State("REFRESH"):
                with m.If(all_wu_idle & (fsettle == 1)):
                    m.d.sync += fsettle.eq(0)
                    m.next = "LOAD"
                with m.Else():
                    m.d.sync += fsettle.eq(1)
            with m.State("FP_START"):
                # Every layer's FP starts at once: each takes its input rows as the
                # layer in front writes them (``x_ready``), and the output map leaves
                # row by row as it is written, so the layers and chips form a row
                # pipeline.
                for fp, writer in zip(fp_engines, writers):
                    m.d.comb += [fp.start.eq(1), writer.clear.eq(1)]
                if input_sender is not None:
                    # The chips behind in the split need this input too: send it first.
                    m.d.comb += [input_sender.start.eq(1),
                                 input_sender.label.eq(labels[fslot])]
                if gatherer is not None:
                    m.d.comb += gatherer.start.eq(1)
                if act_sender is not None:
                    m.d.comb += act_sender.start.eq(1)
                    if input_sender is None:
                        m.d.comb += act_sender.label.eq(labels[fslot])
                m.d.sync += fsettle.eq(0)
                m.next = "FP_WAIT"
            with m.State("FP_WAIT"):
                working = [filling] + [fp.busy for fp in fp_engines] + [
                    part.busy for part in (input_sender, gatherer, act_sender)
                    if part is not None]
                done = ~Cat(*working).any()
                # Two idle cycles: the writer's pooled row lands one cycle after the engine.
                with m.If(done & (fsettle == 2)):
                    m.next = "DONE"
                with m.Elif(done):
                    m.d.sync += fsettle.eq(fsettle + 1)
            with m.State("DONE"):
                m.d.comb += forwarded.eq(1)
                m.d.sync += fslot.eq(next_slot(fslot))
                with m.If(fwd_in_batch == self.batch_size - 1):
                    m.d.sync += [fwd_in_batch.eq(0), fwd_batches.eq(fwd_batches + 1)]
                with m.Else():
                    m.d.sync += fwd_in_batch.eq(fwd_in_batch + 1)
                m.next = "LOAD"

        if not self.has_loss:
            m.d.comb += [receiving.eq(taking_errors & (err_rows != err_rows_expected)),
                         receiving_partials.eq(taking_errors &
                                               (partial_count != partial_expected))]
            if partial_sum is not None and not self.group_last:
                m.d.comb += partial_sum.rows_in.eq(partial_count)
        with m.FSM(name="backward") as bwd:
            with m.State("IDLE"):
                with m.If(ahead != 0):
                    # This sample's error maps begin: every store counts rows afresh.
                    for store in stores:
                        m.d.comb += store.clear.eq(1)
                    if self.has_loss:
                        m.next = "LOSS_START"
                    else:
                        m.d.sync += [err_rows.eq(0), partial_count.eq(0)]
                        m.next = "BACK_START"
            if self.has_loss:
                with m.State("LOSS_START"):
                    m.d.comb += [loss.start.eq(1), loss.label.eq(labels[bslot])]
                    m.next = "LOSS_WAIT"
                with m.State("LOSS_WAIT"):
                    m.d.comb += loss.label.eq(labels[bslot])
                    with m.If(~loss.busy & (~passed_up.busy if passed_up is not None else 1)):
                        m.next = "BACK_START"
            # Every layer's BP and WU start at once, as a row pipeline back through the
            # layers: each takes the error rows of its layer's output as they are
            # stored (the store's rows_ready), from the loss, from the BP behind it,
            # or, on a chip that does not end the chain, from the link as they come.
            # Only this sample's rows are taken from the link: the next sample's may
            # follow at once. (Counted rows have left the deserializer, which may
            # already hold the next sample's.)
            if not self.has_loss:
                received = ((err_rows == err_rows_expected) & last_in.ready &
                            (partial_count == partial_expected) &
                            (~passed_up.busy if passed_up is not None else 1))
            with m.State("BACK_START"):
                for index, unit in enumerate(self.units):
                    m.d.comb += unit.start_sample.eq(1)
                    if self.has_bp(index):
                        m.d.comb += bp_engines[index].start.eq(1)
                m.d.sync += bsettle.eq(0)
                m.next = "BACK_WAIT"
            with m.State("BACK_WAIT"):
                done = Cat(*[bp_idle(index) for index in range(count)
                             if self.has_bp(index)], C(1, 1)).all()
                if not self.has_loss:
                    done = done & received
                with m.If(done & (bsettle == 2)):
                    m.next = "WU_WAIT"
                with m.Elif(done):
                    m.d.sync += bsettle.eq(bsettle + 1)
            with m.State("WU_WAIT"):
                with m.If(all_wu_idle):
                    m.d.comb += backed.eq(1)
                    m.d.sync += [host.samples.eq(host.samples + 1), bslot.eq(next_slot(bslot))]
                    with m.If(bwd_in_batch == self.batch_size - 1):
                        m.d.sync += bwd_in_batch.eq(0)
                        for unit in self.units:
                            m.d.comb += unit.start_update.eq(1)
                        m.d.sync += bsettle.eq(0)
                        m.next = "UPDATE_WAIT"
                    with m.Else():
                        m.d.sync += bwd_in_batch.eq(bwd_in_batch + 1)
                        m.next = "IDLE"
            with m.State("UPDATE_WAIT"):
                with m.If(all_wu_idle & (bsettle == 1)):
                    m.d.sync += host.batches.eq(host.batches + 1)
                    m.next = "IDLE"
                with m.Else():
                    m.d.sync += bsettle.eq(1)
        #: The sequencers, for waveforms and for debugging a stalled run.
        self.forward_fsm, self.backward_fsm = fwd, bwd
        m.d.comb += taking_errors.eq(bwd.ongoing("BACK_START") | bwd.ongoing("BACK_WAIT"))
        busy = Signal()
        m.d.comb += busy.eq(~fwd.ongoing("LOAD") | have_label | ~bwd.ongoing("IDLE") |
                            (ahead != 0))
        # The feature memories' occupancy: the most slots ever in use. The forward
        # path cannot overwrite a slot the backward path still reads (it waits at
        # ``ahead == slots``); ``perf_slots_peak`` lets a run show how deep it went.
        with m.If(ahead > self.perf_slots_peak):
            m.d.sync += self.perf_slots_peak.eq(ahead)

        # ---- counters.
        if loss is not None:
            with m.If(loss.correct):
                m.d.sync += host.correct.eq(host.correct + 1)
            with m.If(loss.loss_valid):
                m.d.sync += host.loss_sum.eq(saturating_add_hw(host.loss_sum, loss.loss))
        else:
            with m.If(err_source.o.valid & err_source.o.ready):
                m.d.sync += err_rows.eq(err_rows + 1)
        wu_sats = sum(unit.saturations for unit in self.units)
        if self.holder is not None:
            wu_sats = wu_sats + self.holder.saturations
        # Register each engine's events before adding them up: the requantizers' flags
        # are at the end of the longest combinational path in the chip.
        engine_sats = Signal(32)
        registered = []
        for k, event in enumerate(sat_events):
            reg = Signal(Value.cast(event).shape(), name=f"sat_event{k}")
            m.d.sync += reg.eq(event)
            registered.append(reg)
        m.d.sync += engine_sats.eq(engine_sats + sum(registered))
        m.d.comb += [host.saturations.eq(engine_sats + wu_sats), host.busy.eq(busy)]

        with m.If(busy):
            m.d.sync += self.perf_cycles.eq(self.perf_cycles + 1)
        engines = []
        for index in range(count):
            engines.append(fp_engines[index])
            engines.append(self.units[index].engine)
            if self.has_bp(index):
                engines.append(bp_engines[index])
        self.engines_by_name = dict(zip(self.engine_names, engines))
        self.loss_unit = loss
        for k, engine in enumerate(engines):
            # Busy, less the cycles an FP engine waits for input rows still arriving.
            starved = engine.starved if hasattr(engine, "starved") else C(0, 1)
            with m.If(engine.busy & ~starved):
                m.d.sync += self.perf_busy[k].eq(self.perf_busy[k] + 1)
            with m.If(engine.step):
                m.d.sync += self.perf_steps[k].eq(self.perf_steps[k] + 1)
        return m
