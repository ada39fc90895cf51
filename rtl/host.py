"""The host interface: a signature for the core's side, and a UART bridge to it.

Samples and labels enter chip 0 through :class:`HostSignature`; the training
counters and every master weight are reachable through it too. On a board the
host speaks to it over a UART through :class:`HostBridge`, using the byte
protocol defined (once) in :mod:`fpdeep.rtl.host_protocol`;
:class:`~fpdeep.platforms.host_client.HostClient` is the matching host side.
"""

from amaranth import *
from amaranth.lib import wiring, stream, data, fifo
from amaranth.lib.cdc import FFSynchronizer
from amaranth.lib.wiring import In, Out

from .host_protocol import Op, Status, RX_FIFO_DEPTH, REPLY_LENGTH

__all__ = ["HostSignature", "UartRx", "UartTx", "HostBridge",
           "WEIGHT_ADDR_WIDTH", "SAMPLE_SHAPE", "WEIGHT_SHAPE"]

#: Width of the flat master-weight address space.
WEIGHT_ADDR_WIDTH = 20
#: One sample word: a label, or a pixel in the 16-bit activation format.
SAMPLE_SHAPE = signed(16)
#: One master weight.
WEIGHT_SHAPE = signed(32)


class HostSignature(wiring.Signature):
    """What a training core offers the host; members from the core's point of view.

    The core declares ``"host": Out(HostSignature())`` and a bridge
    ``"core": In(HostSignature())``.

    Members
    -------
    sample : In(stream.Signature(signed(16)))
        Per sample, one label word then C*H*W pixel words (activation fixed
        point, row-major), consumed by the core.
    samples, correct, batches, saturations : Out(unsigned(32))
        Counters: samples trained, samples classified correctly, mini-batches
        completed, saturation events.
    loss_sum : Out(unsigned(32))
        Sum of the per-sample softmax cross-entropies
        (:func:`~fpdeep.rtl.numerics.cross_entropy_np`), in bits with
        :data:`~fpdeep.rtl.numerics.LOSS_FRAC` fraction bits. It saturates at
        ``2**32 - 1`` (16.7 million bits) and never wraps
        (:func:`~fpdeep.rtl.numerics.saturating_add_hw`).
    busy : Out(1)
        The core is working; weight accesses are only made while it is low.
    weight_addr : In(unsigned(20))
        Index into the flat master-weight address space.
    weight_read : In(1)
        One-cycle strobe: read the weight at ``weight_addr``.
    weight_rdata : Out(signed(32))
        The weight read, valid while ``weight_rvalid`` is high.
    weight_rvalid : Out(1)
        Pulses once per ``weight_read``, one or more cycles after it.
    weight_write : In(1)
        One-cycle strobe: write ``weight_wdata`` at ``weight_addr``.
    weight_wdata : In(signed(32))
        The weight to write.
    weight_count : Out(unsigned(20))
        How many weights exist; valid addresses are ``0 .. weight_count - 1``.
    """

    def __init__(self):
        super().__init__({
            "sample": In(stream.Signature(SAMPLE_SHAPE)),
            "samples": Out(unsigned(32)),
            "correct": Out(unsigned(32)),
            "batches": Out(unsigned(32)),
            "saturations": Out(unsigned(32)),
            "loss_sum": Out(unsigned(32)),
            "busy": Out(1),
            **weight_members(),
        })


def weight_members():
    """The weight-access members of :class:`HostSignature` (also
    :class:`~fpdeep.rtl.control.WeightPortSignature`), from the weights' side."""
    return {
        "weight_addr": In(unsigned(WEIGHT_ADDR_WIDTH)),
        "weight_read": In(1),
        "weight_rdata": Out(WEIGHT_SHAPE),
        "weight_rvalid": Out(1),
        "weight_write": In(1),
        "weight_wdata": In(WEIGHT_SHAPE),
        "weight_count": Out(unsigned(WEIGHT_ADDR_WIDTH)),
    }


def _check_divisor(divisor):
    if not isinstance(divisor, int) or isinstance(divisor, bool):
        raise TypeError(f"divisor must be an int, not {divisor!r}")
    # The receiver samples mid-bit, so it needs a few cycles per bit.
    if divisor < 4:
        raise ValueError(f"divisor must be at least 4 clock cycles per bit, not {divisor}")


class UartRx(wiring.Component):
    """8N1 UART receiver.

    The line is synchronised by two flip-flops, a start bit is confirmed at its
    middle, and every following bit is sampled one bit time later.

    Parameters
    ----------
    divisor : int
        Clock cycles per bit (``clk_hz // baud``), at least 4.

    Members
    -------
    rx : In(1)
        The serial line, idle high.
    o : Out(stream.Signature(8))
        Received bytes, about 9.5 bit times after the start edge. A byte is
        held until taken; a byte that completes while the previous one is still
        held is dropped and ``overrun`` pulses.
    overrun : Out(1)
        Pulses when a byte is dropped because ``o`` was not taken in time.
    frame_error : Out(1)
        Pulses when a stop bit is low; that byte is dropped, and the receiver
        waits for the line to go high again before it looks for a start bit.
    """

    def __init__(self, divisor):
        _check_divisor(divisor)
        self._divisor = divisor
        super().__init__({
            "rx": In(1, init=1),
            "o": Out(stream.Signature(8)),
            "overrun": Out(1),
            "frame_error": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        line = Signal(init=1)
        m.submodules.sync_rx = FFSynchronizer(self.rx, line, init=1)

        timer = Signal(range(self._divisor))
        bit = Signal(range(8))
        shreg = Signal(8)

        with m.If(self.o.ready):
            m.d.sync += self.o.valid.eq(0)
        with m.If(timer != 0):
            m.d.sync += timer.eq(timer - 1)

        with m.FSM():
            with m.State("IDLE"):
                with m.If(~line):
                    m.d.sync += timer.eq(self._divisor // 2 - 1)
                    m.next = "START"
            with m.State("START"):
                with m.If(timer == 0):
                    with m.If(line):
                        m.next = "IDLE"     # a glitch, not a start bit
                    with m.Else():
                        m.d.sync += [timer.eq(self._divisor - 1), bit.eq(0)]
                        m.next = "DATA"
            with m.State("DATA"):
                with m.If(timer == 0):
                    m.d.sync += [shreg.eq(Cat(shreg[1:], line)),    # LSB first
                                 timer.eq(self._divisor - 1),
                                 bit.eq(bit + 1)]
                    with m.If(bit == 7):
                        m.next = "STOP"
            with m.State("STOP"):
                with m.If(timer == 0):
                    with m.If(~line):
                        m.d.comb += self.frame_error.eq(1)
                        m.next = "BREAK"
                    with m.Else():
                        with m.If(self.o.valid & ~self.o.ready):
                            m.d.comb += self.overrun.eq(1)
                        with m.Else():
                            m.d.sync += [self.o.valid.eq(1), self.o.payload.eq(shreg)]
                        # Back to IDLE in the middle of the stop bit, to catch the
                        # next start edge as early as it can come.
                        m.next = "IDLE"
            with m.State("BREAK"):
                # A low stop bit (or a break) is not the next start bit.
                with m.If(line):
                    m.next = "IDLE"
        return m


class UartTx(wiring.Component):
    """8N1 UART transmitter.

    Parameters
    ----------
    divisor : int
        Clock cycles per bit (``clk_hz // baud``), at least 4.

    Members
    -------
    i : In(stream.Signature(8))
        Bytes to send. One byte is taken every ``10 * divisor + 1`` cycles at
        most; the start bit begins the cycle after the transfer.
    tx : Out(1)
        The serial line, idle high, driven straight from a flip-flop.
    """

    def __init__(self, divisor):
        _check_divisor(divisor)
        self._divisor = divisor
        super().__init__({
            "i": In(stream.Signature(8)),
            "tx": Out(1, init=1),
        })

    def elaborate(self, platform):
        m = Module()
        timer = Signal(range(self._divisor))
        bits_left = Signal(range(11))
        shreg = Signal(10, init=0x3FF)     # stop, data[7:0], start; idle line high

        m.d.comb += [self.tx.eq(shreg[0]), self.i.ready.eq(bits_left == 0)]
        with m.If(self.i.valid & self.i.ready):
            m.d.sync += [shreg.eq(Cat(C(0, 1), self.i.payload, C(1, 1))),
                         bits_left.eq(10), timer.eq(self._divisor - 1)]
        with m.Elif(bits_left != 0):
            with m.If(timer == 0):
                m.d.sync += [shreg.eq(Cat(shreg[1:], C(1, 1))),
                             bits_left.eq(bits_left - 1), timer.eq(self._divisor - 1)]
            with m.Else():
                m.d.sync += timer.eq(timer - 1)
        return m


# Command arguments as received, byte by byte, and the views that read them.
_ARGS_LAYOUT = data.UnionLayout({
    "raw": data.ArrayLayout(8, 7),
    "count": unsigned(16),                                  # SAMPLE
    "weight": data.StructLayout({"addr": unsigned(24),      # READ_WEIGHT, WRITE_WEIGHT
                                 "value": WEIGHT_SHAPE}),
})
_WORD_LAYOUT = data.UnionLayout({"raw": data.ArrayLayout(8, 2), "value": SAMPLE_SHAPE})
_REPLY_BYTES = max(REPLY_LENGTH.values())


class HostBridge(wiring.Component):
    """UART bridge from a host computer to a core's :class:`HostSignature` port.

    The byte protocol is documented in :mod:`fpdeep.platforms.host_client`. In
    short (little-endian; every command has one reply of fixed length):

    ====================================  =====================================
    ``01 n:u16 n*(word:s16)``             ``81`` once the core took all n words
    ``02``                                ``82 samples correct batches
                                          saturations:u32 status:u8``
    ``03 addr:u24``                       ``83 value:s32``
    ``04 addr:u24 value:s32``             ``84``
    ``05``                                ``85 weight_count:u24``
    ``06``                                ``86 samples correct batches
                                          saturations loss_sum:u32 status:u8``
    any other byte ``xx``                 ``FE xx``; the byte is ignored
    ====================================  =====================================

    A weight command replies ``FB`` (core busy) or ``FD`` (address not below
    ``weight_count``) instead of ``83``/``84``, padded with zeros, and does not
    touch the core. ``status`` bit 0 is ``busy``; bits 1 (a byte was lost to a
    UART overrun or framing error) and 2 (an unknown command came) are sticky
    and cleared by the counters command (``02`` or ``06``) that reports them.

    Received bytes pass through a FIFO of ``fifo_depth`` bytes, because a UART
    cannot stall its sender; the host keeps at most that many bytes in flight.
    The counters in a counters reply are sampled in one cycle, so they are
    consistent with one another (``loss_sum / samples`` is a mean over the
    same samples).

    Throughput is the UART's, one byte per ``10 * divisor`` cycles each way (a
    sample word takes 20 bit times); the bridge itself adds two cycles per
    command plus one per sample word, and the reply's first byte starts one
    cycle after the command's last byte leaves the FIFO (or after
    ``weight_rvalid``, or after the core takes the last sample word).

    Parameters
    ----------
    clk_hz : int
        Clock frequency of the ``sync`` domain.
    baud : int
        Line rate; ``clk_hz // baud`` must be at least 4.
    fifo_depth : int
        Receive FIFO depth in bytes; the host client assumes
        :data:`~fpdeep.platforms.host_client.RX_FIFO_DEPTH`.

    Members
    -------
    rx : In(1)
        Serial line from the host, idle high.
    tx : Out(1)
        Serial line to the host, idle high.
    core : In(HostSignature())
        To the core's ``host`` port. Sample words are offered one at a time, as
        soon as their second byte is received; a weight read waits for
        ``weight_rvalid`` however long it takes.

    Raises
    ------
    TypeError, ValueError
        For a non-integer or out-of-range ``clk_hz``, ``baud`` or ``fifo_depth``.
    """

    def __init__(self, clk_hz, baud=115200, *, fifo_depth=RX_FIFO_DEPTH):
        for name, value in (("clk_hz", clk_hz), ("baud", baud), ("fifo_depth", fifo_depth)):
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"{name} must be an int, not {value!r}")
            if value < 1:
                raise ValueError(f"{name} must be positive, not {value}")
        if clk_hz // baud < 4:
            raise ValueError(f"baud {baud} is too fast for a {clk_hz} Hz clock: the UART "
                             f"needs at least 4 clock cycles per bit")
        if fifo_depth < 8:
            raise ValueError(f"fifo_depth must be at least 8 bytes (one WRITE_WEIGHT), "
                             f"not {fifo_depth}")
        self._clk_hz = clk_hz
        self._baud = baud
        self._divisor = clk_hz // baud
        self._fifo_depth = fifo_depth
        super().__init__({
            "rx": In(1, init=1),
            "tx": Out(1, init=1),
            "core": In(HostSignature()),
        })

    @property
    def divisor(self):
        return self._divisor

    def elaborate(self, platform):
        m = Module()
        m.submodules.uart_rx = uart_rx = UartRx(self._divisor)
        m.submodules.uart_tx = uart_tx = UartTx(self._divisor)
        m.submodules.rx_fifo = rx_fifo = fifo.SyncFIFOBuffered(width=8, depth=self._fifo_depth)
        m.d.comb += [uart_rx.rx.eq(self.rx), self.tx.eq(uart_tx.tx)]
        wiring.connect(m, uart_rx.o, rx_fifo.w_stream)
        byte = rx_fifo.r_stream
        core = self.core

        cmd = Signal(8)
        args = Signal(_ARGS_LAYOUT)
        argc = Signal(range(7))
        last_arg = Signal(range(7))
        word = Signal(_WORD_LAYOUT)
        word_hi = Signal()
        remaining = Signal(16)
        reply = Signal(data.ArrayLayout(8, _REPLY_BYTES))
        reply_len = Signal(range(_REPLY_BYTES + 1))
        reply_idx = Signal(range(_REPLY_BYTES))

        # Sticky status, cleared by the COUNTERS command that reports it.
        rx_error = Signal()
        bad_command = Signal()
        clear_status = Signal()
        set_bad_command = Signal()
        with m.If(clear_status):
            m.d.sync += [rx_error.eq(0), bad_command.eq(0)]
        with m.If(uart_rx.overrun | uart_rx.frame_error):
            m.d.sync += rx_error.eq(1)
        with m.If(set_bad_command):
            m.d.sync += bad_command.eq(1)

        # Address and data stay still from the last argument byte to the next command.
        m.d.comb += [core.weight_addr.eq(args.weight.addr),
                     core.weight_wdata.eq(args.weight.value),
                     core.sample.payload.eq(word.value),
                     uart_tx.i.payload.eq(reply[reply_idx])]

        def send(*fields, length):
            # Zero-extension pads an error reply to the command's length.
            m.d.sync += [reply.eq(Cat(*fields)), reply_len.eq(length), reply_idx.eq(0)]
            m.next = "SEND"

        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += byte.ready.eq(1)
                with m.If(byte.valid):
                    m.d.sync += [cmd.eq(byte.payload), argc.eq(0)]
                    with m.Switch(byte.payload):
                        with m.Case(Op.SAMPLE):
                            m.d.sync += last_arg.eq(1)
                            m.next = "ARGS"
                        with m.Case(Op.READ_WEIGHT):
                            m.d.sync += last_arg.eq(2)
                            m.next = "ARGS"
                        with m.Case(Op.WRITE_WEIGHT):
                            m.d.sync += last_arg.eq(6)
                            m.next = "ARGS"
                        status = Cat(core.busy, rx_error, bad_command, C(0, 5))
                        counters = [core.samples, core.correct, core.batches,
                                    core.saturations]
                        with m.Case(Op.COUNTERS):
                            m.d.comb += clear_status.eq(1)
                            send(C(Status.ok(Op.COUNTERS), 8), *counters, status,
                                 length=REPLY_LENGTH[Op.COUNTERS])
                        with m.Case(Op.COUNTERS_LOSS):
                            m.d.comb += clear_status.eq(1)
                            send(C(Status.ok(Op.COUNTERS_LOSS), 8), *counters, core.loss_sum,
                                 status, length=REPLY_LENGTH[Op.COUNTERS_LOSS])
                        with m.Case(Op.WEIGHT_COUNT):
                            send(C(Status.ok(Op.WEIGHT_COUNT), 8), core.weight_count,
                                 length=REPLY_LENGTH[Op.WEIGHT_COUNT])
                        with m.Default():
                            m.d.comb += set_bad_command.eq(1)
                            send(C(Status.BAD_COMMAND, 8), byte.payload, length=2)

            with m.State("ARGS"):
                m.d.comb += byte.ready.eq(1)
                with m.If(byte.valid):
                    m.d.sync += [args.raw[argc].eq(byte.payload), argc.eq(argc + 1)]
                    with m.If(argc == last_arg):
                        m.next = "EXEC"

            with m.State("EXEC"):
                with m.If(cmd == Op.SAMPLE):
                    m.d.sync += remaining.eq(args.count)
                    with m.If(args.count == 0):
                        send(C(Status.ok(Op.SAMPLE), 8), length=REPLY_LENGTH[Op.SAMPLE])
                    with m.Else():
                        m.d.sync += word_hi.eq(0)
                        m.next = "WORD"
                with m.Else():
                    is_read = cmd == Op.READ_WEIGHT
                    length = Mux(is_read, REPLY_LENGTH[Op.READ_WEIGHT],
                                 REPLY_LENGTH[Op.WRITE_WEIGHT])
                    with m.If(core.busy):
                        send(C(Status.BUSY, 8), length=length)
                    with m.Elif(args.weight.addr >= core.weight_count):
                        send(C(Status.BAD_ADDRESS, 8), length=length)
                    with m.Elif(is_read):
                        m.d.comb += core.weight_read.eq(1)
                        m.next = "READ_WAIT"
                    with m.Else():
                        m.d.comb += core.weight_write.eq(1)
                        send(C(Status.ok(Op.WRITE_WEIGHT), 8), length=length)

            with m.State("READ_WAIT"):
                with m.If(core.weight_rvalid):
                    send(C(Status.ok(Op.READ_WEIGHT), 8), core.weight_rdata,
                         length=REPLY_LENGTH[Op.READ_WEIGHT])

            with m.State("WORD"):
                m.d.comb += byte.ready.eq(1)
                with m.If(byte.valid):
                    m.d.sync += [word.raw[word_hi].eq(byte.payload), word_hi.eq(~word_hi)]
                    with m.If(word_hi):
                        m.next = "PUSH"

            with m.State("PUSH"):
                m.d.comb += core.sample.valid.eq(1)
                with m.If(core.sample.ready):
                    m.d.sync += remaining.eq(remaining - 1)
                    with m.If(remaining == 1):
                        send(C(Status.ok(Op.SAMPLE), 8), length=REPLY_LENGTH[Op.SAMPLE])
                    with m.Else():
                        m.next = "WORD"

            with m.State("SEND"):
                m.d.comb += uart_tx.i.valid.eq(1)
                with m.If(uart_tx.i.ready):
                    m.d.sync += reply_idx.eq(reply_idx + 1)
                    with m.If(reply_idx == reply_len - 1):
                        m.next = "IDLE"
        return m
