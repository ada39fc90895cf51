"""Links: words through one direction of a link, and a held layer's weight exchange."""

import bisect
import functools
import math

from .engines import exchange_runs
from .timing import TIMING

__all__ = ["LinkDirection", "EXCHANGE_ROUNDS", "exchange_cached", "exchange_step"]


class LinkDirection:
    """Words through one direction of a link, message after message.

    A message is a list of *runs*, groups of words that the source offers back to
    back (a row), each with the earliest cycle its first word can be offered; a
    pause in the source between runs closes the packer's frame. The packer takes a word
    when it has a credit (at most ``rx_depth`` words between it and the consumer),
    and a frame needs a free replay slot when it starts. The framer sends committed
    frames one after another; the consumer takes a frame's words from the receiver's
    FIFO one per cycle, from the cycle it is ready.

    A replay slot is free again a fixed ``ack_delay`` after its frame, and a credit
    ``credit_delay`` after its word left the FIFO. With ``returns_on``, the reverse
    direction with all its frames sent, the model follows them instead: each ACK and
    credit is back once the header of the reverse direction's next frame has carried
    it (:meth:`carry`), and this direction's framer sends a CTRL frame whenever it
    is idle with the reverse direction's news to return.
    """

    def __init__(self, timing=TIMING, *, returns_on=None):
        self.t = timing
        self.returns_on = returns_on
        self.framer_next = 0          # first cycle the framer may start a frame
        self.packer_idle = 0          # first cycle the packer may grant
        self.consumed = []            # cycle each word left the receiver's FIFO
        self.frame_begins = []        # the framer's GAP cycle before each data frame
        self.frame_ends = []          # the last symbol of each data frame
        self.header_begins = []       # the same for every frame, CTRL frames too
        self.header_ends = []
        self.words = 0
        self.frames = 0
        self._news_sent = 0           # the reverse direction's news in headers so far

    @property
    def symbols(self):
        """Wire symbols of the data frames sent so far, payload and framing."""
        return self.words + self.frames * self.t.frame_overhead

    @functools.cached_property
    def _news(self):
        """With ``returns_on``: the cycles news for the reverse direction's sender
        reaches this direction's framer, in order: an ACK per frame received, a
        credit per word its consumer took."""
        t, reverse = self.t, self.returns_on
        return sorted([end + t.ack_rx + t.wire_latency for end in reverse.frame_ends] +
                      [cycle + t.credit_rx for cycle in reverse.consumed])

    def send(self, runs, consumer_ready):
        """Send one message.

        Parameters
        ----------
        runs : list of (earliest_offer, words, gap)
            The source offers a run's first word no earlier than ``earliest_offer``
            and ``gap + 1`` cycles after the previous run's last word was taken.
        consumer_ready : int or list of int
            The first cycle the consumer takes words, or per word of the message the
            first cycle it takes that word.

        Returns
        -------
        (accepted, consumed) : lists with, per word, the cycle the packer took it and
        the cycle the consumer took it.
        """
        t = self.t
        accepted, consumed = [], []
        open_frame = 0                # words in the frame being packed
        last = None                   # cycle the previous word was taken
        for earliest, words, gap in runs:
            for p in range(words):
                if p == 0:
                    offer = earliest if last is None else max(earliest, last + 1 + gap)
                    if open_frame and offer > last + 1:     # the source paused: the frame closed
                        self._close(open_frame, last + 1, consumed, consumer_ready)
                        open_frame = 0
                else:
                    offer = last + 1
                credit = self._credit(len(self.consumed) + open_frame)
                if open_frame == t.max_payload:
                    self._close(open_frame, last, consumed, consumer_ready)
                    open_frame = 0
                elif open_frame and credit > offer:
                    # Out of credits: the frame closes in the cycle the word waits.
                    self._close(open_frame, offer, consumed, consumer_ready)
                    open_frame = 0
                if open_frame:
                    take = offer
                else:
                    take = max(offer, self.packer_idle, credit, self._slot_free()) + \
                        t.packer_grant
                accepted.append(take)
                open_frame += 1
                last = take
        if open_frame:
            self._close(open_frame, last + 1, consumed, consumer_ready)
        self._framer_free(math.inf)       # the CTRL frames after the message
        return accepted, consumed

    def _credit(self, index):
        """First cycle word ``index`` of this direction has a credit at the packer."""
        t = self.t
        k = index - t.rx_depth
        if k < 0:
            return 0
        if self.returns_on is None:
            return self.consumed[k] + t.credit_delay + t.wire_latency
        return self.returns_on.carry(self.consumed[k] + t.credit_rx)

    def _slot_free(self):
        """First cycle a new frame has a replay slot."""
        t = self.t
        k = len(self.frame_ends) - t.replay_slots
        if k < 0:
            return 0
        if self.returns_on is None:
            return self.frame_ends[k] + t.ack_delay + 2 * t.wire_latency
        return self.returns_on.carry(self.frame_ends[k] + t.ack_rx + t.wire_latency)

    def carry(self, cycle):
        """The first cycle the far end has the news (an ACK, freed credits) this
        direction's framer has from ``cycle``: the framer puts it in the header of the
        next frame it starts (in a GAP cycle), a data frame if one starts then, else a
        CTRL frame."""
        t = self.t
        begins, ends = self.header_begins, self.header_ends
        gap = cycle
        k = bisect.bisect_left(ends, gap)               # the first frame not over
        if k < len(ends) and begins[k] < gap:
            gap = ends[k] + 1                           # busy: its next GAP
            k += 1
        if k < len(ends) and begins[k] == gap:
            end = ends[k]
        else:
            end = gap + t.frame_overhead - 1            # a CTRL frame: header and CRC
        return end + t.ack_tx + t.wire_latency

    def _framer_free(self, ready):
        """The GAP cycle a data frame committed for cycle ``ready`` starts in: the
        framer's next, after the CTRL frames it sends (with ``returns_on``) while it
        waits, each for the news it has by then. A data frame goes first."""
        t = self.t
        news = self._news if self.returns_on is not None else []
        while self._news_sent < len(news):
            gap = max(self.framer_next, news[self._news_sent])
            if gap >= max(ready, self.framer_next):
                break
            self._header(gap, gap + t.frame_overhead - 1)
        return max(ready, self.framer_next)

    def _header(self, begin, end):
        """A frame from GAP cycle ``begin`` to its last symbol ``end``: its header
        carries the news the framer has in ``begin``."""
        self.header_begins.append(begin)
        self.header_ends.append(end)
        self.framer_next = end + 1                      # at least one idle symbol
        if self.returns_on is not None:
            self._news_sent = bisect.bisect_right(self._news, begin)

    def _close(self, length, cycle, consumed, consumer_ready):
        """Commit the frame of ``length`` words closed in ``cycle``; send and deliver it."""
        t = self.t
        self.packer_idle = cycle + 1
        begin = self._framer_free(cycle + 1)            # the framer's GAP cycle
        end = begin + 2 + length + 2                    # header, payload, CRC
        self._header(begin, end)
        self.frame_begins.append(begin)
        self.frame_ends.append(end)
        self.frames += 1
        self.words += length
        # The frame's words reach the FIFO's output one per cycle from ``first``; the
        # consumer takes one per cycle once ready, after the words before.
        first = end + t.rx_delay + t.wire_latency
        previous = self.consumed[-1] if self.consumed else -1
        for k in range(length):
            ready = (consumer_ready if isinstance(consumer_ready, int) else
                     consumer_ready[len(consumed)])
            previous = max(first + k, previous + 1, ready)
            consumed.append(previous)
            self.consumed.append(previous)


#: Rounds at most of sending an exchange's two directions in turn
#: (:func:`exchange_step`): about a second for LeNet-5's largest, once per slice.
EXCHANGE_ROUNDS = 20


@functools.lru_cache(maxsize=None)
def exchange_cached(g, timing):
    """:func:`exchange_step` from cycle 0: the link is idle when an exchange starts,
    so the cycles it takes do not depend on when."""
    return exchange_step(g, 0, timing=timing)


def exchange_step(g, start, *, timing=TIMING):
    """The SGD step of a layer (slice) ``g`` whose masters and velocities the next chip
    holds, its owner's ``start_update`` in cycle ``start``.

    The owner offers the gradient sums (:func:`exchange_runs`) from the next cycle on;
    the holder takes them one word per cycle as they arrive, but a weight's last word
    only while fewer than ``holder_copies`` copies wait in its pipeline and FIFO, and
    offers the weight's new copy ``holder_latency`` cycles after; the owner takes the
    copies as they arrive and ends ``exchange_tail`` cycles after the last.

    The WGT channel has the link to itself meanwhile (the owner's errors of the batch
    are all in, and its next forward, the only ACT it sends and what the holder's
    next errors wait for, waits for this step), so each direction starts idle. Both
    carry words at once, and each carries the other's ACKs and credits in its frame
    headers (``returns_on``): the two directions are sent in turn, each with the
    other's frames from the turn before, until neither changes, at most
    :data:`EXCHANGE_ROUNDS` times. Each round is exact at least one round trip
    further on than the one before: the exchanges of digits' layers settle in two to
    five rounds, and are exact. A long one settles later: LeNet-5's fc1[0:30] (12,030
    weights) measures 40,842 cycles in Amaranth's simulator, and the rounds give
    39,857 after one, 41,006 after 5, 40,987 after 20 (the limit, 0.4 % over) and
    40,842 after 200.

    Returns
    -------
    (end, down, up) : the cycle the step (the core's UPDATE_WAIT) ends, and the two
    :class:`LinkDirection`.
    """
    w = timing.exchange_words
    runs = exchange_runs(g, timing=timing)
    offer = [(start + 1, runs[0], 0)] + [(start + 1, words, 1) for words in runs[1:]]
    ready = [start + 1] * sum(runs)
    up = settled = None
    for _ in range(EXCHANGE_ROUNDS):
        down = LinkDirection(timing, returns_on=up)
        _, taken = down.send(offer, ready)
        # taken[0] is the op word; weight k's last word is taken[w * (k + 1)].
        copies = [(cycle + timing.holder_latency, 1, 0) for cycle in taken[w::w]]
        up = LinkDirection(timing, returns_on=down)
        accepted, back = up.send(copies, start + 1)
        sent = (down.frame_ends, taken, up.frame_ends, accepted, back)
        if sent == settled:
            break
        settled = sent
        # A copy the packer takes leaves room in the holder's FIFO a cycle later.
        for k, cycle in enumerate(accepted[:len(accepted) - timing.holder_copies]):
            ready[w * (k + timing.holder_copies + 1)] = cycle + 1
    return back[-1] + timing.exchange_tail, down, up
