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

__all__ = ["register", "run"]


def register(subparsers):
    from ..platforms.boards import board_names
    parser = subparsers.add_parser(
        "build", help="build the training core for a board",
        description="Build the single-chip training core into a bitstream with the "
                    "YoWASP tools, and report Fmax and utilisation.")
    parser.add_argument("--net", default="digits",
                        help="built-in network name or network file (default: digits)")
    parser.add_argument("--board", required=True, metavar="BOARD",
                        help=f"one of: {', '.join(board_names())}")
    parser.add_argument("-o", "--output", metavar="DIR",
                        help="output directory (default: build/<net>-<board>)")
    parser.add_argument("--batch-size", type=int, default=8, help="mini-batch size (default: 8)")
    parser.add_argument("--baud", type=int, default=115200,
                        help="host UART rate (default: 115200)")
    parser.add_argument("--verilog-only", action="store_true",
                        help="write <DIR>/top.v (core and UART bridge) instead of building")
    parser.set_defaults(handler=run)


def run(args):
    # Imported here so that `fpdeep --help` stays fast.
    from ..platforms.boards import get_board
    from ..platforms.build import build_core, core_verilog
    board = get_board(args.board)       # unknown names fail before any work
    if args.batch_size < 1:
        raise FpdeepError(f"--batch-size must be at least 1, not {args.batch_size}")
    net_tag = os.path.splitext(os.path.basename(args.net))[0]
    output = args.output or os.path.join("build", f"{net_tag}-{board.name}")
    if args.verilog_only:
        from ..plan.network import atomic_write_text
        text = core_verilog(args.net, board, batch_size=args.batch_size, baud=args.baud)
        os.makedirs(output, exist_ok=True)
        path = os.path.join(output, "top.v")
        atomic_write_text(path, text)
        print(f"wrote {path} ({len(text.splitlines())} lines)")
        return 0
    print(f"building {args.net} for {board.name} in {output} (minutes: the digits core takes "
          f"about 16 on an ECP5-85F) ...", flush=True)
    report = build_core(args.net, board, output, batch_size=args.batch_size, baud=args.baud)
    print(report.format())
    return 0
