"""Link receiver: deframing, CRC check, sequence filtering and in-order delivery."""

import enum

from amaranth import *
from amaranth.lib import wiring, stream, data, memory, crc
from amaranth.lib.wiring import In, Out

from .frame import FrameKind, LinkConfig
from .channels import ReceiveBuffers
from .transmitter import PeerState

__all__ = ["LinkReceiver"]


class LinkReceiver(wiring.Component):
    """One chip's receiver on one link: from PHY symbols to checked, in-order words.

    Payload words are written speculatively into a staging ring (a ``Memory`` of
    ``2 * max_payload`` words tagged with their VC) while the frame arrives. The frame
    is good if its burst length matches its header, the CRC matches and an idle follows.
    Only a good DATA frame carrying the expected sequence number is *committed*: the
    ring's commit pointer moves past it and the words drain to ``o`` in order. A good
    frame with an older sequence number is a duplicate from a replay and is dropped
    (and the ACK repeated); a bad frame or one from the future is dropped and one NAK is
    requested until an in-order frame arrives again (PCIe's NAK_SCHEDULED), or until
    ``replay_timeout // 2`` cycles pass with frames still bad or ahead, which means the
    replay was hit too.

    The ACK/NAK/credit fields of every good frame, DATA or CTRL, duplicate or not, go to
    the local transmitter through ``peer``.

    Parameters
    ----------
    config : LinkConfig
        Link parameters, shared with the peer.

    Members
    -------
    i : In(stream.Signature(word_width, always_ready=True))
        PHY symbols; ``valid`` low is an idle.
    o : Out(stream.Signature(ReceiveBuffers.entry_layout(vcs, word_width)))
        Committed words with their VC, in sequence order.
    ack : Out(seq_width)
        Next sequence number expected; every word before it has been committed.
    ack_now : Out(1)
        Pulse: a duplicate arrived, so the peer should hear our ACK again.
    nak : Out(1)
        Pulse: a frame was lost or bad; the peer should replay.
    peer : Out(PeerState(config))
        Link state from the last good frame...
    peer_valid : Out(1)
        ...pulsed for one cycle per good frame.
    frames : Out(16)
        Good frames received, wrapping.
    bad_frames : Out(16)
        Frames dropped for CRC, length or framing errors, wrapping.
    duplicates : Out(16)
        Good DATA frames dropped as duplicates, wrapping.

    A frame's words start leaving ``o`` two cycles after its trailing idle, one word
    per cycle while ``o`` is ready.
    """

    def __init__(self, config):
        if not isinstance(config, LinkConfig):
            raise TypeError(f"config must be a LinkConfig, not {config!r}")
        self._cfg = config
        c = config
        super().__init__({
            "i": In(stream.Signature(c.word_width, always_ready=True)),
            "o": Out(stream.Signature(ReceiveBuffers.entry_layout(c.vcs, c.word_width))),
            "ack": Out(c.seq_width),
            "ack_now": Out(1),
            "nak": Out(1),
            "peer": Out(PeerState(c)),
            "peer_valid": Out(1),
            "frames": Out(16),
            "bad_frames": Out(16),
            "duplicates": Out(16),
        })

    def elaborate(self, platform):
        m = Module()
        c = self._cfg
        W, S, H, T = c.word_width, c.seq_width, c.header_symbols, c.trailer_symbols
        depth = c.ring_depth
        abits = (depth - 1).bit_length()

        # ---- staging ring -------------------------------------------------------------
        entry = ReceiveBuffers.entry_layout(c.vcs, W)
        m.submodules.ring = ring = memory.Memory(shape=entry, depth=depth, init=[])
        ring_w = ring.write_port()
        ring_r = ring.read_port()
        # Pointers carry one extra bit so that full and empty differ.
        wr_ptr = Signal(abits + 1)
        commit_ptr = Signal(abits + 1)
        rd_ptr = Signal(abits + 1)

        # Drain committed words to `o`; the read port holds its data while `o` stalls.
        advance = ~self.o.valid | self.o.ready
        has_word = rd_ptr != commit_ptr
        m.d.comb += [
            ring_r.addr.eq(rd_ptr[:abits]),
            ring_r.en.eq(advance),
            self.o.payload.eq(ring_r.data),
        ]
        with m.If(advance):
            m.d.sync += self.o.valid.eq(has_word)
            with m.If(has_word):
                m.d.sync += rd_ptr.eq(rd_ptr + 1)

        # ---- deframer -----------------------------------------------------------------
        class State(enum.Enum):
            IDLE = 0
            HDR = 1
            PAY = 2
            TRL = 3
            END = 4
            DROP = 5

        state = Signal(State)
        idx = Signal(range(max(H, c.max_payload, T) + 1))
        sym = self.i.payload
        hdr_lo = Signal(max(1, (H - 1) * W))     # header symbols before the last
        header = Signal(c.header_layout)         # whole header, latched after the last
        header_now = Signal(c.header_layout)     # ...and as it stands at the last symbol
        m.d.comb += header_now.eq(Cat(hdr_lo[:(H - 1) * W], sym) if H > 1 else sym)
        writable = Signal()                      # DATA frame with room in the ring
        crc_ok = Signal()

        m.submodules.crc = crc_chk = crc.Processor(c.crc(W))
        crc_bits = Signal(T * W)
        m.d.comb += [
            crc_bits.eq(crc_chk.crc),
            crc_chk.data.eq(sym),
        ]

        bad = Signal()      # this cycle ends a frame as bad
        good = Signal()     # this cycle ends a frame as good

        def after_header(hdr):
            # Decide, from the complete header, how the frame continues.
            is_data = hdr.kind == FrameKind.DATA
            length_ok = Mux(is_data, (hdr.length != 0) & (hdr.length <= c.max_payload),
                            hdr.length == 0)
            room = (depth - (commit_ptr - rd_ptr)[:abits + 1]) >= hdr.length
            m.d.sync += [
                header.eq(hdr), idx.eq(0), crc_ok.eq(1),
                wr_ptr.eq(commit_ptr),
                writable.eq(is_data & room),
            ]
            with m.If(~length_ok):
                m.d.comb += bad.eq(1)
                m.d.sync += state.eq(State.DROP)
            with m.Elif(hdr.length == 0):
                m.d.sync += state.eq(State.TRL)
            with m.Else():
                m.d.sync += state.eq(State.PAY)

        with m.Switch(state):
            with m.Case(State.IDLE):
                with m.If(self.i.valid):
                    m.d.comb += [crc_chk.start.eq(1), crc_chk.valid.eq(1)]
                    if H == 1:
                        after_header(header_now)
                    else:
                        m.d.sync += [hdr_lo[:W].eq(sym), idx.eq(1), state.eq(State.HDR)]
            with m.Case(State.HDR):
                with m.If(~self.i.valid):
                    m.d.comb += bad.eq(1)
                    m.d.sync += state.eq(State.IDLE)
                with m.Else():
                    m.d.comb += crc_chk.valid.eq(1)
                    with m.If(idx == H - 1):
                        after_header(header_now)
                    with m.Else():
                        m.d.sync += [hdr_lo.word_select(idx, W).eq(sym), idx.eq(idx + 1)]
            with m.Case(State.PAY):
                with m.If(~self.i.valid):
                    m.d.comb += bad.eq(1)
                    m.d.sync += state.eq(State.IDLE)
                with m.Else():
                    m.d.comb += [
                        crc_chk.valid.eq(1),
                        ring_w.addr.eq(wr_ptr[:abits]),
                        ring_w.data.vc.eq(header.vc),
                        ring_w.data.word.eq(sym),
                        ring_w.en.eq(writable),
                    ]
                    m.d.sync += [wr_ptr.eq(wr_ptr + 1), idx.eq(idx + 1)]
                    with m.If(idx == header.length - 1):
                        m.d.sync += [idx.eq(0), state.eq(State.TRL)]
            with m.Case(State.TRL):
                with m.If(~self.i.valid):
                    m.d.comb += bad.eq(1)
                    m.d.sync += state.eq(State.IDLE)
                with m.Else():
                    with m.If(sym != crc_bits.word_select(idx, W)):
                        m.d.sync += crc_ok.eq(0)
                    m.d.sync += idx.eq(idx + 1)
                    with m.If(idx == T - 1):
                        m.d.sync += state.eq(State.END)
            with m.Case(State.END):
                # The burst must end exactly here; a longer one had a corrupted length.
                with m.If(self.i.valid):
                    m.d.comb += bad.eq(1)
                    m.d.sync += state.eq(State.DROP)
                with m.Else():
                    m.d.comb += [good.eq(crc_ok), bad.eq(~crc_ok)]
                    m.d.sync += state.eq(State.IDLE)
            with m.Case(State.DROP):
                with m.If(~self.i.valid):
                    m.d.sync += state.eq(State.IDLE)

        # ---- sequence filter ------------------------------------------------------------
        expected = Signal(S)
        nak_scheduled = Signal()
        behind = Signal(S)
        m.d.comb += [
            behind.eq(expected - header.seq),
            self.ack.eq(expected),
            self.peer.ack.eq(header.ack),
            self.peer.nak.eq(header.nak),
            self.peer.credit_vc.eq(header.credit_vc),
            self.peer.credit.eq(header.credit),
            self.peer_valid.eq(good),
        ]
        schedule_nak = Signal()
        with m.If(good):
            m.d.sync += self.frames.eq(self.frames + 1)
            with m.If(header.kind == FrameKind.DATA):
                with m.If((behind == 0) & writable):
                    m.d.sync += [commit_ptr.eq(wr_ptr), expected.eq(expected + 1),
                                 nak_scheduled.eq(0)]
                with m.Elif((behind != 0) & (behind <= c.replay_slots)):
                    m.d.comb += self.ack_now.eq(1)
                    m.d.sync += self.duplicates.eq(self.duplicates + 1)
                with m.Else():
                    m.d.comb += schedule_nak.eq(1)      # from the future, or no room
        with m.If(bad):
            m.d.sync += self.bad_frames.eq(self.bad_frames + 1)
            m.d.comb += schedule_nak.eq(1)
        # One NAK per loss, as in PCIe; but if the replay itself is hit (frames still
        # bad or ahead half a replay timeout later) NAK again rather than wait it out.
        nak_age = Signal(range(c.replay_timeout // 2 + 1))
        with m.If(nak_scheduled & (nak_age != c.replay_timeout // 2)):
            m.d.sync += nak_age.eq(nak_age + 1)
        with m.If(schedule_nak & (~nak_scheduled | (nak_age == c.replay_timeout // 2))):
            m.d.comb += self.nak.eq(1)
            m.d.sync += [nak_scheduled.eq(1), nak_age.eq(0)]
        return m
