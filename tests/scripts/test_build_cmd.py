import pytest

from fpdeep.scripts.cli import main
from fpdeep.platforms import build as build_module
from tests.platforms.test_build import MacArrayDemo


def test_unknown_board(capsys):
    assert main(["build", "--net", "digits", "--board", "de0-nano"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fpdeep: error: unknown board 'de0-nano'") and "ulx3s-85f" in err


def test_unknown_network(capsys, tmp_path):
    assert main(["build", "--net", "resnet", "--board", "ulx3s-85f", "--verilog-only",
                 "-o", str(tmp_path)]) == 2
    assert "unknown network 'resnet'" in capsys.readouterr().err


def test_bad_batch_size(capsys):
    assert main(["build", "--board", "ulx3s-85f", "--batch-size", "0"]) == 2
    assert "--batch-size" in capsys.readouterr().err


def test_verilog_only(monkeypatch, tmp_path, capsys):
    seen = {}

    def fake_make_core(network_name, *, batch_size, **kwargs):
        seen.update(network=network_name, batch_size=batch_size)
        return MacArrayDemo(rows=2, cols=2, depth=16)

    monkeypatch.setattr(build_module, "make_core", fake_make_core)
    out = tmp_path / "v"
    assert main(["build", "--net", "digits", "--board", "icebreaker", "--verilog-only",
                 "--batch-size", "4", "-o", str(out)]) == 0
    assert seen == {"network": "digits", "batch_size": 4}
    text = (out / "top.v").read_text()
    assert "module top" in text and "input rx" in text
    assert "wrote" in capsys.readouterr().out


def test_verilog_only_real_core(tmp_path, capsys):
    out = tmp_path / "digits"
    assert main(["build", "--net", "digits", "--board", "ulx3s-85f", "--verilog-only",
                 "-o", str(out)]) == 0
    text = (out / "top.v").read_text()
    assert "module top(" in text
    for port in ("input rx;", "output tx;", "output busy;", "output [31:0] perf_cycles;",
                 "output [159:0] perf_busy;", "output [159:0] perf_steps;"):
        assert port in text           # the core's counters are ports, not dangling
    for block in ("core.conv1_fp", "core.conv1_wu", "core.fc1_fp", "core.fc1_bp", "core.fc1_wu",
                  "core.loss_unit", "bridge"):
        assert f"module \\top.{block} (" in text
    assert "wrote" in capsys.readouterr().out
