"""A board PHY: the link's symbol stream over DDR connector pins between two boards.

Same core-side interface as :class:`~.phy.SimPhy` (:func:`~.phy.phy_signature`), so the
link layer above does not know which one it drives.

Clocking: source-synchronous, a forwarded clock per direction
-----------------------------------------------------------------
Each board has its own oscillator, so the two cores run up to ±200 ppm apart. A
recovered clock (CDR) needs a SERDES, which the ULX3S part has not; a forwarded clock
needs one more pin per direction and nothing else. So each transmitter serialises in
its ``tx_link`` domain, a PLL multiple (``link_ratio``) of its own core clock, and
sends that clock on a pin next to the data. The receiver samples the data lanes with
the forwarded clock (domain ``rx_link``; on a board a clock input pin shifted 90° by
the receiver's PLL or a DELAYF, so that it samples mid-bit) and crosses into its own
core domain (``sync``) through an :class:`~amaranth.lib.fifo.AsyncFIFO`.

Clock compensation
------------------
The symbols enter the receive FIFO at the sender's core rate and leave it at the
receiver's, one per cycle: the difference, at most 400 ppm (±200 ppm each), is one
symbol in 2,500. The FIFO is kept between ``ELASTIC_LOW`` and ``ELASTIC_HIGH`` entries:

- a faster receiver reads nothing while the FIFO is below ``ELASTIC_LOW`` and its last
  output was an idle, which lengthens a gap between frames by one idle;
- a slower receiver drops an idle that follows another idle while the FIFO is at or
  above ``ELASTIC_HIGH``, which shortens a gap of two or more idles.

Neither touches a frame: a frame is a burst of valid symbols closed by an idle, and
the receiver only starts a burst with ``ELASTIC_LOW`` symbols in hand, more than the
burst can lose to 400 ppm. Dropping needs gaps of two idles, which a saturated link
layer does not send by itself: the sender's :class:`~.frame.LinkConfig` must set
``cc_interval`` (at most :data:`MAX_CC_INTERVAL`), so that a double idle comes at least
once every 1,250 cycles, twice as often as 400 ppm needs.

Lane coding
-----------
Each lane carries one *lane word* of ``word_bits`` bits per symbol: a 2-bit header
(``01`` data, ``10`` control, as 64b/66b's sync header: one bit error never turns data
into control), then the lane's ``lane_width`` data bits, padded to an even width of at
least 6. With DDR a lane sends 2 bits per link cycle, so ``link_ratio = word_bits / 2``
link cycles per core cycle, e.g. 4 lanes of 4 bits: 6-bit words, a 50 MHz link clock
for a 16.7 MHz core, 400 Mb/s per direction of which 267 Mb/s is payload. A control
word's body says which: ``IDLE`` (the link layer's idle, ``valid`` low), ``FILL``
(nothing to send; dropped by the receiver), and the training words.

Training, alignment and deskew
------------------------------
While its receiver is not locked a PHY sends training: ``TRAIN_UNLOCKED`` on every
lane, with ``MARK`` on every lane every ``MARK_PERIOD`` words. A PHY that sees
``PEER_REQUEST`` ``TRAIN_UNLOCKED`` in a row trains its peer until it sees anything
else (the peer locked), and every PHY sends ``TRAIN_LOCKED`` for ``HOLD_WORDS`` words
after it locks. Control bodies differ pairwise in at least 2 bits, so no single bit
error turns an idle into a training word.

- *Word alignment*, per lane: the receiver tries each of the ``word_bits`` bit offsets
  of the word boundary (the link-cycle phase and a one-bit slip) until
  ``ALIGN_HITS`` training words in a row are seen there. The training words are chosen
  so that no rotation of one is a training word.
- *Deskew*: lanes skewed by up to a bit period end up at most one word apart. On the
  first ``MARK`` the lanes that show it a word early are delayed by a word; the
  alignment is kept once ``DESKEW_MARKS`` further marks arrive on all lanes together.
- *Loss of lock*: a symbol whose lane headers are invalid or disagree scores
  ``LOSS_STEP``, a good one takes 1 off; at ``LOSS_LIMIT`` (4 bad symbols in a row,
  or a bad one in every 4) the receiver drops ``locked`` and retrains. At a bit-error
  rate of 1e-4 a bad symbol comes about every 1,250 symbols, so lock holds. No lock
  within ``search_timeout`` symbols starts the search over.

Once locked the PHY passes every data symbol in order, once, with its bit errors;
an idle may gain or lose a copy (clock compensation). While it is not locked, or while
it trains its peer, the symbols from the core are dropped: the link layer's replay
recovers them.
"""

import enum

from amaranth import *
from amaranth.lib import wiring, data, io, fifo, cdc
from amaranth.lib.wiring import In, Out

from ...plan.model.timing import TIMING
from .phy import phy_signature

__all__ = ["BoardPhyStatus", "BoardPhyCoding", "BoardPhy", "DDRPins", "MAX_CC_INTERVAL"]


#: Largest ``LinkConfig.cc_interval`` a board PHY link may use: a double idle about
#: every 1,250 cycles (1,024 and a frame), twice the rate 400 ppm of clock difference
#: needs (the planner's ``GatewareTiming.board_cc_interval``).
MAX_CC_INTERVAL = TIMING.board_cc_interval

ELASTIC_DEPTH = 16
ELASTIC_LOW = 4
ELASTIC_HIGH = 8
ALIGN_HITS = 8
MARK_PERIOD = 8
DESKEW_MARKS = 2
HOLD_WORDS = 32
LOSS_STEP = 16
LOSS_LIMIT = 64
PEER_REQUEST = 4


BoardPhyStatus = data.StructLayout({
    "locked": unsigned(1),              # the receiver is word-aligned and deskewed
    "lock_losses": unsigned(16),        # times ``locked`` dropped
    "realignments": unsigned(16),       # word-boundary candidates tried, over all lanes
    "training_words": unsigned(16),     # training symbols received while locked
    "underruns": unsigned(16),          # receive FIFO empty inside a burst (never expected)
})


class _Header(enum.IntEnum):
    DATA = 0b01     # wire order: a 1, then a 0
    CTRL = 0b10


class BoardPhyCoding:
    """The lane-word code of a :class:`BoardPhy` geometry, shared by both ends.

    Parameters
    ----------
    lane_width : int
        Data bits per lane word.

    Attributes
    ----------
    word_bits : int
        Bits per lane word: header, data and padding; even, at least 6.
    link_ratio : int
        Link-clock cycles per core cycle (``word_bits / 2``, DDR).
    IDLE, FILL, TRAIN_UNLOCKED, TRAIN_LOCKED, MARK : int
        Control-word bodies (the bits after the header).
    """

    def __init__(self, lane_width):
        self.lane_width = lane_width
        bits = lane_width + 2
        self.word_bits = max(6, bits + bits % 2)
        self.link_ratio = self.word_bits // 2
        body_bits = self.word_bits - 2
        self.IDLE, self.FILL = 0, (1 << body_bits) - 1
        # Training words: no rotation of one is one (alignment), and every control
        # body differs from every other in at least 2 bits, so that one bit error
        # cannot make an idle look like training.
        distance = lambda x, y: bin(x ^ y).count("1")
        found = []
        for body in range(1, (1 << body_bits) - 1):
            bodies = found + [body]
            if all(distance(body, other) >= 2 for other in [self.IDLE, self.FILL] + found) and \
                    all(self._rotate(self.control(b), k) not in map(self.control, bodies)
                        for b in bodies for k in range(1, self.word_bits)):
                found.append(body)
            if len(found) == 3:
                break
        assert len(found) == 3, "every geometry of at least 6 bits has three such words"
        self.TRAIN_UNLOCKED, self.TRAIN_LOCKED, self.MARK = found

    def control(self, body):
        """The lane word of a control body."""
        return _Header.CTRL | (body << 2)

    def _rotate(self, word, k):
        n = self.word_bits
        return ((word >> k) | (word << (n - k))) & ((1 << n) - 1)

    @property
    def training(self):
        return (self.TRAIN_UNLOCKED, self.TRAIN_LOCKED, self.MARK)


class DDRPins:
    """Pin buffers of a board PHY on real pins: one ``io.DDRBuffer`` each.

    Parameters
    ----------
    tx_data, rx_data : PortLike
        ``lanes`` pins each (e.g. ``platform.request("link", 0, dir="-").tx`` with the
        resources of :func:`fpdeep.platforms.phy_build.link_resources`).
    tx_clock : PortLike
        The forwarded-clock output pin. (The receive clock pin drives the
        ``rx_link`` domain and is set up with the domains, not here.)
    """

    def __init__(self, *, tx_data, tx_clock, rx_data):
        self._tx_data, self._tx_clock, self._rx_data = tx_data, tx_clock, rx_data

    def tx_data(self, lanes, domain):
        return io.DDRBuffer("o", self._tx_data, o_domain=domain)

    def tx_clock(self, domain):
        return io.DDRBuffer("o", self._tx_clock, o_domain=domain)

    def rx_data(self, lanes, domain):
        return io.DDRBuffer("i", self._rx_data, i_domain=domain)


def _gray_sync(m, value, o_domain, name):
    """``value`` (a counter that steps by at most 1 per cycle of its domain) in ``o_domain``."""
    gray = Signal(len(value), name=f"{name}_gray")
    m.d.comb += gray.eq(value ^ (value >> 1))
    synced = Signal(len(value), name=f"{name}_sync")
    m.submodules[f"{name}_cdc"] = cdc.FFSynchronizer(gray, synced, o_domain=o_domain)
    binary = Signal(len(value), name=f"{name}_o")
    for k in reversed(range(len(value))):
        m.d.comb += binary[k].eq(synced[k] ^ (binary[k + 1] if k + 1 < len(value) else 0))
    return binary


class BoardPhy(wiring.Component):
    """One chip's board PHY: both directions of one link, on DDR pins.

    See the module docstring for the clocking, coding and training.

    Parameters
    ----------
    lanes : int
        Data lanes per direction.
    lane_width : int
        Bits per lane per core cycle; ``lanes * lane_width`` is the symbol width.
    pins : DDRPins or a model with the same methods
        Makes the pin buffers: ``tx_data(lanes, domain)``, ``tx_clock(domain)`` and
        ``rx_data(lanes, domain)``, each a component with the ports of
        ``io.DDRBuffer``. :class:`~.pins_sim.SimPins` models them for simulation.
    search_timeout : int
        Symbols without lock after which the search starts over.

    Members
    -------
    i : In(phy_signature(lanes, lane_width))
        Symbols to send, one per core cycle (``sync``).
    o : Out(phy_signature(lanes, lane_width))
        Symbols received, in ``sync``.
    status : Out(BoardPhyStatus)
        In ``sync``: ``locked`` and the counters.

    Clock domains: ``sync`` (core), ``tx_link`` (``link_ratio`` times the core clock,
    from the same oscillator) and ``rx_link`` (the peer's forwarded ``tx_link``).

    Latency from ``i`` to the peer's ``o``: about ``ELASTIC_LOW`` to ``ELASTIC_HIGH``
    plus 6 core cycles, plus the wire. Throughput one symbol per core cycle.

    Raises
    ------
    TypeError, ValueError
        As :func:`~.phy.phy_signature`, or for a bad ``search_timeout``.
    """

    def __init__(self, *, lanes=4, lane_width=4, pins, search_timeout=None):
        sig = phy_signature(lanes, lane_width)
        self._lanes, self._lane_width = lanes, lane_width
        self.coding = BoardPhyCoding(lane_width)
        # Symbols of one search: every boundary candidate, the hits, two marks to find
        # the skew and the marks that confirm it.
        one_search = 2 * self.coding.word_bits + ALIGN_HITS + (DESKEW_MARKS + 2) * MARK_PERIOD
        if search_timeout is None:
            search_timeout = 4 * one_search
        if not isinstance(search_timeout, int) or isinstance(search_timeout, bool):
            raise TypeError(f"search_timeout must be an integer, not {search_timeout!r}")
        if search_timeout < one_search:
            raise ValueError(f"search_timeout ({search_timeout}) is shorter than one search "
                             f"({one_search} symbols)")
        if not all(callable(getattr(pins, name, None)) for name in ("tx_data", "tx_clock",
                                                                    "rx_data")):
            raise TypeError(f"pins must make the buffers (tx_data, tx_clock, rx_data), "
                            f"like DDRPins or SimPins; not {pins!r}")
        self._search_timeout = search_timeout
        self._pins = pins
        super().__init__({
            "i": In(sig),
            "o": Out(sig),
            "status": Out(BoardPhyStatus),
        })

    @property
    def link_ratio(self):
        return self.coding.link_ratio

    def elaborate(self, platform):
        m = Module()
        c, L, W = self.coding, self._lanes, self._lane_width
        B, R = c.word_bits, c.link_ratio
        entry = data.StructLayout({"valid": 1, "payload": L * W})

        # Cross-domain state of the receiver, as seen by the transmitter.
        rx_locked = Signal()            # rx_link
        peer_unlocked = Signal()        # rx_link: the peer asks for training
        tx_rx_locked = Signal()
        tx_peer_unlocked = Signal()
        m.submodules.locked_to_tx = cdc.FFSynchronizer(rx_locked, tx_rx_locked, o_domain="tx_link")
        m.submodules.peer_to_tx = cdc.FFSynchronizer(peer_unlocked, tx_peer_unlocked,
                                                     o_domain="tx_link")

        # ---- transmitter: sync -> tx_link FIFO -> lane words -> DDR pins -------------
        m.submodules.tx_fifo = tx_fifo = fifo.AsyncFIFO(
            width=entry.size, depth=8, w_domain="sync", r_domain="tx_link")
        m.d.comb += [tx_fifo.w_data.eq(Cat(self.i.valid, self.i.payload)), tx_fifo.w_en.eq(1)]
        tx_entry = data.View(entry, tx_fifo.r_data)

        tx_phase = Signal(range(R))
        m.d.tx_link += tx_phase.eq(Mux(tx_phase == R - 1, 0, tx_phase + 1))
        tx_words = Signal(data.ArrayLayout(B, L))       # the words now on the wire
        mark_count = Signal(range(MARK_PERIOD))
        hold = Signal(range(HOLD_WORDS + 1))
        training = Signal()
        m.d.comb += training.eq(~tx_rx_locked | tx_peer_unlocked | (hold != 0))
        with m.If(~tx_rx_locked):
            m.d.tx_link += hold.eq(HOLD_WORDS)
        with m.If(tx_phase == R - 1):
            # Drain the FIFO while training too: those symbols are lost, the link
            # layer replays them.
            m.d.comb += tx_fifo.r_en.eq(1)
            with m.If(training):
                m.d.tx_link += mark_count.eq(Mux(mark_count == MARK_PERIOD - 1, 0,
                                                 mark_count + 1))
                with m.If(tx_rx_locked & (hold != 0)):
                    m.d.tx_link += hold.eq(hold - 1)
                train = Mux(mark_count == 0, c.MARK,
                            Mux(tx_rx_locked, c.TRAIN_LOCKED, c.TRAIN_UNLOCKED))
                for k in range(L):
                    m.d.tx_link += tx_words[k].eq(Cat(C(_Header.CTRL, 2), train))
            with m.Elif(tx_fifo.r_rdy & tx_entry.valid):
                for k in range(L):
                    m.d.tx_link += tx_words[k].eq(Cat(C(_Header.DATA, 2),
                                                      tx_entry.payload[k * W:(k + 1) * W]))
            with m.Else():
                body = Mux(tx_fifo.r_rdy, c.IDLE, c.FILL)
                for k in range(L):
                    m.d.tx_link += tx_words[k].eq(Cat(C(_Header.CTRL, 2), body))

        m.submodules.tx_pins = tx_pins = self._pins.tx_data(L, "tx_link")
        m.submodules.tx_clock_pin = clock_pin = self._pins.tx_clock("tx_link")
        m.d.comb += [clock_pin.o[0].eq(1), clock_pin.o[1].eq(0)]
        for k in range(L):
            pair = tx_words[k].word_select(tx_phase, 2)
            m.d.comb += [tx_pins.o[0][k].eq(pair[0]), tx_pins.o[1][k].eq(pair[1])]

        # ---- receiver: DDR pins -> per-lane word alignment -> deskew -> decode --------
        m.submodules.rx_pins = rx_pins = self._pins.rx_data(L, "rx_link")
        rx_phase = Signal(range(R))
        m.d.rx_link += rx_phase.eq(Mux(rx_phase == R - 1, 0, rx_phase + 1))

        searching = Signal(init=1)      # the lanes are being (re)aligned
        restart = Signal()              # start the search over this cycle
        lane_aligned = Signal(L)
        held = Signal(data.ArrayLayout(B, L))       # each lane's last complete word
        slipped = Signal(L)
        for k in range(L):
            hist = Signal(B + 1, name=f"hist{k}")   # oldest bit lowest
            m.d.rx_link += hist.eq(Cat(hist[2:], rx_pins.i[0][k], rx_pins.i[1][k]))
            candidate = Signal(range(B), name=f"candidate{k}")  # phase * 2 + slip
            hits = Signal(range(ALIGN_HITS + 1), name=f"hits{k}")
            word = Signal(B, name=f"word{k}")
            m.d.comb += word.eq(Mux(candidate[0], hist[:B], hist[1:B + 1]))
            strobe = rx_phase == candidate[1:]
            is_training = Signal(name=f"is_training{k}")
            m.d.comb += is_training.eq(
                Cat(*[word == c.control(t) for t in c.training]).any())
            with m.If(strobe):
                m.d.rx_link += held[k].eq(word)
                with m.If(~lane_aligned[k]):
                    with m.If(is_training):
                        m.d.rx_link += hits.eq(hits + 1)
                        with m.If(hits == ALIGN_HITS - 1):
                            m.d.rx_link += lane_aligned[k].eq(1)
                    with m.Else():
                        m.d.comb += slipped[k].eq(1)
                        m.d.rx_link += [hits.eq(0),
                                        candidate.eq(Mux(candidate == B - 1, 0, candidate + 1))]
            with m.If(restart):
                m.d.rx_link += [hits.eq(0), lane_aligned[k].eq(0)]

        # Symbol strobe: every lane's last complete word, each optionally a word late.
        sym_stb = Signal()
        m.d.comb += sym_stb.eq(rx_phase == R - 1)
        prev = Signal(data.ArrayLayout(B, L))
        delay = Signal(L)
        aligned = Signal(data.ArrayLayout(B, L))
        for k in range(L):
            m.d.comb += aligned[k].eq(Mux(delay[k], prev[k], held[k]))
        with m.If(sym_stb):
            m.d.rx_link += prev.eq(held)
        is_mark = lambda words: Cat(*[words[k] == c.control(c.MARK) for k in range(L)])
        mark_now, mark_prev, mark_aligned = is_mark(held), is_mark(prev), is_mark(aligned)
        all_lanes = (1 << L) - 1

        rx_state = Signal(range(3))     # 0 aligning, 1 deskew (find), 2 deskew (verify)
        marks = Signal(range(DESKEW_MARKS + 1))
        waited = Signal(range(self._search_timeout + 1))
        counters = {name: Signal(16, name=name)
                    for name in ("lock_losses", "realignments", "training_words")}
        with m.If(slipped.any()):
            m.d.rx_link += counters["realignments"].eq(counters["realignments"] + 1)

        with m.If(searching & sym_stb):
            m.d.rx_link += waited.eq(waited + 1)
            with m.If(waited == self._search_timeout):
                m.d.comb += restart.eq(1)
                m.d.rx_link += [waited.eq(0), rx_state.eq(0)]
            with m.Elif(rx_state == 0):
                with m.If(lane_aligned == all_lanes):
                    m.d.rx_link += rx_state.eq(1)
            with m.Elif(rx_state == 1):
                with m.If(mark_now.any() & ((mark_now | mark_prev) == all_lanes) &
                          ~(mark_now & mark_prev).any()):
                    m.d.rx_link += [delay.eq(mark_prev), marks.eq(0), rx_state.eq(2)]
            with m.Else():
                with m.If(mark_aligned.any()):
                    with m.If(mark_aligned == all_lanes):
                        m.d.rx_link += marks.eq(marks + 1)
                        with m.If(marks == DESKEW_MARKS - 1):
                            m.d.rx_link += [searching.eq(0), rx_locked.eq(1), waited.eq(0)]
                    with m.Else():
                        m.d.rx_link += rx_state.eq(1)

        # Decode the deskewed symbol one cycle after the strobe.
        sym = Signal(data.ArrayLayout(B, L))
        sym_valid = Signal()
        m.d.rx_link += sym_valid.eq(sym_stb & rx_locked)
        with m.If(sym_stb):
            m.d.rx_link += sym.eq(aligned)
        headers = [sym[k][:2] for k in range(L)]
        n_data = sum((h == _Header.DATA).as_unsigned() for h in headers)
        n_ctrl = sum((h == _Header.CTRL).as_unsigned() for h in headers)
        bad = Signal()
        m.d.comb += bad.eq((n_data + n_ctrl != L) | ((n_data != 0) & (n_ctrl != 0)))
        is_data = n_data >= n_ctrl
        body = sym[0][2:]
        payload = Cat(*[sym[k][2:2 + W] for k in range(L)])
        sym_training = ~is_data & Cat(*[body == t for t in c.training]).any()

        score = Signal(range(LOSS_LIMIT + LOSS_STEP))
        requests = Signal(range(PEER_REQUEST + 1))
        with m.If(sym_valid):
            with m.If(bad):
                m.d.rx_link += score.eq(score + LOSS_STEP)
            with m.Elif(score != 0):
                m.d.rx_link += score.eq(score - 1)
            # The peer asks for training with PEER_REQUEST TRAIN_UNLOCKED in a row (not
            # one bit error's worth); it is locked once it sends anything else.
            with m.If(sym_training & (body == c.TRAIN_UNLOCKED)):
                m.d.rx_link += requests.eq(Mux(requests == PEER_REQUEST, requests, requests + 1))
                with m.If(requests == PEER_REQUEST - 1):
                    m.d.rx_link += peer_unlocked.eq(1)
            with m.Elif(~sym_training | (body == c.TRAIN_LOCKED)):
                m.d.rx_link += [requests.eq(0), peer_unlocked.eq(0)]
            with m.If(sym_training):
                m.d.rx_link += counters["training_words"].eq(counters["training_words"] + 1)
            with m.If(score >= LOSS_LIMIT):
                m.d.comb += restart.eq(1)
                m.d.rx_link += [rx_locked.eq(0), searching.eq(1), rx_state.eq(0), score.eq(0),
                                delay.eq(0),
                                counters["lock_losses"].eq(counters["lock_losses"] + 1)]

        # ---- receive FIFO: rx_link -> sync, with clock compensation --------------------
        m.submodules.rx_fifo = rx_fifo = fifo.AsyncFIFO(
            width=entry.size, depth=ELASTIC_DEPTH, w_domain="rx_link", r_domain="sync")
        last_written_idle = Signal()
        # A control body that a bit error made unknown is taken as an idle.
        is_idle = ~is_data & (body != c.FILL) & ~sym_training
        with m.If(sym_valid & (is_data | is_idle)):
            with m.If(is_data | ~last_written_idle | (rx_fifo.w_level < ELASTIC_HIGH)):
                m.d.comb += rx_fifo.w_en.eq(1)
                m.d.rx_link += last_written_idle.eq(~is_data)
        m.d.comb += rx_fifo.w_data.eq(Cat(is_data, payload))

        rx_entry = data.View(entry, rx_fifo.r_data)
        read = Signal()
        m.d.comb += [
            read.eq(rx_fifo.r_rdy & (self.o.valid | (rx_fifo.r_level >= ELASTIC_LOW))),
            rx_fifo.r_en.eq(read),
        ]
        m.d.sync += [self.o.valid.eq(read & rx_entry.valid), self.o.payload.eq(rx_entry.payload)]
        underruns = Signal(16)
        with m.If(self.o.valid & ~rx_fifo.r_rdy):
            m.d.sync += underruns.eq(underruns + 1)

        # ---- status, in sync ----------------------------------------------------------
        m.submodules.locked_to_core = cdc.FFSynchronizer(rx_locked, self.status.locked)
        for name, counter in counters.items():
            m.d.comb += getattr(self.status, name).eq(_gray_sync(m, counter, "sync", name))
        m.d.comb += self.status.underruns.eq(underruns)
        return m
