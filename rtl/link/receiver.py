"""Link receiver: deframing, CRC check, sequence filtering and in-order delivery."""

import enum

from amaranth import *
from amaranth.lib import wiring, stream, memory, crc
from amaranth.lib.wiring import In, Out

from .frame import FrameKind, LinkConfig
from .channels import ReceiveBuffers
from .transmitter import PeerState

__all__ = ["LinkReceiver"]


class LinkReceiver(wiring.Component):
    """One chip's receiver on one link: from PHY symbols to checked, in-order words.

    The receive buffer (a ``Memory`` of ``replay_slots`` frames of ``max_payload``
    words, each tagged with its VC) has one slot per sequence number of the window, slot
    = sequence number modulo ``replay_slots``, as in the sender's replay buffer. Payload
    words are written speculatively into their frame's slot while it arrives, but only
    into a slot that holds no good frame yet, so a bad copy never overwrites a good one.
    The frame is good if its burst length matches its header, the CRC matches and an
    idle follows; then the slot is marked *held*.

    - The ACK (``ack``) is the first sequence number not held: every frame before it
      has arrived. Held frames before it drain to ``o`` in sequence order, one word per
      cycle, and free their slot once drained.
    - With selective repeat a good frame ahead of the ACK (within the window, with its
      slot free) is kept too, and ``sack`` names the last good frame held: the sender
      resends only what is missing. Each bad frame requests a NAK, for a loss that no
      later frame's SACK can reveal. With go-back-N only the frame the ACK names is kept;
      a bad frame or one from the future is dropped and one NAK is requested until an
      in-order frame arrives again (PCIe's NAK_SCHEDULED), or until ``replay_timeout //
      2`` cycles pass with frames still bad or ahead, which means the replay was hit too.
    - A good frame behind the ACK, or one already held, is a duplicate from a replay: it
      is dropped and the ACK repeated (``ack_now``).

    The ACK/NAK/SACK/credit fields of every good frame, DATA or CTRL, duplicate or not,
    go to the local transmitter through ``peer``.

    Parameters
    ----------
    config : LinkConfig
        Link parameters, shared with the peer.

    Members
    -------
    i : In(stream.Signature(word_width, always_ready=True))
        PHY symbols; ``valid`` low is an idle.
    o : Out(stream.Signature(ReceiveBuffers.entry_layout(vcs, word_width)))
        Checked words with their VC, in sequence order.
    ack : Out(seq_width)
        Next sequence number expected; every frame before it has arrived.
    sack : Out(seq_width)
        Selective repeat: the last good DATA frame held (or delivered).
    ack_now : Out(1)
        Pulse: a duplicate arrived, so the peer should hear our ACK again.
    nak : Out(1)
        Pulse: a frame was lost or bad. Go-back-N: the peer should replay. Selective
        repeat: the peer should resend its frames that no later frame can show lost.
    peer : Out(PeerState(config))
        Link state from the last good frame...
    peer_valid : Out(1)
        ...pulsed for one cycle per good frame.
    fcs_checked : Out(1)
        Pulse: a frame's burst ended where its header said, and its CRC was compared...
    fcs_ok : Out(1)
        ...and matched (for formal checks, which assume that a corrupted frame fails).
    frames : Out(16)
        Good frames received, wrapping.
    bad_frames : Out(16)
        Frames dropped for CRC, length or framing errors, wrapping.
    duplicates : Out(16)
        Good DATA frames dropped as duplicates, wrapping.

    A frame's words start leaving ``o`` two cycles after its trailing idle, one word
    per cycle while ``o`` is ready, once the frames before it have.
    """

    def __init__(self, config, *, _remove=()):
        if not isinstance(config, LinkConfig):
            raise TypeError(f"config must be a LinkConfig, not {config!r}")
        # For mutation tests only (tests/rtl/link/test_link_formal.py): mechanisms to
        # leave out, to show that a proof fails without them.
        unknown = set(_remove) - {"duplicate_drop", "crc_check"}
        if unknown:
            raise ValueError(f"_remove: unknown mechanisms {sorted(unknown)}")
        self._cfg = config
        self._remove = frozenset(_remove)
        c = config
        super().__init__({
            "i": In(stream.Signature(c.word_width, always_ready=True)),
            "o": Out(stream.Signature(ReceiveBuffers.entry_layout(c.vcs, c.word_width))),
            "ack": Out(c.seq_width),
            "sack": Out(c.seq_width),
            "ack_now": Out(1),
            "nak": Out(1),
            "peer": Out(PeerState(c)),
            "peer_valid": Out(1),
            "fcs_checked": Out(1),
            "fcs_ok": Out(1),
            "frames": Out(16),
            "bad_frames": Out(16),
            "duplicates": Out(16),
        })
        #: Internal signals by name (after elaboration), for waveforms (:mod:`fpdeep.sim.waves`).
        self.trace_signals = None

    def elaborate(self, platform):
        m = Module()
        c = self._cfg
        W, S, H, T = c.word_width, c.seq_width, c.header_symbols, c.trailer_symbols
        slots = c.replay_slots
        slot_bits = (slots - 1).bit_length()
        word_bits = (c.max_payload - 1).bit_length()

        def slot_of(seq):
            return seq[:slot_bits] if slot_bits else C(0, 0)

        def address(slot, index):
            return Cat(index[:word_bits], slot)

        # ---- receive buffer -------------------------------------------------------------
        entry = ReceiveBuffers.entry_layout(c.vcs, W)
        m.submodules.buffer = buffer = memory.Memory(shape=entry, depth=c.ring_depth, init=[])
        buf_w = buffer.write_port()
        buf_r = buffer.read_port()
        m.submodules.lengths = lengths = memory.Memory(
            shape=unsigned(c.len_width), depth=slots, init=[])
        len_w = lengths.write_port()
        len_r = lengths.read_port(domain="comb")

        expected = Signal(S)        # the ACK: first sequence number not held
        drain_seq = Signal(S)       # the frame draining to `o`; frames before it are gone
        drain_idx = Signal(range(c.max_payload))
        held = Signal(slots)        # slot holds a good frame not yet drained
        # The SACK. It starts one behind the ACK, naming no frame: 0 would claim frame 0.
        newest = Signal(S, init=(1 << S) - 1)

        # Drain held frames before the ACK to `o`; the read port holds its data while
        # `o` stalls.
        advance = ~self.o.valid | self.o.ready
        has_word = drain_seq != expected
        drain_last = drain_idx == len_r.data - 1
        m.d.comb += [
            len_r.addr.eq(slot_of(drain_seq)),
            buf_r.addr.eq(address(slot_of(drain_seq), drain_idx)),
            buf_r.en.eq(advance),
            self.o.payload.eq(buf_r.data),
        ]
        drained = Signal()          # the last word of frame drain_seq leaves the buffer
        with m.If(advance):
            m.d.sync += self.o.valid.eq(has_word)
            with m.If(has_word):
                with m.If(drain_last):
                    m.d.comb += drained.eq(1)
                    m.d.sync += [drain_idx.eq(0), drain_seq.eq(drain_seq + 1)]
                with m.Else():
                    m.d.sync += drain_idx.eq(drain_idx + 1)

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
        writable = Signal()                      # DATA frame whose slot may take it
        takes_ack = Signal()                     # ...and it is the one expected next
        write_slot = Signal(max(1, slot_bits))
        crc_ok = Signal()

        m.submodules.crc = crc_chk = crc.Processor(c.crc(W))
        crc_bits = Signal(T * W)
        m.d.comb += [
            crc_bits.eq(crc_chk.crc),
            crc_chk.data.eq(sym),
        ]

        bad = Signal()      # this cycle ends a frame as bad
        good = Signal()     # this cycle ends a frame as good

        # Where a DATA frame with sequence number `seq` stands against the window.
        def classify(seq):
            behind = (expected - seq)[:S]        # 1..slots: a duplicate
            duplicate = (behind != 0) & (behind <= slots)
            # Its slot is its own if no frame `slots` or more before it is still held.
            in_reach = (seq - drain_seq)[:S] < slots
            arrived = ~duplicate & in_reach & held.bit_select(slot_of(seq), 1)
            return duplicate, in_reach, arrived

        def after_header(hdr):
            # Decide, from the complete header, how the frame continues.
            is_data = hdr.kind == FrameKind.DATA
            length_ok = Mux(is_data, (hdr.length != 0) & (hdr.length <= c.max_payload),
                            hdr.length == 0)
            duplicate, in_reach, arrived = classify(hdr.seq)
            in_order = hdr.seq == expected
            if c.selective:
                accept = ~duplicate & in_reach & ~arrived
            else:
                accept = in_order & in_reach
            slot = slot_of(hdr.seq)
            if "duplicate_drop" in self._remove:
                # Mutant: a duplicate is taken for the frame expected next.
                reach = (expected - drain_seq)[:S] < slots
                retake = duplicate & reach & ~held.bit_select(slot_of(expected), 1)
                accept, in_order = accept | retake, in_order | retake
                slot = Mux(duplicate, slot_of(expected), slot)
            m.d.sync += [
                header.eq(hdr), idx.eq(0), crc_ok.eq(1),
                writable.eq(is_data & accept), write_slot.eq(slot),
                takes_ack.eq(in_order),
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
                        buf_w.addr.eq(address(write_slot[:slot_bits], idx)),
                        buf_w.data.vc.eq(header.vc),
                        buf_w.data.word.eq(sym),
                        buf_w.en.eq(writable),
                    ]
                    m.d.sync += idx.eq(idx + 1)
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
                    m.d.comb += [self.fcs_checked.eq(1), self.fcs_ok.eq(crc_ok)]
                    if "crc_check" in self._remove:
                        m.d.comb += good.eq(1)          # mutant: the CRC is ignored
                    else:
                        m.d.comb += [good.eq(crc_ok), bad.eq(~crc_ok)]
                    m.d.sync += state.eq(State.IDLE)
            with m.Case(State.DROP):
                with m.If(~self.i.valid):
                    m.d.sync += state.eq(State.IDLE)

        # ---- sequence filter ------------------------------------------------------------
        duplicate, _, arrived = classify(header.seq)
        m.d.comb += [
            self.ack.eq(expected),
            self.sack.eq(newest),
            self.peer.ack.eq(header.ack),
            self.peer.credit_vc.eq(header.credit_vc),
            self.peer.credit.eq(header.credit),
            self.peer_valid.eq(good),
        ]
        m.d.comb += self.peer.nak.eq(header.nak)
        if c.selective:
            m.d.comb += self.peer.sack.eq(header.sack)

        nak_scheduled = Signal()
        schedule_nak = Signal()
        hold = Signal()             # the frame just checked goes into its slot
        with m.If(good):
            m.d.sync += self.frames.eq(self.frames + 1)
            with m.If(header.kind == FrameKind.DATA):
                with m.If(writable):
                    m.d.comb += hold.eq(1)
                    m.d.sync += newest.eq(header.seq)
                with m.Elif(duplicate | arrived):
                    m.d.comb += self.ack_now.eq(1)
                    m.d.sync += self.duplicates.eq(self.duplicates + 1)
                    if c.selective:
                        with m.If(arrived):
                            m.d.sync += newest.eq(header.seq)
                with m.Else():
                    m.d.comb += schedule_nak.eq(1)      # from the future, or no room
        m.d.comb += [
            len_w.addr.eq(write_slot[:slot_bits]),
            len_w.data.eq(header.length),
            len_w.en.eq(hold),
        ]
        # The ACK moves past the frame expected when it arrives, and then past frames
        # that arrived ahead of it, one a cycle.
        catch_up = held.bit_select(slot_of(expected), 1) & ((expected - drain_seq)[:S] < slots)
        with m.If((hold & takes_ack) | catch_up):
            m.d.sync += expected.eq(expected + 1)
        with m.If(hold & takes_ack):
            m.d.sync += nak_scheduled.eq(0)
        for k in range(slots):
            with m.If(drained & (slot_of(drain_seq) == k)):
                m.d.sync += held[k].eq(0)
            with m.If(hold & (write_slot[:slot_bits] == k)):
                m.d.sync += held[k].eq(1)

        with m.If(bad):
            m.d.sync += self.bad_frames.eq(self.bad_frames + 1)
            m.d.comb += schedule_nak.eq(1)
        if c.selective:
            # Every bad frame: the sender resends only frames no later frame can reveal
            # as lost, so a NAK that was not needed costs at most those.
            m.d.comb += self.nak.eq(schedule_nak)
        else:
            # One NAK per loss, as in PCIe; but if the replay itself is hit (frames still
            # bad or ahead half a replay timeout later) NAK again rather than wait it out.
            nak_age = Signal(range(c.replay_timeout // 2 + 1))
            with m.If(nak_scheduled & (nak_age != c.replay_timeout // 2)):
                m.d.sync += nak_age.eq(nak_age + 1)
            with m.If(schedule_nak & (~nak_scheduled | (nak_age == c.replay_timeout // 2))):
                m.d.comb += self.nak.eq(1)
                m.d.sync += [nak_scheduled.eq(1), nak_age.eq(0)]

        # Internal state, for the formal checks (tests/rtl/link/test_link_formal.py), which
        # elaborate this component themselves to reach it. Not an interface.
        self._probe = dict(expected=expected, drain_seq=drain_seq, drain_idx=drain_idx,
                           held=held, buffer=buffer, lengths=lengths, state=state, idx=idx,
                           header=header, writable=writable, write_slot=write_slot,
                           takes_ack=takes_ack)
        self.trace_signals = dict(good=good, bad=bad, header=header, expected=expected,
                                  schedule_nak=schedule_nak)
        return m
