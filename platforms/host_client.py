"""The host side of the UART host protocol (:mod:`fpdeep.rtl.host_protocol`), in pure
Python: the tests and a real serial port speak it through :class:`HostClient`."""

import struct
from dataclasses import dataclass

from ..rtl.host_protocol import (MAX_SAMPLE_WORDS, REPLY_LENGTH, RX_FIFO_DEPTH, STATUS_BAD_COMMAND,
                                 STATUS_BUSY, STATUS_RX_ERROR, Op, Status)
from ..rtl.rowlink import map_words

__all__ = ["Op", "Status", "RX_FIFO_DEPTH", "MAX_SAMPLE_WORDS", "REPLY_LENGTH",
           "Counters", "Request", "HostError", "HostClient"]


class HostError(RuntimeError):
    """The device replied with an error status, or with bytes that do not parse."""


@dataclass(frozen=True)
class Counters:
    """The core's counters, sampled in one cycle. ``loss_sum`` (bits, 8 fraction bits)
    is ``None`` when read with the COUNTERS command, which does not carry it."""
    samples: int
    correct: int
    batches: int
    saturations: int
    busy: bool
    rx_error: bool
    bad_command: bool
    loss_sum: int = None


@dataclass(frozen=True)
class Request:
    """One command: the bytes to send, the reply length, and its decoder.

    ``decode(reply)`` takes exactly ``reply_length`` bytes and returns the result,
    or raises :class:`HostError`. Transports (a serial port, or a simulation
    testbench) only move bytes; all protocol knowledge is here.
    """
    op: Op
    payload: bytes
    reply_length: int

    def decode(self, reply):
        reply = bytes(reply)
        if len(reply) != self.reply_length:
            raise HostError(f"{self.op.name}: expected {self.reply_length} reply bytes, "
                            f"got {len(reply)}: {reply.hex()}")
        status = reply[0]
        if status == Status.BUSY:
            raise HostError(f"{self.op.name}: the core is busy")
        if status == Status.BAD_ADDRESS:
            raise HostError(f"{self.op.name}: weight address out of range")
        if status != Status.ok(self.op):
            raise HostError(f"{self.op.name}: unexpected reply {reply.hex()}")
        body = reply[1:]
        if self.op in (Op.COUNTERS, Op.COUNTERS_LOSS):
            if self.op == Op.COUNTERS:
                *counts, status = struct.unpack("<IIIIB", body)
                loss_sum = None
            else:
                *counts, loss_sum, status = struct.unpack("<IIIIIB", body)
            return Counters(*counts, busy=bool(status & STATUS_BUSY),
                            rx_error=bool(status & STATUS_RX_ERROR),
                            bad_command=bool(status & STATUS_BAD_COMMAND),
                            loss_sum=loss_sum)
        if self.op == Op.READ_WEIGHT:
            return struct.unpack("<i", body)[0]
        if self.op == Op.WEIGHT_COUNT:
            return int.from_bytes(body, "little")
        return None


def _check_int(name, value, lo, hi):
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, not {value!r}")
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be in [{lo}, {hi}], not {value}")


def _addr(addr):
    _check_int("addr", addr, 0, (1 << 24) - 1)
    return addr.to_bytes(3, "little")


class HostClient:
    """Speaks the host protocol over any byte transport.

    Parameters
    ----------
    port : object
        Anything with ``write(bytes)`` and ``read(n) -> bytes`` (a ``serial.Serial``
        from pyserial, opened with a timeout, qualifies). A short read is an error.

    The ``*_request`` static methods build a :class:`Request` without a transport,
    for simulation testbenches that move the bytes themselves.
    """

    def __init__(self, port):
        if not (hasattr(port, "write") and hasattr(port, "read")):
            raise TypeError(f"port must have read() and write(), not {port!r}")
        self._port = port

    @classmethod
    def open_serial(cls, device, baud=115200, timeout=2.0):
        """Open a serial port with pyserial (optional dependency)."""
        try:
            import serial
        except ImportError as error:
            raise HostError("pyserial is needed for a real serial port: "
                            "pip install pyserial") from error
        return cls(serial.Serial(device, baud, timeout=timeout))

    # Requests -------------------------------------------------------------------

    @staticmethod
    def sample_request(words):
        words = list(words)
        if len(words) > MAX_SAMPLE_WORDS:
            raise ValueError(f"words: at most {MAX_SAMPLE_WORDS} per SAMPLE command, "
                             f"not {len(words)}")
        for word in words:
            _check_int("sample word", word, -(1 << 15), (1 << 15) - 1)
        payload = struct.pack(f"<BH{len(words)}h", Op.SAMPLE, len(words), *words)
        return Request(Op.SAMPLE, payload, REPLY_LENGTH[Op.SAMPLE])

    @staticmethod
    def counters_request(*, loss=True):
        """COUNTERS_LOSS, or with ``loss=False`` the COUNTERS command that bitstreams
        built before the loss counter understand."""
        op = Op.COUNTERS_LOSS if loss else Op.COUNTERS
        return Request(op, bytes([op]), REPLY_LENGTH[op])

    @staticmethod
    def read_weight_request(addr):
        return Request(Op.READ_WEIGHT, bytes([Op.READ_WEIGHT]) + _addr(addr),
                       REPLY_LENGTH[Op.READ_WEIGHT])

    @staticmethod
    def write_weight_request(addr, value):
        _check_int("value", value, -(1 << 31), (1 << 31) - 1)
        return Request(Op.WRITE_WEIGHT,
                       bytes([Op.WRITE_WEIGHT]) + _addr(addr) + struct.pack("<i", value),
                       REPLY_LENGTH[Op.WRITE_WEIGHT])

    @staticmethod
    def weight_count_request():
        return Request(Op.WEIGHT_COUNT, bytes([Op.WEIGHT_COUNT]),
                       REPLY_LENGTH[Op.WEIGHT_COUNT])

    # Transactions ---------------------------------------------------------------

    def _read(self, n):
        data = bytes(self._port.read(n))
        if len(data) != n:
            raise HostError(f"timed out: expected {n} bytes, got {len(data)}")
        return data

    def transact(self, request):
        """Send one request, wait for its reply and decode it."""
        self._port.write(request.payload)
        return request.decode(self._read(request.reply_length))

    def push_words(self, words):
        """Send 16-bit words to the core's sample stream, in FIFO-sized commands."""
        words = list(words)
        for start in range(0, len(words), MAX_SAMPLE_WORDS):
            self.transact(self.sample_request(words[start:start + MAX_SAMPLE_WORDS]))

    def push_sample(self, label, sample):
        """Send one training sample: its label, then its ``(C, H, W)`` pixels in stream
        order (:func:`~fpdeep.rtl.rowlink.map_words`: row by row, channels in turn)."""
        self.push_words([label, *map_words(sample)])

    def counters(self, *, loss=True):
        return self.transact(self.counters_request(loss=loss))

    def weight_count(self):
        return self.transact(self.weight_count_request())

    def read_weight(self, addr):
        return self.transact(self.read_weight_request(addr))

    def write_weight(self, addr, value):
        self.transact(self.write_weight_request(addr, value))

    def read_weights(self, start=0, count=None):
        """Read ``count`` consecutive weights, pipelining FIFO-sized groups of requests."""
        if count is None:
            count = self.weight_count() - start
        values = []
        group = RX_FIFO_DEPTH // 4  # READ_WEIGHT is 4 bytes long
        for first in range(start, start + count, group):
            requests = [self.read_weight_request(a)
                        for a in range(first, min(first + group, start + count))]
            self._port.write(b"".join(r.payload for r in requests))
            for request in requests:
                values.append(request.decode(self._read(request.reply_length)))
        return values

    def write_weights(self, values, start=0):
        """Write consecutive weights, pipelining FIFO-sized groups of requests."""
        values = list(values)
        group = RX_FIFO_DEPTH // 8  # WRITE_WEIGHT is 8 bytes long
        for first in range(0, len(values), group):
            requests = [self.write_weight_request(start + i, values[i])
                        for i in range(first, min(first + group, len(values)))]
            self._port.write(b"".join(r.payload for r in requests))
            for request in requests:
                request.decode(self._read(request.reply_length))
