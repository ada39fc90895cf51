"""Weight update: per-sample weight gradients, their batch sums, and the SGD step."""

from dataclasses import dataclass

from amaranth import *
from amaranth.lib import wiring, stream, data, memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from .conv import RowLayout
from .numerics import FixedFormat, check_accumulator, saturate_hw, shift_round_hw, requantize_hw
from .systolic import SystolicArray

__all__ = ["LaneLayout", "WeightGradientEngine", "WeightUpdateUnit", "pack_lanes",
           "gradient_index_count"]


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
    o : Out(stream.Signature(StructLayout({"channel", "index", "sums": ArrayLayout(signed(acc), kw)})))
        Gradient sums of output channel ``channel`` and row ``index = i * kh + ky``
        (``cin * kh`` for the bias, in ``sums[0]``).
    """

    def __init__(self, *, geometry, rows, act_fmt, error_fmt, acc_width=48):
        if not isinstance(rows, int) or rows < 1:
            raise ValueError(f"rows must be a positive int, not {rows!r}")
        self._g, self._rows = geometry, rows
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
            "o": Out(stream.Signature(data.StructLayout({
                "channel": range(g.cout),
                "index": range(gradient_index_count(g)),
                "sums": data.ArrayLayout(signed(acc_width), g.kw),
            }))),
        })

    @property
    def array_shape(self):
        return (self._rows, self._g.kw)

    def elaborate(self, platform):
        m = Module()
        g, rows = self._g, self._rows
        check_accumulator(g.ho * g.wo, max(self._act_fmt.width, self._error_fmt.width),
                          self._acc_width, what=f"weight-gradient engine {g}")
        bias_index = g.cin * g.kh
        tag = data.StructLayout({"t": range(max(2, self.tiles)), "index": range(bias_index + 1)})
        m.submodules.array = array = SystolicArray(
            rows=rows, cols=g.kw, a_shape=self._error_fmt.shape, b_shape=self._act_fmt.shape,
            acc_width=self._acc_width, tag_shape=tag)

        t = Signal(range(max(2, self.tiles)))
        i = Signal(range(max(2, g.cin + 1)))
        ky = Signal(range(max(2, g.kh)))
        y = Signal(range(max(2, g.ho)))
        x = Signal(range(max(2, g.wo)))
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
        tile_last = (y == y_hi) & (x == g.wo - 1)

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

        with m.If(advance):
            m.d.sync += [
                s1_valid.eq(running),
                s1_bias.eq(at_bias),
                s1_x.eq(x),
                s1_last.eq(tile_last),
                array.i.payload.tag.t.eq(t),            # the tile's tag travels with it
                array.i.payload.tag.index.eq(index),
            ]
            with m.If(running):
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
                with m.Elif(x == g.wo - 1):
                    m.d.sync += [x.eq(0), y.eq(y + 1)]
                with m.Else():
                    m.d.sync += x.eq(x + 1)
        with m.If(self.start & ~self.busy):
            m.d.sync += [running.eq(1), t.eq(0), i.eq(0), ky.eq(0), y.eq(first_row(0)),
                         x.eq(0), at_bias.eq(0)]

        # Pixel x of every lane's error row, and the kw input pixels x - pw ...
        # x - pw + kw - 1 of the input row (zero outside).
        x_row = self.x_rd.data
        with m.Switch(s1_x):
            for xv in range(g.wo):
                with m.Case(xv):
                    for r in range(rows):
                        m.d.comb += array.i.payload.a[r].eq(self.e_rd.data[r * g.wo + xv])
                    for c in range(g.kw):
                        src = xv + c - g.pw
                        m.d.comb += array.i.payload.b[c].eq(x_row[src] if 0 <= src < g.w else 0)
        with m.If(s1_bias):
            for c in range(g.kw):
                m.d.comb += array.i.payload.b[c].eq(self._act_fmt.one if c == 0 else 0)
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


class WeightUpdateUnit(wiring.Component):
    """Holds one layer's weights, sums their gradients over a mini-batch, and steps SGD.

    It owns the layer's weight store:

    * ``master`` (32-bit) and, with momentum, ``velocity`` words, addressed like the
      gradients: word ``o * (cin*kh + 1) + i*kh + ky`` holds ``kx = 0 ... kw-1``;
      word ``o * (cin*kh + 1) + cin*kh`` holds the bias in element 0;
    * ``grads``: the exact batch sums, same addressing, ``acc_width`` bits;
    * ``fp_weights``: the 16-bit copy that the FP :class:`~fpdeep.rtl.conv.ConvEngine`
      reads (``fp_rows`` output channels per word), and ``bp_weights``: the 16-bit
      copy, transposed and flipped, that the BP engine reads (``bp_rows`` input
      channels per word). Engines get read ports with ``fp_weights.read_port()``.

    ``start_sample`` runs the :class:`WeightGradientEngine` over one sample and adds
    its sums into ``grads`` (a read-modify-write per gradient row, at the engine's
    pace). ``start_update`` walks every weight once: saturate the batch sum to the
    gradient format, scale by ``rate`` (``lr / B``), fold into the velocity, subtract
    from the master, clear the sum, and write both 16-bit copies, exactly as
    :func:`fpdeep.rtl.numerics.sgd_step_np`. ``start_refresh`` rewrites the copies
    from the masters without updating (after the host wrote weights).

    Throughput: the update takes one cycle per weight plus one per gradient word,
    plus a five-cycle pipeline drain.

    Parameters
    ----------
    geometry : ConvGeometry
    wu_rows, fp_rows : int
    bp_rows : int or None
        ``None`` for the first layer, which has no BP.
    numerics : Numerics
    masters : (W, b)
        Initial int64 masters, ``W`` shaped ``(cout, cin, kh, kw)``.
    rate_q, momentum_q : int
        Unsigned 16-bit fractions (``numerics.rate_frac`` fraction bits).
    batch_size : int
        Samples per mini-batch, to prove the gradient sums cannot overflow.

    Members
    -------
    start_sample, start_update, start_refresh : In(1)
    busy : Out(1)
    e_rd, x_rd : as :class:`WeightGradientEngine`
    saturations : Out(32)
        Saturation events in the update (gradient, velocity, master, 16-bit copy).
    host_addr : In(range(host_span))
        ``word << kx_bits | kx`` with ``kx_bits = ceil_log2(kw)``.
    host_read, host_write : In(1)
    host_wdata : In(signed(32))
    host_rdata : Out(signed(32))
    host_rvalid : Out(1)
        One cycle after ``host_read`` (data of the read issued then).
    """

    def __init__(self, *, geometry, wu_rows, fp_rows, bp_rows, numerics, masters, rate_q,
                 momentum_q, batch_size):
        g = geometry
        self._g, self._n = g, numerics
        self._fp_rows, self._bp_rows, self._wu_rows = fp_rows, bp_rows, wu_rows
        self._rate_q, self._momentum_q = rate_q, momentum_q
        self._batch_size = batch_size
        self.engine = WeightGradientEngine(geometry=g, rows=wu_rows, act_fmt=numerics.act,
                                           error_fmt=numerics.error, acc_width=numerics.acc_width)
        self.words_per_channel = gradient_index_count(g)
        self.words = g.cout * self.words_per_channel
        self.kx_bits = ceil_log2(g.kw)
        self.host_span = self.words << self.kx_bits

        w, b = masters
        master_words = []
        for o in range(g.cout):
            for i in range(g.cin):
                for ky in range(g.kh):
                    master_words.append([int(v) for v in w[o, i, ky]])
            master_words.append([int(b[o])] + [0] * (g.kw - 1))

        from .numerics import master_to_weight_np
        from .conv import pack_conv_weights
        wq, _ = master_to_weight_np(w, numerics)
        bq, _ = master_to_weight_np(b, numerics)
        self.fp_weights = memory.Memory(
            shape=data.ArrayLayout(numerics.weight.shape, fp_rows),
            depth=-(-g.cout // fp_rows) * (g.cin * g.kh * g.kw + 1),
            init=pack_conv_weights(wq, bq, fp_rows))
        if bp_rows is not None:
            flipped = wq[:, :, ::-1, ::-1].transpose(1, 0, 2, 3)
            self.bp_weights = memory.Memory(
                shape=data.ArrayLayout(numerics.weight.shape, bp_rows),
                depth=-(-g.cin // bp_rows) * (g.cout * g.kh * g.kw),
                init=pack_conv_weights(flipped, None, bp_rows))
        else:
            self.bp_weights = None

        self.master = memory.Memory(shape=data.ArrayLayout(numerics.master.shape, g.kw),
                                    depth=self.words, init=master_words)
        self.grads = memory.Memory(shape=data.ArrayLayout(signed(numerics.acc_width), g.kw),
                                   depth=self.words, init=[])
        self.velocity = (memory.Memory(shape=data.ArrayLayout(numerics.master.shape, g.kw),
                                       depth=self.words, init=[])
                         if momentum_q else None)

        super().__init__({
            "start_sample": In(1),
            "start_update": In(1),
            "start_refresh": In(1),
            "busy": Out(1),
            "e_rd": self.engine.signature.members["e_rd"],
            "x_rd": self.engine.signature.members["x_rd"],
            "saturations": Out(32),
            "host_addr": In(range(max(2, self.host_span))),
            "host_read": In(1),
            "host_write": In(1),
            "host_wdata": In(signed(32)),
            "host_rdata": Out(signed(32)),
            "host_rvalid": Out(1),
        })

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

        m.submodules.master = master = self.master
        m.submodules.grads = grads = self.grads
        momentum = self.velocity is not None
        if momentum:
            m.submodules.velocity = velocity = self.velocity
        m.submodules.fp_weights = self.fp_weights
        if self.bp_weights is not None:
            m.submodules.bp_weights = self.bp_weights

        master_rd = master.read_port()
        master_wr = master.write_port(granularity=1)
        grads_rd = grads.read_port()
        grads_wr = grads.write_port(granularity=1)
        if momentum:
            velocity_rd = velocity.read_port()
            velocity_wr = velocity.write_port(granularity=1)
        fp_wr = self.fp_weights.write_port(granularity=1)
        bp_wr = (self.bp_weights.write_port(granularity=1)
                 if self.bp_weights is not None else None)

        # ---- gradient accumulation: read-modify-write of one gradient row per beat.
        # Consecutive beats never share a row (they differ in channel or in index), so
        # the write of one beat cannot race the read of the next.
        rmw_valid = Signal()
        rmw_addr = Signal(range(self.words))
        rmw_sums = Signal.like(engine.o.payload.sums)
        updating = Signal()
        m.d.comb += engine.o.ready.eq(~updating)
        beat_addr = engine.o.payload.channel * self.words_per_channel + engine.o.payload.index
        m.d.sync += rmw_valid.eq(engine.o.valid & engine.o.ready)
        with m.If(engine.o.valid & engine.o.ready):
            m.d.sync += [rmw_addr.eq(beat_addr), rmw_sums.eq(engine.o.payload.sums)]

        # ---- the update walk: word counters and the element loop.
        refresh = Signal()          # copies only
        o = Signal(range(max(2, g.cout)))
        j = Signal(range(self.words_per_channel))       # i * kh + ky, or the bias
        i = Signal(range(max(2, g.cin + 1)))
        ky = Signal(range(max(2, g.kh)))
        kx = Signal(range(max(2, kw)))
        word = Signal(range(max(2, self.words)))
        element_phase = Signal()    # stepping through the elements of the word read
        walking = Signal()
        is_bias = j == g.cin * g.kh

        # ---- element pipeline, S0..S3; tags travel along.
        tag = data.StructLayout({"valid": 1, "word": range(max(2, self.words)),
                                 "kx": range(max(2, kw)), "o": range(max(2, g.cout)),
                                 "i": range(max(2, g.cin + 1)), "ky": range(max(2, g.kh)),
                                 "bias": 1})
        s0, s1, s2, s3 = (Signal(tag, name=f"sgd_tag{k}") for k in range(4))
        m.d.sync += [
            s0.valid.eq(element_phase), s0.word.eq(word), s0.kx.eq(kx), s0.o.eq(o),
            s0.i.eq(i), s0.ky.eq(ky), s0.bias.eq(is_bias),
            s1.eq(s0), s2.eq(s1), s3.eq(s2),
        ]
        pipe_busy = s0.valid | s1.valid | s2.valid | s3.valid
        with m.If(updating & ~walking & ~element_phase & ~pipe_busy):
            m.d.sync += updating.eq(0)

        # Read-port address: the update walk, else the RMW beat.
        m.d.comb += [
            grads_rd.addr.eq(Mux(updating, word, beat_addr)),
            master_rd.addr.eq(Mux(updating, word, self.host_addr >> self.kx_bits)),
        ]
        if momentum:
            m.d.comb += velocity_rd.addr.eq(word)
        hold = element_phase    # keep the word's data while its elements are processed
        m.d.comb += [grads_rd.en.eq(~hold), master_rd.en.eq(~hold)]
        if momentum:
            m.d.comb += velocity_rd.en.eq(~hold)

        with m.If(walking & ~element_phase):
            m.d.sync += [element_phase.eq(1), kx.eq(0)]
        elements = Mux(is_bias, 1, kw)
        element_done = element_phase & (kx == elements - 1)
        with m.If(element_phase):
            m.d.sync += kx.eq(kx + 1)
            with m.If(element_done):
                m.d.sync += [element_phase.eq(0), word.eq(word + 1)]
                # Advance (o, j, i, ky).
                with m.If(is_bias):
                    m.d.sync += [j.eq(0), i.eq(0), ky.eq(0), o.eq(o + 1)]
                    with m.If(o == g.cout - 1):
                        m.d.sync += walking.eq(0)
                with m.Else():
                    m.d.sync += j.eq(j + 1)
                    with m.If(ky == g.kh - 1):
                        m.d.sync += [ky.eq(0), i.eq(i + 1)]
                    with m.Else():
                        m.d.sync += ky.eq(ky + 1)

        start = (self.start_update | self.start_refresh) & ~self.busy
        with m.If(start):
            m.d.sync += [updating.eq(1), walking.eq(1), refresh.eq(self.start_refresh),
                         o.eq(0), j.eq(0), i.eq(0), ky.eq(0), kx.eq(0), word.eq(0),
                         element_phase.eq(0)]


        # Element kx of the held words (the read data stays put while element_phase).
        g_raw = Signal(signed(n.acc_width))
        m_raw = Signal(n.master.shape)
        v_raw = Signal(n.master.shape)
        with m.Switch(kx):
            for c in range(kw):
                with m.Case(c):
                    m.d.comb += [g_raw.eq(grads_rd.data[c]), m_raw.eq(master_rd.data[c])]
                    if momentum:
                        m.d.comb += v_raw.eq(velocity_rd.data[c])

        sat_count = Signal(3)
        # S0: saturate the batch sum to the gradient format.
        g_sat = Signal(n.grad.shape)
        g_flag = Signal()
        m_0 = Signal.like(m_raw)
        v_0 = Signal.like(v_raw)
        value, flag = saturate_hw(g_raw, n.grad)
        m.d.sync += [g_sat.eq(value), g_flag.eq(flag & element_phase & ~refresh),
                     m_0.eq(m_raw), v_0.eq(v_raw)]
        # S1: scale by the rate; decay the velocity.
        delta = Signal(signed(n.grad.width + 18))
        v_decay = Signal(signed(n.master.width + 18))
        m_1 = Signal.like(m_raw)
        m.d.sync += [
            delta.eq(Mux(refresh, 0, shift_round_hw(g_sat * self._rate_q, n.update_shift))),
            v_decay.eq(shift_round_hw(v_0 * self._momentum_q, n.rate_frac) if momentum else 0),
            m_1.eq(m_0),
        ]
        g_flag1 = Signal()
        m.d.sync += g_flag1.eq(g_flag)
        # S2: the step, through the velocity when there is momentum.
        step = Signal(signed(n.grad.width + 18))     # unsaturated delta without momentum
        v_flag = Signal()
        m_2 = Signal.like(m_raw)
        g_flag2 = Signal()
        if momentum:
            value, flag = saturate_hw(v_decay + delta, n.master)
            m.d.sync += [step.eq(Mux(refresh, 0, value)), v_flag.eq(flag & ~refresh)]
        else:
            m.d.sync += [step.eq(delta), v_flag.eq(0)]
        m.d.sync += [m_2.eq(m_1), g_flag2.eq(g_flag1)]
        # S3: the new master and its 16-bit copy.
        m_new = Signal(n.master.shape)
        value, m_flag = saturate_hw(m_2 - step, n.master)
        m.d.sync += m_new.eq(value)
        w_value, w_sat = requantize_hw(m_new, n.master.frac, n.weight)
        v_new = Signal(n.master.shape)               # only written with momentum
        m.d.sync += v_new.eq(step)
        flags = Signal(4)
        m.d.sync += flags.eq(Cat(g_flag2, v_flag, m_flag, 0))   # all aligned with s3
        # s3 is the tag aligned with m_new (after S0, S1, S2 and the S3 register).
        write = s3.valid
        m.d.comb += sat_count.eq(Mux(write, flags[0] + flags[1] + flags[2] + w_sat, 0))
        m.d.sync += self.saturations.eq(self.saturations + sat_count)

        # Write-backs at S3: master, velocity, cleared gradient, and both copies.
        kx_onehot = Signal(kw)
        m.d.comb += kx_onehot.eq(1 << s3.kx)
        with m.If(write):
            m.d.comb += [
                master_wr.addr.eq(s3.word),
                master_wr.en.eq(Mux(refresh, 0, kx_onehot)),
                grads_wr.addr.eq(s3.word),
                grads_wr.en.eq(Mux(refresh, 0, kx_onehot)),
            ]
            for c in range(kw):
                m.d.comb += [master_wr.data[c].eq(m_new), grads_wr.data[c].eq(0)]
            if momentum:
                m.d.comb += [velocity_wr.addr.eq(s3.word),
                             velocity_wr.en.eq(Mux(refresh, 0, kx_onehot))]
                for c in range(kw):
                    m.d.comb += velocity_wr.data[c].eq(v_new)
            fp_taps = g.cin * g.kh * g.kw + 1
            fp_tile = s3.o // self._fp_rows
            fp_lane = s3.o % self._fp_rows
            fp_tap = Mux(s3.bias, g.cin * g.kh * g.kw, (s3.i * g.kh + s3.ky) * g.kw + s3.kx)
            m.d.comb += [fp_wr.addr.eq(fp_tile * fp_taps + fp_tap),
                         fp_wr.en.eq(1 << fp_lane)]
            for r in range(self._fp_rows):
                m.d.comb += fp_wr.data[r].eq(w_value)
            if bp_wr is not None:
                bp_taps = g.cout * g.kh * g.kw
                bp_tile = s3.i // self._bp_rows
                bp_lane = s3.i % self._bp_rows
                bp_tap = (s3.o * g.kh + (g.kh - 1 - s3.ky)) * g.kw + (g.kw - 1 - s3.kx)
                m.d.comb += [bp_wr.addr.eq(bp_tile * bp_taps + bp_tap),
                             bp_wr.en.eq(Mux(s3.bias, 0, 1 << bp_lane))]
                for r in range(self._bp_rows):
                    m.d.comb += bp_wr.data[r].eq(w_value)
        with m.Elif(rmw_valid):
            m.d.comb += [grads_wr.addr.eq(rmw_addr), grads_wr.en.eq(-1)]
            for c in range(kw):
                m.d.comb += grads_wr.data[c].eq(grads_rd.data[c] + rmw_sums[c])
        with m.Elif(self.host_write & ~self.busy):
            m.d.comb += [master_wr.addr.eq(self.host_addr >> self.kx_bits),
                         master_wr.en.eq(1 << self.host_addr[:max(1, self.kx_bits)]
                                         if self.kx_bits else 1)]
            for c in range(kw):
                m.d.comb += master_wr.data[c].eq(self.host_wdata)

        # Host reads: the master word is addressed from host_addr whenever not updating.
        host_kx = Signal(range(max(2, kw)))
        m.d.sync += [self.host_rvalid.eq(self.host_read & ~self.busy),
                     host_kx.eq(self.host_addr[:self.kx_bits] if self.kx_bits else 0)]
        with m.Switch(host_kx):
            for c in range(kw):
                with m.Case(c):
                    m.d.comb += self.host_rdata.eq(master_rd.data[c])

        m.d.comb += self.busy.eq(updating | engine.busy | rmw_valid)
        with m.If(self.start_sample & ~self.busy):
            m.d.comb += engine.start.eq(1)
        return m
