"""The UART host protocol, defined once, in pure Python (no Amaranth).

:class:`fpdeep.rtl.host.HostBridge` implements the device side of it, and
:class:`fpdeep.platforms.host_client.HostClient` the host side.

Protocol
--------
Every multi-byte field is little-endian. The host sends one command and, except
for the pipelined helpers below, waits for its reply before sending the next.
Every command has exactly one reply, of a fixed length per command.

============ ============================== ===================================
command      host -> device                 device -> host
============ ============================== ===================================
SAMPLE       ``01 n:u16 n*(word:s16)``      ``81`` once all n words are taken
COUNTERS     ``02``                         ``82 samples:u32 correct:u32
                                            batches:u32 saturations:u32
                                            status:u8`` (18 bytes)
READ_WEIGHT  ``03 addr:u24``                ``83 value:s32`` (5 bytes)
WRITE_WEIGHT ``04 addr:u24 value:s32``      ``84`` after the write
WEIGHT_COUNT ``05``                         ``85 count:u24`` (4 bytes)
COUNTERS_    ``06``                         ``86 samples:u32 correct:u32
LOSS                                        batches:u32 saturations:u32
                                            loss_sum:u32 status:u8``
                                            (22 bytes)
(other)      ``xx``                         ``FE xx``: unknown command, ignored
============ ============================== ===================================

COUNTERS_LOSS is COUNTERS with the loss counter added; COUNTERS stays as it was,
so that hosts written before the loss counter keep working. ``loss_sum`` is the
saturating sum of the per-sample softmax cross-entropies, in bits, with
:data:`fpdeep.rtl.numerics.LOSS_FRAC` (8) fraction bits: the mean loss of ``n``
samples is ``loss_sum / 256 / n`` bits, or that times ``ln 2`` in nats. It
stops at ``2**32 - 1`` (16.7 million bits) rather than wrap.

A weight command that cannot be served replies with an error status in place of
the ``8x`` byte, followed by zeros to the command's reply length:

* ``FB``: the core is busy (weights are only accessed while ``busy`` is low);
* ``FD``: the address is not below the core's ``weight_count``.

``status`` in both counters replies: bit 0 is the core's ``busy``; bit 1 is set if a
received byte was lost (UART overrun or framing error) and bit 2 if an unknown
command byte arrived, both since the previous counters command (of either kind),
which clears them.

Flow control: a UART receiver cannot stall the sender, so the device buffers
received bytes in a FIFO of :data:`RX_FIFO_DEPTH` bytes. The host keeps at most
that many bytes in flight: a SAMPLE command carries at most
:data:`MAX_SAMPLE_WORDS` words, and the host waits for its ``81`` before sending
more. The core may take the words as slowly as it likes.
"""

import enum

__all__ = ["Op", "Status", "RX_FIFO_DEPTH", "MAX_SAMPLE_WORDS", "REPLY_LENGTH", "STATUS_BUSY",
           "STATUS_RX_ERROR", "STATUS_BAD_COMMAND"]


class Op(enum.IntEnum):
    """Command bytes, host to device."""
    SAMPLE = 0x01
    COUNTERS = 0x02
    READ_WEIGHT = 0x03
    WRITE_WEIGHT = 0x04
    WEIGHT_COUNT = 0x05
    COUNTERS_LOSS = 0x06


class Status(enum.IntEnum):
    """First byte of every reply: ``0x80 | op`` on success, or an error."""
    BUSY = 0xFB
    BAD_ADDRESS = 0xFD
    BAD_COMMAND = 0xFE

    @staticmethod
    def ok(op):
        return 0x80 | int(op)


#: Reply length in bytes, status byte included, for each command.
REPLY_LENGTH = {
    Op.SAMPLE: 1,
    Op.COUNTERS: 18,
    Op.READ_WEIGHT: 5,
    Op.WRITE_WEIGHT: 1,
    Op.WEIGHT_COUNT: 4,
    Op.COUNTERS_LOSS: 22,
}

#: Bytes the device can buffer between the UART receiver and the command parser.
RX_FIFO_DEPTH = 64
#: Most 16-bit words in one SAMPLE command, so that the command fits the FIFO.
MAX_SAMPLE_WORDS = (RX_FIFO_DEPTH - 3) // 2

STATUS_BUSY = 1 << 0
STATUS_RX_ERROR = 1 << 1
STATUS_BAD_COMMAND = 1 << 2
