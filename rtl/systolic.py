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

    A step with ``last`` set closes a tile: every PE copies its sum into a result
    register and starts the next tile from zero. The tile then leaves on ``o`` as
    ``rows`` beats, one row of ``cols`` exact sums each, while the next tile
    accumulates.

    Sums are exact: the caller chooses ``acc_width`` so that no tile can overflow
    it (:func:`fpdeep.rtl.numerics.check_accumulator`).

    Throughput and latency
    ----------------------
    One step per cycle. A ``last`` step is held back until the previous tile has
    left the result registers, so a tile of ``K`` steps occupies
    ``max(K, rows + cols + 1 + rows)`` cycles when ``o`` is always ready; the first
    row of a tile appears ``rows + cols + 1`` cycles after its ``last`` step.

    Parameters
    ----------
    rows, cols : int
        Array size.
    a_shape, b_shape : shape-castable
        Operand shapes (signed).
    acc_width : int
        Accumulator width in bits.

    Members
    -------
    i : In(stream.Signature(StructLayout({"a": ArrayLayout(a_shape, rows), "b": ArrayLayout(b_shape, cols), "last": 1})))
        Operand steps.
    o : Out(stream.Signature(StructLayout({"sums": ArrayLayout(signed(acc_width), cols), "row": range(rows), "last": 1})))
        Finished tiles, one row per beat; ``last`` marks the tile's final row.
    busy : Out(1)
        A tile is accumulating, in flight or draining.
    """

    def __init__(self, *, rows, cols, a_shape=signed(16), b_shape=signed(16), acc_width=48):
        for name, value in (("rows", rows), ("cols", cols)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, not {value!r}")
        if not isinstance(acc_width, int) or acc_width < 2:
            raise ValueError(f"acc_width must be an int of at least 2, not {acc_width!r}")
        self._rows, self._cols, self._acc_width = rows, cols, acc_width
        self._a_shape, self._b_shape = a_shape, b_shape
        super().__init__({
            "i": In(stream.Signature(data.StructLayout({
                "a": data.ArrayLayout(a_shape, rows),
                "b": data.ArrayLayout(b_shape, cols),
                "last": 1,
            }))),
            "o": Out(stream.Signature(data.StructLayout({
                "sums": data.ArrayLayout(signed(acc_width), cols),
                "row": range(rows),
                "last": 1,
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
    def tile_latency(self):
        """Cycles from a ``last`` step's transfer to the first row on ``o``."""
        return self._rows + self._cols + 1

    def elaborate(self, platform):
        m = Module()
        rows, cols = self._rows, self._cols
        flags = data.StructLayout({"valid": 1, "first": 1, "last": 1})

        # A tile is "open" from its first step to its last; a new last may enter only
        # once the previous tile's results have left (see the class docstring).
        tile_pending = Signal()
        m.d.comb += self.i.ready.eq(~(self.i.payload.last & tile_pending))
        take = self.i.valid & self.i.ready
        starting = Signal(init=1)
        with m.If(take):
            m.d.sync += starting.eq(self.i.payload.last)

        entry = Signal(flags)
        m.d.comb += [
            entry.valid.eq(take),
            entry.first.eq(starting),
            entry.last.eq(self.i.payload.last),
        ]

        # Skew the edges: row r and column c enter r and c cycles late.
        def delayed(value, cycles, name):
            for stage in range(cycles):
                reg = Signal.like(value, name=f"{name}_d{stage}")
                m.d.sync += reg.eq(value)
                value = reg
            return value

        a_edge = [delayed(self.i.payload.a[r], r, f"a{r}") for r in range(rows)]
        f_edge = [delayed(entry, r, f"f{r}") for r in range(rows)]
        b_edge = [delayed(self.i.payload.b[c], c, f"b{c}") for c in range(cols)]

        results = [[Signal(signed(self._acc_width), name=f"result_{r}_{c}")
                    for c in range(cols)] for r in range(rows)]
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
                m.d.sync += [product.eq(a * b), product_f.eq(f)]
                total = Mux(product_f.first, 0, acc) + product
                with m.If(product_f.valid):
                    m.d.sync += acc.eq(total)
                    with m.If(product_f.last):
                        m.d.sync += results[r][c].eq(total)

        # The last PE to finish a tile is (rows-1, cols-1): a last step transferred at
        # cycle t reaches its product stage at t + rows + cols - 1 and its result at +1.
        flight = Signal(range(self.tile_latency + 1))
        draining = Signal()
        row = Signal(range(rows))
        m.d.comb += tile_pending.eq((flight != 0) | draining)
        with m.If(take & self.i.payload.last):
            m.d.sync += flight.eq(self.tile_latency)
        with m.Elif(flight != 0):
            m.d.sync += flight.eq(flight - 1)
            with m.If(flight == 1):
                m.d.sync += draining.eq(1)

        with m.Switch(row):
            for r in range(rows):
                with m.Case(r):
                    for c in range(cols):
                        m.d.comb += self.o.payload.sums[c].eq(results[r][c])
        m.d.comb += [
            self.o.valid.eq(draining),
            self.o.payload.row.eq(row),
            self.o.payload.last.eq(row == rows - 1),
        ]
        with m.If(self.o.valid & self.o.ready):
            m.d.sync += row.eq(Mux(row == rows - 1, 0, row + 1))
            with m.If(row == rows - 1):
                m.d.sync += draining.eq(0)

        m.d.comb += self.busy.eq(tile_pending | ~starting)
        return m
