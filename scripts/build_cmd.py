"""``fpdeep build``: a bitstream (or Verilog) of the single-chip training core for a board.

Examples::

    fpdeep build --net digits --board ulx3s-85f -o build/digits
    fpdeep build --net digits --board ulx3s-85f --verilog-only -o build/digits

The bitstream, the tools' log (``build.log``), the nextpnr report
(``top.tim``) and a JSON summary (``fpdeep-build.json``) land in the output
directory, which is only written once the build has succeeded. The summary
printed gives Fmax against the board clock, the LUTs, multipliers and block
RAMs used, and the critical path.
"""

import os

from ..plan.errors import FpdeepError
from .args import network_arg, positive_int

__all__ = ["register", "run", "check_baud", "BAUD_TOLERANCE"]

#: The largest relative error of the UART's bit rate (clock / whole divisor) against
#: the rate asked for: a receiver samples mid-bit, so over 10 bits of a frame the two
#: ends may drift apart by under half a bit, and each end may take half of it.
BAUD_TOLERANCE = 0.02



def check_baud(clock_hz, baud):
    """Raise FpdeepError unless ``clock_hz`` makes ``baud`` within BAUD_TOLERANCE (the
    UART divides the clock by ``clock_hz // baud``, which must be at least 4)."""
    divisor = int(clock_hz) // baud
    if divisor < 4:
        raise FpdeepError(f"--baud {baud}: a {clock_hz / 1e6:g} MHz clock needs at least 4 "
                          f"cycles per bit, so at most {int(clock_hz) // 4} baud")
    error = abs(clock_hz / divisor - baud) / baud
    if error > BAUD_TOLERANCE:
        raise FpdeepError(f"--baud {baud}: a {clock_hz / 1e6:g} MHz clock makes "
                          f"{clock_hz / divisor:.0f} baud ({error:.1%} off, over the "
                          f"{BAUD_TOLERANCE:.0%} a UART tolerates)")


def register(subparsers):
    from ..platforms.boards import board_names
    parser = subparsers.add_parser(
        "build", help="build the training core for a board",
        description="Build the single-chip training core into a bitstream with the "
                    "YoWASP tools, and report Fmax and utilisation.")
    parser.add_argument("--board", required=True, metavar="BOARD",
                        help=f"one of: {', '.join(board_names())}")
    parser.add_argument("-o", "--output", metavar="DIR",
                        help="output directory (default: build/<net>-<board>)")
    parser.add_argument("--net", default="digits", type=network_arg,
                        help="built-in network name or network file (default: digits)")
    parser.add_argument("--batch-size", type=positive_int, default=8,
                        help="mini-batch size (default: 8)")
    parser.add_argument("--baud", type=positive_int, default=115200,
                        help="host UART rate (default: 115200)")
    parser.add_argument("--verilog-only", action="store_true",
                        help="write <DIR>/top.v (core and UART bridge) instead of building")
    parser.set_defaults(handler=run)


def run(args):
    # Imported here so that `fpdeep --help` stays fast.
    from ..platforms.boards import get_board
    from ..platforms.build import build_core, core_verilog
    board = get_board(args.board)       # unknown names fail before any work
    check_baud(board.clock_hz, args.baud)
    net_tag = os.path.splitext(os.path.basename(args.net))[0]
    output = args.output or os.path.join("build", f"{net_tag}-{board.name}")
    if args.verilog_only:
        from ..plan.files import atomic_write_text
        from ..platforms.build import VERILOG_MARKER
        _check_verilog_dir(output)
        text = core_verilog(args.net, board, batch_size=args.batch_size, baud=args.baud)
        os.makedirs(output, exist_ok=True)
        path = os.path.join(output, "top.v")
        atomic_write_text(path, text)
        atomic_write_text(os.path.join(output, VERILOG_MARKER), "written by fpdeep build "
                          "--verilog-only; a later fpdeep build may replace this directory\n")
        print(f"wrote {path} ({len(text.splitlines())} lines)")
        return 0
    print(f"building {args.net} for {board.name} in {output} (minutes: the digits core takes "
          f"about 16 on an ECP5-85F) ...", flush=True)
    report = build_core(args.net, board, output, batch_size=args.batch_size, baud=args.baud)
    print(report.format())
    return 0


def _check_verilog_dir(output):
    """Refuse to write top.v into a directory fpdeep did not make: it must be new
    (made with its parents, as a build makes ``build/<net>-<board>``), empty, hold
    the marker of an earlier --verilog-only, or an earlier build's report."""
    from ..platforms.build import REPORT_FILE, VERILOG_MARKER as MARKER
    if not os.path.exists(output):
        return
    if not os.path.isdir(output):
        raise FpdeepError(f"-o {output!r} is not a directory")
    entries = set(os.listdir(output))
    if entries and not entries & {MARKER, REPORT_FILE}:
        raise FpdeepError(f"-o {output!r} holds files fpdeep did not write; choose an empty "
                          f"or new directory")
