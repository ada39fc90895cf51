"""Board and cluster resource models: what the planner knows of a chip (pure Python).

A :class:`Board` is what the planner needs to know about one FPGA board: its
multipliers (one PE each), block RAM bits, LUTs, a design clock, its link lanes
and their bit rate, and optional external DRAM. A :class:`Cluster` is N boards
in a 1-D chain; neighbouring boards are joined by one link whose bandwidth and
latency the cluster records.

Where the figures come from
---------------------------
* Open ECP5 / iCE40 parts: the nextpnr utilisation reports in FACTS.md
  (multipliers, 18 Kb or 4 Kb block RAMs, LUT4s).
* XC7VX690T (VC709): Xilinx DS180 (7 series overview): 433,200 LUTs, 3,600
  DSP48E1, 1,470 x 36 Kb BRAM = 52,920 Kb, 80 GTH at up to 13.1 Gb/s. The VC709
  board carries two 4 GB DDR3-1866 SODIMMs (64-bit each).
* XCVU9P: Xilinx DS890 (UltraScale+ overview): 1,182,240 LUTs, 6,840 DSP48E2,
  2,160 x 36 Kb BRAM = 75.9 Mb, 960 x 288 Kb URAM = 270 Mb, 120 GTY at up to
  32.75 Gb/s. DRAM as on a VCU118-class board: two 64-bit DDR4-2400 banks.

Assumptions (ours, stated so that measurements can replace them)
---------------------------------------------------------------
* Clocks are design clocks, not oscillator frequencies: 50 MHz for ECP5 boards
  (the first MAC build reached 70 MHz, FACTS.md), 24 MHz for iCE40UP5K, 200 MHz
  for the VX690T and 250 MHz for the VU9P.
* Boards without transceivers link over GPIO pairs; their lane counts and rates
  are modest guesses for a source-synchronous GPIO PHY and are marked as such.
* ``lanes`` is the number of full-duplex lanes of the whole board. In a chain a
  board has two neighbours and gives each half of its lanes, so one link carries
  ``lanes / 2 * lane_gbps`` in *each* direction (see :meth:`Board.link_gbps`).
"""

import math
from dataclasses import dataclass, field, asdict, replace

from .errors import FpdeepError

__all__ = ["Board", "Cluster", "BOARDS", "get_board", "board_names"]


@dataclass(frozen=True)
class Board:
    """Resources of one FPGA board.

    Parameters
    ----------
    name : str
        Short name used on the command line (``ulx3s-85f``, ``vc709``...).
    part : str
        The FPGA part.
    multipliers : int
        Hardware multipliers (MULT18X18D, SB_MAC16, DSP48). One PE uses one.
    bram_bits : int
        Block RAM bits, including large on-chip RAMs (URAM, SPRAM).
    luts : int
        LUTs (LUT4 on ECP5/iCE40, LUT6 on Xilinx).
    clock_hz : float
        Design clock.
    lanes : int
        Full-duplex link lanes of the board (split between its two neighbours).
    lane_gbps : float
        Bit rate of one lane, per direction.
    dram_bits : int
        External DRAM capacity (0 if none).
    dram_gbps : float
        External DRAM bandwidth (peak).
    link_kind : str
        ``"serdes"`` or ``"gpio"`` (a guess for boards without transceivers).
    """
    name: str
    part: str
    multipliers: int
    bram_bits: int
    luts: int
    clock_hz: float
    lanes: int
    lane_gbps: float
    dram_bits: int = 0
    dram_gbps: float = 0.0
    link_kind: str = "serdes"

    def __post_init__(self):
        for attr in ("multipliers", "bram_bits", "luts", "lanes"):
            value = getattr(self, attr)
            if not isinstance(value, int) or value < 0:
                raise FpdeepError(f"board {self.name!r}: {attr} must be a non-negative int, "
                                  f"not {value!r}")
        if self.multipliers < 1:
            raise FpdeepError(f"board {self.name!r}: needs at least one multiplier")
        if not self.clock_hz > 0:
            raise FpdeepError(f"board {self.name!r}: clock must be positive, not {self.clock_hz!r}")

    @property
    def total_gbps(self):
        """Link bandwidth of the whole board, per direction, summed over lanes."""
        return self.lanes * self.lane_gbps

    @property
    def link_gbps(self):
        """Bandwidth of the link to one neighbour, per direction (half the lanes)."""
        return self.total_gbps / 2

    def with_link_gbps(self, total_gbps):
        """The same board with its total per-FPGA link bandwidth set to ``total_gbps``."""
        if not total_gbps > 0:
            raise FpdeepError(f"link bandwidth must be positive, not {total_gbps!r} Gb/s")
        lanes = max(self.lanes, 2)
        return replace(self, lanes=lanes, lane_gbps=total_gbps / lanes)

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, spec):
        try:
            return cls(**spec)
        except TypeError as error:
            raise FpdeepError(f"board: {error}") from None


_KB = 1024

BOARDS = {board.name: board for board in [
    # LFE5U-85F: 156 MULT18X18D, 208 x 18 Kb EBR, 83,640 LUT4; 32 MB SDRAM (16-bit, ~100 MHz).
    Board("ulx3s-85f", "LFE5U-85F-6BG381C", 156, 208 * 18 * _KB, 83_640, 50e6, 8, 0.1,
          dram_bits=32 * 8 * 2**20, dram_gbps=1.6, link_kind="gpio"),
    Board("ulx3s-45f", "LFE5U-45F-6BG381C", 72, 108 * 18 * _KB, 43_848, 50e6, 8, 0.1,
          dram_bits=32 * 8 * 2**20, dram_gbps=1.6, link_kind="gpio"),
    Board("ulx3s-25f", "LFE5U-25F-6BG381C", 28, 56 * 18 * _KB, 24_288, 50e6, 8, 0.1,
          dram_bits=32 * 8 * 2**20, dram_gbps=1.6, link_kind="gpio"),
    # OrangeCrab 25F (the common variant); Feather header: few free pins.
    Board("orangecrab", "LFE5U-25F-8MG285C", 28, 56 * 18 * _KB, 24_288, 50e6, 4, 0.1,
          dram_bits=128 * 8 * 2**20, dram_gbps=3.2, link_kind="gpio"),
    # ECPIX-5 85: LFE5UM5G-85F, has SERDES but the board routes none to a cable
    # connector we use; link over PMOD GPIO pairs.
    Board("ecpix5", "LFE5UM5G-85F-8BG554I", 156, 208 * 18 * _KB, 83_640, 50e6, 8, 0.1,
          dram_bits=512 * 8 * 2**20, dram_gbps=6.4, link_kind="gpio"),
    # iCE40UP5K: 8 SB_MAC16, 30 x 4 Kb EBR + 4 x 256 Kb SPRAM, 5,280 LUT4.
    Board("icebreaker", "iCE40UP5K-SG48", 8, 30 * 4 * _KB + 4 * 256 * _KB, 5_280, 24e6, 4,
          0.024, link_kind="gpio"),
    # VC709: XC7VX690T. 80 GTH; the paper's setting uses 6 per FPGA at 10 Gb/s.
    Board("vc709", "XC7VX690T-2FFG1761C", 3_600, 1_470 * 36 * _KB, 433_200, 200e6, 6, 10.0,
          dram_bits=2 * 4 * 8 * 2**30, dram_gbps=2 * 1.866 * 64),
    # VU9P (VCU118 class): BRAM + URAM together.
    Board("vu9p", "XCVU9P-L2FLGA2104E", 6_840, 2_160 * 36 * _KB + 960 * 288 * _KB, 1_182_240,
          250e6, 8, 25.0, dram_bits=2 * 4 * 8 * 2**30, dram_gbps=2 * 2.4 * 64),
]}


def board_names():
    return sorted(BOARDS)


def get_board(name):
    """The built-in board called ``name`` (case-insensitive).

    Raises
    ------
    FpdeepError
        If there is no such board.
    """
    key = str(name).lower()
    if key not in BOARDS:
        raise FpdeepError(f"unknown board {name!r}; choose one of {', '.join(board_names())}")
    return BOARDS[key]


@dataclass
class Cluster:
    """N boards in a 1-D chain: chip ``i`` links to chips ``i - 1`` and ``i + 1``.

    Parameters
    ----------
    boards : list of Board
        One per chip, in chain order; kinds may be mixed.
    link_latency_ns : float
        One-way latency of one link (PHY + link layer).
    link_gbps : float or None
        If given, overrides every board's total per-FPGA link bandwidth (per
        direction, summed over its lanes); each neighbour link gets half.
    link_ber : float
        Bit-error rate of every link, in [0, 1): the paper planner's link payload is
        the raw rate times :func:`fpdeep.plan.model.timing.link_efficiency` of it.
    """
    boards: list
    link_latency_ns: float = 500.0
    link_gbps: float | None = None
    link_ber: float = 0.0
    _effective: list = field(init=False, repr=False)

    def __post_init__(self):
        self.boards = list(self.boards)
        if not self.boards:
            raise FpdeepError("a cluster needs at least one chip")
        if self.link_latency_ns < 0:
            raise FpdeepError(f"link latency must not be negative, not {self.link_latency_ns!r}")
        ber = self.link_ber
        if (isinstance(ber, bool) or not isinstance(ber, (int, float))
                or not math.isfinite(ber) or not 0 <= ber < 1):
            raise FpdeepError(f"link bit-error rate must be a number in [0, 1), not {ber!r}")
        if self.link_gbps is not None:
            self._effective = [b.with_link_gbps(self.link_gbps) for b in self.boards]
        else:
            self._effective = list(self.boards)

    @classmethod
    def uniform(cls, board, chips, **kwargs):
        if isinstance(board, str):
            board = get_board(board)
        if not isinstance(chips, int) or isinstance(chips, bool) or chips < 1:
            raise FpdeepError(f"chip count must be a positive integer, not {chips!r}")
        return cls([board] * chips, **kwargs)

    def __len__(self):
        return len(self.boards)

    def board(self, index):
        """Board ``index`` with any cluster-wide link override applied."""
        return self._effective[index]

    def link_bps(self, cut):
        """Bits per second, per direction, of the link between chips ``cut`` and ``cut + 1``."""
        return 1e9 * min(self.board(cut).link_gbps, self.board(cut + 1).link_gbps)

    def to_dict(self):
        return {
            "boards": [b.name for b in self.boards],
            "board_specs": {b.name: b.to_dict() for b in self.boards},
            "link_gbps_per_fpga": [self.board(i).total_gbps for i in range(len(self))],
            "link_gbps_per_neighbour": [self.board(i).link_gbps for i in range(len(self))],
            "link_latency_ns": self.link_latency_ns,
            "link_gbps_override": self.link_gbps,
            "link_ber": self.link_ber,
        }

    @classmethod
    def from_dict(cls, spec):
        try:
            specs = spec["board_specs"]
            boards = [Board.from_dict(specs[name]) for name in spec["boards"]]
            return cls(boards, link_latency_ns=spec["link_latency_ns"],
                       link_gbps=spec.get("link_gbps_override"),
                       # Plans written before the BER was recorded assumed none.
                       link_ber=spec.get("link_ber", 0.0))
        except (KeyError, TypeError) as error:
            raise FpdeepError(f"cluster: missing field {error}") from None
