"""Link-layer frame format and the parameters both ends of a link must agree on.

A frame on the wire is a burst of consecutive valid PHY symbols, followed by at
least one idle symbol::

    | header (header_symbols) | payload (0..max_payload words) | CRC (trailer_symbols) | idle |

- One symbol carries one payload word, so the PHY is ``word_width`` bits wide.
- The header (:meth:`LinkConfig.header_layout`) is packed little-endian into
  ``header_symbols`` symbols, symbol 0 holding the low bits.
- The CRC covers header and payload. The receiver recomputes it and compares it with
  the trailer, symbol by symbol, low bits first.
- The idle after each frame is what delimits frames. A receiver that finds the burst
  length disagreeing with the header's ``length`` drops the frame, so a corrupted
  length can never misalign the frames after it.

Every frame, DATA or CTRL, carries the sender's link state for the opposite direction:
the cumulative ACK (next sequence number expected), the cumulative count of words
freed in one virtual channel's receive FIFO, and, by retransmission scheme:

- selective repeat (the default): the *SACK*, the sequence number of the last good DATA
  frame the receiver holds, which tells the sender that the frame arrived and that any
  frame sent before it and still missing was lost; and a NAK, which says a bad frame
  arrived, so that a lost frame with no later one behind it need not wait for the
  replay timeout;
- go-back-N: a one-shot NAK.

ACK, SACK and credit are absolute values, so a lost control frame loses nothing that a
later frame does not repeat.
"""

import enum
import math

from amaranth import *
from amaranth.lib import data
from amaranth.lib.crc import Algorithm, catalog

__all__ = ["FrameKind", "Retransmit", "LinkConfig"]


class FrameKind(enum.IntEnum):
    """What a frame carries."""
    #: Payload words for one virtual channel, with a sequence number; replayed until ACKed.
    DATA = 0
    #: No payload and no sequence number: only ACK/NAK/credit state. Never replayed.
    CTRL = 1


class Retransmit(enum.Enum):
    """How a transmitter repairs a lost frame."""
    #: Resend only the frames that were lost; the receiver keeps good frames that
    #: arrive after a gap and delivers them in order once the gap is filled.
    SELECTIVE = "selective"
    #: Resend everything not yet acknowledged (PCIe); the receiver keeps only the
    #: frame it expects next.
    GO_BACK_N = "go-back-n"


def _check_int(name, value, minimum):
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, not {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, not {value}")


def _check_pow2(name, value):
    _check_int(name, value, 1)
    if value & (value - 1):
        raise ValueError(f"{name} must be a power of two, not {value}")


class LinkConfig:
    """Parameters of one link, identical on both of its ends.

    Parameters
    ----------
    word_width : int
        Payload word width in bits, also the PHY symbol width. Default 16, the
        fixed-point activation width.
    vcs : int
        Number of virtual channels (at least 1; the chip uses 4, see
        :class:`~fpdeep.rtl.link.channels.VirtualChannel`).
    max_payload : int
        Most payload words in one frame; a power of two. Longer frames cost less header
        and trailer per word, shorter ones lose less to each bit error.
    replay_slots : int
        Frames held in the replay buffer awaiting ACK (the window); a power of two.
        The receiver holds as many frames for reordering.
    seq_width : int or None
        Sequence number width in bits; default ``log2(replay_slots) + 1``. The
        sequence space must hold two windows (``2**seq_width >= 2 * replay_slots``), so
        that a frame behind the expected one (a duplicate) can always be told from one
        ahead of it.
    rx_depth : int
        Receive FIFO depth per virtual channel, in words: the sender's credits per
        channel, at least 2 and at least ``max_payload``. To keep one channel at full
        rate it should cover the credit round trip (about three frame times plus twice
        the PHY latency).
    retransmit : Retransmit or str
        ``"selective"`` (default) or ``"go-back-n"``; see :class:`Retransmit`.
    crc : amaranth.lib.crc.Algorithm
        Frame check sequence. Default CRC-32 (Ethernet), like PCIe's LCRC.
    replay_timeout : int
        Cycles without ACK progress, while frames are unacknowledged, before the
        transmitter replays everything not yet acknowledged. It must exceed the ACK
        round trip (about two frame times plus twice the PHY latency) or replays fire
        needlessly; the receiver re-sends a NAK after half of it if a replay was hit.
    refresh_interval : int
        Cycles of silence after which a transmitter sends a CTRL frame anyway, so that
        a lost ACK or credit update is repeated. Must be below ``replay_timeout``.
    cc_interval : int or None
        Clock compensation for a PHY between independent oscillators
        (:class:`~fpdeep.rtl.link.board_phy.BoardPhy`): the transmitter sends two idles in
        a row at least once every ``cc_interval`` cycles, so that a receiver whose clock
        is slower can drop one idle without merging two frames. ``None`` (default): no
        such guarantee, for :class:`~fpdeep.rtl.link.phy.SimPhy` on one clock.

    Raises
    ------
    TypeError, ValueError
        Naming the offending parameter.
    """

    def __init__(self, *, word_width=16, vcs=4, max_payload=16, replay_slots=8, seq_width=None,
                 rx_depth=64, crc=catalog.CRC32_ETHERNET, replay_timeout=128,
                 refresh_interval=64, retransmit=Retransmit.SELECTIVE, cc_interval=None):
        _check_int("word_width", word_width, 1)
        _check_int("vcs", vcs, 1)
        _check_pow2("max_payload", max_payload)
        _check_pow2("replay_slots", replay_slots)
        if seq_width is None:
            seq_width = replay_slots.bit_length()           # log2(slots) + 1
        _check_int("seq_width", seq_width, 1)
        if 2 * replay_slots > 1 << seq_width:
            raise ValueError(f"replay_slots ({replay_slots}) must be at most half the sequence "
                             f"space (2**seq_width = {1 << seq_width}), or a duplicate cannot "
                             f"be told from a new frame")
        _check_int("rx_depth", rx_depth, -1 << 64)
        if rx_depth < 2:
            raise ValueError(f"rx_depth must be at least 2, not {rx_depth}: it is the sender's "
                             f"credits per VC" + (", and with none nothing can be sent"
                                                  if rx_depth < 1 else ""))
        if max_payload > rx_depth:
            raise ValueError(f"max_payload ({max_payload}) must not exceed rx_depth "
                             f"({rx_depth}): a frame must fit the receive buffer")
        try:
            retransmit = Retransmit(retransmit)
        except ValueError:
            raise ValueError(f"retransmit must be one of "
                             f"{[r.value for r in Retransmit]}, not {retransmit!r}") from None
        if not isinstance(crc, Algorithm):
            raise TypeError(f"crc must be an amaranth.lib.crc.Algorithm, not {crc!r}")
        _check_int("refresh_interval", refresh_interval, 1)
        _check_int("replay_timeout", replay_timeout, 2)
        if replay_timeout <= refresh_interval:
            raise ValueError(f"replay_timeout ({replay_timeout}) must exceed "
                             f"refresh_interval ({refresh_interval})")
        if cc_interval is not None:
            _check_int("cc_interval", cc_interval, 2)
        self.word_width = word_width
        self.cc_interval = cc_interval
        self.vcs = vcs
        self.max_payload = max_payload
        self.replay_slots = replay_slots
        self.rx_depth = rx_depth
        self.crc = crc
        self.replay_timeout = replay_timeout
        self.refresh_interval = refresh_interval
        self.retransmit = retransmit

        self.seq_width = seq_width
        self.vc_width = max(1, (vcs - 1).bit_length())
        self.len_width = max_payload.bit_length()
        self.credit_width = rx_depth.bit_length()           # 2**credit_width > rx_depth
        self.header_symbols = math.ceil(self.header_layout.size / word_width)
        self.trailer_symbols = math.ceil(crc.crc_width / word_width)

    @property
    def selective(self):
        """Whether the link repairs losses by selective repeat."""
        return self.retransmit is Retransmit.SELECTIVE

    @property
    def header_layout(self):
        """``data.StructLayout`` of a frame header.

        With the defaults it is 30 bits (selective repeat) or 26 (go-back-N): two
        16-bit symbols either way."""
        fields = {
            "kind":      FrameKind,
            "vc":        unsigned(self.vc_width),
            "seq":       unsigned(self.seq_width),
            "length":    unsigned(self.len_width),
            "ack":       unsigned(self.seq_width),    # next sequence number expected
        }
        if self.selective:
            fields["sack"] = unsigned(self.seq_width) # last good DATA frame held
        # Go-back-N: replay from `ack`, please. Selective repeat: a frame was bad, so a
        # frame that no later one can reveal as lost (a tail frame) may need resending.
        fields["nak"] = unsigned(1)
        fields["credit_vc"] = unsigned(self.vc_width)
        fields["credit"] = unsigned(self.credit_width) # words freed in that VC, mod 2**credit_width
        return data.StructLayout(fields)

    @property
    def ring_depth(self):
        """Receiver buffer depth in words: one frame per replay slot."""
        return self.replay_slots * self.max_payload

    def frame_symbols(self, length):
        """Symbols a frame with ``length`` payload words occupies on the wire, idle included."""
        return self.header_symbols + length + self.trailer_symbols + 1

    def efficiency(self):
        """Payload words per wire cycle with full frames and no errors: the framing bound."""
        return self.max_payload / self.frame_symbols(self.max_payload)

    def frame_survival(self, ber):
        """Chance that a full frame arrives intact when each bit flips with probability
        ``ber``, independently: ``(1 - ber)`` to the power of its header, payload and CRC
        bits (the idle after it carries no bits that matter)."""
        bits = (self.frame_symbols(self.max_payload) - 1) * self.word_width
        return (1 - ber) ** bits

    def limit(self, ber):
        """The most payload words per wire cycle that any retransmission scheme can carry
        with full frames at bit-error rate ``ber``: each frame is sent until a copy
        arrives intact, so ``efficiency() * frame_survival(ber)``. Selective repeat aims
        at it; go-back-N also resends the good frames after a lost one."""
        return self.efficiency() * self.frame_survival(ber)

    def __repr__(self):
        return (f"LinkConfig(word_width={self.word_width}, vcs={self.vcs}, "
                f"max_payload={self.max_payload}, replay_slots={self.replay_slots}, "
                f"rx_depth={self.rx_depth})")
