"""Link transmitter: VC arbitration, replay buffer, framing, and selective-repeat or
go-back-N retransmission."""

import enum

from amaranth import *
from amaranth.lib import wiring, stream, data, memory, crc
from amaranth.lib.wiring import In, Out

from .frame import FrameKind, LinkConfig
from .channels import RoundRobin, CreditCounter

__all__ = ["PeerState", "LinkTransmitter"]


def PeerState(config):
    """Layout of the link state a receiver decodes from one good frame for its transmitter."""
    return data.StructLayout({
        "ack": unsigned(config.seq_width),
        "nak": unsigned(1),                     # go-back-N
        "sack": unsigned(config.seq_width),     # selective repeat
        "credit_vc": unsigned(config.vc_width),
        "credit": unsigned(config.credit_width),
    })


class LinkTransmitter(wiring.Component):
    """One chip's transmitter on one link: from VC streams to PHY symbols.

    Two processes share the replay buffer (a ``Memory`` of ``replay_slots`` frames of
    ``max_payload`` words, slot = sequence number modulo ``replay_slots``):

    - The *packer* picks a VC round-robin among those with a word waiting, a credit left
      and a free slot, and copies words into the slot until the VC's stream pauses, its
      credits run out or the frame is full. It then commits the frame, which takes the
      next sequence number. Credits are spent here, once per word, so replays cost none.
    - The *framer* sends committed frames from the slot at full rate: header, payload,
      CRC, then at least one idle symbol. The ACK/NAK/credit fields are filled in at
      send time, so a replayed frame carries the current state. With no DATA frame
      pending it sends a CTRL frame when its receiver has news (ACK, NAK, freed
      credits) or when the link has been silent for ``refresh_interval`` cycles.

    A slot is freed when the peer's cumulative ACK passes it. What is resent depends on
    ``config.retransmit``:

    - *Selective repeat.* Each slot remembers ``mark``, the first frame the framer had
      not yet sent when it last sent this one. The wire keeps order, so once the peer's
      SACK names a frame at or after ``mark`` while this one is neither ACKed nor SACKed,
      this one was lost, and it is resent ahead of new frames, once, until that happens
      again. A frame with no later one sent behind it (a tail) has nothing to reveal
      its loss: when a NAK (a bad frame arrived) comes while it is a tail, it is
      resent as soon as no new frame is waiting, unless a new frame goes first (whose
      SACK will then tell). ``replay_timeout`` cycles without ACK progress while frames
      are outstanding mark every sent frame that is not SACKed as lost (the tail's
      resend was hit too, or the NAK was lost).
    - *Go-back-N.* A NAK, or the timeout, rewinds the framer to the oldest
      unacknowledged frame, as PCIe does.

    Parameters
    ----------
    config : LinkConfig
        Link parameters, shared with the peer.

    Members
    -------
    i : In(stream.Signature(word_width)).array(vcs)
        User words per VC.
    o : Out(stream.Signature(word_width, always_ready=True))
        PHY symbols; ``valid`` low sends an idle.
    rx_ack : In(seq_width)
        From the local receiver: the next sequence number it expects (our cumulative ACK).
    rx_sack : In(seq_width)
        From the local receiver: the last good DATA frame it holds (selective repeat).
    rx_ack_now : In(1)
        From the local receiver: a duplicate arrived; repeat the ACK soon.
    rx_nak : In(1)
        From the local receiver: a frame was bad or missing; send one NAK.
    rx_freed : In(data.ArrayLayout(credit_width, vcs))
        From the local receive FIFOs: words freed per VC, returned to the peer as credit.
    peer : In(PeerState(config))
        ACK/NAK/credit decoded from a good frame by the local receiver...
    peer_valid : In(1)
        ...on the cycles this is high.
    replays : Out(16)
        Go-back-N: replays started (NAK or timeout); selective repeat: frames resent
        (SACK evidence, NAK or timeout).
        Wrapping.
    timeouts : Out(16)
        Replays started by the timer, wrapping.

    Throughput: one symbol per cycle; a full frame delivers ``max_payload`` words in
    ``config.frame_symbols(max_payload)`` cycles.
    """

    def __init__(self, config, *, _remove=()):
        if not isinstance(config, LinkConfig):
            raise TypeError(f"config must be a LinkConfig, not {config!r}")
        # For mutation tests only (tests/rtl/link/test_link_formal.py).
        unknown = set(_remove) - {"replay"}
        if unknown:
            raise ValueError(f"_remove: unknown mechanisms {sorted(unknown)}")
        self._remove = frozenset(_remove)
        self._cfg = config
        c = config
        super().__init__({
            "i": In(stream.Signature(c.word_width)).array(c.vcs),
            "o": Out(stream.Signature(c.word_width, always_ready=True)),
            "rx_ack": In(c.seq_width),
            "rx_sack": In(c.seq_width),
            "rx_ack_now": In(1),
            "rx_nak": In(1),
            "rx_freed": In(data.ArrayLayout(c.credit_width, c.vcs)),
            "peer": In(PeerState(c)),
            "peer_valid": In(1),
            "replays": Out(16),
            "timeouts": Out(16),
        })
        #: Internal signals by name (after elaboration), for waveforms (:mod:`fpdeep.sim.waves`).
        self.trace_signals = None

    def elaborate(self, platform):
        m = Module()
        c = self._cfg
        W, S = c.word_width, c.seq_width
        slot_bits = (c.replay_slots - 1).bit_length()
        word_bits = (c.max_payload - 1).bit_length()

        def slot_of(seq):
            return seq[:slot_bits] if slot_bits else C(0, 0)

        # Replay buffer: payload words, and per slot the frame's VC and length.
        meta_layout = data.StructLayout({"vc": unsigned(c.vc_width), "length": unsigned(c.len_width)})
        m.submodules.replay = replay = memory.Memory(
            shape=W, depth=c.replay_slots * c.max_payload, init=[])
        m.submodules.meta = meta = memory.Memory(shape=meta_layout, depth=c.replay_slots, init=[])
        replay_w = replay.write_port()
        replay_r = replay.read_port()
        meta_w = meta.write_port()
        meta_r = meta.read_port(domain="comb")

        next_seq = Signal(S)    # sequence number of the frame being packed
        ack_ptr = Signal(S)     # oldest unacknowledged frame
        tx_ptr = Signal(S)      # next frame the framer sends
        in_flight = Signal(S)
        m.d.comb += in_flight.eq(next_seq - ack_ptr)

        # ---- packer -------------------------------------------------------------------
        m.submodules.rr = rr = RoundRobin(c.vcs)
        credit = []
        for v in range(c.vcs):
            cc = m.submodules[f"credit{v}"] = CreditCounter(depth=c.rx_depth, width=c.credit_width)
            credit.append(cc)
            m.d.comb += [
                rr.requests[v].eq(self.i[v].valid & cc.available),
                cc.update.eq(self.peer_valid & (self.peer.credit_vc == v)),
                cc.freed.eq(self.peer.credit),
            ]

        pack_vc = Signal(c.vc_width)
        pack_count = Signal(range(c.max_payload + 1))
        packing = Signal()
        slot_free = Signal()
        m.d.comb += slot_free.eq(in_flight < c.replay_slots)

        taken = Signal()        # a word moves from the selected VC this cycle
        committed = Signal()    # a frame takes sequence number next_seq this cycle
        for v in range(c.vcs):
            sel = packing & (pack_vc == v)
            m.d.comb += [
                self.i[v].ready.eq(sel & credit[v].available),
                credit[v].consume.eq(sel & credit[v].available & self.i[v].valid),
            ]
            with m.If(sel):
                m.d.comb += taken.eq(self.i[v].valid & credit[v].available)
        src = Signal(W)
        with m.Switch(pack_vc):
            for v in range(c.vcs):
                with m.Case(v):
                    m.d.comb += src.eq(self.i[v].payload)
        m.d.comb += [
            replay_w.addr.eq(Cat(pack_count[:word_bits], slot_of(next_seq))),
            replay_w.data.eq(src),
            replay_w.en.eq(taken),
        ]
        grant = Signal()        # the packer starts a frame for next_seq
        with m.If(~packing):
            m.d.comb += rr.take.eq(slot_free)
            with m.If(slot_free & rr.valid):
                m.d.comb += grant.eq(1)
                m.d.sync += [packing.eq(1), pack_vc.eq(rr.grant), pack_count.eq(0)]
        with m.Else():
            length = pack_count + taken
            with m.If(taken):
                m.d.sync += pack_count.eq(length)
            # Close the frame when the stream pauses, credits run out, or it is full.
            with m.If(~taken | (pack_count == c.max_payload - 1)):
                m.d.sync += packing.eq(0)
                with m.If(length != 0):
                    m.d.comb += [
                        meta_w.addr.eq(slot_of(next_seq)),
                        meta_w.data.vc.eq(pack_vc),
                        meta_w.data.length.eq(length),
                        meta_w.en.eq(1),
                        committed.eq(1),
                    ]
                    m.d.sync += next_seq.eq(next_seq + 1)

        # ---- link-state bookkeeping for the reverse direction -------------------------
        last_ack = Signal(S)
        last_sack = Signal(S, init=(1 << S) - 1)    # as the receiver's SACK starts
        ack_now = Signal()
        nak_pending = Signal()
        last_freed = Signal(data.ArrayLayout(c.credit_width, c.vcs))
        credit_rr = Signal(c.vc_width)
        dirty = Signal(c.vcs)
        for v in range(c.vcs):
            m.d.comb += dirty[v].eq(self.rx_freed[v] != last_freed[v])
        # Credit field: the first VC with news at or after credit_rr, else credit_rr itself.
        credit_vc = Signal(c.vc_width)
        m.d.comb += credit_vc.eq(credit_rr)
        with m.Switch(credit_rr):
            for first in range(c.vcs):
                with m.Case(first):
                    for step in reversed(range(c.vcs)):
                        v = (first + step) % c.vcs
                        with m.If(dirty[v]):
                            m.d.comb += credit_vc.eq(v)
        silence = Signal(range(c.refresh_interval + 1))
        ctrl_needed = Signal()
        m.d.comb += ctrl_needed.eq(nak_pending | ack_now | (self.rx_ack != last_ack) |
                                   (self.rx_sack != last_sack if c.selective else 0) |
                                   dirty.any() | (silence == c.refresh_interval))
        with m.If(silence != c.refresh_interval):
            m.d.sync += silence.eq(silence + 1)

        # ---- framer -------------------------------------------------------------------
        class State(enum.Enum):
            GAP = 0
            HDR = 1
            PAY = 2
            TRL = 3

        state = Signal(State)
        idx = Signal(range(max(c.header_symbols, c.max_payload, c.trailer_symbols) + 1))
        header = Signal(c.header_layout)
        tx_slot = Signal(max(1, slot_bits))
        replay_req = Signal()

        hdr_bits = Signal(c.header_symbols * W)
        m.d.comb += hdr_bits.eq(header.as_value())
        m.submodules.crc = crc_gen = crc.Processor(c.crc(W))
        crc_bits = Signal(c.trailer_symbols * W)
        m.d.comb += crc_bits.eq(crc_gen.crc)

        with m.Switch(state):
            with m.Case(State.HDR):
                m.d.comb += [self.o.valid.eq(1), self.o.payload.eq(hdr_bits.word_select(idx, W))]
            with m.Case(State.PAY):
                m.d.comb += [self.o.valid.eq(1), self.o.payload.eq(replay_r.data)]
            with m.Case(State.TRL):
                m.d.comb += [self.o.valid.eq(1), self.o.payload.eq(crc_bits.word_select(idx, W))]
        m.d.comb += [
            crc_gen.data.eq(self.o.payload),
            crc_gen.valid.eq((state == State.HDR) | (state == State.PAY)),
            crc_gen.start.eq((state == State.HDR) & (idx == 0)),
            # Sync read: present the address one cycle ahead of the symbol.
            replay_r.addr.eq(Cat(Mux(state == State.PAY, idx + 1, 0)[:word_bits],
                                 tx_slot[:slot_bits])),
        ]

        # Where the next DATA frame comes from.
        start_seq = Signal(S)
        m.d.comb += start_seq.eq(tx_ptr)
        sent = Signal(S)        # frames sent at least once and not yet acknowledged
        m.d.comb += sent.eq(tx_ptr - ack_ptr)
        lost = Signal(c.replay_slots)       # selective repeat: resend this slot's frame
        suspect = Signal(c.replay_slots)    # ...and this one, if nothing new is waiting
        sacked = Signal(c.replay_slots)
        if c.selective:
            # A suspect (a tail frame when a NAK came) goes only when no new frame waits:
            # a new frame's SACK would show the loss anyway, and at no cost.
            with m.If(tx_ptr == next_seq):
                for k in reversed(range(c.replay_slots)):
                    j = slot_of(ack_ptr + k)
                    with m.If(suspect.bit_select(j, 1) & ~sacked.bit_select(j, 1) & (k < sent)):
                        m.d.comb += start_seq.eq(ack_ptr + k)
            # The oldest lost frame goes first, ahead of new ones.
            for k in reversed(range(c.replay_slots)):
                with m.If(lost.bit_select(slot_of(ack_ptr + k), 1) & (k < sent)):
                    m.d.comb += start_seq.eq(ack_ptr + k)
        else:
            # After a NAK/timeout, or if ACKs overtook a replay in progress, restart at
            # the oldest unacknowledged frame.
            with m.If(replay_req | ((tx_ptr - ack_ptr)[:S] > in_flight)):
                m.d.comb += start_seq.eq(ack_ptr)
        m.d.comb += meta_r.addr.eq(slot_of(start_seq))

        # Clock compensation: once cc_interval cycles have passed without two idles in
        # a row, the next gap lasts at least two cycles (see LinkConfig.cc_interval).
        may_start = Signal(init=1)
        if c.cc_interval is not None:
            prev_gap = Signal()
            since_double = Signal(range(c.cc_interval + 1))
            m.d.sync += prev_gap.eq(state == State.GAP)
            with m.If((state == State.GAP) & prev_gap):
                m.d.sync += since_double.eq(0)
            with m.Elif(since_double != c.cc_interval):
                m.d.sync += since_double.eq(since_double + 1)
            m.d.comb += may_start.eq(prev_gap | (since_double < c.cc_interval - 1))

        send_data = Signal()
        send_ctrl = Signal()
        resend = Signal()       # the DATA frame starting is one sent before
        with m.Switch(state):
            with m.Case(State.GAP):
                m.d.comb += [
                    send_data.eq((start_seq != next_seq) & may_start),
                    send_ctrl.eq((start_seq == next_seq) & ctrl_needed & may_start),
                ]
                with m.If(send_data | send_ctrl):
                    m.d.sync += [
                        state.eq(State.HDR), idx.eq(0), silence.eq(0),
                        header.kind.eq(Mux(send_data, FrameKind.DATA, FrameKind.CTRL)),
                        header.vc.eq(Mux(send_data, meta_r.data.vc, 0)),
                        header.seq.eq(Mux(send_data, start_seq, 0)),
                        header.length.eq(Mux(send_data, meta_r.data.length, 0)),
                        *([header.sack.eq(self.rx_sack)] if c.selective else []),
                        header.ack.eq(self.rx_ack),
                        header.nak.eq(nak_pending),
                        last_sack.eq(self.rx_sack),
                        header.credit_vc.eq(credit_vc),
                        header.credit.eq(self.rx_freed[credit_vc]),
                        last_ack.eq(self.rx_ack),
                        ack_now.eq(0),
                        nak_pending.eq(0),
                        last_freed[credit_vc].eq(self.rx_freed[credit_vc]),
                        credit_rr.eq(Mux(credit_vc == c.vcs - 1, 0, credit_vc + 1)),
                    ]
                with m.If(send_data):
                    m.d.comb += resend.eq(start_seq != tx_ptr)
                    m.d.sync += [
                        tx_ptr.eq(Mux(resend & c.selective, tx_ptr, start_seq + 1)),
                        tx_slot.eq(slot_of(start_seq)),
                        replay_req.eq(0),
                    ]
            with m.Case(State.HDR):
                with m.If(idx == c.header_symbols - 1):
                    m.d.sync += [idx.eq(0), state.eq(Mux(header.length == 0, State.TRL, State.PAY))]
                with m.Else():
                    m.d.sync += idx.eq(idx + 1)
            with m.Case(State.PAY):
                with m.If(idx == header.length - 1):
                    m.d.sync += [idx.eq(0), state.eq(State.TRL)]
                with m.Else():
                    m.d.sync += idx.eq(idx + 1)
            with m.Case(State.TRL):
                with m.If(idx == c.trailer_symbols - 1):
                    m.d.sync += [idx.eq(0), state.eq(State.GAP)]
                with m.Else():
                    m.d.sync += idx.eq(idx + 1)

        # Requests from the local receiver (after the GAP clears, so a new one is kept).
        with m.If(self.rx_nak):
            m.d.sync += nak_pending.eq(1)
        with m.If(self.rx_ack_now):
            m.d.sync += ack_now.eq(1)

        # ---- ACK / SACK / NAK / timeout -------------------------------------------------
        timer = Signal(range(c.replay_timeout + 1))
        progress = Signal()
        ack_ok = Signal()
        m.d.comb += ack_ok.eq((self.peer.ack - ack_ptr)[:S] <= in_flight)
        with m.If(self.peer_valid & ack_ok):
            m.d.sync += ack_ptr.eq(self.peer.ack)
            m.d.comb += progress.eq(self.peer.ack != ack_ptr)
        timed_out = Signal()
        with m.If(progress | (in_flight == 0)):
            m.d.sync += timer.eq(0)
        with m.Elif(timer == c.replay_timeout - 1):
            m.d.sync += [timer.eq(0), self.timeouts.eq(self.timeouts + 1)]
            m.d.comb += timed_out.eq(1)
        with m.Else():
            m.d.sync += timer.eq(timer + 1)
        replaying = "replay" not in self._remove

        if c.selective:
            marks = [Signal(S, name=f"mark{j}") for j in range(c.replay_slots)]
            new_ack, news = self.peer.ack, self.peer.sack
            news_ok = self.peer_valid & ack_ok & ((news - new_ack)[:S] < (tx_ptr - new_ack)[:S])
            for j in range(c.replay_slots):
                # Against the ACK just received: the frame in slot j, sent and not ACKed?
                offset = (j - new_ack)[:max(1, slot_bits)] if slot_bits else C(0, 1)
                pending = offset < (tx_ptr - new_ack)[:S]
                # ...and against our own ACK pointer, for the timeout.
                old_offset = (j - ack_ptr)[:max(1, slot_bits)] if slot_bits else C(0, 1)
                outstanding = old_offset < sent
                this = slot_of(news) == j if slot_bits else C(1, 1)
                with m.If(news_ok & this):
                    m.d.sync += sacked[j].eq(1)
                # A frame sent after this one's last transmission arrived: this one is lost.
                evidence = (news - new_ack)[:S] >= (marks[j] - new_ack)[:S]
                if replaying:
                    with m.If(news_ok & ~this & pending & ~sacked[j] & evidence):
                        m.d.sync += lost[j].eq(1)
                    with m.If(timed_out & outstanding & ~sacked[j]):
                        m.d.sync += lost[j].eq(1)
                    # A bad frame arrived. If it was this one and no frame was sent after
                    # it (a tail), no SACK will say so; resend it when the wire is free
                    # rather than wait for the timeout.
                    tail = marks[j] == tx_ptr
                    with m.If(self.peer_valid & ack_ok & self.peer.nak &
                              pending & ~(news_ok & this) & tail):
                        m.d.sync += suspect[j].eq(1)
                with m.If(committed & (slot_of(next_seq) == j if slot_bits else 1)):
                    m.d.sync += [sacked[j].eq(0), lost[j].eq(0), suspect[j].eq(0)]
                # Sent again, or no longer a tail: a later frame's SACK will tell.
                with m.If(send_data & (~resend | (slot_of(start_seq) == j if slot_bits else 1))):
                    m.d.sync += suspect[j].eq(0)
                with m.If(send_data & (slot_of(start_seq) == j if slot_bits else 1)):
                    m.d.sync += [lost[j].eq(0), marks[j].eq(Mux(resend, tx_ptr, start_seq + 1))]
            with m.If(send_data & resend):
                m.d.sync += self.replays.eq(self.replays + 1)
        else:
            start_replay = Signal()
            if replaying:
                m.d.comb += start_replay.eq(timed_out | (self.peer_valid & ack_ok & self.peer.nak))
            with m.If(start_replay):
                m.d.sync += [replay_req.eq(1), timer.eq(0), self.replays.eq(self.replays + 1)]

        # Internal state, for the formal checks (tests/rtl/link/test_link_formal.py), which
        # elaborate this component themselves to reach it. Not an interface.
        self._probe = dict(next_seq=next_seq, ack_ptr=ack_ptr, tx_ptr=tx_ptr, packing=packing,
                           pack_count=pack_count, grant=grant, replay=replay, meta=meta,
                           state=state, idx=idx, header=header, tx_slot=tx_slot)
        # A frame starts on the wire with send_data (DATA, start_seq) or send_ctrl (CTRL);
        # resend marks a DATA frame sent before; taken, a word packed from pack_vc.
        self.trace_signals = dict(send_data=send_data, send_ctrl=send_ctrl, resend=resend,
                                  start_seq=start_seq, header=header, taken=taken,
                                  pack_vc=pack_vc, next_seq=next_seq, ack_ptr=ack_ptr,
                                  tx_ptr=tx_ptr, timed_out=timed_out, credit=credit)
        return m
