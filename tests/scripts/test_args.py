"""The argument types, output paths, Ctrl-C and refused option combinations, each
through the command line in process: one line ``fpdeep: error: ...``, status 2, no
file left (docs/bad-input.md)."""

import os

import pytest

from fpdeep.scripts.cli import main


def refused(capsys, argv, *words):
    assert main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err
    assert err.startswith("fpdeep: error: ") and err.count("\n") == 1, err
    for word in words:
        assert word in err, err
    return err


@pytest.mark.parametrize("argv, words", [
    (["sim", "--lr", "nan"], ("--lr", "'nan' is not a finite number")),
    (["sim", "--lr", "-0.1"], ("--lr", "must be above 0")),
    (["sim", "--momentum", "inf"], ("--momentum", "'inf'")),
    (["train", "--momentum", "-inf"], ("--momentum",)),
    (["plan", "--link-gbps", "NaN"], ("--link-gbps", "'NaN'")),
    (["plan", "--link-latency-ns=-inf"], ("--link-latency-ns", "'-inf'")),
    (["plan", "--link-latency-ns", "1e999"], ("--link-latency-ns", "finite")),
    (["plan", "--link-ber", "nan"], ("--link-ber", "'nan' is not a finite number")),
    (["plan", "--link-ber=-0.1"], ("--link-ber", "'-0.1' must be at least 0")),
    (["plan", "--link-ber", "1"], ("--link-ber", "'1' must be below 1")),
    (["plan", "--link-ber", "1.5"], ("--link-ber", "'1.5' must be below 1")),
    (["plan", "--link-ber", "x"], ("--link-ber", "'x' is not a number")),
    (["plan", "--sweep", "--link-ber", "1e-4"], ("--link-ber", "--sweep")),
    (["plan", "--target", "gateware", "--link-ber", "1e-4"],
     ("--link-ber applies to paper-target plans",)),
    (["sim", "--seed", "-1"], ("--seed", "'-1' must be at least 0")),
    (["waves", "--seed", "-5"], ("--seed",)),
    (["sim", "--batches", "0"], ("--batches", "'0'")),
    (["sim", "--batches", "-3"], ("--batches",)),
    (["sim", "--batch-size", "0"], ("--batch-size",)),
    (["bench", "core", "--repeats", "0"], ("--repeats",)),
    (["bench", "core", "--batches", "1.5"], ("--batches", "'1.5' is not an integer")),
    (["bench", "link", "--net", "lenet5"], ("bench link does not take --net",)),
    (["bench", "plan", "--batch-size", "4"], ("bench plan does not take --batch-size",)),
    (["bench", "link", "--backend", "verilator"], ("--backend", "only bench core")),
    (["plan", "--balance", "digits", "--max-chips", "0"], ("--max-chips",)),
    (["plan", "--sweep", "--max-chips", "-1"], ("--max-chips",)),
    (["sim", "--net", "NoSuchNet"], ("'NoSuchNet'", "digits, lenet5, alexnet, vgg16, vgg19")),
    (["sim", "--backend", "spice"], ("--backend", "'spice'")),
    (["plan", "--chips"], ("--chips",)),
    (["sim", "--frobnicate"], ("--frobnicate",)),
    (["sim", "--plan", "p.json", "--board", "ulx3s-45f"], ("--board", "decided by the plan")),
    (["plan", "--balance", "digits", "-o", "x.json"], ("-o", "--balance")),
    (["plan", "--sweep", "--compare"], ("--compare", "--sweep")),
    (["plan", "--max-chips", "4"], ("plan without --sweep or --balance does not take "
                                    "--max-chips",)),
    (["plan", "--out-dir", "x"], ("does not take --out-dir",)),
    (["plan", "--balance", "digits", "--target", "gateware"],
     ("plan --balance does not take --target",)),
    (["plan", "--balance", "digits", "--chips", "3"], ("plan --balance does not take --chips",)),
    (["plan", "--balance", "digits", "--batch", "8"], ("plan --balance does not take --batch",)),
    (["plan", "--sweep", "--net", "lenet5"], ("plan --sweep does not take --net",)),
    (["plan", "--sweep", "--board", "vc709"], ("plan --sweep does not take --board",)),
    (["plan", "--sweep", "--balance"], ("--balance", "not allowed with", "--sweep")),
    (["plan", "--sweep", "--out-dir", ""], ("--out-dir", "empty")),
    (["plan", "--sweep", "--out-dir", "missing/scaling"], ("--out-dir", "no directory 'missing'")),
    (["build", "--board", "ulx3s-85f", "--baud", "3000000", "--verilog-only"],
     ("--baud 3000000", "25 MHz", "4.2% off")),
    (["build", "--board", "icebreaker", "--baud", "4000000", "--verilog-only"],
     ("--baud 4000000", "at least 4 cycles per bit")),
])
def test_bad_values_are_one_line_naming_them(tmp_path, monkeypatch, capsys, argv, words):
    monkeypatch.chdir(tmp_path)
    refused(capsys, argv, *words)
    assert os.listdir(tmp_path) == []


def test_network_names_are_case_insensitive(tmp_path, capsys):
    assert main(["plan", "--net", "LeNet5", "--chips", "1"]) == 0
    assert "balance" in capsys.readouterr().out


def _plan(path):
    return ["plan", "--net", "digits", "-o", str(path)]


def test_output_paths(tmp_path, capsys):
    (tmp_path / "dir").mkdir()
    refused(capsys, _plan(tmp_path / "missing" / "p.json"), "no directory", "missing")
    refused(capsys, _plan(tmp_path / "dir"), "is a directory")
    refused(capsys, _plan("/dev/null"), "/dev/null", "not a regular file")
    read_only = tmp_path / "ro.json"
    read_only.write_text("mine")
    read_only.chmod(0o444)
    refused(capsys, _plan(read_only), "read-only")
    assert read_only.read_text() == "mine"
    # An existing file is replaced whole, keeping its mode; a symlink is written through.
    existing = tmp_path / "p.json"
    existing.write_text("old")
    existing.chmod(0o640)
    assert main(_plan(existing)) == 0
    assert existing.read_text().startswith("{") and existing.stat().st_mode & 0o777 == 0o640
    link = tmp_path / "link.json"
    link.symlink_to(existing)
    existing.write_text("old")
    assert main(_plan(link)) == 0
    assert link.is_symlink() and existing.read_text().startswith("{")
    capsys.readouterr()
    assert sorted(os.listdir(tmp_path)) == ["dir", "link.json", "p.json", "ro.json"]


def test_ctrl_c_removes_partial_output_and_prints_one_line(tmp_path, capsys, monkeypatch):
    earlier = tmp_path / "p.json"
    earlier.write_text("earlier")

    def interrupted(*args):
        raise KeyboardInterrupt
    monkeypatch.setattr(os, "replace", interrupted)
    assert main(_plan(earlier)) == 130
    err = capsys.readouterr().err
    assert err == "fpdeep: interrupted\n"
    assert os.listdir(tmp_path) == ["p.json"] and earlier.read_text() == "earlier"


def test_verilog_only_keeps_out_of_a_users_directory(tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "top.v").write_text("// my own design\n")
    refused(capsys, ["build", "--board", "ulx3s-85f", "--verilog-only", "-o", str(mine)],
            "did not write")
    assert (mine / "top.v").read_text() == "// my own design\n"
    (tmp_path / "file").write_text("x")
    refused(capsys, ["build", "--board", "ulx3s-85f", "--verilog-only",
                     "-o", str(tmp_path / "file")], "is not a directory")
    assert sorted(os.listdir(tmp_path)) == ["file", "mine"]


CTRL_C_IN_A_SIMULATION = """
import sys
import fpdeep.plan.plan
from fpdeep.scripts.cli import main

async def testbench():
    pass

class Simulation:
    pass

def interrupted(*args, **kwargs):
    # As Ctrl-C leaves a simulator: a testbench coroutine never finished, held in a
    # reference cycle, so it is collected (and Python warns) only at exit.
    sim = Simulation()
    sim.self, sim.testbench = sim, testbench()
    raise KeyboardInterrupt

fpdeep.plan.plan.plan_network = interrupted
sys.exit(main(["plan", "--net", "digits"]))
"""


def test_ctrl_c_in_a_simulation_prints_no_warning_after_its_line(tmp_path):
    import subprocess
    import sys
    result = subprocess.run([sys.executable, "-c", CTRL_C_IN_A_SIMULATION], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 130 and result.stderr == "fpdeep: interrupted\n", result.stderr


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_standard_output_on_a_full_device_is_one_line(tmp_path):
    import subprocess
    import sys
    with open("/dev/full", "w") as full:
        result = subprocess.run([sys.executable, "-m", "fpdeep.scripts.cli", "plan", "--net",
                                 "digits"], cwd=tmp_path, stdout=full, stderr=subprocess.PIPE,
                                text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert result.stderr == ("fpdeep: error: cannot write standard output: No space left on "
                             "device\n")
