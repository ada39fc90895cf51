"""The single-chip training core: FP, loss, BP and WU of a whole network on one FPGA."""

from dataclasses import replace

from amaranth import *
from amaranth.lib import wiring, data, stream
from amaranth.lib.wiring import In, Out

from ..plan.errors import FpdeepError
from ..plan.layers import gateware_layers
from .chip_io import ActivationLink, ChannelSlice, ErrorLink
from .conv import RowLayout
from .host import HostSignature
from .layer import EngineSizes, LayerDatapath
from .loader import SampleLoader
from .loss import ErrorBuffer, LossUnit
from .masters import init_masters
from .numerics import DEFAULT_NUMERICS, saturating_add_hw
from .rowlink import WORD
from .sequencer import Sequencer
from .weight_holder import WeightHolder

__all__ = ["EngineSizes", "TrainingCore", "network_layers"]


#: Weighted layers with their post-ops, as the chips and the planner's model see them.
network_layers = gateware_layers


def default_engine_sizes(spec, first):
    g = spec.geometry
    return EngineSizes(fp=min(g.cout, 16), bp=0 if first else min(g.cin, 16),
                       wu=min(g.cout, 16))


class TrainingCore(wiring.Component):
    """Trains a network with synchronous mini-batch SGD on one chip.

    Per sample, in order: load the sample from the host; FP of every layer, all layers
    at once as a row pipeline (a layer's steps wait for their input rows, counted by the
    layer in front, and the sample's rows feed the first as they arrive); the loss
    (:class:`~fpdeep.rtl.loss.LossUnit`); then BP of every layer at once, back through
    the layers as a row pipeline, while each layer's WU engine sums its gradients. After
    every ``batch_size`` samples, all layers step SGD at once. The results equal
    :class:`fpdeep.sim.reference.Reference` in int mode bit for bit.

    The core is a short top joining the blocks that do this, each of which owns one
    thing:

    * a :class:`~fpdeep.rtl.layer.LayerDatapath` per weighted layer (:attr:`layers`):
      its FP, BP and WU engines, post-ops, error path, memories and weights; neighbouring
      layers join by their ``o_act``/``i_act`` and ``o_err``/``i_err`` interfaces;
    * the :class:`~fpdeep.rtl.loader.SampleLoader`: host or link words into the input map;
    * the chip's ends of the chain, :class:`~fpdeep.rtl.chip_io.ActivationLink` and
      :class:`~fpdeep.rtl.chip_io.ErrorLink`, the only blocks that know about a split
      layer (:class:`~fpdeep.rtl.chip_io.ChannelSlice`);
    * the :class:`~fpdeep.rtl.sequencer.Sequencer`: a forward sequencer (load, FP, send)
      and a backward one (loss or receive, BP, WU) running different samples at once.
      The feature memories they share (:mod:`fpdeep.rtl.slots`) have ``slots`` copies,
      so forward runs at most ``slots`` samples ahead; it waits at each mini-batch's end
      for the SGD step.

    The core itself routes the host's weight accesses to the masters, counts, and keeps
    every engine (``{layer}_fp``, ``{layer}_wu``, ``{layer}_bp``) and the ``loss_unit``
    directly under itself in the hierarchy, under the names that builds and their
    timing reports use.

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
    perf_slots_peak : Out(range(slots + 1))
        The most feature slots in use at once.
    wgt_out, wgt_in : Out, In(stream.Signature(signed(16)))
        With ``remote``: the held layer's exchange with the neighbour holding its masters.
    held_in, held_out : In, Out(stream.Signature(signed(16)))
        With ``hold``: the exchange with the neighbour whose masters are held here.
    refresh_request : In(1)
        A host write passed on beyond this chip (the neighbour holding ours may have been
        written): refresh the copies before the next sample.
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
        #: The chip's share of its last layer's output channels.
        self.slice = ChannelSlice(lo, hi, layer_channels)
        self.layers = []
        for index, (spec, size) in enumerate(zip(self.specs, self.sizes)):
            if spec.name not in masters:
                raise FpdeepError(f"no initial weights for layer {spec.name!r}")
            weights, biases = masters[spec.name]
            if self.split:
                weights, biases = weights[lo:hi], biases[lo:hi]
            self.layers.append(LayerDatapath(
                spec, sizes=size, numerics=n, masters=(weights, biases),
                rate_q=self.rate_q, momentum_q=self.momentum_q, batch_size=batch_size,
                slots=slots, bp=self.has_bp(index), remote=spec.name in remote,
                front=lo if index == len(self.specs) - 1 else 0, partial=self.split,
                loss=self.has_loss and index == len(self.specs) - 1))
        self.units = [layer.unit for layer in self.layers]
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

        #: ``{engine name: engine}`` of the engines counted in ``perf_busy``/``perf_steps``.
        self.engines_by_name = {f"{layer.name}.{kind}": engine for layer in self.layers
                                for kind, engine in layer.arrays.items()}
        self.engine_names = list(self.engines_by_name)
        self._build_blocks()
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

    def _build_blocks(self):
        """The chip's blocks besides its layers: sequencer, loader, ends of the chain, loss."""
        n, classes, slots = self.numerics, self.network.num_classes, self.slots
        first, last = self.layers[0], self.layers[-1]
        self.input_layout = RowLayout(*self.input_shape, n.act)
        self.sequencer = Sequencer(layers=len(self.layers), slots=slots,
                                   batch_size=self.batch_size, classes=classes,
                                   loss=self.has_loss, buffered=not self.split)
        self.act_link = ActivationLink(channels=self.slice, in_layout=self.input_layout,
                                       out_layout=last.out_layout, classes=classes,
                                       sends=not self.has_loss)
        self.loader = SampleLoader(layout=self.input_layout, slots=slots, classes=classes,
                                   relay=self.act_link.relays)
        self.err_link = ErrorLink(
            channels=self.slice, loss=self.has_loss,
            errors=RowLayout(self.hi, last.out_layout.h, last.out_layout.w, n.error),
            bp=first.bp.out_layout if first.bp is not None else None)
        self.loss_unit = LossUnit(classes=classes, numerics=n) if self.has_loss else None
        self.loss_buffer = ErrorBuffer(classes=classes, numerics=n) if self.has_loss else None

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
        return {f"{layer.name}.{kind}": shape for layer in self.layers
                for kind, shape in layer.array_shapes().items()}

    def engine_macs(self):
        """``{engine name: useful MACs per sample}`` (biases count as MACs)."""
        return {f"{layer.name}.{kind}": macs for layer in self.layers
                for kind, macs in layer.macs().items()}

    @property
    def forward_fsm(self):
        """The forward sequencer's FSM (after elaboration), for waveforms and debugging."""
        return self.sequencer.forward_fsm

    @property
    def backward_fsm(self):
        """The backward sequencer's FSM (after elaboration)."""
        return self.sequencer.backward_fsm

    def elaborate(self, platform):
        m = Module()
        host, layers = self.host, self.layers
        first, last = layers[0], layers[-1]
        m.submodules.sequencer = seq = self.sequencer
        m.submodules.loader = loader = self.loader
        m.submodules.act_link = act_link = self.act_link
        m.submodules.err_link = err_link = self.err_link
        for layer in layers:
            m.submodules[layer.name] = layer
            for kind, engine in layer.engines.items():
                m.submodules[f"{layer.name}_{kind}"] = engine

        # ---- the sequencers' handshakes, and the slot each path works in.
        wiring.connect(m, seq.slot, loader.slot, *[layer.slot for layer in layers])
        wiring.connect(m, seq.loader, loader.control)
        for control, layer in zip(seq.layers, layers):
            wiring.connect(m, control, layer.control)
        wiring.connect(m, seq.send, act_link.control)
        wiring.connect(m, seq.errors, err_link.control)

        # ---- forward: the input words into the loader, maps from layer to layer, the
        # output map down the chain.
        wiring.connect(m, wiring.flipped(host.sample), act_link.i)
        wiring.connect(m, act_link.o_sample, loader.i)
        if act_link.relays:
            wiring.connect(m, loader.relay, act_link.relay_rd)
        for front, back in zip([loader] + layers, layers):
            wiring.connect(m, front.o_act, back.i_act)
        if self.slice.lo:
            wiring.connect(m, last.gather_wr, act_link.gather_wr)
        if not self.has_loss:
            wiring.connect(m, last.o_act, act_link.i_map)
            wiring.connect(m, act_link.act_out, wiring.flipped(self.act_out))

        # ---- backward: the errors of the output map (from the loss, or up the chain)
        # back from layer to layer, and the errors at the input on up.
        wiring.connect(m, err_link.o_err, last.i_err)
        for front, back in zip(layers, layers[1:]):
            wiring.connect(m, back.o_err, front.i_err)
        if first.bp is not None:
            wiring.connect(m, first.o_err, err_link.i_bp)
        if "err_out" in self.signature.members:
            wiring.connect(m, err_link.err_out, wiring.flipped(self.err_out))
        loss = self.loss_unit
        if loss is not None:
            # The loss is a stage of its own: it reads the logits in the loss slot and
            # fills the buffer while BP and WU of the sample before run on the errors
            # already in the last layer's store; the backward path replays the buffer.
            m.submodules.loss_unit = loss
            m.submodules.loss_buffer = buffer = self.loss_buffer
            wiring.connect(m, last.o_act.backward, loss.z_rd)
            wiring.connect(m, loss.o, buffer.i)
            wiring.connect(m, buffer.o, err_link.i_loss)
            m.d.comb += [loss.start.eq(seq.loss.start), loss.label.eq(seq.loss.label),
                         seq.loss.busy.eq(loss.busy),
                         buffer.start.eq(seq.replay.start), seq.replay.busy.eq(buffer.busy),
                         buffer.through.eq(seq.through)]
        else:
            wiring.connect(m, wiring.flipped(self.err_in), err_link.err_in)

        # ---- weights: the host's accesses, routed by address to the masters' stores
        # (the layers' update units, and the neighbour's layer this chip holds); the
        # exchange with the neighbour holding one of ours.
        self._route_weight_access(m)
        for layer in layers:
            if layer.name == self.remote_layer:
                wiring.connect(m, layer.unit.grads_out, wiring.flipped(self.wgt_out))
                wiring.connect(m, wiring.flipped(self.wgt_in), layer.unit.copies_in)
        # The host wrote masters (here, or beyond: the neighbour holding ours may have
        # been written); the 16-bit copies need a refresh before the next sample.
        m.d.comb += seq.weights_written.eq(
            host.weight_write | (self.refresh_request if self.remote_layer else 0))

        # ---- counters.
        m.d.comb += [host.samples.eq(seq.samples), host.batches.eq(seq.batches),
                     host.busy.eq(seq.busy), self.perf_slots_peak.eq(seq.slots_peak)]
        if loss is not None:
            with m.If(loss.correct):
                m.d.sync += host.correct.eq(host.correct + 1)
            with m.If(loss.loss_valid):
                m.d.sync += host.loss_sum.eq(saturating_add_hw(host.loss_sum, loss.loss))
        wu_sats = sum(unit.saturations for unit in self.units)
        if self.holder is not None:
            wu_sats = wu_sats + self.holder.saturations
        # The engines' saturation events, registered where they happen (the requantizers'
        # flags end the longest combinational paths in the chip), summed here.
        events = [layer.fp_saturated for layer in layers]
        events += [layer.bp_saturated for layer in layers if layer.bp is not None]
        if "saturated" in err_link.signature.members:
            events.append(err_link.saturated)
        engine_sats = Signal(32)
        m.d.sync += engine_sats.eq(engine_sats + sum(events))
        m.d.comb += host.saturations.eq(engine_sats + wu_sats)

        with m.If(seq.busy):
            m.d.sync += self.perf_cycles.eq(self.perf_cycles + 1)
        for k, engine in enumerate(self.engines_by_name.values()):
            # Busy, less the cycles an engine waits for input rows still arriving.
            starved = engine.starved if hasattr(engine, "starved") else C(0, 1)
            with m.If(engine.busy & ~starved):
                m.d.sync += self.perf_busy[k].eq(self.perf_busy[k] + 1)
            with m.If(engine.step):
                m.d.sync += self.perf_steps[k].eq(self.perf_steps[k] + 1)
        return m

    def _route_weight_access(self, m):
        """Host weight accesses, by address, to the stores of masters on this chip."""
        host = self.host
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
