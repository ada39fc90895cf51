"""The systolic MAC array that every FP, BP and WU engine of fpdeep is built on."""

from amaranth import *
from amaranth.lib import wiring, stream, data
from amaranth.lib.wiring import In, Out

__all__ = ["SystolicArray"]


class SystolicArray(wiring.Component):
    """An output-stationary ``rows`` × ``cols`` array of fixed-point MAC PEs.

    Each input step carries a vector ``a`` of ``rows`` operands and a vector ``b``
    of ``cols`` operands; PE ``(r, c)`` accumulates ``a[r] * b[c]``. Operands are
    systolic: ``a[r]`` enters row ``r`` at the left edge and moves one PE right per
    cycle, ``b[c]`` enters column ``c`` at the top and moves one PE down per cycle,
    and the edges are skewed (row ``r`` delayed ``r`` cycles, column ``c`` delayed
    ``c``) so that PE ``(r, c)`` meets the operands of step ``k`` at cycle
    ``k + r + c``. No operand is broadcast, so the fan-out of every register is one
    PE and the array's Fmax does not fall as it grows.

    A step with ``last`` set closes a tile: every PE copies its sum into one of two
    result banks and starts the next tile from zero. The tile then leaves on ``o``
    as ``rows`` beats, one row of ``cols`` exact sums each, with the ``tag`` given on
    its last step, while the next tile accumulates and lands in the other bank.

    With ``lanes`` > 1 each operand is a vector of ``lanes`` values and PE ``(r, c)``
    accumulates the dot product ``sum_l a[r][l] * b[c][l]`` per step: ``lanes``
    multipliers whose products are added before the accumulator, so a step does the
    work of ``lanes`` steps of the scalar array (see
    :class:`~fpdeep.rtl.weight_update.WeightGradientEngine`, which feeds it ``lanes``
    output pixels at once). Integer sums are exact, so the result equals the scalar
    array's over the same products in any order.

    Sums are exact: the caller chooses ``acc_width`` so that no tile can overflow
    it (:func:`fpdeep.rtl.numerics.check_accumulator`).

    Throughput and latency
    ----------------------
    One step per cycle. A ``last`` step is held back only while both result banks
    hold tiles not yet drained, so with ``o`` always ready a stream of tiles of
    ``K`` steps each runs at ``max(K, rows)`` cycles per tile once
    ``2K >= rows + cols + 1 + rows``; the first row of a tile appears
    ``rows + cols + 1`` cycles after its ``last`` step.

    Parameters
    ----------
    rows, cols : int
        Array size.
    a_shape, b_shape : shape-castable
        Operand shapes (signed).
    acc_width : int
        Accumulator width in bits.
    tag_shape : shape-castable
        What the caller attaches to each tile (say, which output it is).
    lanes : int
        Products per PE and step (1 by default: a scalar MAC).

    Members
    -------
    i : In(stream.Signature(StructLayout({"a": ArrayLayout(a_shape, rows), "b": ArrayLayout(b_shape, cols), "last": 1, "tag": tag_shape})))
        Operand steps; ``tag`` is sampled on ``last`` steps only. With ``lanes`` > 1
        every element of ``a`` and ``b`` is an ``ArrayLayout(shape, lanes)``.
    o : Out(stream.Signature(StructLayout({"sums": ArrayLayout(signed(acc_width), cols), "row": range(rows), "last": 1, "tag": tag_shape})))
        Finished tiles, one row per beat; ``last`` marks the tile's final row.
    busy : Out(1)
        A tile is accumulating, in flight or draining.
    """

    def __init__(self, *, rows, cols, a_shape=signed(16), b_shape=signed(16), acc_width=48,
                 tag_shape=unsigned(1), lanes=1):
        for name, value in (("rows", rows), ("cols", cols), ("lanes", lanes)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, not {value!r}")
        if not isinstance(acc_width, int) or acc_width < 2:
            raise ValueError(f"acc_width must be an int of at least 2, not {acc_width!r}")
        self._rows, self._cols, self._acc_width = rows, cols, acc_width
        self._lanes = lanes
        # A PE's operand: a scalar, or a vector of ``lanes`` (the lanes=1 ports are
        # those of the scalar array, unchanged).
        if lanes > 1:
            a_shape, b_shape = data.ArrayLayout(a_shape, lanes), data.ArrayLayout(b_shape, lanes)
        self._a_shape, self._b_shape, self._tag_shape = a_shape, b_shape, tag_shape
        super().__init__({
            "i": In(stream.Signature(data.StructLayout({
                "a": data.ArrayLayout(a_shape, rows),
                "b": data.ArrayLayout(b_shape, cols),
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

    @property
    def rows(self):
        return self._rows

    @property
    def cols(self):
        return self._cols

    @property
    def lanes(self):
        return self._lanes

    @property
    def tile_latency(self):
        """Cycles from a ``last`` step's transfer to the first row on ``o``."""
        return self._rows + self._cols + 1

    def elaborate(self, platform):
        m = Module()
        rows, cols = self._rows, self._cols
        flags = data.StructLayout({"valid": 1, "first": 1, "last": 1, "bank": 1})

        # Tiles between their last step and the end of their drain: at most two, one
        # per result bank. A new last step waits while both banks are taken.
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

        entry = Signal(flags)
        m.d.comb += [
            entry.valid.eq(take),
            entry.first.eq(starting),
            entry.last.eq(self.i.payload.last),
            entry.bank.eq(fill_bank),
        ]

        # Skew the edges: row r and column c enter r and c cycles late.
        def delayed(value, shape, cycles, name):
            for stage in range(cycles):
                reg = Signal(shape, name=f"{name}_d{stage}")
                m.d.sync += reg.eq(value)
                value = reg
            return value

        a_edge = [delayed(self.i.payload.a[r], self._a_shape, r, f"a{r}") for r in range(rows)]
        f_edge = [delayed(entry, flags, r, f"f{r}") for r in range(rows)]
        b_edge = [delayed(self.i.payload.b[c], self._b_shape, c, f"b{c}") for c in range(cols)]

        results = [[[Signal(signed(self._acc_width), name=f"result{bank}_{r}_{c}")
                     for c in range(cols)] for r in range(rows)] for bank in range(2)]
        a_regs = [[None] * cols for _ in range(rows)]
        f_regs = [[None] * cols for _ in range(rows)]
        b_regs = [[None] * cols for _ in range(rows)]
        for r in range(rows):
            for c in range(cols):
                a = Signal(self._a_shape, name=f"pe_{r}_{c}_a")
                f = Signal(flags, name=f"pe_{r}_{c}_f")
                b = Signal(self._b_shape, name=f"pe_{r}_{c}_b")
                m.d.sync += [
                    a.eq(a_edge[r] if c == 0 else a_regs[r][c - 1]),
                    f.eq(f_edge[r] if c == 0 else f_regs[r][c - 1]),
                    b.eq(b_edge[c] if r == 0 else b_regs[r - 1][c]),
                ]
                a_regs[r][c], f_regs[r][c], b_regs[r][c] = a, f, b

                # Product stage, then accumulate stage (maps onto a DSP's two registers).
                product = Signal(signed(self._acc_width), name=f"pe_{r}_{c}_p")
                product_f = Signal(flags, name=f"pe_{r}_{c}_pf")
                acc = Signal(signed(self._acc_width), name=f"pe_{r}_{c}_acc")
                if self._lanes == 1:
                    m.d.sync += product.eq(a * b)
                else:
                    m.d.sync += product.eq(sum(a[l] * b[l] for l in range(self._lanes)))
                m.d.sync += product_f.eq(f)
                total = Mux(product_f.first, 0, acc) + product
                with m.If(product_f.valid):
                    m.d.sync += acc.eq(total)
                    with m.If(product_f.last):
                        with m.If(product_f.bank):
                            m.d.sync += results[1][r][c].eq(total)
                        with m.Else():
                            m.d.sync += results[0][r][c].eq(total)

        # A tile is complete when its last step's result lands in PE (rows-1, cols-1):
        # a shift register of the latency marks that cycle; its tag rides alongside.
        tags = [Signal(self._tag_shape, name=f"tag{bank}") for bank in range(2)]
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
        m.d.sync += [
            ready_tiles.eq(ready_tiles + landed - drained),
            tiles_held.eq(tiles_held + closing - drained),
        ]
        for bank in range(2):
            with m.If(drain_bank == bank):
                with m.Switch(row):
                    for r in range(rows):
                        with m.Case(r):
                            for c in range(cols):
                                m.d.comb += self.o.payload.sums[c].eq(results[bank][r][c])
                m.d.comb += self.o.payload.tag.eq(tags[bank])
        m.d.comb += [
            self.o.valid.eq(ready_tiles != 0),
            self.o.payload.row.eq(row),
            self.o.payload.last.eq(row == rows - 1),
        ]
        with m.If(self.o.valid & self.o.ready):
            m.d.sync += row.eq(Mux(row == rows - 1, 0, row + 1))
            with m.If(row == rows - 1):
                m.d.sync += drain_bank.eq(~drain_bank)

        m.d.comb += self.busy.eq((tiles_held != 0) | ~starting)
        return m
