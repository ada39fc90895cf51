"""Bitstream builds for the open boards, and the figures nextpnr reports for them.

:func:`build` puts any component with a ``host`` port of
:class:`~fpdeep.rtl.host.HostSignature` on a board: :class:`HostedCore` adds the
UART :class:`~fpdeep.rtl.host.HostBridge`, :class:`BoardTop` ties its serial
lines to the board's ``uart`` resource and ``busy`` to an LED. The YoWASP tools
do the rest, and :func:`parse_nextpnr_log` reads Fmax and utilisation, and
:func:`parse_critical_path` the slowest path, from the nextpnr log that
Amaranth writes to ``<name>.tim``.

A build runs in a fresh temporary directory beside ``build_dir`` and is renamed
into place only when it succeeded, so ``build_dir`` holds either the previous
complete build or the new complete build, never a half-written one. A failed
build leaves nothing behind; its log tail is in the :class:`BuildError`.
"""

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field, asdict
from pathlib import Path

from amaranth import *
from amaranth.back import verilog as verilog_backend
from amaranth.lib import wiring, io
from amaranth.lib.wiring import In, Out

from ..plan.errors import FpdeepError
from ..rtl.host import HostBridge, HostSignature
from .boards import Board, get_board
from .toolchain import toolchain_env

__all__ = ["HostedCore", "BoardTop", "BuildReport", "BuildError", "parse_nextpnr_log",
           "parse_critical_path", "build", "verilog", "build_core", "core_verilog", "make_core",
           "REPORT_FILE", "VERILOG_MARKER"]

#: Written into every finished build directory; its presence marks the
#: directory as ours, so that a later build may replace it.
REPORT_FILE = "fpdeep-build.json"
#: The file ``fpdeep build --verilog-only`` leaves beside ``<name>.v``, marking the
#: directory as ours too.
VERILOG_MARKER = ".fpdeep-verilog"

# Which nextpnr cell types count as LUTs, multipliers and block RAMs.
_CELLS = {
    "ecp5": {"lut": "TRELLIS_COMB", "mult": "MULT18X18D", "bram": "DP16KD"},
    "ice40": {"lut": "ICESTORM_LC", "mult": "ICESTORM_DSP", "bram": "ICESTORM_RAM"},
}


class BuildError(FpdeepError):
    """The toolchain failed: the design does not synthesise, fit or route on the board."""


def _check_host_component(component):
    if not isinstance(component, wiring.Component):
        raise TypeError(f"the design must be a wiring.Component, not {component!r}")
    members = component.signature.members
    if ("host" not in members or not members["host"].is_signature
            or members["host"].flow != Out
            or not isinstance(members["host"].signature, HostSignature)):
        raise TypeError(f"the design {type(component).__name__} must have a member "
                        f"\"host\": Out(HostSignature())")


class HostedCore(wiring.Component):
    """A core with a ``host`` port, behind a UART :class:`HostBridge`.

    Parameters
    ----------
    core : wiring.Component
        Has a member ``"host": Out(HostSignature())``.
    clk_hz : int
        Frequency of the ``sync`` domain.
    baud : int
        UART line rate.

    Members
    -------
    rx : In(1)
        Serial line from the host.
    tx : Out(1)
        Serial line to the host.
    busy : Out(1)
        The core's ``busy``, for an LED.
    (the core's other members)
        Every member of ``core`` except ``host`` (such as the training core's
        ``perf_*`` counters), forwarded under the same name, flow and shape, so
        that they are ports of the Verilog and stay observable there. On a
        board nothing reads them and synthesis may drop them; the core's
        datapath is kept all the same, because the host bridge feeds its samples
        and reads its counters and weights.

    Raises
    ------
    TypeError
        If ``core`` has no ``host`` port of :class:`HostSignature`, has a
        member called ``rx``, ``tx`` or ``busy``, or has an array member.
    """

    def __init__(self, core, *, clk_hz, baud=115200):
        _check_host_component(core)
        self._core = core
        self._bridge = HostBridge(clk_hz, baud)     # validates clk_hz and baud
        members = {
            "rx": In(1, init=1),
            "tx": Out(1, init=1),
            "busy": Out(1),
        }
        self._forwarded = [name for name in core.signature.members if name != "host"]
        for name in self._forwarded:
            if name in members:
                raise TypeError(f"the design {type(core).__name__} has a member {name!r}, "
                                f"which clashes with a port of the board top")
            if core.signature.members[name].dimensions:
                raise TypeError(f"the design {type(core).__name__} has an array member "
                                f"{name!r}; use a data.ArrayLayout port instead")
            members[name] = core.signature.members[name]
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        core = self._core
        m.submodules.core = core
        m.submodules.bridge = bridge = self._bridge
        wiring.connect(m, bridge.core, core.host)
        m.d.comb += [bridge.rx.eq(self.rx), self.tx.eq(bridge.tx),
                     self.busy.eq(core.host.busy)]
        for name in self._forwarded:
            member = self.signature.members[name]
            outer, inner = getattr(self, name), getattr(core, name)
            if member.is_signature:
                wiring.connect(m, wiring.flipped(outer), inner)
            elif member.flow == Out:
                m.d.comb += outer.eq(inner)
            else:
                m.d.comb += inner.eq(outer)
        return m


class BoardTop(Elaboratable):
    """The top of a board build: a :class:`HostedCore` on the board's UART and an LED.

    Parameters
    ----------
    core : wiring.Component
        Has a member ``"host": Out(HostSignature())``.
    board : Board
        Where the UART and LED are.
    baud : int
        UART line rate.
    """

    def __init__(self, core, board, *, baud=115200):
        if not isinstance(board, Board):
            raise TypeError(f"board must be a Board, not {board!r}")
        self._hosted = HostedCore(core, clk_hz=board.clock_hz, baud=baud)
        self._board = board

    def elaborate(self, platform):
        m = Module()
        m.submodules.hosted = hosted = self._hosted
        uart = platform.request("uart", 0, dir="-")
        m.submodules.uart_rx = uart_rx = io.Buffer("i", uart.rx)
        m.submodules.uart_tx = uart_tx = io.Buffer("o", uart.tx)
        m.d.comb += [hosted.rx.eq(uart_rx.i), uart_tx.o.eq(hosted.tx)]
        resource, number, subsignal = self._board.led
        led = platform.request(resource, number, dir="-")
        if subsignal is not None:
            led = getattr(led, subsignal)
        m.submodules.led = led_buf = io.Buffer("o", led)
        m.d.comb += led_buf.o.eq(hosted.busy)
        return m


@dataclass
class BuildReport:
    """What a build produced and what nextpnr says about it.

    ``utilisation`` maps each nextpnr cell type to ``(used, available)``;
    ``clocks`` maps each clock net to ``(fmax_mhz, target_mhz)`` after routing;
    ``critical_path`` is :func:`parse_critical_path` of the main clock (empty
    if the log has none).
    """
    board: str
    device: str
    family: str
    build_dir: str
    bitstream: str
    clock: str
    fmax_mhz: float
    target_mhz: float
    clocks: dict = field(default_factory=dict)
    utilisation: dict = field(default_factory=dict)
    wall_time_s: float = 0.0
    critical_path: dict = field(default_factory=dict)

    def _cell(self, kind):
        return self.utilisation.get(_CELLS[self.family][kind], (0, 0))

    @property
    def luts(self):
        return self._cell("lut")

    @property
    def mults(self):
        return self._cell("mult")

    @property
    def brams(self):
        return self._cell("bram")

    @property
    def timing_met(self):
        return self.fmax_mhz >= self.target_mhz

    def format(self):
        """A small text table of the headline figures."""
        cells = _CELLS[self.family]
        rows = [("board", f"{self.board} ({self.device})"),
                ("clock", f"{self.clock}"),
                ("Fmax", f"{self.fmax_mhz:.2f} MHz (target {self.target_mhz:.2f} MHz, "
                         f"{'met' if self.timing_met else 'FAILED'})")]
        for kind, label in (("lut", "LUTs"), ("mult", "multipliers"), ("bram", "block RAMs")):
            used, total = self._cell(kind)
            percent = f"{100 * used / total:5.1f}%" if total else "   - "
            rows.append((label, f"{used:>7} / {total:<7} {percent}  {cells[kind]}"))
        rows += _critical_path_rows(self.critical_path)
        rows += [("bitstream", self.bitstream), ("wall time", f"{self.wall_time_s:.1f} s")]
        width = max(len(label) for label, _ in rows)
        return "\n".join(f"{label:<{width}}  {value}" for label, value in rows)

    def to_json(self):
        return json.dumps(asdict(self), indent=2)


_UTIL_HEADER = re.compile(r"^Info:\s*Device utilisation:\s*$")
_UTIL_LINE = re.compile(r"^Info:\s+([A-Za-z0-9_$.]+):\s+(\d+)\s*/\s*(\d+)\s+\d+%\s*$")
_FMAX_LINE = re.compile(r"Max frequency for clock\s+'([^']+)':\s+([0-9.]+)\s+MHz"
                        r"\s+\((?:PASS|FAIL)\s+at\s+([0-9.]+)\s+MHz\)")


def parse_nextpnr_log(text):
    """Read utilisation and per-clock Fmax from a nextpnr log.

    The last ``Device utilisation`` block wins, and for each clock the last
    ``Max frequency`` line (nextpnr prints one after placement and one after
    routing; the latter is the real figure).

    Returns
    -------
    (dict, dict)
        ``{cell: (used, available)}`` and ``{clock: (fmax_mhz, target_mhz)}``.

    Raises
    ------
    BuildError
        If the log has no utilisation block or no clock figure.
    """
    utilisation, clocks = None, {}
    lines = text.splitlines()
    for index, line in enumerate(lines):
        if _UTIL_HEADER.match(line):
            block = {}
            for entry in lines[index + 1:]:
                match = _UTIL_LINE.match(entry)
                if not match:
                    break
                block[match[1]] = (int(match[2]), int(match[3]))
            utilisation = block
        match = _FMAX_LINE.search(line)
        if match:
            clocks[match[1]] = (float(match[2]), float(match[3]))
    if not utilisation:
        raise BuildError("the nextpnr log has no device utilisation report")
    if not clocks:
        raise BuildError("the nextpnr log has no 'Max frequency' line for any clock")
    return utilisation, clocks


_CRIT_HEADER = re.compile(r"^Info: Critical path report for clock '([^']+)'")
_CRIT_STEP = re.compile(r"^Info:\s+(?:[a-z-]+\s+)?([0-9.]+)\s+([0-9.]+)\s+(Source|Net)\s+(\S+)")
_CRIT_SINK = re.compile(r"^Info:\s+Sink\s+(\S+)")
_CRIT_SOURCE_LINE = re.compile(r"^Info:\s+(\S+:\d+(?:\.\d+-\d+\.\d+)?)\s*$")
_CRIT_TOTAL = re.compile(r"^Info: ([0-9.]+) ns logic, ([0-9.]+) ns routing")


def parse_critical_path(text, clock):
    """The last critical path that nextpnr reports within ``clock``'s domain.

    Returns
    -------
    dict
        ``{"clock", "start", "end", "delay_ns", "logic_ns", "routing_ns",
        "nets", "sources"}``: the first and last cell pins on the path, its
        delay split as nextpnr splits it, the nets it crosses in order, and the
        design source lines (``file:line``) that nextpnr names for them, in
        order and without yosys' own cell library. Empty if there is no report
        for ``clock``.
    """
    path = {}
    lines = text.splitlines()
    for index, line in enumerate(lines):
        header = _CRIT_HEADER.match(line)
        if not header or header[1] != clock:
            continue
        found = {"clock": clock, "start": None, "end": None, "delay_ns": 0.0,
                 "logic_ns": 0.0, "routing_ns": 0.0, "nets": [], "sources": []}
        for entry in lines[index + 1:]:
            if not entry.startswith("Info:") or entry.startswith("Info: Critical path report"):
                break
            if match := _CRIT_TOTAL.match(entry):
                found["logic_ns"], found["routing_ns"] = float(match[1]), float(match[2])
                break
            if match := _CRIT_STEP.match(entry):
                found["delay_ns"] = float(match[2])
                if match[3] == "Net":
                    found["nets"].append(match[4])
                else:
                    found["start"] = found["start"] or match[4]
                    found["end"] = match[4]
            elif match := _CRIT_SINK.match(entry):
                found["end"] = match[1]
            elif match := _CRIT_SOURCE_LINE.match(entry):
                where = match[1]
                if "/share/" not in where and where not in found["sources"]:
                    found["sources"].append(where)
        path = found
    return path


def _critical_path_rows(path):
    if not path:
        return []
    rows = [("critical path", f"{path['delay_ns']:.2f} ns ({path['logic_ns']:.2f} logic, "
                              f"{path['routing_ns']:.2f} routing)"),
            ("  from", path["start"]), ("  to", path["end"])]
    for where in path["sources"]:
        rows.append(("  through", where))
    return rows


def _main_clock(clocks):
    # The board clock drives the whole design; with several clocks, the most
    # demanding target is the one that matters.
    return max(clocks.items(), key=lambda item: (item[1][1], -item[1][0]))


def _log_tail(directory, names, lines=25):
    for name in names:
        path = Path(directory) / name
        if path.exists():
            tail = path.read_text(errors="replace").splitlines()[-lines:]
            return f"last lines of {name}:\n" + "\n".join(tail)
    return "no log was written"


def _timing_summary(timing_log):
    # nextpnr stops with an error when the design misses the board clock; its
    # report still says by how much and where, which is what one needs to fix it.
    try:
        text = Path(timing_log).read_text(errors="replace")
    except OSError:
        return ""
    clocks = {}
    for match in _FMAX_LINE.finditer(text):
        clocks[match[1]] = (float(match[2]), float(match[3]))
    if not clocks:
        return ""
    clock, (fmax, target) = _main_clock(clocks)
    rows = [("Fmax", f"{fmax:.2f} MHz (target {target:.2f} MHz)")]
    rows += _critical_path_rows(parse_critical_path(text, clock))
    return "".join(f"{label.strip()}: {value}\n" for label, value in rows)


def _prepare_target(build_dir, name):
    build_dir = Path(build_dir).resolve()
    if build_dir.exists():
        if not build_dir.is_dir():
            raise FpdeepError(f"build directory {str(build_dir)!r} is a file")
        # Ours: an earlier build, or what `fpdeep build --verilog-only` leaves (<name>.v).
        entries = {entry.name for entry in build_dir.iterdir()}
        if entries - {f"{name}.v", VERILOG_MARKER} and REPORT_FILE not in entries:
            raise FpdeepError(f"build directory {str(build_dir)!r} is not empty and is not "
                              f"an earlier fpdeep build; choose another or remove it")
    build_dir.parent.mkdir(parents=True, exist_ok=True)
    return build_dir


def build(top_component, board, build_dir, *, name="top", baud=115200, environ=None):
    """Build ``top_component`` into a bitstream for ``board``.

    Parameters
    ----------
    top_component : wiring.Component
        Has a member ``"host": Out(HostSignature())``; it runs in the board
        clock's ``sync`` domain.
    board : str or Board
        A name from :data:`fpdeep.platforms.boards.BOARDS`.
    build_dir : path
        Where the finished build goes. An earlier fpdeep build there, or a
        directory holding only ``<name>.v``, is replaced; any other non-empty
        directory is refused.
    name : str
        Base name of the build files (``<name>.bit``, ``<name>.tim``, ...).
    baud : int
        Host UART line rate.
    environ : mapping, optional
        Environment for the tools; by default a copy of ``os.environ`` with the
        YoWASP tools filled in (see :func:`~fpdeep.platforms.toolchain.toolchain_env`).

    Returns
    -------
    BuildReport
        Also saved as ``fpdeep-build.json`` in ``build_dir``; the tools' output
        is in ``build.log``.

    Raises
    ------
    FpdeepError
        For an unknown board, a missing tool or an unusable ``build_dir``.
    BuildError
        If a tool fails; nothing is left behind.
    TypeError
        If the component has no ``host`` port of :class:`HostSignature`.
    """
    if not isinstance(board, Board):
        board = get_board(board)
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", str(name)):
        raise FpdeepError(f"build name {name!r} must be an identifier")
    env = toolchain_env(None if environ is None else dict(environ))
    top = BoardTop(top_component, board, baud=baud)
    build_dir = _prepare_target(build_dir, name)

    platform = board.platform()
    plan = platform.prepare(top, name, **board.build_options)
    staging = Path(tempfile.mkdtemp(prefix=f".{build_dir.name}.", dir=build_dir.parent))
    try:
        plan.extract(staging)
        start = time.monotonic()
        with open(staging / "build.log", "wb") as log:
            result = subprocess.run(["sh", f"{plan.script}.sh"], cwd=staging, env=env,
                                    stdout=log, stderr=subprocess.STDOUT)
        wall_time = time.monotonic() - start
        if result.returncode != 0:
            raise BuildError(f"the {board.name} build failed (exit status {result.returncode}); "
                             + _timing_summary(staging / f"{name}.tim")
                             + _log_tail(staging, ["build.log"]))
        timing_log = (staging / f"{name}.tim").read_text()
        utilisation, clocks = parse_nextpnr_log(timing_log)
        clock, (fmax, target) = _main_clock(clocks)
        bitstream_name = f"{name}.bit" if board.family == "ecp5" else f"{name}.bin"
        if not (staging / bitstream_name).exists():
            raise BuildError(f"the {board.name} build wrote no {bitstream_name}")
        report = BuildReport(board=board.name, device=platform.device, family=board.family,
                             build_dir=str(build_dir), bitstream=str(build_dir / bitstream_name),
                             clock=clock, fmax_mhz=fmax, target_mhz=target, clocks=clocks,
                             utilisation=utilisation, wall_time_s=round(wall_time, 2),
                             critical_path=parse_critical_path(timing_log, clock))
        (staging / REPORT_FILE).write_text(report.to_json())
        if build_dir.exists():
            shutil.rmtree(build_dir)
        os.replace(staging, build_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return report


def verilog(top_component, *, name="top"):
    """Verilog for ``top_component``, its ports taken from its signature."""
    if not isinstance(top_component, wiring.Component):
        raise TypeError(f"top_component must be a wiring.Component, not {top_component!r}")
    return verilog_backend.convert(top_component, name=name)


# The training core --------------------------------------------------------------

def make_core(network_name, *, batch_size=8, **core_kwargs):
    """The single-chip :class:`fpdeep.rtl.core.TrainingCore` for a built-in network.

    ``network_name`` is a name from :mod:`fpdeep.plan.zoo` or a network file
    (.json/.yaml). Extra keyword arguments go to the core unchanged.

    Raises
    ------
    FpdeepError
        For an unknown network, or while the training core does not exist yet.
    """
    from ..plan import zoo
    from ..plan.network import load_network
    from ..rtl.numerics import DEFAULT_NUMERICS
    if os.path.exists(str(network_name)):
        network = load_network(network_name)
    else:
        network = zoo.get(network_name)
    try:
        from ..rtl.core import TrainingCore     # lazily: the core is the heaviest import
    except ModuleNotFoundError as error:
        if error.name != f"{__package__.rpartition('.')[0]}.rtl.core":
            raise
        raise FpdeepError("the training core (fpdeep.rtl.core.TrainingCore) "
                          "is not available yet") from error
    core_kwargs.setdefault("numerics", DEFAULT_NUMERICS)
    return TrainingCore(network, batch_size=batch_size, **core_kwargs)


def build_core(network_name, board, build_dir, *, batch_size=8, baud=115200, **core_kwargs):
    """Build the training core for ``network_name`` on ``board``; see :func:`build`."""
    core = make_core(network_name, batch_size=batch_size, **core_kwargs)
    return build(core, board, build_dir, baud=baud)


def core_verilog(network_name, board, *, batch_size=8, baud=115200, **core_kwargs):
    """Verilog of the training core behind its UART bridge, at ``board``'s clock."""
    board = board if isinstance(board, Board) else get_board(board)
    core = make_core(network_name, batch_size=batch_size, **core_kwargs)
    return verilog(HostedCore(core, clk_hz=board.clock_hz, baud=baud))
