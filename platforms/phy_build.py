"""A timing check of the board PHY alone on the ULX3S-85F (LFE5U-85F).

``python -m fpdeep.platforms.phy_build [link_mhz] [build_dir]`` places and routes one
:class:`~fpdeep.rtl.link.board_phy.BoardPhy` (4 lanes of 4 bits each way, DDR through
``io.DDRBuffer``, so IDDRX1F/ODDRX1F) on GPIO pins and prints nextpnr's Fmax per clock
against its constraint. The core side is fed a counter and folded into an LED so that
nothing is optimised away.

The clocks come from pins with a frequency constraint: the core's from the board's
25 MHz oscillator (above the 16.7 MHz a 50 MHz link clock needs), ``tx_link`` from a
pin standing in for a PLL output, ``rx_link`` from the forwarded-clock pin. This checks
the PHY's logic at its link clock; it is not a board bring-up (no PLL, no 90° shift).
"""

import os
import sys
import time

from amaranth import *
from amaranth.build import Resource, Subsignal, Pins, Attrs, Clock
from amaranth.lib import io
from amaranth_boards.ulx3s import ULX3S_85F_Platform

from ..rtl.link.board_phy import BoardPhy, DDRPins
from .build import parse_nextpnr_log
from .toolchain import toolchain_env

__all__ = ["link_resources", "PhyBuildTop", "build_phy"]


def link_resources(link_hz, *, lanes=4):
    """One link's pins on the ULX3S GPIO header: ``lanes`` out and in, a forwarded
    clock each way, and a pin for the ``tx_link`` clock."""
    gpio = dict(conn=("gpio", 0))
    pins = lambda first, n: " ".join(f"{k}+" for k in range(first, first + n))
    return [Resource(
        "link", 0,
        Subsignal("tx", Pins(pins(0, lanes), dir="o", **gpio)),
        Subsignal("tx_clk", Pins(f"{lanes}+", dir="o", **gpio)),
        Subsignal("rx", Pins(pins(lanes + 1, lanes), dir="i", **gpio)),
        Subsignal("rx_clk", Pins(f"{2 * lanes + 1}+", dir="i", **gpio), Clock(link_hz)),
        Subsignal("tx_link_clk", Pins(f"{2 * lanes + 2}+", dir="i", **gpio), Clock(link_hz)),
        Attrs(IO_TYPE="LVCMOS33"))]


class PhyBuildTop(Elaboratable):
    """A :class:`BoardPhy` on the ``link`` resource of :func:`link_resources`."""

    def __init__(self, *, lanes=4, lane_width=4):
        self._lanes, self._lane_width = lanes, lane_width

    def elaborate(self, platform):
        m = Module()
        link = platform.request("link", 0, dir="-")
        clocks = {"sync": platform.request("clk25", 0, dir="-"),
                  "tx_link": link.tx_link_clk, "rx_link": link.rx_clk}
        for domain, port in clocks.items():
            m.domains += ClockDomain(domain)
            m.submodules[f"{domain}_clock"] = buffer = io.Buffer("i", port)
            m.d.comb += ClockSignal(domain).eq(buffer.i)
        m.submodules.phy = phy = BoardPhy(
            lanes=self._lanes, lane_width=self._lane_width,
            pins=DDRPins(tx_data=link.tx, tx_clock=link.tx_clk, rx_data=link.rx))
        count = Signal(len(phy.i.payload.as_value()))
        fold = Signal()
        m.d.sync += [count.eq(count + 1),
                     fold.eq(phy.o.payload.as_value().xor() ^ phy.o.valid ^
                             phy.status.as_value().xor())]
        m.d.comb += [phy.i.valid.eq(count[0]), phy.i.payload.eq(count)]
        m.submodules.led = led = io.Buffer("o", platform.request("led", 0, dir="-"))
        m.d.comb += led.o.eq(fold)
        return m


def build_phy(build_dir, *, link_mhz=50.0):
    """Place and route :class:`PhyBuildTop`; return ``(clocks, utilisation, seconds)``
    as :func:`~.build.parse_nextpnr_log` gives them."""
    platform = ULX3S_85F_Platform()
    platform.add_resources(link_resources(link_mhz * 1e6))
    os.environ.update(toolchain_env())
    start = time.monotonic()
    platform.build(PhyBuildTop(), name="top", build_dir=build_dir, do_program=False)
    seconds = time.monotonic() - start
    with open(os.path.join(build_dir, "top.tim")) as report:
        utilisation, clocks = parse_nextpnr_log(report.read())
    return clocks, utilisation, seconds


if __name__ == "__main__":
    link_mhz = float(sys.argv[1]) if len(sys.argv) > 1 else 50.0
    clocks, utilisation, seconds = build_phy(sys.argv[2] if len(sys.argv) > 2 else "build-phy",
                                             link_mhz=link_mhz)
    for net, (fmax, target) in clocks.items():
        print(f"{net}: {fmax:.1f} MHz (constraint {target:.1f} MHz)")
    print({kind: used for kind, (used, _) in utilisation.items() if used}, f"{seconds:.0f} s")
