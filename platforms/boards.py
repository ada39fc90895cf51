"""The open boards that fpdeep can build bitstreams for, by name.

Each entry maps a command-line name to its amaranth-boards platform class and
to what the board top needs: where the host UART and the busy LED are. Resource
models for the planner live in :mod:`fpdeep.plan.boards`, not here.
"""

from dataclasses import dataclass, field

from amaranth.build import Attrs, Pins, Resource, Subsignal
from amaranth_boards.ecpix5 import ECPIX585Platform
from amaranth_boards.icebreaker import ICEBreakerPlatform
from amaranth_boards.orangecrab_r0_2 import OrangeCrabR0_2_85FPlatform
from amaranth_boards.ulx3s import ULX3S_25F_Platform, ULX3S_45F_Platform, ULX3S_85F_Platform

from ..plan.errors import FpdeepError

__all__ = ["Board", "BOARDS", "get_board", "board_names"]


@dataclass(frozen=True)
class Board:
    """A buildable board.

    Attributes
    ----------
    name : str
        Name on the command line.
    platform_class : type
        The amaranth-boards platform.
    family : str
        ``"ecp5"`` or ``"ice40"``: selects which nextpnr report figures apply.
    led : tuple
        ``(resource, number, subsignal or None)`` of the LED that shows ``busy``.
    extra_resources : tuple
        Resources added to the platform before the build (a UART where the
        board defines none).
    build_options : dict
        Toolchain overrides passed to ``platform.prepare`` (``synth_opts`` ...).
    description : str
    """
    name: str
    platform_class: type
    family: str
    led: tuple
    extra_resources: tuple = ()
    build_options: dict = field(default_factory=dict)
    description: str = ""

    def platform(self):
        """A fresh platform instance (Amaranth platforms build only once each)."""
        platform = self.platform_class()
        if self.extra_resources:
            platform.add_resources(list(self.extra_resources))
        return platform

    @property
    def clock_hz(self):
        return int(self.platform_class().default_clk_frequency)


# The OrangeCrab has only USB; the host UART goes on the Feather header's
# "0"/"1" pins (RX/TX on Feather boards), for a 3.3 V USB-serial adapter.
_ORANGECRAB_UART = Resource("uart", 0,
                            Subsignal("rx", Pins("0", dir="i", conn=("io", 0))),
                            Subsignal("tx", Pins("1", dir="o", conn=("io", 0))),
                            Attrs(IO_TYPE="LVCMOS33"))

BOARDS = {board.name: board for board in [
    Board("ulx3s-85f", ULX3S_85F_Platform, "ecp5", ("led", 0, None),
          description="Radiona ULX3S, LFE5U-85F, UART on the FTDI USB port"),
    Board("ulx3s-45f", ULX3S_45F_Platform, "ecp5", ("led", 0, None),
          description="Radiona ULX3S, LFE5U-45F, UART on the FTDI USB port"),
    Board("ulx3s-25f", ULX3S_25F_Platform, "ecp5", ("led", 0, None),
          description="Radiona ULX3S, LFE5U-25F, UART on the FTDI USB port"),
    Board("orangecrab", OrangeCrabR0_2_85FPlatform, "ecp5", ("rgb_led", 0, "g"),
          extra_resources=(_ORANGECRAB_UART,),
          description="OrangeCrab r0.2 85F, UART on Feather pins 0 (RX) / 1 (TX)"),
    Board("ecpix5", ECPIX585Platform, "ecp5", ("rgb_led", 0, "g"),
          description="LambdaConcept ECPIX-5 85F, UART on the FTDI USB port"),
    # synth_ice40 maps multiplies to SB_MAC16 only when asked to.
    Board("icebreaker", ICEBreakerPlatform, "ice40", ("led", 0, None),
          build_options={"synth_opts": "-dsp"},
          description="1BitSquared iCEBreaker, iCE40UP5K, UART on the FTDI USB port"),
]}


def board_names():
    return list(BOARDS)


def get_board(name):
    """The :class:`Board` called ``name``.

    Raises
    ------
    FpdeepError
        For an unknown name, listing the valid ones.
    """
    try:
        return BOARDS[name]
    except (KeyError, TypeError):
        raise FpdeepError(f"unknown board {name!r}; the boards are: "
                          f"{', '.join(BOARDS)}") from None
