"""Weight update: per-sample weight gradients, their batch sums, and the SGD step."""

import numbers
from dataclasses import dataclass

from amaranth import *
from amaranth.lib import wiring, stream, data, memory, enum
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from .conv import RowLayout, pack_conv_weights
from .fc import pack_fc_bp_weights
from .numerics import (FixedFormat, check_accumulator, saturate_hw, shift_round_hw,
                       requantize_hw, master_to_weight_np)
from .systolic import SystolicArray

__all__ = ["LaneLayout", "WeightGradientEngine", "FcGradientEngine", "WeightUpdateUnit", "WeightWalk", "SgdPipeline",
           "MasterStore", "ExchangeOp", "EXCHANGE_WIDTH", "gradient_words", "pack_lanes", "gradient_index_count"]


@dataclass(frozen=True)
class LaneLayout:
    """A feature map stored as rows of ``lanes`` channels side by side.

    Word ``t * h + y`` holds row ``y`` of channels ``t*lanes ... t*lanes + lanes - 1``:
    element ``r * w + x`` is channel ``t*lanes + r`` at pixel ``(y, x)``. A writer
    stores one channel's row per cycle (write-enable granularity ``w``), and the WU
    engine reads one word per step and picks pixel ``x`` of every lane.
    """
    channels: int
    h: int
    w: int
    lanes: int
    fmt: FixedFormat

    @property
    def tiles(self):
        return -(-self.channels // self.lanes)

    @property
    def depth(self):
        return self.tiles * self.h

    @property
    def shape(self):
        return data.ArrayLayout(self.fmt.shape, self.lanes * self.w)

    def address(self, tile, y):
        return tile * self.h + y


def pack_lanes(feature_map, lanes):
    """Words of a :class:`LaneLayout` memory holding a ``(channels, h, w)`` map."""
    c, h, w = feature_map.shape
    tiles = -(-c // lanes)
    words = []
    for t in range(tiles):
        for y in range(h):
            words.append([int(feature_map[t * lanes + r, y, x]) if t * lanes + r < c else 0
                          for r in range(lanes) for x in range(w)])
    return words


def gradient_index_count(geometry):
    """Gradient rows per output channel: ``(i, ky)`` pairs plus one for the bias."""
    return geometry.cin * geometry.kh + 1


class WeightGradientEngine(wiring.Component):
    """Computes one sample's weight and bias gradient sums of a conv (or FC) layer.

    ``grad[o, i, ky, kx] = sum_{y, x} e[o, y, x] * in[i, y+ky-ph, x+kx-pw]`` and
    ``grad_b[o] = sum e[o, y, x] * 1.0``, exactly.

    The engine is a :class:`SystolicArray` of ``rows`` × ``kw`` PEs: rows are
    output channels, columns are the kernel columns ``kx``. A tile is one
    ``(i, ky)`` (or the bias) for ``rows`` output channels; its steps walk the
    output pixels ``(y, x)`` whose input row is in range. Each step feeds the
    errors of ``rows`` channels at one pixel (picked from one word of a
    :class:`LaneLayout` memory) down the rows and ``kw`` neighbouring input pixels across the columns.
    A tile of ``valid_rows * wo`` steps thus yields ``rows * kw`` gradient sums.

    **Lanes over output pixels.** With ``lanes = L`` > 1 a step takes ``L``
    neighbouring output pixels ``x0 ... x0 + L - 1`` of one row at once, and each PE
    adds the ``L`` products ``e[o, y, x] * in[i, y+ky-ph, x+kx-pw]`` of its
    ``(o, kx)`` before its accumulator (a :class:`SystolicArray` with ``lanes``): the
    array is ``rows × kw × L`` multipliers and a tile takes ``valid_rows *
    ceil(wo / L)`` steps, so the time per sample falls as ``1 / L`` whatever the
    channel slice. Lanes past ``wo`` carry zero errors. Why lanes over pixels of a
    row: the word the engine already reads per step holds the whole row, both in
    the error store (:class:`LaneLayout`: pixel ``x`` of every lane) and in the
    input's feature slot (:class:`~fpdeep.rtl.conv.RowLayout`: a channel's row),
    so the ``L`` pixels need no further read port, no banking and no line buffer,
    and the memories, their layouts and the writers stay as they are. Lanes over
    kernel rows or output rows would need ``L`` rows per step, so a line buffer
    or more ports. The sums are exact integers, so adding the ``L`` products before
    the accumulator gives the sums of the scalar engine bit for bit.

    Parameters
    ----------
    geometry : ConvGeometry
    rows : int
        Output channels per tile (rows of the array).
    act_fmt, error_fmt : FixedFormat
    acc_width : int
    lanes : int
        Output pixels per step, ``1 ... wo``.

    Members
    -------
    start : In(1)
    busy : Out(1)
    step : Out(1)
        A step enters the array this cycle (a performance counter input).
    e_rd : In(memory.ReadPort.Signature(shape=ArrayLayout(error, rows)))
        Errors at the layer's output, :class:`LaneLayout`.
    x_rd : In(memory.ReadPort.Signature(shape=ArrayLayout(act, w)))
        The layer's input, :class:`RowLayout`.
    e_ready : In(range(ho + 1)), all rows by default
        Error rows ``0 .. e_ready - 1`` of every channel are written: a step whose
        row is not waits, so the engine can start while BP is still producing them.
    starved : Out(1)
        A step waits for its error row this cycle.
    o : Out(stream.Signature(StructLayout({"channel", "index", "sums": ArrayLayout(signed(acc), kw)})))
        Gradient sums of output channel ``channel`` and row ``index = i * kh + ky``
        (``cin * kh`` for the bias, in ``sums[0]``).
    """

    def __init__(self, *, geometry, rows, act_fmt, error_fmt, acc_width=48, lanes=1):
        if not isinstance(rows, int) or rows < 1:
            raise ValueError(f"rows must be a positive int, not {rows!r}")
        if not isinstance(lanes, int) or not 1 <= lanes <= geometry.wo:
            raise ValueError(f"lanes must be an int from 1 to wo = {geometry.wo}, "
                             f"not {lanes!r}")
        self._g, self._rows, self._lanes = geometry, rows, lanes
        #: Steps per output row: groups of ``lanes`` pixels.
        self.groups = -(-geometry.wo // lanes)
        self._act_fmt, self._error_fmt, self._acc_width = act_fmt, error_fmt, acc_width
        g = geometry
        self.e_layout = LaneLayout(g.cout, g.ho, g.wo, rows, error_fmt)
        self.x_layout = RowLayout(g.cin, g.h, g.w, act_fmt)
        self.tiles = self.e_layout.tiles
        super().__init__({
            "start": In(1),
            "busy": Out(1),
            "step": Out(1),
            "e_rd": In(memory.ReadPort.Signature(
                addr_width=ceil_log2(self.e_layout.depth), shape=self.e_layout.shape)),
            "x_rd": In(memory.ReadPort.Signature(
                addr_width=ceil_log2(self.x_layout.depth), shape=self.x_layout.shape)),
            "e_ready": In(range(g.ho + 1), init=g.ho),
            "starved": Out(1),
            "o": Out(stream.Signature(data.StructLayout({
                "channel": range(g.cout),
                "index": range(gradient_index_count(g)),
                "sums": data.ArrayLayout(signed(acc_width), g.kw),
            }))),
        })

    @property
    def array_shape(self):
        """``(rows, kw * lanes)``: the PEs (multipliers) as rows and columns."""
        return (self._rows, self._g.kw * self._lanes)

    @property
    def lanes(self):
        return self._lanes

    def elaborate(self, platform):
        m = Module()
        g, rows, lanes, groups = self._g, self._rows, self._lanes, self.groups
        check_accumulator(g.ho * g.wo, max(self._act_fmt.width, self._error_fmt.width),
                          self._acc_width, what=f"weight-gradient engine {g}")
        bias_index = g.cin * g.kh
        tag = data.StructLayout({"t": range(max(2, self.tiles)), "index": range(bias_index + 1)})
        m.submodules.array = array = SystolicArray(
            rows=rows, cols=g.kw, a_shape=self._error_fmt.shape, b_shape=self._act_fmt.shape,
            acc_width=self._acc_width, tag_shape=tag, lanes=lanes)

        t = Signal(range(max(2, self.tiles)))
        i = Signal(range(max(2, g.cin + 1)))
        ky = Signal(range(max(2, g.kh)))
        y = Signal(range(max(2, g.ho)))
        x = Signal(range(max(2, groups)))      # the step's pixel group: x * lanes ...
        at_bias = Signal()
        running = Signal()

        # Output rows whose input row y + ky - ph is in range (all rows for the bias).
        y_lo = Signal.like(y)
        y_hi = Signal.like(y)
        m.d.comb += [
            y_lo.eq(Mux(at_bias | (ky >= g.ph), 0, g.ph - ky)),
            y_hi.eq(Mux(at_bias | (g.h - 1 + g.ph - ky >= g.ho - 1), g.ho - 1,
                        g.h - 1 + g.ph - ky)),
        ]
        tile_last = (y == y_hi) & (x == groups - 1)

        s1_valid = Signal()
        s1_bias = Signal()
        s1_x = Signal.like(x)
        s1_last = Signal()
        advance = ~s1_valid | array.i.ready
        m.d.comb += [
            self.e_rd.en.eq(advance),
            self.x_rd.en.eq(advance),
            self.e_rd.addr.eq(t * g.ho + y),
            self.x_rd.addr.eq(i * g.h + y + ky - g.ph),
        ]

        index = Mux(at_bias, bias_index, i * g.kh + ky)

        def first_row(ky_value):
            return max(0, g.ph - ky_value)

        # A step waits for its error row (BP may still be producing the map).
        issue = running & (y < self.e_ready)
        m.d.comb += self.starved.eq(running & advance & ~issue)
        with m.If(advance):
            m.d.sync += [
                s1_valid.eq(issue),
                s1_bias.eq(at_bias),
                s1_x.eq(x),
                s1_last.eq(tile_last),
                array.i.payload.tag.t.eq(t),            # the tile's tag travels with it
                array.i.payload.tag.index.eq(index),
            ]
            with m.If(issue):
                with m.If(tile_last):
                    m.d.sync += x.eq(0)
                    with m.If(at_bias):
                        m.d.sync += [at_bias.eq(0), i.eq(0), ky.eq(0), y.eq(first_row(0))]
                        with m.If(t == self.tiles - 1):
                            m.d.sync += [t.eq(0), running.eq(0)]
                        with m.Else():
                            m.d.sync += t.eq(t + 1)
                    with m.Elif(ky == g.kh - 1):
                        m.d.sync += [ky.eq(0), i.eq(i + 1), y.eq(first_row(0))]
                        with m.If(i == g.cin - 1):
                            m.d.sync += [at_bias.eq(1), y.eq(0)]
                    with m.Else():
                        m.d.sync += ky.eq(ky + 1)
                        with m.Switch(ky):
                            for value in range(g.kh - 1):
                                with m.Case(value):
                                    m.d.sync += y.eq(first_row(value + 1))
                with m.Elif(x == groups - 1):
                    m.d.sync += [x.eq(0), y.eq(y + 1)]
                with m.Else():
                    m.d.sync += x.eq(x + 1)
        with m.If(self.start & ~self.busy):
            m.d.sync += [running.eq(1), t.eq(0), i.eq(0), ky.eq(0), y.eq(first_row(0)),
                         x.eq(0), at_bias.eq(0)]

        # Pixel xv of every channel's error row, and the kw input pixels xv - pw ...
        # xv - pw + kw - 1 of the input row (zero outside), for each pixel xv of the
        # group (in lane l); a pixel past wo has zero errors.
        x_row = self.x_rd.data

        def operand(vector, index, lane):
            return vector[index] if lanes == 1 else vector[index][lane]

        with m.Switch(s1_x):
            for xg in range(groups):
                with m.Case(xg):
                    for lane in range(lanes):
                        xv = xg * lanes + lane
                        for r in range(rows):
                            m.d.comb += operand(array.i.payload.a, r, lane).eq(
                                self.e_rd.data[r * g.wo + xv] if xv < g.wo else 0)
                        for c in range(g.kw):
                            src = xv + c - g.pw
                            m.d.comb += operand(array.i.payload.b, c, lane).eq(
                                x_row[src] if 0 <= src < g.w and xv < g.wo else 0)
        with m.If(s1_bias):
            for lane in range(lanes):
                for c in range(g.kw):
                    m.d.comb += operand(array.i.payload.b, c, lane).eq(
                        self._act_fmt.one if c == 0 else 0)
        m.d.comb += [
            array.i.payload.last.eq(s1_last),
            array.i.valid.eq(s1_valid),
        ]
        channel = array.o.payload.tag.t * rows + array.o.payload.row
        lane_used = channel < g.cout
        m.d.comb += [
            self.o.payload.channel.eq(channel),
            self.o.payload.index.eq(array.o.payload.tag.index),
            self.o.payload.sums.eq(array.o.payload.sums),
            self.o.valid.eq(array.o.valid & lane_used),
            array.o.ready.eq(self.o.ready | ~lane_used),
        ]
        m.d.comb += [
            self.busy.eq(running | s1_valid | array.busy),
            self.step.eq(array.i.valid & array.i.ready),
        ]
        return m


class ExchangeOp(enum.Enum, shape=16):
    """The first word of an exchange on the WGT virtual channel (see :class:`WeightUpdateUnit`)."""
    #: Gradients follow; the holder steps SGD and returns the new copies.
    UPDATE = 0
    #: No gradients follow; the holder returns copies of its masters as they are.
    REFRESH = 1


#: Width of a word of the weight exchange (the link's WGT virtual channel).
EXCHANGE_WIDTH = 16


def gradient_words(numerics):
    """Words of :data:`EXCHANGE_WIDTH` bits that carry one saturated batch gradient."""
    return -(-numerics.grad_width // EXCHANGE_WIDTH)


def _check_exchange(numerics):
    if numerics.weight.width > EXCHANGE_WIDTH:
        raise ValueError(f"numerics: a {numerics.weight.width}-bit weight copy does not fit "
                         f"one {EXCHANGE_WIDTH}-bit exchange word")


def _check_rates(rate_q, momentum_q):
    """``(rate_q, momentum_q)`` as ints, checked to be unsigned 16-bit."""
    checked = []
    for name, value in (("rate_q", rate_q), ("momentum_q", momentum_q)):
        if not isinstance(value, numbers.Integral) or not 0 <= value < 1 << 16:
            raise ValueError(f"{name} must be an unsigned 16-bit int, not {value!r}")
        checked.append(int(value))
    return checked


def _master_words(geometry, masters):
    """Initial words of a master memory: rows ``(o, i, ky)`` of ``kw`` weights, then the bias."""
    g = geometry
    w, b = masters
    if tuple(w.shape) != (g.cout, g.cin, g.kh, g.kw) or tuple(b.shape) != (g.cout,):
        raise ValueError(f"masters must be shaped {(g.cout, g.cin, g.kh, g.kw)} and "
                         f"{(g.cout,)}, not {tuple(w.shape)} and {tuple(b.shape)}")
    words = []
    for o in range(g.cout):
        for i in range(g.cin):
            for ky in range(g.kh):
                words.append([int(v) for v in w[o, i, ky]])
        words.append([int(b[o])] + [0] * (g.kw - 1))
    return words


def _element(m, word, kx, kw, shape):
    """Element ``kx`` of a memory word of ``kw`` elements, as a new signal."""
    value = Signal(shape)
    with m.Switch(kx):
        for c in range(kw):
            with m.Case(c):
                m.d.comb += value.eq(word[c])
    return value


def _host_members(host_span):
    return {
        "host_addr": In(range(max(2, host_span))),
        "host_read": In(1),
        "host_write": In(1),
        "host_wdata": In(signed(32)),
        "host_rdata": Out(signed(32)),
        "host_rvalid": Out(1),
    }


def _pass_host(m, outer, store):
    """Join the flat ``host_*`` members of ``outer`` (a unit or a holder) to its
    :class:`MasterStore`'s, which serves them."""
    for name in ("host_addr", "host_read", "host_write", "host_wdata"):
        m.d.comb += getattr(store, name).eq(getattr(outer, name))
    for name in ("host_rdata", "host_rvalid"):
        m.d.comb += getattr(outer, name).eq(getattr(store, name))


class WeightWalk(wiring.Component):
    """Steps through every weight of a layer in master-address order.

    The order is the one of the master memories and of the host address map: word by
    word, ``word = o * (cin*kh + 1) + i*kh + ky`` for the kernel rows of output channel
    ``o`` and ``o * (cin*kh + 1) + cin*kh`` for its bias, and within a word
    ``kx = 0 ... kw-1`` (only ``kx = 0`` in a bias word). Channel ``o``'s bias follows
    its kernel and precedes channel ``o + 1``.

    Parameters
    ----------
    geometry : ConvGeometry

    Members
    -------
    restart : In(1)
        Go back to the first weight; takes precedence over ``next``.
    next : In(1)
        Move on to the next weight (after the last, back to the first).
    position : Out(WeightWalk.position_layout(geometry))
        The current weight: ``word``, ``kx``, and ``o``, ``i``, ``ky``, ``bias`` (for a
        bias, ``i = cin`` and ``ky = 0``). It changes the cycle after ``next``.
    word_last : Out(1)
        The current weight is the last of its word.
    last : Out(1)
        The current weight is the layer's last (the bias of channel ``cout - 1``).
    """

    @staticmethod
    def position_layout(geometry):
        g = geometry
        words = g.cout * gradient_index_count(g)
        return data.StructLayout({
            "word": range(max(2, words)), "kx": range(max(2, g.kw)), "o": range(max(2, g.cout)),
            "i": range(max(2, g.cin + 1)), "ky": range(max(2, g.kh)), "bias": 1})

    def __init__(self, geometry):
        self._g = geometry
        super().__init__({
            "restart": In(1),
            "next": In(1),
            "position": Out(self.position_layout(geometry)),
            "word_last": Out(1),
            "last": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        g, p = self._g, self.position
        m.d.comb += [
            self.word_last.eq(p.bias | (p.kx == g.kw - 1)),
            self.last.eq(p.bias & (p.o == g.cout - 1)),
        ]
        with m.If(self.restart):
            m.d.sync += p.eq(0)
        with m.Elif(self.next):
            with m.If(self.last):
                m.d.sync += p.eq(0)
            with m.Elif(self.word_last):
                m.d.sync += [p.kx.eq(0), p.word.eq(p.word + 1)]
                with m.If(p.bias):
                    m.d.sync += [p.bias.eq(0), p.i.eq(0), p.ky.eq(0), p.o.eq(p.o + 1)]
                with m.Elif(p.ky == g.kh - 1):
                    m.d.sync += [p.ky.eq(0), p.i.eq(p.i + 1)]
                    with m.If(p.i == g.cin - 1):
                        m.d.sync += p.bias.eq(1)
                with m.Else():
                    m.d.sync += p.ky.eq(p.ky + 1)
            with m.Else():
                m.d.sync += p.kx.eq(p.kx + 1)
        return m


class SgdPipeline(wiring.Component):
    """The SGD step of one weight per cycle, exactly as :func:`~fpdeep.rtl.numerics.sgd_step_np`.

    Four stages: S0 saturates the batch sum to ``numerics.grad``; S1 scales it by
    ``rate_q`` (rounded to the master format) and decays the velocity by
    ``momentum_q``; S2 forms the step (with momentum, the new velocity, saturated to
    the master format); S3 subtracts the step from the master with saturation. The
    new master's 16-bit copy (:func:`~fpdeep.rtl.numerics.master_to_weight_np`) is
    rounded combinationally from S3.

    Latency 4 cycles, throughput one weight per cycle. Neither stream has
    backpressure (both are ``always_ready``): a consumer must take every result.

    Parameters
    ----------
    numerics : Numerics
    rate_q, momentum_q : int
        Unsigned 16-bit fractions (``numerics.rate_frac`` fraction bits); no
        momentum when ``momentum_q`` is 0.
    tag_shape : shape
        A tag that travels with each weight.

    Members
    -------
    i : In(stream.Signature(StructLayout({"grad", "master", "velocity", "refresh", "tag"}), always_ready=True))
        ``grad`` (``signed(acc_width)``) is the weight's exact batch sum; ``master``
        and ``velocity`` (master format) its current state (``velocity`` is ignored
        without momentum). With ``refresh`` set nothing is stepped: the master passes
        through and only its copy is rounded.
    o : Out(stream.Signature(StructLayout({"master", "velocity", "weight", "saturations", "refresh", "tag"}), always_ready=True))
        The new ``master``, the new ``velocity`` (without momentum: the step, which is
        not to be stored), the 16-bit ``weight`` copy, and ``saturations``, how many
        of the gradient, velocity, master and copy saturated (0 to 4; with
        ``refresh`` only the copy counts). Valid 4 cycles after the input.
    busy : Out(1)
        A weight is in the pipeline.

    Raises
    ------
    ValueError
        If ``rate_q`` or ``momentum_q`` is not an unsigned 16-bit int.
    """

    def __init__(self, *, numerics, rate_q, momentum_q, tag_shape):
        rate_q, momentum_q = _check_rates(rate_q, momentum_q)
        self._n, self._rate_q, self._momentum_q = numerics, rate_q, momentum_q
        n = numerics
        super().__init__({
            "i": In(stream.Signature(data.StructLayout({
                "grad": n.acc_shape, "master": n.master.shape, "velocity": n.master.shape,
                "refresh": 1, "tag": tag_shape}), always_ready=True)),
            "o": Out(stream.Signature(data.StructLayout({
                "master": n.master.shape, "velocity": n.master.shape, "weight": n.weight.shape,
                "saturations": range(5), "refresh": 1, "tag": tag_shape}), always_ready=True)),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        n = self._n
        momentum = bool(self._momentum_q)
        i = self.i.payload
        control = data.StructLayout({"valid": 1, "refresh": 1,
                                     "tag": self.i.payload.tag.shape()})
        c0, c1, c2, c3 = (Signal(control, name=f"control{k}") for k in range(4))
        m.d.sync += [c0.valid.eq(self.i.valid), c0.refresh.eq(i.refresh), c0.tag.eq(i.tag),
                     c1.eq(c0), c2.eq(c1), c3.eq(c2)]

        # S0: saturate the batch sum to the gradient format.
        g_sat = Signal(n.grad.shape)
        g_flag0 = Signal()
        m_0 = Signal(n.master.shape)
        v_0 = Signal(n.master.shape)
        value, flag = saturate_hw(i.grad, n.grad)
        m.d.sync += [g_sat.eq(value), g_flag0.eq(flag & self.i.valid & ~i.refresh),
                     m_0.eq(i.master), v_0.eq(i.velocity)]
        # S1: scale by the rate; decay the velocity.
        delta = Signal(signed(n.grad.width + 18))
        v_decay = Signal(signed(n.master.width + 18))
        m_1 = Signal(n.master.shape)
        g_flag1 = Signal()
        m.d.sync += [
            delta.eq(Mux(c0.refresh, 0, shift_round_hw(g_sat * self._rate_q, n.update_shift))),
            v_decay.eq(shift_round_hw(v_0 * self._momentum_q, n.rate_frac) if momentum else 0),
            m_1.eq(m_0), g_flag1.eq(g_flag0),
        ]
        # S2: the step, through the velocity when there is momentum.
        step = Signal(signed(n.grad.width + 18))
        v_flag = Signal()
        m_2 = Signal(n.master.shape)
        g_flag2 = Signal()
        if momentum:
            value, flag = saturate_hw(v_decay + delta, n.master)
            m.d.sync += [step.eq(Mux(c1.refresh, 0, value)), v_flag.eq(flag & ~c1.refresh)]
        else:
            m.d.sync += [step.eq(delta), v_flag.eq(0)]
        m.d.sync += [m_2.eq(m_1), g_flag2.eq(g_flag1)]
        # S3: the new master; its copy is rounded from it.
        m_new = Signal(n.master.shape)
        v_new = Signal(n.master.shape)
        flags = Signal(3)
        value, m_flag = saturate_hw(m_2 - step, n.master)
        m.d.sync += [m_new.eq(value), v_new.eq(step), flags.eq(Cat(g_flag2, v_flag, m_flag))]
        w_value, w_sat = requantize_hw(m_new, n.master.frac, n.weight)

        m.d.comb += [
            self.o.valid.eq(c3.valid),
            self.o.payload.master.eq(m_new),
            self.o.payload.velocity.eq(v_new),
            self.o.payload.weight.eq(w_value),
            self.o.payload.saturations.eq(flags[0] + flags[1] + flags[2] + w_sat),
            self.o.payload.refresh.eq(c3.refresh),
            self.o.payload.tag.eq(c3.tag),
            self.busy.eq(c0.valid | c1.valid | c2.valid | c3.valid),
        ]
        return m


class MasterStore(wiring.Component):
    """A layer's master weights and velocities, and the SGD step that writes them back.

    The one home of the SGD write-back, used by a :class:`WeightUpdateUnit` that keeps
    its own masters and by a :class:`~fpdeep.rtl.weight_holder.WeightHolder` that keeps
    a neighbour's. It owns:

    * ``master`` (``numerics.master``) and, with momentum, ``velocity`` words, addressed
      as the gradients (:class:`WeightWalk`): word ``o * (cin*kh + 1) + i*kh + ky`` holds
      ``kx = 0 ... kw-1``, word ``o * (cin*kh + 1) + cin*kh`` holds the bias in element 0;
    * the :class:`SgdPipeline` that steps one weight per cycle;
    * the host's access to the masters (``host_*``).

    Its owner walks the weights (:class:`WeightWalk`): it addresses the words to read
    (``read_word``, one cycle of latency, held while ``read_en`` is low) and offers each
    weight's batch sum on ``i`` once its word has been read. Four cycles later the new
    master and velocity are written back and the weight's 16-bit copy leaves on ``o``,
    for the owner to write or send. With ``refresh`` the weight is not stepped: the
    master passes through and only its copy is rounded.

    Latency 4 cycles from ``i`` to ``o`` (the pipeline's), throughput one weight per
    cycle; neither stream has backpressure.

    Parameters
    ----------
    geometry : ConvGeometry
    numerics : Numerics
    masters : (W, b)
        Initial int64 masters, ``W`` shaped ``(cout, cin, kh, kw)``.
    rate_q, momentum_q : int
        Unsigned 16-bit fractions (``numerics.rate_frac`` fraction bits); no velocity
        memory when ``momentum_q`` is 0.

    Members
    -------
    read_word : In(range(words))
        The word the master (and velocity) read port fetches while ``walking``.
    read_en : In(1), 1 by default
        Low: the read ports hold their data (an owner stepping through a word's elements).
    walking : In(1)
        The walk owns the master read port; otherwise ``host_addr`` addresses it.
    owner_busy : In(1)
        The owner is busy: host writes are dropped and host reads not answered.
    i : In(stream.Signature(StructLayout({"grad", "refresh", "tag"}), always_ready=True))
        A weight to step: its exact batch sum ``grad`` (``signed(acc_width)``) and its
        :meth:`WeightWalk.position_layout` ``tag``, whose word was read last.
    o : Out(stream.Signature(StructLayout({"weight", "refresh", "tag"}), always_ready=True))
        The weight's new 16-bit copy, 4 cycles after ``i``, in the cycle its master is
        written back.
    busy : Out(1)
        A weight is in the pipeline.
    saturations : Out(32)
        Velocity, master and copy saturations, and those of the gradients it was given.
    host_addr : In(range(host_span))
        ``word << kx_bits | kx`` with ``kx_bits = ceil_log2(kw)``.
    host_read, host_write : In(1)
    host_wdata : In(signed(32))
    host_rdata : Out(signed(32))
    host_rvalid : Out(1)
        One cycle after ``host_read`` (data of the read issued then).

    Raises
    ------
    ValueError
        If the masters are misshapen or the rates not unsigned 16-bit ints.
    """

    def __init__(self, *, geometry, numerics, masters, rate_q, momentum_q):
        self._rate_q, self._momentum_q = _check_rates(rate_q, momentum_q)
        g = geometry
        self._g, self._n = g, numerics
        self.words = g.cout * gradient_index_count(g)
        self.kx_bits = ceil_log2(g.kw)
        self.host_span = self.words << self.kx_bits
        self.master = memory.Memory(shape=data.ArrayLayout(numerics.master.shape, g.kw),
                                    depth=self.words, init=_master_words(g, masters))
        self.velocity = (memory.Memory(shape=data.ArrayLayout(numerics.master.shape, g.kw),
                                       depth=self.words, init=[])
                         if momentum_q else None)
        tag = WeightWalk.position_layout(g)
        super().__init__({
            "read_word": In(tag.members["word"]),
            "read_en": In(1, init=1),
            "walking": In(1),
            "owner_busy": In(1),
            "i": In(stream.Signature(data.StructLayout({
                "grad": numerics.acc_shape, "refresh": 1, "tag": tag}), always_ready=True)),
            "o": Out(stream.Signature(data.StructLayout({
                "weight": numerics.weight.shape, "refresh": 1, "tag": tag}),
                always_ready=True)),
            "busy": Out(1),
            "saturations": Out(32),
            **_host_members(self.host_span),
        })

    def elaborate(self, platform):
        m = Module()
        n, kw, kx_bits = self._n, self._g.kw, self.kx_bits
        m.submodules.master = master = self.master
        master_rd = master.read_port()
        master_wr = master.write_port(granularity=1)
        momentum = self.velocity is not None
        if momentum:
            m.submodules.velocity = velocity = self.velocity
            velocity_rd = velocity.read_port()
            velocity_wr = velocity.write_port(granularity=1)
        m.d.comb += [master_rd.addr.eq(Mux(self.walking, self.read_word,
                                           self.host_addr >> kx_bits)),
                     master_rd.en.eq(self.read_en)]
        if momentum:
            m.d.comb += [velocity_rd.addr.eq(self.read_word), velocity_rd.en.eq(self.read_en)]

        step = self.i.payload
        m.submodules.sgd = sgd = SgdPipeline(numerics=n, rate_q=self._rate_q,
                                             momentum_q=self._momentum_q,
                                             tag_shape=step.tag.shape())
        m.d.comb += [
            sgd.i.valid.eq(self.i.valid),
            sgd.i.payload.grad.eq(step.grad),
            sgd.i.payload.master.eq(_element(m, master_rd.data, step.tag.kx, kw,
                                             n.master.shape)),
            sgd.i.payload.refresh.eq(step.refresh),
            sgd.i.payload.tag.eq(step.tag),
        ]
        if momentum:
            m.d.comb += sgd.i.payload.velocity.eq(_element(m, velocity_rd.data, step.tag.kx,
                                                           kw, n.master.shape))
        result = sgd.o.payload
        with m.If(sgd.o.valid):
            m.d.sync += self.saturations.eq(self.saturations + result.saturations)

        # Write-back of each result; between updates, the host's writes.
        step_en = Mux(result.refresh, 0, 1 << result.tag.kx)
        with m.If(sgd.o.valid):
            m.d.comb += [master_wr.addr.eq(result.tag.word), master_wr.en.eq(step_en)]
            for c in range(kw):
                m.d.comb += master_wr.data[c].eq(result.master)
            if momentum:
                m.d.comb += [velocity_wr.addr.eq(result.tag.word), velocity_wr.en.eq(step_en)]
                for c in range(kw):
                    m.d.comb += velocity_wr.data[c].eq(result.velocity)
        with m.Elif(self.host_write & ~self.owner_busy):
            m.d.comb += [master_wr.addr.eq(self.host_addr >> kx_bits),
                         master_wr.en.eq(1 << self.host_addr[:kx_bits] if kx_bits else 1)]
            for c in range(kw):
                m.d.comb += master_wr.data[c].eq(self.host_wdata)

        # Host reads: the master word addressed from host_addr, one cycle later.
        host_kx = Signal(range(max(2, kw)))
        m.d.sync += [self.host_rvalid.eq(self.host_read & ~self.owner_busy),
                     host_kx.eq(self.host_addr[:kx_bits] if kx_bits else 0)]
        m.d.comb += self.host_rdata.eq(_element(m, master_rd.data, host_kx, kw,
                                                self.host_rdata.shape()))

        m.d.comb += [
            self.o.valid.eq(sgd.o.valid),
            self.o.payload.weight.eq(result.weight),
            self.o.payload.refresh.eq(result.refresh),
            self.o.payload.tag.eq(result.tag),
            self.busy.eq(sgd.busy),
        ]
        return m


class WeightUpdateUnit(wiring.Component):
    """Holds one layer's weights, sums their gradients over a mini-batch, and steps SGD.

    It owns the layer's weight store:

    * ``master`` (32-bit) and, with momentum, ``velocity`` words, addressed like the
      gradients: word ``o * (cin*kh + 1) + i*kh + ky`` holds ``kx = 0 ... kw-1``;
      word ``o * (cin*kh + 1) + cin*kh`` holds the bias in element 0. They live in its
      :class:`MasterStore` (:attr:`master_store`), with the SGD step that writes them back;
    * ``grads``: the exact batch sums, same addressing, ``acc_width`` bits;
    * ``fp_weights``: the 16-bit copy that the FP :class:`~fpdeep.rtl.conv.ConvEngine`
      reads (``fp_rows`` output channels per word), and ``bp_weights``: the 16-bit
      copy, transposed and flipped, that the BP engine reads (``bp_rows`` input
      channels per word). The engines read them through ``fp_rd`` and ``bp_rd``.

    ``start_sample`` runs the :class:`WeightGradientEngine` over one sample and adds
    its sums into ``grads`` (a read-modify-write per gradient row, at the engine's
    pace). ``start_update`` walks every weight once (:class:`WeightWalk`): saturate the
    batch sum to the gradient format, scale by ``rate`` (``lr / B``), fold into the
    velocity, subtract from the master, clear the sum, and write both 16-bit copies,
    exactly as :func:`fpdeep.rtl.numerics.sgd_step_np` (:class:`MasterStore`).
    ``start_refresh`` rewrites the copies from the masters without updating (after the
    host wrote weights).

    Throughput: the update takes one cycle per weight plus one per gradient word,
    plus a five-cycle pipeline drain.

    **Remote masters (weight balancing).** With ``remote=True`` a neighbour chip's
    :class:`~fpdeep.rtl.weight_holder.WeightHolder` keeps the masters and velocities
    and steps SGD; this unit keeps ``grads`` and the two copies, and has no ``master``
    or ``velocity`` memory (both attributes are ``None``). Each exchange is one
    mini-batch's words in each direction, all in master-address order
    (:class:`WeightWalk`: per output channel its kernel rows ``(i, ky)`` with
    ``kx = 0 ... kw-1``, then its bias):

    * ``grads_out`` first sends one :class:`ExchangeOp` word: ``UPDATE`` on
      ``start_update``, ``REFRESH`` on ``start_refresh``. After ``UPDATE`` come, per
      weight, its batch sum saturated to ``numerics.grad`` (as the first SGD stage does;
      the saturations count here) and sign-extended to ``16 * gradient_words(numerics)``
      bits, in :func:`gradient_words` words (2 by default), least significant word
      first. Each sum is cleared as it leaves. Nothing follows ``REFRESH``.
    * ``copies_in`` meanwhile takes one word per weight, same order: the new 16-bit copy
      (:func:`~fpdeep.rtl.numerics.master_to_weight_np` of the new master, the weight
      format sign-extended to 16 bits), written to ``fp_weights`` and (not for biases)
      ``bp_weights`` as it arrives. It is ready throughout the exchange, so it never
      holds up the holder.

    A chip wires ``grads_out`` to the link's WGT virtual channel towards the holder's
    ``grads_in``, and the holder's ``copies_out`` back over WGT to ``copies_in``. Per
    batch the link carries ``1 + gradient_words(numerics)`` words per weight (one
    direction ``1 + gradient_words * weights`` words, the other ``weights``). The send
    takes one cycle per exchange word plus one read cycle per master word while the
    link is ready; ``busy`` stays high until the last copy has been written. Wired
    straight to a holder (no link), the owner is busy ``words + gradient_words *
    weights + 7`` cycles after ``start_update`` (``words`` master words, :attr:`words`;
    ``gradient_words`` of 2 or more;
    one-word sums are paced by the holder) and ``2 * weights + 8`` after
    ``start_refresh``; a link adds its round trip and its stalls. A refresh (the host
    wrote masters on the holder chip) sends the op word and takes every copy.
    ``saturations`` counts only the gradient saturations here; the holder counts the
    velocity, master and copy saturations, and the two sum to the layer's count in the
    reference. The host reaches the masters on the holder's chip (same address map,
    :attr:`host_span` of the holder); a remote unit has no ``host_*`` members and its
    ``host_span`` is 0.

    Parameters
    ----------
    geometry : ConvGeometry
    wu_rows, fp_rows : int
    wu_lanes : int
        Output pixels per step of the :class:`WeightGradientEngine` (its ``lanes``).
    bp_rows : int or None
        ``None`` for the first layer, which has no BP.
    numerics : Numerics
    masters : (W, b)
        Initial int64 masters, ``W`` shaped ``(cout, cin, kh, kw)``. The initial copies
        are rounded from them at construction (also with ``remote``; the holder must
        start from the same masters).
    rate_q, momentum_q : int
        Unsigned 16-bit fractions (``numerics.rate_frac`` fraction bits). With
        ``remote`` the holder's are the ones used.
    batch_size : int
        Samples per mini-batch, to prove the gradient sums cannot overflow.
    remote : bool
        Masters and velocities live on a :class:`~fpdeep.rtl.weight_holder.WeightHolder`.
    matvec : bool
        An FC layer's engines (``geometry.is_matvec``): ``bp_weights`` is laid out for
        the :class:`~fpdeep.rtl.fc.FcBackpropEngine` (:func:`~fpdeep.rtl.fc.pack_fc_bp_weights`).

    Members
    -------
    start_sample, start_update, start_refresh : In(1)
    busy : Out(1)
        A sample, an update or a refresh (with ``remote``, the whole exchange) is in
        progress; the ``start_*`` inputs and host accesses are ignored meanwhile.
    e_rd, x_rd, e_ready : as :class:`WeightGradientEngine`
    fp_rd : Out(memory.ReadPort.Signature(shape=ArrayLayout(weight, fp_rows)))
        The FP engine's weights (its ``w_rd``), ``fp_weights``.
    bp_rd : Out(memory.ReadPort.Signature(shape=ArrayLayout(weight, bp_rows)))
        The BP engine's weights, ``bp_weights``; only with ``bp_rows``.
    saturations : Out(32)
        Saturation events in the update (gradient, velocity, master, 16-bit copy;
        with ``remote`` only the gradient).
    host_addr : In(range(host_span))
        ``word << kx_bits | kx`` with ``kx_bits = ceil_log2(kw)``. Not with ``remote``.
    host_read, host_write : In(1)
        Not with ``remote``.
    host_wdata : In(signed(32))
        Not with ``remote``.
    host_rdata : Out(signed(32))
        Not with ``remote``.
    host_rvalid : Out(1)
        One cycle after ``host_read`` (data of the read issued then). Not with ``remote``.
    grads_out : Out(stream.Signature(signed(16)))
        Only with ``remote``: the exchange's words to the holder.
    copies_in : In(stream.Signature(signed(16)))
        Only with ``remote``: the new copies from the holder.

    Raises
    ------
    ValueError
        If ``remote`` is not a bool, if the masters are misshapen, or with ``remote``
        if the weight copy is wider than 16 bits.
    """

    def __init__(self, *, geometry, wu_rows, fp_rows, bp_rows, numerics, masters, rate_q,
                 momentum_q, batch_size, remote=False, matvec=False, wu_lanes=1):
        if not isinstance(remote, bool):
            raise ValueError(f"remote must be a bool, not {remote!r}")
        if matvec and not geometry.is_matvec:
            raise ValueError(f"matvec needs a one-pixel-output geometry, not {geometry!r}")
        self._matvec = bool(matvec)
        if remote:
            _check_exchange(numerics)
        g = geometry
        self._g, self._n = g, numerics
        self._fp_rows, self._bp_rows, self._wu_rows = fp_rows, bp_rows, wu_rows
        self._rate_q, self._momentum_q = rate_q, momentum_q
        self._batch_size = batch_size
        self._remote = remote
        if self._matvec:
            self.engine = FcGradientEngine(geometry=g, rows=wu_rows, act_fmt=numerics.act,
                                           error_fmt=numerics.error, acc_width=numerics.acc_width)
        else:
            self.engine = WeightGradientEngine(geometry=g, rows=wu_rows, act_fmt=numerics.act,
                                               error_fmt=numerics.error,
                                               acc_width=numerics.acc_width, lanes=wu_lanes)
        self.words_per_channel = gradient_index_count(g)
        self.words = g.cout * self.words_per_channel
        self.kx_bits = ceil_log2(g.kw)
        self.host_span = 0 if remote else self.words << self.kx_bits

        _master_words(g, masters)          # checks their shapes (also with remote)
        w, b = masters
        wq, _ = master_to_weight_np(w, numerics)
        bq, _ = master_to_weight_np(b, numerics)
        self.fp_weights = memory.Memory(
            shape=data.ArrayLayout(numerics.weight.shape, fp_rows),
            depth=-(-g.cout // fp_rows) * (g.cin * g.kh * g.kw + 1),
            init=pack_conv_weights(wq, bq, fp_rows))
        if bp_rows is not None and matvec:
            # The FC BP engine's copy: a word of bp_rows x kw weights per (tile, ky, o).
            self.bp_weights = memory.Memory(
                shape=data.ArrayLayout(numerics.weight.shape, bp_rows * g.kw),
                depth=-(-g.cin // bp_rows) * g.kh * g.cout,
                init=pack_fc_bp_weights(wq, bp_rows))
        elif bp_rows is not None:
            flipped = wq[:, :, ::-1, ::-1].transpose(1, 0, 2, 3)
            self.bp_weights = memory.Memory(
                shape=data.ArrayLayout(numerics.weight.shape, bp_rows),
                depth=-(-g.cin // bp_rows) * (g.cout * g.kh * g.kw),
                init=pack_conv_weights(flipped, None, bp_rows))
        else:
            self.bp_weights = None

        if self._matvec:
            # wu_rows lanes: lane l holds the channels o = l (mod wu_rows), word
            # (o // wu_rows) * words_per_channel + (i*kh + ky, or the bias), so that a
            # beat of the engine adds wu_rows gradient rows at one address in all lanes.
            self.grads = [memory.Memory(shape=data.ArrayLayout(signed(numerics.acc_width), g.kw),
                                        depth=self.engine.tiles * self.words_per_channel,
                                        init=[]) for _ in range(wu_rows)]
        else:
            self.grads = memory.Memory(shape=data.ArrayLayout(signed(numerics.acc_width), g.kw),
                                       depth=self.words, init=[])
        if remote:
            self.master_store = None
            self.master = self.velocity = None
        else:
            self.master_store = MasterStore(geometry=g, numerics=numerics, masters=masters,
                                            rate_q=rate_q, momentum_q=momentum_q)
            self.master = self.master_store.master
            self.velocity = self.master_store.velocity

        members = {
            "start_sample": In(1),
            "start_update": In(1),
            "start_refresh": In(1),
            "busy": Out(1),
            "e_rd": self.engine.signature.members["e_rd"],
            "x_rd": self.engine.signature.members["x_rd"],
            "e_ready": self.engine.signature.members["e_ready"],
            "fp_rd": Out(memory.ReadPort.Signature(
                addr_width=ceil_log2(self.fp_weights.depth), shape=self.fp_weights.shape)),
            "saturations": Out(32),
        }
        if bp_rows is not None:
            members["bp_rd"] = Out(memory.ReadPort.Signature(
                addr_width=ceil_log2(self.bp_weights.depth), shape=self.bp_weights.shape))
        if remote:
            members["grads_out"] = Out(stream.Signature(signed(EXCHANGE_WIDTH)))
            members["copies_in"] = In(stream.Signature(signed(EXCHANGE_WIDTH)))
        else:
            members.update(_host_members(self.host_span))
        super().__init__(members)

    @property
    def remote(self):
        return self._remote

    def _write_copies(self, m, position, value, fp_wr, bp_wr):
        """Write the copy ``value`` of the weight at ``position`` (a :class:`WeightWalk`
        position) to ``fp_weights`` and, unless a bias, ``bp_weights``."""
        g = self._g
        fp_taps = g.cin * g.kh * g.kw + 1
        fp_tile = position.o // self._fp_rows
        fp_lane = position.o % self._fp_rows
        fp_tap = Mux(position.bias, g.cin * g.kh * g.kw,
                     (position.i * g.kh + position.ky) * g.kw + position.kx)
        m.d.comb += [fp_wr.addr.eq(fp_tile * fp_taps + fp_tap),
                     fp_wr.en.eq(1 << fp_lane)]
        for r in range(self._fp_rows):
            m.d.comb += fp_wr.data[r].eq(value)
        if bp_wr is not None and self._matvec:
            bp_tile = position.i // self._bp_rows
            bp_lane = (position.i % self._bp_rows) * g.kw + position.kx
            m.d.comb += [bp_wr.addr.eq((bp_tile * g.kh + position.ky) * g.cout + position.o),
                         bp_wr.en.eq(Mux(position.bias, 0, 1 << bp_lane))]
            for r in range(self._bp_rows * g.kw):
                m.d.comb += bp_wr.data[r].eq(value)
        elif bp_wr is not None:
            bp_taps = g.cout * g.kh * g.kw
            bp_tile = position.i // self._bp_rows
            bp_lane = position.i % self._bp_rows
            bp_tap = ((position.o * g.kh + (g.kh - 1 - position.ky)) * g.kw
                      + (g.kw - 1 - position.kx))
            m.d.comb += [bp_wr.addr.eq(bp_tile * bp_taps + bp_tap),
                         bp_wr.en.eq(Mux(position.bias, 0, 1 << bp_lane))]
            for r in range(self._bp_rows):
                m.d.comb += bp_wr.data[r].eq(value)

    def elaborate(self, platform):
        m = Module()
        g, n = self._g, self._n
        kw = g.kw
        check_accumulator(self._batch_size * g.ho * g.wo,
                          max(n.act.width, n.error.width), n.acc_width,
                          what=f"gradient sum of {self._batch_size} samples of {g}")
        m.submodules.engine = engine = self.engine
        wiring.connect(m, wiring.flipped(self.e_rd), engine.e_rd)
        wiring.connect(m, wiring.flipped(self.x_rd), engine.x_rd)
        m.d.comb += engine.e_ready.eq(self.e_ready)

        if self._matvec:
            grads_rd, grads_wr = self._gradient_lanes(m)
        else:
            m.submodules.grads = grads = self.grads
            grads_rd = grads.read_port()
            grads_wr = grads.write_port(granularity=1)
        m.submodules.fp_weights = self.fp_weights
        if self.bp_weights is not None:
            m.submodules.bp_weights = self.bp_weights
        fp_wr = self.fp_weights.write_port(granularity=1)
        bp_wr = (self.bp_weights.write_port(granularity=1)
                 if self.bp_weights is not None else None)
        # The engines' reads of the copies.
        wiring.connect(m, wiring.flipped(self.fp_rd), self.fp_weights.read_port())
        if self.bp_weights is not None:
            wiring.connect(m, wiring.flipped(self.bp_rd), self.bp_weights.read_port())

        # ---- gradient accumulation: read-modify-write of one gradient row per beat.
        # Consecutive beats never share a row (they differ in channel or in index), so
        # the write of one beat cannot race the read of the next.
        rmw_valid = Signal()
        rmw_addr = Signal(range(self.words))
        rmw_sums = Signal.like(engine.o.payload.sums)
        updating = Signal()
        m.d.comb += engine.o.ready.eq(~updating)
        if self._matvec:
            beat_addr = engine.o.payload.tile * self.words_per_channel + engine.o.payload.index
        else:
            beat_addr = (engine.o.payload.channel * self.words_per_channel
                         + engine.o.payload.index)
        m.d.sync += rmw_valid.eq(engine.o.valid & engine.o.ready)
        with m.If(engine.o.valid & engine.o.ready):
            m.d.sync += [rmw_addr.eq(beat_addr), rmw_sums.eq(engine.o.payload.sums)]

        # ---- the update walk over the gradient sums: one read cycle per word, then its
        # elements, one per ``element_done``.
        m.submodules.walk = walk = WeightWalk(g)
        position = walk.position
        refresh = Signal()          # copies only
        walking = Signal()
        element_phase = Signal()    # stepping through the elements of the word read
        element_done = Signal()
        with m.If(walking & ~element_phase):
            m.d.sync += element_phase.eq(1)
        with m.If(element_done):
            m.d.comb += walk.next.eq(1)
            with m.If(walk.word_last):
                m.d.sync += element_phase.eq(0)
            with m.If(walk.last):
                m.d.sync += walking.eq(0)

        # Read-port address: the update walk, else the RMW beat. The read data stays put
        # while the word's elements are processed.
        m.d.comb += [grads_rd.addr.eq(Mux(updating, self._grad_word(m, position, grads_rd),
                                          beat_addr)),
                     grads_rd.en.eq(~element_phase)]
        g_raw = _element(m, grads_rd.data, position.kx, kw, n.acc_shape)

        start = (self.start_update | self.start_refresh) & ~self.busy
        with m.If(start):
            m.d.comb += walk.restart.eq(1)
            m.d.sync += [updating.eq(1), refresh.eq(self.start_refresh), element_phase.eq(0)]

        if self._remote:
            done = self._elaborate_exchange(m, start=start, refresh=refresh, walking=walking,
                                            element_phase=element_phase,
                                            element_done=element_done, walk=walk, g_raw=g_raw,
                                            grads_wr=grads_wr, fp_wr=fp_wr, bp_wr=bp_wr)
            with m.If(rmw_valid):
                self._rmw_write(m, grads_wr, grads_rd, rmw_addr, rmw_sums)
        else:
            done = self._elaborate_local(m, start=start, refresh=refresh, walking=walking,
                                         element_phase=element_phase,
                                         element_done=element_done, position=position,
                                         g_raw=g_raw, updating=updating, grads_rd=grads_rd,
                                         grads_wr=grads_wr, fp_wr=fp_wr, bp_wr=bp_wr,
                                         rmw_valid=rmw_valid, rmw_addr=rmw_addr,
                                         rmw_sums=rmw_sums)
        with m.If(updating & done):
            m.d.sync += updating.eq(0)

        m.d.comb += self.busy.eq(updating | engine.busy | rmw_valid)
        with m.If(self.start_sample & ~self.busy):
            m.d.comb += engine.start.eq(1)
        return m

    def _rmw_write(self, m, grads_wr, grads_rd, rmw_addr, rmw_sums):
        m.d.comb += [grads_wr.addr.eq(rmw_addr), grads_wr.en.eq(-1)]
        if self._matvec:            # every lane: its row of the beat
            m.d.comb += grads_wr.all.eq(1)
            for lane, (rd, data_) in enumerate(zip(grads_rd.lanes, grads_wr.lanes)):
                for c in range(self._g.kw):
                    m.d.comb += data_[c].eq(rd.data[c] + rmw_sums[lane][c])
            return
        for c in range(self._g.kw):
            m.d.comb += grads_wr.data[c].eq(grads_rd.data[c] + rmw_sums[c])

    def _grad_word(self, m, position, port):
        """The gradient word of a :class:`WeightWalk` ``position``: ``position.word``, or
        with ``matvec`` its word in lane ``o % wu_rows`` (also set on ``port.lane``)."""
        if not self._matvec:
            return position.word
        g, lanes = self._g, self._wu_rows
        index = Mux(position.bias, g.cin * g.kh, position.i * g.kh + position.ky)
        m.d.comb += port.lane.eq(position.o % lanes)
        return (position.o // lanes) * self.words_per_channel + index

    def _gradient_lanes(self, m):
        """The ``matvec`` lanes behind one read and one write port each, selected by
        ``lane`` (``all`` writes every lane its own ``lanes[l]`` data: the RMW)."""
        n, kw = self._n, self._g.kw
        shape = data.ArrayLayout(signed(n.acc_width), kw)
        depth = self.grads[0].depth
        rd = Signal(data.StructLayout({"addr": range(max(2, depth)), "en": 1, "data": shape,
                                       "lane": range(max(2, self._wu_rows))}))
        wr = Signal(data.StructLayout({"addr": range(max(2, depth)), "en": kw, "data": shape,
                                       "lane": range(max(2, self._wu_rows)), "all": 1}))
        rd_lanes, wr_lanes = [], []
        for lane, mem in enumerate(self.grads):
            m.submodules[f"grads{lane}"] = mem
            port_rd = mem.read_port()
            port_wr = mem.write_port(granularity=1)
            wr_data = Signal(shape, name=f"grads{lane}_rmw")
            m.d.comb += [port_rd.addr.eq(rd.addr), port_rd.en.eq(rd.en),
                         port_wr.addr.eq(wr.addr),
                         port_wr.en.eq(Mux(wr.all | (wr.lane == lane), wr.en, 0)),
                         port_wr.data.eq(Mux(wr.all, wr_data, wr.data))]
            with m.If(rd.lane == lane):
                m.d.comb += rd.data.eq(port_rd.data)
            rd_lanes.append(port_rd)
            wr_lanes.append(wr_data)
        return _Lanes(rd, rd_lanes), _Lanes(wr, wr_lanes)

    def _elaborate_local(self, m, *, start, refresh, walking, element_phase, element_done,
                         position, g_raw, updating, grads_rd, grads_wr, fp_wr, bp_wr,
                         rmw_valid, rmw_addr, rmw_sums):
        """The SGD step on this chip; returns the condition that the update is done."""
        m.submodules.masters = store = self.master_store
        with m.If(start):
            m.d.sync += walking.eq(1)
        m.d.comb += element_done.eq(element_phase)      # one element per cycle

        # The walk reads a word of masters with the word of gradient sums, and steps its
        # elements while the read data stays put.
        m.d.comb += [
            store.read_word.eq(position.word),
            store.read_en.eq(~element_phase),
            store.walking.eq(updating),
            store.owner_busy.eq(self.busy),
            store.i.valid.eq(element_phase),
            store.i.payload.grad.eq(g_raw),
            store.i.payload.refresh.eq(refresh),
            store.i.payload.tag.eq(position),
            self.saturations.eq(store.saturations),
        ]
        _pass_host(m, self, store)

        # As each new master is written back: clear its gradient, write both copies.
        result = store.o.payload
        with m.If(store.o.valid):
            m.d.comb += [grads_wr.addr.eq(self._grad_word(m, result.tag, grads_wr)),
                         grads_wr.en.eq(Mux(result.refresh, 0, 1 << result.tag.kx))]
            for c in range(self._g.kw):
                m.d.comb += grads_wr.data[c].eq(0)
            self._write_copies(m, result.tag, result.weight, fp_wr, bp_wr)
        with m.Elif(rmw_valid):
            self._rmw_write(m, grads_wr, grads_rd, rmw_addr, rmw_sums)
        return ~walking & ~element_phase & ~store.busy

    def _elaborate_exchange(self, m, *, start, refresh, walking, element_phase, element_done,
                            walk, g_raw, grads_wr, fp_wr, bp_wr):
        """The exchange with a :class:`WeightHolder`; returns the condition that it is done."""
        n = self._n
        parts = gradient_words(n)
        header = Signal()           # the ExchangeOp word is still to go
        receiving = Signal()        # copies still to come
        part = Signal(range(max(2, parts)))
        with m.If(start):
            m.d.sync += [walking.eq(~self.start_refresh), header.eq(1), receiving.eq(1),
                         part.eq(0)]

        # Out: the op, then each weight's saturated sum, least significant word first.
        g_sat, g_flag = saturate_hw(g_raw, n.grad)
        g_wide = Signal(signed(EXCHANGE_WIDTH * parts))
        m.d.comb += g_wide.eq(g_sat)
        word = Signal(signed(EXCHANGE_WIDTH))
        with m.Switch(part):
            for p in range(parts):
                with m.Case(p):
                    m.d.comb += word.eq(g_wide[p * EXCHANGE_WIDTH:(p + 1) * EXCHANGE_WIDTH])
        m.d.comb += [
            self.grads_out.valid.eq(header | element_phase),
            self.grads_out.payload.eq(Mux(header, Mux(refresh, ExchangeOp.REFRESH,
                                                      ExchangeOp.UPDATE), word)),
        ]
        with m.If(self.grads_out.valid & self.grads_out.ready):
            with m.If(header):
                m.d.sync += header.eq(0)
            with m.Elif(part == parts - 1):
                m.d.sync += [part.eq(0), self.saturations.eq(self.saturations + g_flag)]
                m.d.comb += [element_done.eq(1),
                             grads_wr.addr.eq(self._grad_word(m, walk.position, grads_wr)),
                             grads_wr.en.eq(1 << walk.position.kx)]
                for c in range(self._g.kw):
                    m.d.comb += grads_wr.data[c].eq(0)
            with m.Else():
                m.d.sync += part.eq(part + 1)

        # In: one copy per weight, written as it arrives.
        m.submodules.copy_walk = copy_walk = WeightWalk(self._g)
        m.d.comb += [copy_walk.restart.eq(start), self.copies_in.ready.eq(receiving)]
        with m.If(self.copies_in.valid & self.copies_in.ready):
            m.d.comb += copy_walk.next.eq(1)
            with m.If(copy_walk.last):
                m.d.sync += receiving.eq(0)
            self._write_copies(m, copy_walk.position,
                               self.copies_in.payload[:n.weight.width].as_signed(),
                               fp_wr, bp_wr)
        return ~header & ~walking & ~element_phase & ~receiving


class _Lanes:
    """A port-like view of the ``matvec`` gradient lanes: the fields of ``port`` (a
    :class:`WeightUpdateUnit` drives them as a memory port's) and each lane's own."""

    def __init__(self, port, lanes):
        self._port, self.lanes = port, lanes

    def __getattr__(self, name):
        return getattr(self._port, name)


class FcGradientEngine(wiring.Component):
    """One sample's weight and bias gradients of a one-pixel-output (FC) layer.

    ``grad[o, i, ky, kx] = e[o] * in[i, ky, kx]`` and ``grad_b[o] = e[o] * 1.0``: an
    outer product, with no sum over pixels, so a systolic tile of one step (the
    :class:`WeightGradientEngine`) would wait on its latency. Here ``rows`` × ``kw``
    multipliers form, per beat, the gradient rows of ``rows`` output channels (a tile
    ``t``, their errors one :class:`LaneLayout` word) at one ``index = i * kh + ky``
    (one input row) or the bias: ``tiles * (cin * kh + 1)`` beats per sample, one per
    cycle, for the :class:`WeightUpdateUnit`'s lanes to add in one read-modify-write.

    Timing: the first beat is offered two cycles after ``start`` (address, then read);
    busy ``tiles * (cin * kh + 1) + 1`` cycles with an always-ready sink.

    Members
    -------
    start : In(1)
    busy, step, starved : Out(1)
    e_rd : In(memory.ReadPort.Signature(shape=ArrayLayout(error, rows)))
        Errors at the layer's output, :class:`LaneLayout` (one word per tile).
    x_rd : In(memory.ReadPort.Signature(shape=ArrayLayout(act, w)))
        The layer's input, :class:`RowLayout`.
    e_ready : In(range(2)), 1 by default
        The errors are written.
    o : Out(stream.Signature(StructLayout({"tile", "index", "sums": ArrayLayout(ArrayLayout(signed(acc), kw), rows)})))
        Lane ``r`` of ``sums`` is channel ``tile * rows + r``'s gradient row ``index``
        (``cin * kh`` for the bias, in element 0).

    Raises
    ------
    ValueError
        If the geometry is not one-pixel-output or ``rows`` is not a positive int.
    """

    def __init__(self, *, geometry, rows, act_fmt, error_fmt, acc_width=48):
        if not geometry.is_matvec:
            raise ValueError(f"geometry must have a one-pixel output and no padding, "
                             f"not {geometry!r}")
        if not isinstance(rows, int) or rows < 1:
            raise ValueError(f"rows must be a positive int, not {rows!r}")
        g = geometry
        self._g, self._rows = g, rows
        self._act_fmt, self._error_fmt, self._acc_width = act_fmt, error_fmt, acc_width
        self.e_layout = LaneLayout(g.cout, 1, 1, rows, error_fmt)
        self.x_layout = RowLayout(g.cin, g.h, g.w, act_fmt)
        self.tiles = self.e_layout.tiles
        per = gradient_index_count(g)
        super().__init__({
            "start": In(1),
            "busy": Out(1),
            "step": Out(1),
            "e_rd": In(memory.ReadPort.Signature(
                addr_width=ceil_log2(self.e_layout.depth), shape=self.e_layout.shape)),
            "x_rd": In(memory.ReadPort.Signature(
                addr_width=ceil_log2(self.x_layout.depth), shape=self.x_layout.shape)),
            "e_ready": In(range(2), init=1),
            "starved": Out(1),
            "o": Out(stream.Signature(data.StructLayout({
                "tile": range(max(2, self.tiles)),
                "index": range(per),
                "sums": data.ArrayLayout(data.ArrayLayout(signed(acc_width), g.kw), rows),
            }))),
        })

    @property
    def array_shape(self):
        return (self._rows, self._g.kw)

    def elaborate(self, platform):
        m = Module()
        g, rows = self._g, self._rows
        bias_index = g.cin * g.kh
        t = Signal(range(max(2, self.tiles)))
        index = Signal(range(bias_index + 1))
        running = Signal()
        s1_valid, s1_t, s1_index = Signal(), Signal.like(t), Signal.like(index)
        advance = ~s1_valid | self.o.ready
        # The input row of index i * kh + ky is row ky of channel i: address i * h + ky,
        # the index itself (kh = h).
        m.d.comb += [self.e_rd.en.eq(advance), self.x_rd.en.eq(advance),
                     self.e_rd.addr.eq(t), self.x_rd.addr.eq(index)]
        issue = running & (self.e_ready != 0)
        m.d.comb += self.starved.eq(running & advance & ~issue)
        with m.If(advance):
            m.d.sync += [s1_valid.eq(issue), s1_t.eq(t), s1_index.eq(index)]
            with m.If(issue):
                with m.If(index == bias_index):
                    m.d.sync += index.eq(0)
                    with m.If(t == self.tiles - 1):
                        m.d.sync += [t.eq(0), running.eq(0)]
                    with m.Else():
                        m.d.sync += t.eq(t + 1)
                with m.Else():
                    m.d.sync += index.eq(index + 1)
        with m.If(self.start & ~self.busy):
            m.d.sync += [running.eq(1), t.eq(0), index.eq(0)]

        at_bias = s1_index == bias_index
        for c in range(g.kw):
            x = Mux(at_bias, self._act_fmt.one if c == 0 else 0, self.x_rd.data[c])
            for r in range(rows):
                m.d.comb += self.o.payload.sums[r][c].eq(self.e_rd.data[r] * x)
        m.d.comb += [
            self.o.valid.eq(s1_valid),
            self.o.payload.tile.eq(s1_t),
            self.o.payload.index.eq(s1_index),
            self.busy.eq(running | s1_valid),
            self.step.eq(self.o.valid & self.o.ready),
        ]
        return m
