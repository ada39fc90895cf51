"""One chip's end of an inter-FPGA link, and a pair of them joined by simulated wires."""

from amaranth import *
from amaranth.lib import wiring, stream, data
from amaranth.lib.wiring import In, Out

from .frame import LinkConfig
from .phy import phy_signature, SimPhy
from .channels import ReceiveBuffers
from .transmitter import LinkTransmitter
from .receiver import LinkReceiver

__all__ = ["LinkStatus", "LinkEndpoint", "LinkPair", "connect_user_ports"]


LinkStatus = data.StructLayout({
    "replays": unsigned(16),     # replays started, by NAK or timeout
    "timeouts": unsigned(16),    # replays started by the replay timer
    "frames": unsigned(16),      # good frames received
    "bad_frames": unsigned(16),  # frames dropped for CRC/length/framing errors
    "duplicates": unsigned(16),  # good DATA frames dropped as replayed duplicates
    "overflow": unsigned(1),     # a receive FIFO overflowed (never expected)
})


def _phy_geometry(config, lanes, lane_width):
    if lane_width is None:
        if not isinstance(lanes, int) or lanes < 1 or config.word_width % lanes:
            raise ValueError(f"lanes must divide word_width ({config.word_width}), not {lanes!r}")
        lane_width = config.word_width // lanes
    if lanes * lane_width != config.word_width:
        raise ValueError(f"lanes * lane_width ({lanes} * {lane_width}) must equal "
                         f"word_width ({config.word_width}): one symbol carries one word")
    return lanes, lane_width


class LinkEndpoint(wiring.Component):
    """One chip's side of a full-duplex link: VC streams in and out, PHY symbols in and out.

    Made of a :class:`LinkTransmitter`, a :class:`LinkReceiver` and per-VC
    :class:`ReceiveBuffers`. The receiver hands the peer's ACK/NAK/credit state to the
    transmitter, and our own ACK, NAK requests and freed credits ride out on the
    transmitter's frames, so both directions share the one pair of wires.

    Guarantees: every word put into ``i[v]`` comes out of the peer's ``o[v]`` exactly
    once and in order, whatever the backpressure, for any bit-error pattern the CRC
    detects. VCs are independent: a stalled ``o[v]`` only stops ``i[v]``.

    Parameters
    ----------
    config : LinkConfig
        Link parameters; both endpoints of a link must use equal ones.
    lanes : int
        PHY lanes.
    lane_width : int or None
        Bits per lane; ``lanes * lane_width`` must equal ``config.word_width``.
        Default: ``word_width // lanes``.

    Members
    -------
    i : In(stream.Signature(word_width)).array(vcs)
        Words to send, per VC (see :class:`~.channels.VirtualChannel`).
    o : Out(stream.Signature(word_width)).array(vcs)
        Words received, per VC.
    phy_tx : Out(phy_signature(lanes, lane_width))
        Symbols to the wire.
    phy_rx : In(phy_signature(lanes, lane_width))
        Symbols from the wire.
    status : Out(LinkStatus)
        Error and retransmission counters.

    Throughput with no errors: ``max_payload`` words per
    ``config.frame_symbols(max_payload)`` cycles, shared round-robin among the VCs
    that have words and credits. Latency from ``i`` to the peer's ``o`` is about
    ``frame_symbols(length) + 4`` cycles plus the PHY latency.
    """

    def __init__(self, config=None, *, lanes=1, lane_width=None):
        if config is None:
            config = LinkConfig()
        if not isinstance(config, LinkConfig):
            raise TypeError(f"config must be a LinkConfig, not {config!r}")
        self._cfg = config
        self._lanes, self._lane_width = _phy_geometry(config, lanes, lane_width)
        phy = phy_signature(self._lanes, self._lane_width)
        super().__init__({
            "i": In(stream.Signature(config.word_width)).array(config.vcs),
            "o": Out(stream.Signature(config.word_width)).array(config.vcs),
            "phy_tx": Out(phy),
            "phy_rx": In(phy),
            "status": Out(LinkStatus),
        })
        #: The transmitter, receiver and receive buffers (after elaboration), for waveforms.
        self.transmitter = self.receiver = self.buffers = None

    @property
    def config(self):
        return self._cfg

    def elaborate(self, platform):
        m = Module()
        c = self._cfg
        m.submodules.tx = tx = LinkTransmitter(c)
        m.submodules.rx = rx = LinkReceiver(c)
        m.submodules.bufs = bufs = ReceiveBuffers(
            vcs=c.vcs, word_width=c.word_width, depth=c.rx_depth, credit_width=c.credit_width)
        for v in range(c.vcs):
            wiring.connect(m, wiring.flipped(self.i[v]), tx.i[v])
            wiring.connect(m, bufs.o[v], wiring.flipped(self.o[v]))
        wiring.connect(m, rx.o, bufs.i)
        self.transmitter, self.receiver, self.buffers = tx, rx, bufs
        m.d.comb += [
            self.phy_tx.valid.eq(tx.o.valid),
            self.phy_tx.payload.eq(tx.o.payload),
            rx.i.valid.eq(self.phy_rx.valid),
            rx.i.payload.eq(self.phy_rx.payload),
            tx.rx_ack.eq(rx.ack),
            tx.rx_sack.eq(rx.sack),
            tx.rx_ack_now.eq(rx.ack_now),
            tx.rx_nak.eq(rx.nak),
            tx.rx_freed.eq(bufs.freed),
            tx.peer.eq(rx.peer),
            tx.peer_valid.eq(rx.peer_valid),
            self.status.replays.eq(tx.replays),
            self.status.timeouts.eq(tx.timeouts),
            self.status.frames.eq(rx.frames),
            self.status.bad_frames.eq(rx.bad_frames),
            self.status.duplicates.eq(rx.duplicates),
            self.status.overflow.eq(bufs.overflow),
        ]
        return m


class LinkPair(wiring.Component):
    """Two :class:`LinkEndpoint` s, ``a`` and ``b``, joined by two :class:`SimPhy` wires.

    A test and benchmark fixture: one simulated chip pair with error injection per
    direction.

    Parameters
    ----------
    config : LinkConfig
        Link parameters for both endpoints.
    lanes, lane_width : int
        PHY geometry, as for :class:`LinkEndpoint`.
    latency : int
        Wire latency in cycles, each direction.

    Members
    -------
    a_i, b_i : In(stream.Signature(word_width)).array(vcs)
        Words into endpoint ``a`` (sent to ``b``) and into ``b`` (sent to ``a``).
    a_o, b_o : Out(stream.Signature(word_width)).array(vcs)
        Words out of ``a`` (sent by ``b``) and out of ``b`` (sent by ``a``).
    err_ab, err_ba : In(word_width)
        Bit-error masks for the wire from ``a`` to ``b`` and from ``b`` to ``a``
        (see :class:`~.phy.BitErrorInjector`).
    a_status, b_status : Out(LinkStatus)
        Each endpoint's counters.
    """

    def __init__(self, config=None, *, lanes=1, lane_width=None, latency=4):
        if config is None:
            config = LinkConfig()
        if not isinstance(config, LinkConfig):
            raise TypeError(f"config must be a LinkConfig, not {config!r}")
        self._cfg = config
        self._lanes, self._lane_width = _phy_geometry(config, lanes, lane_width)
        self._latency = latency
        if not isinstance(latency, int) or latency < 1:
            raise ValueError(f"latency must be a positive integer, not {latency!r}")
        user = stream.Signature(config.word_width)
        super().__init__({
            "a_i": In(user).array(config.vcs),
            "a_o": Out(user).array(config.vcs),
            "b_i": In(user).array(config.vcs),
            "b_o": Out(user).array(config.vcs),
            "err_ab": In(config.word_width),
            "err_ba": In(config.word_width),
            "a_status": Out(LinkStatus),
            "b_status": Out(LinkStatus),
        })
        #: The endpoints ``(a, b)`` (after elaboration), for waveforms.
        self.endpoints = None

    @property
    def config(self):
        return self._cfg

    def elaborate(self, platform):
        m = Module()
        kw = dict(lanes=self._lanes, lane_width=self._lane_width)
        m.submodules.a = a = LinkEndpoint(self._cfg, **kw)
        m.submodules.b = b = LinkEndpoint(self._cfg, **kw)
        m.submodules.ab = ab = SimPhy(**kw, latency=self._latency)
        m.submodules.ba = ba = SimPhy(**kw, latency=self._latency)
        self.endpoints = (a, b)
        wiring.connect(m, a.phy_tx, ab.i)
        wiring.connect(m, ab.o, b.phy_rx)
        wiring.connect(m, b.phy_tx, ba.i)
        wiring.connect(m, ba.o, a.phy_rx)
        m.d.comb += [
            ab.err.eq(self.err_ab),
            ba.err.eq(self.err_ba),
            self.a_status.eq(a.status),
            self.b_status.eq(b.status),
        ]
        connect_user_ports(m, self, a, b)
        return m


def connect_user_ports(m, pair, a, b):
    """Join a pair's ``a_i``/``a_o``/``b_i``/``b_o`` VC streams to its endpoints ``a``, ``b``."""
    for v in range(len(pair.a_i)):
        wiring.connect(m, wiring.flipped(pair.a_i[v]), a.i[v])
        wiring.connect(m, wiring.flipped(pair.b_i[v]), b.i[v])
        wiring.connect(m, a.o[v], wiring.flipped(pair.a_o[v]))
        wiring.connect(m, b.o[v], wiring.flipped(pair.b_o[v]))
