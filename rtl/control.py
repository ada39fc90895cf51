"""Host access to every weight of a cluster: a router on each chip, and its CTL protocol.

The host sees one flat weight address space, the chips' local spaces one after
another: chip ``k`` holds global addresses ``base[k] .. base[k] + count[k] - 1``,
where ``base[k]`` is the sum of the earlier chips' counts. Every chip has a
:class:`WeightAccessRouter`. Chip 0's router takes the host's weight strobes; the
router of chip ``k > 0`` takes requests from chip ``k - 1`` on the CTL virtual
channel (:class:`~fpdeep.rtl.link.channels.VirtualChannel`). A router serves the
addresses of its own chip on the chip's local weight port and passes every other
request down the chain on CTL, whence the answer comes back the same way.

CTL word protocol
-----------------
All words are 16 bits; a 32-bit value is sent as two words, low word first.
Addresses are global, zero-extended to 32 bits. Requests go down (from chip
``k``'s ``down_o`` to chip ``k + 1``'s ``up_i``), responses come up:

* read: ``0x0001, addr[15:0], addr[31:16]``; answered by
  ``value[15:0], value[31:16]``;
* write: ``0x0002, addr[15:0], addr[31:16], data[15:0], data[31:16]``;
  answered by one word ``0x0000`` once the weight has been written.

Field order in :data:`REQUEST_LAYOUT` and :data:`RESPONSE_LAYOUT` is word order.
Any other first word of a request is reserved for future op codes and is
dropped on its own. Only one request is in flight along the chain at a time: a
router takes the next request only after the previous one has been answered, so
requests are carried out in the order the host made them, and a write has
landed in its chip's memory by the time its acknowledgement reaches chip 0.
Responses flow up only in answer to requests, so a response stream never holds
a stray word.

An address that no chip holds (at or beyond ``total_count``) reaches the last
chip, which reads it as zero and ignores a write to it.

In a cluster, link ``k`` (chip ``k`` on its ``a`` side) carries chip ``k``'s
``down_o`` on ``a_i[CTL]`` to chip ``k + 1``'s ``up_i`` from ``b_o[CTL]``, and
chip ``k + 1``'s ``up_o`` on ``b_i[CTL]`` back to chip ``k``'s ``down_i`` from
``a_o[CTL]``. Each router's ``local`` port drives its core's ``host`` weight
members (:func:`connect_weight_port`), and chip 0's ``host`` port is the
cluster's.
"""

from amaranth import *
from amaranth.lib import wiring, stream, data, fifo, enum
from amaranth.lib.wiring import In, Out

from .host import WEIGHT_ADDR_WIDTH, WEIGHT_SHAPE, weight_members

__all__ = ["CTL_WORD_WIDTH", "ControlOp", "REQUEST_LAYOUT", "RESPONSE_LAYOUT",
           "WeightPortSignature", "connect_weight_port", "WeightAccessRouter"]

#: Width of a word on the CTL virtual channel.
CTL_WORD_WIDTH = 16


class ControlOp(enum.Enum, shape=CTL_WORD_WIDTH):
    """The first word of a CTL request."""
    READ = 0x0001   #: read one weight; answered by its value
    WRITE = 0x0002  #: write one weight; answered by one zero word


#: A request, field order being word order: 5 words for a write, the first 3 for a read.
REQUEST_LAYOUT = data.StructLayout({
    "op": ControlOp,
    "addr": unsigned(2 * CTL_WORD_WIDTH),
    "data": WEIGHT_SHAPE,
})
#: A response: 2 words for a read, the first 1 (zero) for a write.
RESPONSE_LAYOUT = data.StructLayout({"value": WEIGHT_SHAPE})

_REQUEST_WORDS = REQUEST_LAYOUT.size // CTL_WORD_WIDTH          # 5
_RESPONSE_WORDS = RESPONSE_LAYOUT.size // CTL_WORD_WIDTH        # 2
_REQUEST_VIEW = data.UnionLayout({
    "fields": REQUEST_LAYOUT,
    "words": data.ArrayLayout(CTL_WORD_WIDTH, _REQUEST_WORDS),
})
_RESPONSE_VIEW = data.UnionLayout({
    "fields": RESPONSE_LAYOUT,
    "words": data.ArrayLayout(CTL_WORD_WIDTH, _RESPONSE_WORDS),
})


class WeightPortSignature(wiring.Signature):
    """The weight members of :class:`~fpdeep.rtl.host.HostSignature`, alone.

    Members are seen from the side that holds the weights (a core, or a router
    facing the host), with the same names and meaning as in ``HostSignature``.

    Members
    -------
    weight_addr : In(unsigned(20))
        Address of the access.
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
        How many weights exist.
    """

    def __init__(self):
        super().__init__(weight_members())


def connect_weight_port(m, user, holder):
    """Join the weight members of ``user`` (which makes accesses) to ``holder``'s.

    Either may be any interface with the members of :class:`WeightPortSignature`,
    a :class:`~fpdeep.rtl.host.HostSignature` one included. ``holder``'s inputs
    (address, strobes, write data) are driven from ``user``, and ``user``'s read
    data, ``weight_rvalid`` and ``weight_count`` from ``holder``. Examples: a
    router's ``local`` port as ``user`` with a core's ``host`` port as ``holder``;
    or, inside a component that passes its own ``host`` port on, that port as
    ``user`` and a chip 0 router's ``host`` port as ``holder``.
    """
    m.d.comb += [
        holder.weight_addr.eq(user.weight_addr),
        holder.weight_read.eq(user.weight_read),
        holder.weight_write.eq(user.weight_write),
        holder.weight_wdata.eq(user.weight_wdata),
        user.weight_rdata.eq(holder.weight_rdata),
        user.weight_rvalid.eq(holder.weight_rvalid),
        user.weight_count.eq(holder.weight_count),
    ]


def _check_count(name, value, minimum):
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, not {value!r}")
    if not minimum <= value <= 1 << WEIGHT_ADDR_WIDTH:
        raise ValueError(f"{name} must be in [{minimum}, 2**{WEIGHT_ADDR_WIDTH}], not {value}")


class WeightAccessRouter(wiring.Component):
    """One chip's part of the cluster-wide weight address space (see the module doc).

    On chip 0 (``has_prev=False``) requests come from the host's weight strobes
    on ``host``, through a queue of ``queue_depth`` requests, and read results go
    back on ``host.weight_rvalid``/``weight_rdata``. On a later chip they come as
    CTL words on ``up_i`` and their responses leave on ``up_o``. Either way a
    request for ``base .. base + local_count - 1`` is made on ``local`` at address
    ``addr - base``, and any other goes out on ``down_o`` (if ``has_next``), its
    response coming back on ``down_i``.

    One request is handled at a time, from start to response; the next is taken
    the cycle after. Latencies, for a local port that answers a read ``L`` cycles
    after its strobe (``L >= 1``):

    * chip 0, local read: ``weight_rvalid`` ``L + 4`` cycles after the strobe;
    * chip 0, local write: on ``local`` 3 cycles after the strobe;
    * a later chip, local request: the local strobe 1 cycle after the request's
      last word is taken, the first response word offered ``L + 1`` cycles after
      the local read strobe (a write's acknowledgement 1 cycle after its strobe);
    * each hop down adds the request's words (3 or 5 cycles) to send, the
      receiving chip's handling, and the response words (2 or 1 cycles) to collect,
      plus the link's latency each way.

    Parameters
    ----------
    base : int
        First global address of this chip's weights.
    local_count : int
        Weights on this chip, at local addresses ``0 .. local_count - 1``.
    total_count : int
        Weights in the whole cluster; at least ``base + local_count``, and equal
        to it on the last chip.
    has_next : bool
        A chip follows; addresses beyond this chip's go to it on ``down_o``.
    has_prev : bool
        A chip precedes; requests come from it on ``up_i``. Without one (chip 0,
        ``base`` must then be 0) they come from the host on ``host``.
    queue_depth : int
        Chip 0 only: host requests held while an earlier one is carried out, at
        least 2. The queue holds ``queue_depth`` requests besides the one in
        hand; the host must not strobe while ``full``.

    Members
    -------
    local : In(WeightPortSignature())
        To this chip's weights (a core's ``host`` weight members). The router
        drives the address, strobes and write data, and waits for
        ``weight_rvalid`` after a read strobe for as long as it takes (a port that
        never answers stalls the chain); it strobes only addresses below
        ``local_count``, one request at a time. ``weight_count`` is not used.
    host : Out(WeightPortSignature())
        Without ``has_prev``: the host's weight port. ``weight_count`` is
        ``total_count``. At most one of ``weight_read`` and ``weight_write`` per
        cycle; one ``weight_rvalid`` pulse answers each read, in order.
    full : Out(1)
        Without ``has_prev``: the queue cannot take a strobe this cycle (a strobe
        now is dropped). Meant to be ORed into the host's ``busy``.
    up_i : In(stream.Signature(16))
        With ``has_prev``: request words from the previous chip's ``down_o``.
    up_o : Out(stream.Signature(16))
        With ``has_prev``: response words to the previous chip's ``down_i``.
    wrote_beyond : Out(1)
        With ``has_next``: pulses as a write to a chip further down is passed on (a
        chip whose weights a neighbour behind it holds refreshes its copies then).
    down_o : Out(stream.Signature(16))
        With ``has_next``: request words to the next chip's ``up_i``.
    down_i : In(stream.Signature(16))
        With ``has_next``: response words from the next chip's ``up_o``. Taken only
        while a response is awaited.
    pending : Out(1)
        A request is queued, being received, or not yet answered here. On chip 0,
        low means every write made so far has landed in its chip's memory.

    Raises
    ------
    TypeError
        For a non-integer count or queue depth, or a non-bool flag.
    ValueError
        For counts outside the 20-bit space or inconsistent with one another, or
        ``queue_depth`` below 2.
    """

    def __init__(self, *, base, local_count, total_count, has_next, has_prev, queue_depth=4):
        _check_count("base", base, 0)
        _check_count("local_count", local_count, 0)
        _check_count("total_count", total_count, 1)
        for name, flag in (("has_next", has_next), ("has_prev", has_prev)):
            if not isinstance(flag, bool):
                raise TypeError(f"{name} must be a bool, not {flag!r}")
        if not isinstance(queue_depth, int) or isinstance(queue_depth, bool):
            raise TypeError(f"queue_depth must be an int, not {queue_depth!r}")
        if queue_depth < 2:
            raise ValueError(f"queue_depth must be at least 2, not {queue_depth}")
        if base + local_count > total_count:
            raise ValueError(f"base + local_count ({base} + {local_count}) exceeds "
                             f"total_count ({total_count})")
        if not has_prev and base != 0:
            raise ValueError(f"base must be 0 on the first chip (has_prev=False), not {base}")
        if not has_next and base + local_count != total_count:
            raise ValueError(f"on the last chip (has_next=False) base + local_count "
                             f"({base} + {local_count}) must equal total_count ({total_count})")
        self._base, self._local_count, self._total_count = base, local_count, total_count
        self._has_next, self._has_prev = has_next, has_prev
        self._queue_depth = queue_depth

        words = stream.Signature(CTL_WORD_WIDTH)
        members = {"local": In(WeightPortSignature()), "pending": Out(1)}
        if has_prev:
            members.update(up_i=In(words), up_o=Out(words))
        else:
            members.update(host=Out(WeightPortSignature()), full=Out(1))
        if has_next:
            members.update(down_o=Out(words), down_i=In(words), wrote_beyond=Out(1))
        super().__init__(members)

    @property
    def base(self):
        return self._base

    @property
    def local_count(self):
        return self._local_count

    @property
    def total_count(self):
        return self._total_count

    def elaborate(self, platform):
        m = Module()
        base, count = self._base, self._local_count
        local = self.local

        req = Signal(_REQUEST_VIEW)         # the request in hand
        resp = Signal(_RESPONSE_VIEW)       # its response
        index = Signal(range(_REQUEST_WORDS))
        is_write = req.fields.op == ControlOp.WRITE
        last_req_word = Mux(is_write, _REQUEST_WORDS - 1, 2)
        last_resp_word = Mux(is_write, 0, _RESPONSE_WORDS - 1)
        is_local = (req.fields.addr >= base) & (req.fields.addr < base + count)
        m.d.comb += [local.weight_addr.eq(req.fields.addr - base),
                     local.weight_wdata.eq(req.fields.data)]

        if not self._has_prev:
            host = self.host
            m.submodules.queue = queue = fifo.SyncFIFOBuffered(
                width=REQUEST_LAYOUT.size, depth=self._queue_depth)
            entry = Signal(REQUEST_LAYOUT)
            with m.If(host.weight_write):
                m.d.comb += entry.op.eq(ControlOp.WRITE)
            with m.Else():
                m.d.comb += entry.op.eq(ControlOp.READ)
            m.d.comb += [
                entry.addr.eq(host.weight_addr),
                entry.data.eq(host.weight_wdata),
                queue.w_data.eq(entry),
                queue.w_en.eq(host.weight_read | host.weight_write),
                self.full.eq(~queue.w_rdy),
                host.weight_count.eq(self._total_count),
                host.weight_rdata.eq(resp.fields.value),
            ]

        with m.FSM() as fsm:
            with m.State("TAKE"):
                if self._has_prev:
                    up_i = self.up_i
                    m.d.comb += up_i.ready.eq(1)
                    with m.If(up_i.valid):
                        m.d.sync += req.words[index].eq(up_i.payload)
                        with m.If(index == 0):
                            # A reserved op word is dropped on its own.
                            with m.If((up_i.payload == ControlOp.READ.value) |
                                      (up_i.payload == ControlOp.WRITE.value)):
                                m.d.sync += index.eq(1)
                        with m.Elif(index == last_req_word):
                            m.d.sync += index.eq(0)
                            m.next = "DISPATCH"
                        with m.Else():
                            m.d.sync += index.eq(index + 1)
                else:
                    m.d.comb += queue.r_en.eq(1)
                    with m.If(queue.r_rdy):
                        m.d.sync += req.fields.eq(queue.r_data)
                        m.next = "DISPATCH"

            with m.State("DISPATCH"):
                with m.If(is_local):
                    m.d.comb += [local.weight_read.eq(~is_write),
                                 local.weight_write.eq(is_write)]
                    with m.If(is_write):
                        m.d.sync += resp.fields.value.eq(0)
                        m.next = "RESPOND"
                    with m.Else():
                        m.next = "LOCAL_WAIT"
                with m.Else():
                    if self._has_next:
                        m.d.comb += self.wrote_beyond.eq(is_write)
                        m.next = "SEND"
                    else:
                        # Beyond the last chip: reads as zero, writes are ignored.
                        m.d.sync += resp.fields.value.eq(0)
                        m.next = "RESPOND"

            with m.State("LOCAL_WAIT"):
                with m.If(local.weight_rvalid):
                    m.d.sync += resp.fields.value.eq(local.weight_rdata)
                    m.next = "RESPOND"

            if self._has_next:
                down_o, down_i = self.down_o, self.down_i
                with m.State("SEND"):
                    m.d.comb += [down_o.valid.eq(1), down_o.payload.eq(req.words[index])]
                    with m.If(down_o.ready):
                        m.d.sync += index.eq(index + 1)
                        with m.If(index == last_req_word):
                            m.d.sync += index.eq(0)
                            m.next = "REMOTE_WAIT"

                with m.State("REMOTE_WAIT"):
                    m.d.comb += down_i.ready.eq(1)
                    with m.If(down_i.valid):
                        m.d.sync += [resp.words[index].eq(down_i.payload), index.eq(index + 1)]
                        with m.If(index == last_resp_word):
                            m.d.sync += index.eq(0)
                            m.next = "RESPOND"

            with m.State("RESPOND"):
                if self._has_prev:
                    up_o = self.up_o
                    m.d.comb += [up_o.valid.eq(1), up_o.payload.eq(resp.words[index])]
                    with m.If(up_o.ready):
                        m.d.sync += index.eq(index + 1)
                        with m.If(index == last_resp_word):
                            m.d.sync += index.eq(0)
                            m.next = "TAKE"
                else:
                    m.d.comb += host.weight_rvalid.eq(~is_write)
                    m.next = "TAKE"

        busy = ~fsm.ongoing("TAKE")
        if self._has_prev:
            m.d.comb += self.pending.eq(busy | (index != 0))
        else:
            m.d.comb += self.pending.eq(busy | (queue.level != 0))
        return m
