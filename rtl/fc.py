"""Fully-connected back-propagation: a matrix-vector engine with every PE busy.

A layer whose output is one pixel (an FC layer, or a conv whose kernel covers its
unpadded input: :attr:`~fpdeep.plan.layers.ConvGeometry.is_matvec`) back-propagates
``err_in[i, y, x] = sum_o W[o, i, y, x] * err[o]``. As a transposed convolution
(:class:`~fpdeep.rtl.conv.ConvEngine`) that is a ``kh x kw`` kernel slid over a
1x1 map padded by ``kh - 1``: every step feeds one nonzero column of the array, and
most steps multiply padding. Here the product is a matrix-vector one instead:
:class:`MatVecArray` gives each PE its own weight per step and broadcasts one error
to all of them, so a tile of ``rows x w`` input values takes ``cout`` steps.
"""

from amaranth import *
from amaranth.lib import wiring, stream, data, memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from .conv import RowLayout
from .numerics import FixedFormat, check_accumulator, requantize_hw

__all__ = ["MatVecArray", "FcBackpropEngine", "pack_fc_bp_weights"]


class MatVecArray(wiring.Component):
    """A ``rows`` × ``cols`` array of MAC PEs, each with its own weight, one shared operand.

    Each step carries ``rows * cols`` operands ``a`` (PE ``(r, c)`` takes
    ``a[r * cols + c]``) and one operand ``b`` for every PE; PE ``(r, c)`` accumulates
    ``a[r * cols + c] * b``. A step with ``last`` closes a tile: the sums move to one of
    two result banks and leave on ``o`` as ``rows`` beats of ``cols`` exact sums, with
    the ``tag`` of the last step, while the next tile accumulates.

    Throughput and latency
    ----------------------
    One step per cycle. A tile's first row is offered :attr:`tile_latency` (2) cycles
    after its last step, plus one (the ``ready_tiles`` register), as
    :class:`~fpdeep.rtl.systolic.SystolicArray` does with its own latency; a ``last``
    step waits while both banks hold undrained tiles.

    Parameters
    ----------
    rows, cols : int
    a_shape, b_shape : shape-castable
        Operand shapes (signed).
    acc_width : int
    tag_shape : shape-castable

    Members
    -------
    i : In(stream.Signature(StructLayout({"a": ArrayLayout(a_shape, rows*cols), "b": b_shape, "last": 1, "tag": tag_shape})))
    o : Out(stream.Signature(StructLayout({"sums": ArrayLayout(signed(acc_width), cols), "row": range(rows), "last": 1, "tag": tag_shape})))
    busy : Out(1)
        A tile is accumulating, in flight or draining.

    Raises
    ------
    ValueError
        If ``rows``, ``cols`` or ``acc_width`` is out of range.
    """

    #: Cycles from a ``last`` step's transfer to its sums landing in a result bank.
    tile_latency = 2

    def __init__(self, *, rows, cols, a_shape=signed(16), b_shape=signed(16), acc_width=48,
                 tag_shape=unsigned(1)):
        for name, value in (("rows", rows), ("cols", cols)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, not {value!r}")
        if not isinstance(acc_width, int) or acc_width < 2:
            raise ValueError(f"acc_width must be an int of at least 2, not {acc_width!r}")
        self._rows, self._cols, self._acc_width = rows, cols, acc_width
        self._a_shape, self._b_shape = a_shape, b_shape
        super().__init__({
            "i": In(stream.Signature(data.StructLayout({
                "a": data.ArrayLayout(a_shape, rows * cols),
                "b": b_shape,
                "last": 1,
                "tag": tag_shape,
            }))),
            "o": Out(stream.Signature(data.StructLayout({
                "sums": data.ArrayLayout(signed(acc_width), cols),
                "row": range(rows),
                "last": 1,
                "tag": tag_shape,
            }))),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        rows, cols, acc = self._rows, self._cols, self._acc_width
        tiles_held = Signal(range(3))
        m.d.comb += self.i.ready.eq(~(self.i.payload.last & (tiles_held == 2)))
        take = self.i.valid & self.i.ready
        closing = take & self.i.payload.last
        starting = Signal(init=1)
        fill_bank = Signal()
        with m.If(take):
            m.d.sync += starting.eq(self.i.payload.last)
        with m.If(closing):
            m.d.sync += fill_bank.eq(~fill_bank)

        # Product stage (registered), then the accumulate stage that may close a tile.
        p_valid, p_first, p_last, p_bank = Signal(), Signal(), Signal(), Signal()
        m.d.sync += [p_valid.eq(take), p_first.eq(starting), p_last.eq(self.i.payload.last),
                     p_bank.eq(fill_bank)]
        results = [[[Signal(signed(acc), name=f"result{bank}_{r}_{c}") for c in range(cols)]
                    for r in range(rows)] for bank in range(2)]
        for r in range(rows):
            for c in range(cols):
                product = Signal(signed(acc), name=f"pe_{r}_{c}_p")
                acc_reg = Signal(signed(acc), name=f"pe_{r}_{c}_acc")
                m.d.sync += product.eq(self.i.payload.a[r * cols + c] * self.i.payload.b)
                total = Mux(p_first, 0, acc_reg) + product
                with m.If(p_valid):
                    m.d.sync += acc_reg.eq(total)
                    with m.If(p_last):
                        with m.If(p_bank):
                            m.d.sync += results[1][r][c].eq(total)
                        with m.Else():
                            m.d.sync += results[0][r][c].eq(total)

        tags = [Signal(self.i.payload.tag.shape(), name=f"tag{bank}") for bank in range(2)]
        with m.If(closing):
            with m.If(fill_bank):
                m.d.sync += tags[1].eq(self.i.payload.tag)
            with m.Else():
                m.d.sync += tags[0].eq(self.i.payload.tag)
        in_flight = Signal(self.tile_latency)
        m.d.sync += in_flight.eq(Cat(closing, in_flight[:-1]))
        landed = in_flight[-1]

        ready_tiles = Signal(range(3))
        drain_bank = Signal()
        row = Signal(range(rows))
        drained = self.o.valid & self.o.ready & (row == rows - 1)
        m.d.sync += [ready_tiles.eq(ready_tiles + landed - drained),
                     tiles_held.eq(tiles_held + closing - drained)]
        for bank in range(2):
            with m.If(drain_bank == bank):
                with m.Switch(row):
                    for r in range(rows):
                        with m.Case(r):
                            for c in range(cols):
                                m.d.comb += self.o.payload.sums[c].eq(results[bank][r][c])
                m.d.comb += self.o.payload.tag.eq(tags[bank])
        m.d.comb += [self.o.valid.eq(ready_tiles != 0),
                     self.o.payload.row.eq(row),
                     self.o.payload.last.eq(row == rows - 1)]
        with m.If(self.o.valid & self.o.ready):
            m.d.sync += row.eq(Mux(row == rows - 1, 0, row + 1))
            with m.If(row == rows - 1):
                m.d.sync += drain_bank.eq(~drain_bank)
        m.d.comb += self.busy.eq((tiles_held != 0) | ~starting)
        return m


class FcBackpropEngine(wiring.Component):
    """Back-propagates a one-pixel-output layer: ``err_in[i, y, :] = requantize(sum_o W[o, i, y, :] * err[o])``.

    A :class:`MatVecArray` of ``rows`` × ``w`` PEs: rows are input channels (a tile of
    ``rows`` of them), columns the pixels of one input row. Per input row ``y`` and
    tile ``t`` it steps through the output channels ``o``, feeding ``err[o]`` to every
    PE and each PE its weight ``W[o, t*rows + r, y, x]``: ``cout`` steps per tile, every
    PE busy in each. It is a drop-in for the transposed
    :class:`~fpdeep.rtl.conv.ConvEngine` (same ports, same output order and numerics).

    Weight memory (:func:`pack_fc_bp_weights`): word ``(t * h + y) * cout + o`` holds
    lane ``r * w + x`` = ``W[o, t*rows + r, y, x]``. Errors: a
    :class:`~fpdeep.rtl.conv.RowLayout` of ``cout`` one-value rows.

    Timing: steps enter from the second cycle after ``start`` (as the conv engine's),
    one per cycle; tiles of ``rows`` rows are offered ``MatVecArray.tile_latency + 1``
    cycles after their last step. Busy ``h * tiles * cout`` step cycles plus the drain
    of the last tile (``fpdeep.plan.model.engines.bp_run``).

    Parameters
    ----------
    geometry : ConvGeometry
        The layer's forward geometry (``is_matvec``).
    rows : int
        Input channels computed at once.
    in_fmt, weight_fmt : FixedFormat
        Error and weight formats.
    out_fmt : FixedFormat or None
        Unused (may be ``None``) with ``raw``.
    acc_width : int
    raw : bool
        Emit the exact sums (:attr:`acc_fmt`) instead of requantizing, as
        :class:`~fpdeep.rtl.conv.ConvEngine` does for a channel slice.

    Members
    -------
    start : In(1)
    busy, step, starved : Out(1)
    w_rd : In(memory.ReadPort.Signature(shape=ArrayLayout(weight, rows * w)))
    x_rd : In(memory.ReadPort.Signature(shape=ArrayLayout(in, 1)))
    x_ready : In(range(2)), 1 by default
        The error vector is written.
    o : Out(stream) rows ``(channel, row, values, saturated)`` of the input's map, in
        stream order (row ``y`` of every channel before row ``y + 1``).

    Raises
    ------
    ValueError
        If the geometry is not a matrix-vector one, ``rows`` is not a positive int, or
        ``out_fmt`` is missing without ``raw``.
    """

    def __init__(self, *, geometry, rows, in_fmt, weight_fmt, out_fmt, acc_width=48, raw=False):
        if not geometry.is_matvec:
            raise ValueError(f"geometry must have a one-pixel output and no padding, "
                             f"not {geometry!r}")
        if not isinstance(rows, int) or rows < 1:
            raise ValueError(f"rows must be a positive int, not {rows!r}")
        if out_fmt is None and not raw:
            raise ValueError("out_fmt is required unless raw is set")
        g = geometry
        self._g, self._rows, self._raw = g, rows, bool(raw)
        self._in_fmt, self._weight_fmt, self._out_fmt = in_fmt, weight_fmt, out_fmt
        self._acc_width = acc_width
        self.tiles = -(-g.cin // rows)
        self.in_layout = RowLayout(g.cout, 1, 1, in_fmt)
        super().__init__({
            "start": In(1),
            "busy": Out(1),
            "step": Out(1),
            "w_rd": In(memory.ReadPort.Signature(
                addr_width=ceil_log2(self.tiles * g.h * g.cout),
                shape=data.ArrayLayout(weight_fmt.shape, rows * g.w))),
            "x_rd": In(memory.ReadPort.Signature(
                addr_width=ceil_log2(self.in_layout.depth), shape=self.in_layout.shape)),
            "x_ready": In(range(2), init=1),
            "starved": Out(1),
            "o": Out(stream.Signature(data.StructLayout({
                "channel": range(g.cin),
                "row": range(g.h),
                "values": data.ArrayLayout(self.out_layout.fmt.shape, g.w),
                "saturated": range(g.w + 1),
            }))),
        })

    @property
    def array_shape(self):
        return (self._rows, self._g.w)

    @property
    def acc_fmt(self):
        return FixedFormat(self._acc_width, self._in_fmt.frac + self._weight_fmt.frac)

    @property
    def out_layout(self):
        g = self._g
        return RowLayout(g.cin, g.h, g.w, self.acc_fmt if self._raw else self._out_fmt)

    def elaborate(self, platform):
        m = Module()
        g, rows = self._g, self._rows
        check_accumulator(g.cout, max(self._in_fmt.width, self._weight_fmt.width),
                          self._acc_width, what=f"FC back-propagation engine {g}")
        tag = data.StructLayout({"t": range(max(2, self.tiles)), "y": range(max(2, g.h))})
        m.submodules.array = array = MatVecArray(
            rows=rows, cols=g.w, a_shape=self._weight_fmt.shape, b_shape=self._in_fmt.shape,
            acc_width=self._acc_width, tag_shape=tag)

        # Loop counters, outermost first: input row y, tile t, output channel o. Rows
        # outermost make the output a row stream, as the conv engine's.
        y = Signal(range(max(2, g.h)))
        t = Signal(range(max(2, self.tiles)))
        o = Signal(range(max(2, g.cout)))
        running = Signal()
        step_last = o == g.cout - 1

        s1_valid, s1_last = Signal(), Signal()
        advance = ~s1_valid | array.i.ready
        m.d.comb += [self.w_rd.en.eq(advance), self.x_rd.en.eq(advance),
                     self.w_rd.addr.eq((t * g.h + y) * g.cout + o),
                     self.x_rd.addr.eq(o)]
        issue = running & (self.x_ready != 0)
        m.d.comb += self.starved.eq(running & advance & ~issue)
        with m.If(advance):
            m.d.sync += [s1_valid.eq(issue), s1_last.eq(step_last),
                         array.i.payload.tag.t.eq(t), array.i.payload.tag.y.eq(y)]
            with m.If(issue):
                with m.If(step_last):
                    m.d.sync += o.eq(0)
                    with m.If(t != self.tiles - 1):
                        m.d.sync += t.eq(t + 1)
                    with m.Elif(y == g.h - 1):
                        m.d.sync += [t.eq(0), y.eq(0), running.eq(0)]
                    with m.Else():
                        m.d.sync += [t.eq(0), y.eq(y + 1)]
                with m.Else():
                    m.d.sync += o.eq(o + 1)
        with m.If(self.start & ~self.busy):
            m.d.sync += [running.eq(1), y.eq(0), t.eq(0), o.eq(0)]

        m.d.comb += [array.i.payload.a.eq(self.w_rd.data),
                     array.i.payload.b.eq(self.x_rd.data[0]),
                     array.i.payload.last.eq(s1_last),
                     array.i.valid.eq(s1_valid)]

        channel = array.o.payload.tag.t * rows + array.o.payload.row
        lane_used = channel < g.cin
        saturated = []
        for c in range(g.w):
            if self._raw:
                m.d.comb += self.o.payload.values[c].eq(array.o.payload.sums[c])
                continue
            value, sat = requantize_hw(array.o.payload.sums[c], self.acc_fmt.frac, self._out_fmt)
            m.d.comb += self.o.payload.values[c].eq(value)
            saturated.append(sat)
        m.d.comb += [
            self.o.payload.channel.eq(channel),
            self.o.payload.row.eq(array.o.payload.tag.y),
            self.o.payload.saturated.eq(sum(saturated) if saturated else 0),
            self.o.valid.eq(array.o.valid & lane_used),
            array.o.ready.eq(self.o.ready | ~lane_used),
            self.busy.eq(running | s1_valid | array.busy),
            self.step.eq(array.i.valid & array.i.ready),
        ]
        return m


def pack_fc_bp_weights(weights, rows):
    """Weight-memory words of :class:`FcBackpropEngine`: ``weights`` is ``(cout, cin, h, w)``.

    Word ``(t * h + y) * cout + o`` holds lanes ``W[o, t*rows + r, y, x]`` at ``r * w + x``;
    lanes past ``cin`` are zero.
    """
    cout, cin, h, w = weights.shape
    tiles = -(-cin // rows)
    words = []
    for t in range(tiles):
        for y in range(h):
            for o in range(cout):
                words.append([int(weights[o, t * rows + r, y, x]) if t * rows + r < cin else 0
                              for r in range(rows) for x in range(w)])
    return words
