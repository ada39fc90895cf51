"""Simulation models for :class:`~.board_phy.BoardPhy`: DDR pin buffers and the wire.

``io.DDRBuffer`` does not simulate, so :class:`SimPins` stands in for
:class:`~.board_phy.DDRPins`: its buffers have ``io.DDRBuffer``'s ports and its
documented timing (one cycle from ``o`` to the pin, one from the pin to ``i``), and
their pins are signals a :class:`ChannelModel` joins. A pin is modelled per link cycle
as the pair of bits it carries, first the one sent on the rising edge.

What is modelled is what the PHY must cope with: per-lane skew (0 or 1 bit, with any
wire delay in whole link cycles on top), independent clocks in the two boards' domains
(the test gives them periods ±200 ppm apart and random phases), and bit errors. The
forwarded clock is the sender's ``tx_link`` domain itself: the receiver's ``rx_link``
is that domain, sampling mid-bit as a 90° shift would make it do on a board.
"""

from amaranth import *
from amaranth.lib import wiring, io, stream
from amaranth.lib.wiring import In, Out

from .board_phy import BoardPhy, BoardPhyStatus
from .endpoint import LinkEndpoint, LinkStatus, _phy_geometry, connect_user_ports
from .frame import LinkConfig
from .phy import phy_signature

__all__ = ["SimDDRBuffer", "SimPins", "ChannelModel", "BoardPhyPair", "BoardLinkPair",
           "board_clocks"]


def board_clocks(link_ratio, *, ppm, rng, link_period=10e-9, domains=None):
    """The clocks of a :class:`BoardPhyPair` for ``Simulator.add_clock``.

    Board ``a``'s link clock has period ``link_period``, board ``b``'s is ``ppm`` parts
    per million longer; each core clock is its board's link clock divided by
    ``link_ratio`` (one PLL). Every clock gets a random phase from ``rng``. With
    ``domains`` (as for :class:`BoardPhyPair`) whose two cores share one domain, that
    clock is added once and ``ppm`` must be 0.

    Returns
    -------
    list of (period, domain, phase)
    """
    d = {"a": "sync", "a_link": "a_link", "b": "b", "b_link": "b_link", **(domains or {})}
    if d["a"] == d["b"] and ppm:
        raise ValueError(f"ppm must be 0 when both cores share the domain {d['a']!r}")
    periods = {d["a_link"]: link_period, d["b_link"]: link_period * (1 + ppm * 1e-6)}
    periods[d["a"]] = link_period * link_ratio
    periods[d["b"]] = periods[d["b_link"]] * link_ratio
    return [(period, domain, rng.random() * period) for domain, period in periods.items()]


class SimDDRBuffer(wiring.Component):
    """A model of an ``io.DDRBuffer`` of ``width`` pins, with its ports.

    ``pins`` holds, per link cycle, each pin's two bits: bit ``2 * n`` the first
    (rising-edge) bit of pin ``n``, bit ``2 * n + 1`` the second.
    """

    def __init__(self, direction, width, pins, domain):
        self._direction, self._width, self._domain = io.Direction(direction), width, domain
        self.pins = pins
        super().__init__(io.DDRBuffer.Signature(direction, width).flip())

    def elaborate(self, platform):
        m = Module()
        sync = m.d[self._domain]
        for n in range(self._width):
            if self._direction is io.Direction.Output:
                sync += [self.pins[2 * n].eq(self.o[0][n]), self.pins[2 * n + 1].eq(self.o[1][n])]
            else:
                sync += [self.i[0][n].eq(self.pins[2 * n]), self.i[1][n].eq(self.pins[2 * n + 1])]
        return m


class SimPins:
    """The pins of one :class:`BoardPhy` in simulation: :class:`SimDDRBuffer` s in place
    of :class:`~.board_phy.DDRPins`' ``io.DDRBuffer`` s.

    Attributes
    ----------
    tx_pins, rx_pins : Signal(2 * lanes)
        The data pins, a pair of bits per lane per link cycle.
    clock_pin : Signal(2)
        The forwarded-clock pin (``0b01``: high, then low, every cycle).
    """

    def __init__(self, lanes, name):
        self.tx_pins = Signal(2 * lanes, name=f"{name}_tx_pins")
        self.rx_pins = Signal(2 * lanes, name=f"{name}_rx_pins")
        self.clock_pin = Signal(2, name=f"{name}_clock_pin")

    def tx_data(self, lanes, domain):
        return SimDDRBuffer("o", lanes, self.tx_pins, domain)

    def tx_clock(self, domain):
        return SimDDRBuffer("o", 1, self.clock_pin, domain)

    def rx_data(self, lanes, domain):
        return SimDDRBuffer("i", lanes, self.rx_pins, domain)


class ChannelModel(wiring.Component):
    """One direction's wire between two :class:`SimPins`, in the sender's ``tx_link``.

    Parameters
    ----------
    lanes : int
    skew : list of int
        Per lane, 0 or 1: that lane's bits arrive one bit period late.
    latency : int
        Link cycles of wire delay, at least 0.

    Members
    -------
    i : In(2 * lanes)
        The sender's data pins.
    o : Out(2 * lanes)
        The receiver's data pins.
    err : In(2 * lanes)
        Bits flipped on the wire this link cycle (see :class:`~.phy.BitErrorInjector`).
    cut : In(1)
        The wire is cut: the receiver reads zeros.
    """

    def __init__(self, *, lanes, skew, latency):
        skew = list(skew)
        if len(skew) != lanes or any(s not in (0, 1) for s in skew):
            raise ValueError(f"skew must be {lanes} values of 0 or 1, not {skew!r}")
        if not isinstance(latency, int) or latency < 0:
            raise ValueError(f"latency must be a non-negative integer, not {latency!r}")
        self._lanes, self._skew, self._latency = lanes, skew, latency
        super().__init__({"i": In(2 * lanes), "o": Out(2 * lanes), "err": In(2 * lanes),
                          "cut": In(1)})

    def elaborate(self, platform):
        m = Module()
        bits = self.i
        for stage in range(self._latency):
            q = Signal(2 * self._lanes, name=f"wire_{stage}")
            m.d.sync += q.eq(bits)
            bits = q
        late = Signal(self._lanes)          # each lane's second bit of the last cycle
        skewed = Signal(2 * self._lanes)
        for k, s in enumerate(self._skew):
            m.d.sync += late[k].eq(bits[2 * k + 1])
            m.d.comb += skewed[2 * k:2 * k + 2].eq(Cat(late[k], bits[2 * k]) if s else
                                                   bits[2 * k:2 * k + 2])
        m.d.comb += self.o.eq(Mux(self.cut, 0, skewed ^ self.err))
        return m


class BoardPhyPair(wiring.Component):
    """Two :class:`BoardPhy` s, ``a`` and ``b``, joined by two :class:`ChannelModel` s.

    Clock domains to give the simulator (names as in ``domains``): ``a`` and ``a_link``
    (board ``a``: its core, and its link clock ``link_ratio`` times faster), ``b`` and
    ``b_link`` (board ``b``).

    Parameters
    ----------
    lanes, lane_width : int
        PHY geometry.
    skew_ab, skew_ba : list of int
        Per-lane skew of each direction (see :class:`ChannelModel`).
    latency : int
        Wire delay in link cycles, each direction.
    domains : dict
        Domain names for ``a``, ``a_link``, ``b``, ``b_link``; default ``sync``,
        ``a_link``, ``b``, ``b_link``. The two cores may share one domain.

    Members
    -------
    a_i, b_o : the symbols from ``a`` to ``b`` (``a_i`` in ``sync``, ``b_o`` in ``b``).
    b_i, a_o : the symbols from ``b`` to ``a``.
    err_ab, err_ba : In(2 * lanes)
        Wire bit errors per link cycle (in ``a_link`` and ``b_link``).
    cut_ab, cut_ba : In(1)
        Cut a wire.
    a_status, b_status : Out(BoardPhyStatus)
        Each PHY's status, in its own core domain.
    """

    def __init__(self, *, lanes=4, lane_width=4, skew_ab=None, skew_ba=None, latency=2,
                 domains=None):
        self.domains = {"a": "sync", "a_link": "a_link", "b": "b", "b_link": "b_link",
                        **(domains or {})}
        sig = phy_signature(lanes, lane_width)
        self._lanes, self._lane_width = lanes, lane_width
        self._skew = (list(skew_ab or [0] * lanes), list(skew_ba or [0] * lanes))
        self._latency = latency
        self.pins = (SimPins(lanes, "a"), SimPins(lanes, "b"))
        # Elaboratable now so that a test can read link_ratio and coding.
        self.phys = tuple(BoardPhy(lanes=lanes, lane_width=lane_width, pins=p)
                          for p in self.pins)
        self.channels = (ChannelModel(lanes=lanes, skew=self._skew[0], latency=latency),
                         ChannelModel(lanes=lanes, skew=self._skew[1], latency=latency))
        super().__init__({
            "a_i": In(sig), "a_o": Out(sig), "b_i": In(sig), "b_o": Out(sig),
            "err_ab": In(2 * lanes), "err_ba": In(2 * lanes),
            "cut_ab": In(1), "cut_ba": In(1),
            "a_status": Out(BoardPhyStatus), "b_status": Out(BoardPhyStatus),
        })

    @property
    def link_ratio(self):
        return self.phys[0].link_ratio

    def elaborate(self, platform):
        m = Module()
        a, b = self.phys
        ab, ba = self.channels
        d = self.domains
        m.submodules.a = DomainRenamer({"sync": d["a"], "tx_link": d["a_link"],
                                        "rx_link": d["b_link"]})(a)
        m.submodules.b = DomainRenamer({"sync": d["b"], "tx_link": d["b_link"],
                                        "rx_link": d["a_link"]})(b)
        m.submodules.ab = DomainRenamer(d["a_link"])(ab)
        m.submodules.ba = DomainRenamer(d["b_link"])(ba)
        pa, pb = self.pins
        m.d.comb += [
            ab.i.eq(pa.tx_pins), pb.rx_pins.eq(ab.o), ab.err.eq(self.err_ab),
            ab.cut.eq(self.cut_ab),
            ba.i.eq(pb.tx_pins), pa.rx_pins.eq(ba.o), ba.err.eq(self.err_ba),
            ba.cut.eq(self.cut_ba),
            self.a_status.eq(a.status), self.b_status.eq(b.status),
        ]
        wiring.connect(m, wiring.flipped(self.a_i), a.i)
        wiring.connect(m, wiring.flipped(self.b_i), b.i)
        wiring.connect(m, a.o, wiring.flipped(self.a_o))
        wiring.connect(m, b.o, wiring.flipped(self.b_o))
        return m


class BoardLinkPair(wiring.Component):
    """Two :class:`~.endpoint.LinkEndpoint` s over a :class:`BoardPhyPair`.

    The ports of :class:`~.endpoint.LinkPair`, with ``a``'s side in ``sync`` and
    ``b``'s in ``b``, plus the PHY pair's ``cut_ab``/``cut_ba`` and
    ``a_phy``/``b_phy`` status. ``err_ab``/``err_ba`` are wire errors per link cycle,
    ``2 * lanes`` bits wide.

    Parameters
    ----------
    config : LinkConfig
        Must set ``cc_interval`` (the clocks differ; see :mod:`.board_phy`).
    lanes : int
        Lanes per direction; ``lane_width = word_width // lanes``.
    **phy_args
        ``skew_ab``, ``skew_ba``, ``latency``, ``domains`` for :class:`BoardPhyPair`.

    Attributes
    ----------
    domains : dict
        The clock domain of each side's ports (``a``, ``b``), each wire's error mask
        (``ab``, ``ba``) and each board's link clock (``a_link``, ``b_link``), as
        :func:`~.traffic.run_traffic` reads it.
    """

    def __init__(self, config=None, *, lanes=4, **phy_args):
        config = config or LinkConfig(cc_interval=1024)
        if not isinstance(config, LinkConfig):
            raise TypeError(f"config must be a LinkConfig, not {config!r}")
        if config.cc_interval is None:
            raise ValueError("config.cc_interval must be set: a board link needs clock "
                             "compensation")
        self._cfg = config
        lanes, lane_width = _phy_geometry(config, lanes, None)
        self.phy_pair = BoardPhyPair(lanes=lanes, lane_width=lane_width, **phy_args)
        d = self.phy_pair.domains
        self.domains = {**d, "ab": d["a_link"], "ba": d["b_link"]}
        user = stream.Signature(config.word_width)
        super().__init__({
            "a_i": In(user).array(config.vcs), "a_o": Out(user).array(config.vcs),
            "b_i": In(user).array(config.vcs), "b_o": Out(user).array(config.vcs),
            "err_ab": In(2 * lanes), "err_ba": In(2 * lanes),
            "cut_ab": In(1), "cut_ba": In(1),
            "a_status": Out(LinkStatus), "b_status": Out(LinkStatus),
            "a_phy": Out(BoardPhyStatus), "b_phy": Out(BoardPhyStatus),
        })
        self._geometry = (lanes, lane_width)

    @property
    def config(self):
        return self._cfg

    @property
    def link_ratio(self):
        return self.phy_pair.link_ratio

    def elaborate(self, platform):
        m = Module()
        lanes, lane_width = self._geometry
        a = LinkEndpoint(self._cfg, lanes=lanes, lane_width=lane_width)
        b = LinkEndpoint(self._cfg, lanes=lanes, lane_width=lane_width)
        m.submodules.a = DomainRenamer(self.domains["a"])(a)
        m.submodules.b = DomainRenamer(self.domains["b"])(b)
        m.submodules.phys = phys = self.phy_pair
        wiring.connect(m, a.phy_tx, phys.a_i)
        wiring.connect(m, phys.b_o, b.phy_rx)
        wiring.connect(m, b.phy_tx, phys.b_i)
        wiring.connect(m, phys.a_o, a.phy_rx)
        m.d.comb += [
            phys.err_ab.eq(self.err_ab), phys.err_ba.eq(self.err_ba),
            phys.cut_ab.eq(self.cut_ab), phys.cut_ba.eq(self.cut_ba),
            self.a_status.eq(a.status), self.b_status.eq(b.status),
            self.a_phy.eq(phys.a_status), self.b_phy.eq(phys.b_status),
        ]
        connect_user_ports(m, self, a, b)
        return m
