"""A weighted layer's datapath: its engines, post-ops, error path and memories."""

from dataclasses import dataclass

from amaranth import *
from amaranth.lib import wiring, memory
from amaranth.lib.wiring import In, Out

from .activation import ActivationWriter
from .backprop import ErrorDerivative, ErrorStore
from .conv import ConvEngine, RowLayout
from .fc import FcBackpropEngine
from .sequencer import LayerControlSignature
from .slots import FeatureMapSignature, FeatureMemory, FeaturePort, SlotSignature
from .weight_update import WeightUpdateUnit

__all__ = ["EngineSizes", "LayerDatapath"]


@dataclass(frozen=True)
class EngineSizes:
    """Rows of the FP, BP and WU arrays of one layer (columns follow from the layer),
    and the WU engine's lanes (output pixels per step,
    :class:`~fpdeep.rtl.weight_update.WeightGradientEngine`)."""
    fp: int
    bp: int
    wu: int
    wu_lanes: int = 1


def _rows_into(m, source, sink):
    """Join an engine's output rows to a sink that takes channel, row and values only.

    Returns the values saturated in this cycle's transfer.
    """
    m.d.comb += [
        sink.valid.eq(source.valid),
        sink.payload.channel.eq(source.payload.channel),
        sink.payload.row.eq(source.payload.row),
        sink.payload.values.eq(source.payload.values),
        source.ready.eq(sink.ready),
    ]
    return Mux(source.valid & source.ready, source.payload.saturated, 0)


class LayerDatapath(wiring.Component):
    """Everything one weighted layer of a chip computes and keeps.

    Forward: the FP engine (:class:`~fpdeep.rtl.conv.ConvEngine`) takes its input map
    from the block in front (``i_act``: the sample loader, or the layer in front) row
    by row as it is written, and its :class:`~fpdeep.rtl.activation.ActivationWriter`
    applies ReLU and max-pool and writes the output map (``o_act``) into this layer's
    feature slots (:class:`~fpdeep.rtl.slots.FeatureMemory`), counting its rows for the
    block behind. Backward: the errors at the output (``i_err``) go through the
    post-ops' derivative (:class:`~fpdeep.rtl.backprop.ErrorDerivative`) into the
    :class:`~fpdeep.rtl.backprop.ErrorStore`; the WU engine (inside the
    :class:`~fpdeep.rtl.weight_update.WeightUpdateUnit`) and the BP engine (a transposed
    :class:`ConvEngine`) take the stored rows as they come, and BP sends the errors at
    the layer's input on to the block in front (``o_err``). The unit keeps the weights
    and steps SGD.

    Neighbouring layers join with :func:`wiring.connect`: ``o_act`` of one to ``i_act``
    of the next, ``o_err`` of the next to ``i_err`` of one.

    Timing is the engines' (as :mod:`fpdeep.plan.model` models them): the writer stores
    a row in the cycle FP emits it (a pooled row one cycle later), the store a row in
    the cycle it arrives, and the derivative takes a row every ``1 + rows out`` cycles.

    **Engines.** The layer builds its engines (:attr:`engines`) by the layer's kind and
    wires them, but they are not its submodules: the chip places each directly under
    itself as ``{layer}_fp``, ``{layer}_wu`` and ``{layer}_bp``, the names that the
    build's netlist, its timing reports and tests know them by. Whoever elaborates a
    layer adds :attr:`engines` to the same design (as ``tests/rtl/test_layer.py``'s
    bench does).

    A chip holding a slice of a layer's output channels (``front`` channels of the
    layer lie in front of it) keeps the whole output map so far: its output maps have
    ``front`` channels more, written by the chip's gatherer (``gather_wr``), and its BP
    emits exact partial sums (``partial``).

    Parameters
    ----------
    layer : GatewareLayer
        The layer (geometry of the slice held here), with its post-ops.
    sizes : EngineSizes
        Rows of the arrays (``bp`` unused without ``bp``).
    numerics : Numerics
    masters : (W, b)
        Initial masters of the slice, as :class:`~fpdeep.rtl.weight_update.WeightUpdateUnit`.
    rate_q, momentum_q, batch_size :
        As :class:`~fpdeep.rtl.weight_update.WeightUpdateUnit`.
    slots : int
        Feature slots of the output maps.
    bp : bool
        The layer back-propagates (every layer but the network's first).
    front : int
        Output channels of the layer in front of this slice (0 unless split).
    partial : bool
        BP emits exact accumulator sums (a slice of a split layer).
    remote : bool
        A neighbour holds the masters (:class:`~fpdeep.rtl.weight_holder.WeightHolder`).
    loss : bool
        The loss reads the output map (the layer ends the chain): ``o_act.backward``
        reaches the slot's ``loss`` copy, a sample ahead of the backward path.

    Members
    -------
    slot : In(SlotSignature(slots))
    control : In(LayerControlSignature())
    i_act : In(FeatureMapSignature(RowLayout(cin, h, w, act)))
        The input map: FP reads the forward slot as its rows are ready, WU the backward.
    o_act : Out(FeatureMapSignature(RowLayout(front + cout, oh, ow, act)))
        The output map after the post-ops (``oh, ow`` halved by a pool), in this layer's
        slots; ``rows_ready`` counts this layer's rows written.
    gather_wr : Out(memory.WritePort.Signature(...))
        The output map's forward slot, for channels ``0 .. front``; only with ``front``.
    i_err : In(RowLayout(cout, oh, ow, error).row_stream())
        Errors at the output, after the post-ops, rows in stream order.
    o_err : Out(RowLayout(cin, h, w, error).row_stream())
        Errors at the input (exact sums in the accumulator format with ``partial``), in
        stream order; only with ``bp``.
    fp_saturated, bp_saturated : Out(range(w + 1))
        Values saturated by the FP (BP) engine in the row it emitted the cycle before
        (registered: the requantizers end the chip's longest paths); ``bp_saturated``
        only with ``bp``.

    Raises
    ------
    TypeError
        If ``sizes`` is not an :class:`EngineSizes`.
    ValueError
        If ``front`` or ``slots`` is out of range, or as the engines raise.
    """

    def __init__(self, layer, *, sizes, numerics, masters, rate_q, momentum_q, batch_size,
                 slots, bp, front=0, partial=False, remote=False, loss=False):
        if not isinstance(sizes, EngineSizes):
            raise TypeError(f"sizes must be an EngineSizes, not {sizes!r}")
        if not isinstance(front, int) or front < 0:
            raise ValueError(f"front must be a non-negative int, not {front!r}")
        self.layer, self.name = layer, layer.name
        self._n, self._sizes, self._slots = numerics, sizes, slots
        self._bp, self._front, self._partial = bool(bp), front, bool(partial)
        self._loss = bool(loss)
        g, n = layer.geometry, numerics
        self.fp, self.unit, self.bp = self._engines(
            layer, sizes, numerics, masters=masters, remote=remote, rate_q=rate_q,
            momentum_q=momentum_q, batch_size=batch_size)

        oh, ow = (g.ho // 2, g.wo // 2) if layer.pool else (g.ho, g.wo)
        self.in_layout = RowLayout(g.cin, g.h, g.w, n.act)
        self.out_layout = RowLayout(front + g.cout, oh, ow, n.act)
        members = {
            "slot": In(SlotSignature(slots)),
            "control": In(LayerControlSignature()),
            "i_act": In(FeatureMapSignature(self.in_layout)),
            "o_act": Out(FeatureMapSignature(self.out_layout)),
        }
        if front:
            members["gather_wr"] = Out(FeaturePort(True, "forward", self.out_layout)
                                       .signature())
        members["i_err"] = In(RowLayout(g.cout, oh, ow, n.error).row_stream())
        if self._bp:
            members["o_err"] = Out(self.bp.out_layout.row_stream())
        members["fp_saturated"] = Out(range(g.wo + 1))
        if self._bp:
            members["bp_saturated"] = Out(range(self.bp.out_layout.w + 1))
        super().__init__(members)

    def _engines(self, layer, sizes, numerics, **sgd):
        """The FP engine, weight-update unit and BP engine (``None`` without ``bp``) of
        the layer's kind (``layer.kind``).

        A fully-connected layer is the convolution whose kernel covers its whole input;
        FP and WU run on the convolution engines, but BP of a one-pixel output
        (``geometry.is_matvec``) is a matrix-vector product and runs on the
        :class:`~fpdeep.rtl.fc.FcBackpropEngine`, which keeps all its PEs busy. The rest
        of the datapath reads the engines through the same ports.
        """
        g, n = layer.geometry, numerics
        fp = ConvEngine(geometry=g, rows=sizes.fp, in_fmt=n.act, weight_fmt=n.weight,
                        out_fmt=n.act, acc_width=n.acc_width, bias=True)
        unit = WeightUpdateUnit(geometry=g, wu_rows=sizes.wu, fp_rows=sizes.fp,
                                bp_rows=sizes.bp if self._bp else None, numerics=n,
                                matvec=g.is_matvec, wu_lanes=sizes.wu_lanes, **sgd)
        bp = None
        if self._bp and g.is_matvec:
            bp = FcBackpropEngine(geometry=g, rows=sizes.bp, in_fmt=n.error,
                                  weight_fmt=n.weight, out_fmt=n.error, acc_width=n.acc_width,
                                  raw=self._partial)
        elif self._bp:
            bp = ConvEngine(geometry=g.transposed(), rows=sizes.bp, in_fmt=n.error,
                            weight_fmt=n.weight, out_fmt=n.error, acc_width=n.acc_width,
                            bias=False, raw=self._partial)
        return fp, unit, bp

    @property
    def engines(self):
        """``{kind: engine}``: the blocks the chip places beside the layer."""
        engines = {"fp": self.fp, "wu": self.unit}
        if self.bp is not None:
            engines["bp"] = self.bp
        return engines

    @property
    def arrays(self):
        """``{kind: engine}`` whose ``busy``, ``step`` (and ``starved``) a chip counts."""
        arrays = {"fp": self.fp, "wu": self.unit.engine}
        if self.bp is not None:
            arrays["bp"] = self.bp
        return arrays

    def array_shapes(self):
        """``{kind: (rows, cols)}``: the PEs of each engine."""
        return {kind: engine.array_shape for kind, engine in self.arrays.items()}

    def macs(self):
        """``{kind: useful MACs per sample}`` (biases count as MACs)."""
        g = self.layer.geometry
        macs = {"fp": g.macs + g.cout * g.ho * g.wo, "wu": g.macs + g.cout * g.ho * g.wo}
        if self._bp:
            macs["bp"] = g.macs
        return macs

    def elaborate(self, platform):
        m = Module()
        layer, n = self.layer, self._n
        g, front = layer.geometry, self._front
        fp, bp, unit = self.fp, self.bp, self.unit
        control = self.control

        # ---- forward: FP from the input map's forward slot, as its rows are ready, into
        # the post-ops and this layer's slots. A pool pairs rows of the full map (which
        # the derivative reads again) into the pooled one, the next layer's input.
        own = RowLayout(g.cout, g.ho, g.wo, n.act)
        full_layout = own if layer.pool else RowLayout(front + g.cout, g.ho, g.wo, n.act)
        full_base = 0 if layer.pool else front * g.ho
        full_ports = {"post_wr": FeaturePort(True, "forward", own, full_base)}
        if layer.pool:
            full_ports["post_rd"] = FeaturePort(False, "forward", own, full_base)
        if layer.relu or layer.pool:
            full_ports["deriv_rd0"] = FeaturePort(False, "backward", own, full_base)
        if layer.pool:
            full_ports["deriv_rd1"] = FeaturePort(False, "backward", own, full_base)
            pooled_own = RowLayout(g.cout, g.ho // 2, g.wo // 2, n.act)
            out_ports = {"post_wr": FeaturePort(True, "forward", pooled_own,
                                                front * (g.ho // 2))}
        else:
            out_ports = full_ports
        out_ports.update({"forward": FeaturePort(False, "forward", self.out_layout),
                          "backward": FeaturePort(False, "loss" if self._loss else "backward",
                                                  self.out_layout)})
        if front:
            out_ports["gather"] = FeaturePort(True, "forward", self.out_layout)
        m.submodules.act = full = FeatureMemory(layout=full_layout, slots=self._slots,
                                                ports=full_ports)
        out = full
        if layer.pool:
            m.submodules.pooled = out = FeatureMemory(layout=self.out_layout,
                                                      slots=self._slots, ports=out_ports)
        wiring.connect(m, wiring.flipped(self.slot),
                       *[mem.slot for mem in ([full, out] if layer.pool else [full])])

        m.submodules.post = writer = ActivationWriter(channels=g.cout, h=g.ho, w=g.wo,
                                                      fmt=n.act, relu=layer.relu,
                                                      pool=layer.pool)
        wiring.connect(m, fp.w_rd, unit.fp_rd)
        wiring.connect(m, fp.x_rd, wiring.flipped(self.i_act.forward))
        m.d.comb += [fp.x_ready.eq(self.i_act.rows_ready),
                     fp.start.eq(control.forward.start),
                     writer.clear.eq(control.forward.start),
                     control.forward.busy.eq(fp.busy)]
        m.d.sync += self.fp_saturated.eq(_rows_into(m, fp.o, writer.i))
        wiring.connect(m, writer.full_wr, full.post_wr)
        if layer.pool:
            wiring.connect(m, writer.full_rd, full.post_rd)
            wiring.connect(m, writer.pooled_wr, out.post_wr)
        m.d.comb += self.o_act.rows_ready.eq(writer.rows_ready)
        wiring.connect(m, out.forward, wiring.flipped(self.o_act.forward))
        wiring.connect(m, out.backward, wiring.flipped(self.o_act.backward))
        if front:
            wiring.connect(m, out.gather, wiring.flipped(self.gather_wr))

        # ---- backward: the errors at the output through the post-ops' derivative into
        # the store, whose rows the WU and BP engines take as they are written.
        lanes = unit.engine.e_layout
        m.submodules.err_lanes = lane_mem = memory.Memory(shape=lanes.shape,
                                                          depth=lanes.depth, init=[])
        m.submodules.deriv = deriv = ErrorDerivative(
            channels=g.cout, h=g.ho, w=g.wo, act_fmt=n.act, error_fmt=n.error,
            relu=layer.relu, pool=layer.pool)
        m.submodules.err_store = store = ErrorStore(
            channels=g.cout, h=g.ho, w=g.wo, fmt=n.error, lanes=self._sizes.wu,
            rows=self._bp)
        wiring.connect(m, wiring.flipped(self.i_err), deriv.i)
        if layer.relu or layer.pool:
            wiring.connect(m, deriv.full_rd0, full.deriv_rd0)
        if layer.pool:
            wiring.connect(m, deriv.full_rd1, full.deriv_rd1)
        wiring.connect(m, deriv.o, store.i)
        wiring.connect(m, store.lane_wr, lane_mem.write_port(granularity=g.wo))
        wiring.connect(m, unit.x_rd, wiring.flipped(self.i_act.backward))
        wiring.connect(m, unit.e_rd, lane_mem.read_port())
        m.d.comb += [unit.e_ready.eq(store.rows_ready),
                     store.clear.eq(control.backward.clear),
                     unit.start_sample.eq(control.backward.start)]
        backward_busy = ~deriv.i.ready
        if bp is not None:
            m.submodules.err_rows = row_mem = memory.Memory(
                shape=RowLayout(g.cout, g.ho, g.wo, n.error).shape, depth=g.cout * g.ho,
                init=[])
            wiring.connect(m, store.row_wr, row_mem.write_port())
            wiring.connect(m, bp.w_rd, unit.bp_rd)
            wiring.connect(m, bp.x_rd, row_mem.read_port())
            m.d.comb += [bp.x_ready.eq(store.rows_ready), bp.start.eq(control.backward.start)]
            m.d.sync += self.bp_saturated.eq(_rows_into(m, bp.o, self.o_err))
            backward_busy = bp.busy | backward_busy
        m.d.comb += control.backward.busy.eq(backward_busy)

        m.d.comb += [unit.start_update.eq(control.update.start),
                     unit.start_refresh.eq(control.update.refresh),
                     control.update.busy.eq(unit.busy)]
        return m
