"""Tests of :mod:`fpdeep.scripts.train_cluster`: ``fpdeep train --chips N --backend ...``."""

import io
import os

import pytest

from fpdeep.scripts.cli import main as fpdeep_main
from fpdeep.scripts.train_cluster import ProgressBar
from fpdeep.sim.train_cluster import EpochFigures


@pytest.mark.parametrize("argv, message", [
    (["--chips", "2", "--link-ber", "nan"], "argument --link-ber: 'nan' is not a finite number"),
    (["--chips", "2", "--link-ber=-1e-4"], "argument --link-ber: '-1e-4' must be at least 0"),
    (["--chips", "2", "--link-ber", "1"], "argument --link-ber: '1' must be below 1"),
    (["--chips", "0"], "argument --chips: '0' must be at least 1"),
    (["--chips", "-2"], "argument --chips: '-2' must be at least 1"),
    (["--chips", "two"], "argument --chips: 'two' is not an integer"),
    (["--backend", "spice"], "argument --backend: invalid choice: 'spice'"),
    (["--link-ber", "1e-4"], "--link-ber needs the simulated cluster: add --chips N"),
    (["--curve", "c.png"], "--curve needs the simulated cluster: add --chips N"),
    (["--chips", "1", "--link-ber", "1e-4"], "--link-ber 0.0001 needs links: --chips 2 or more"),
    (["--chips", "2", "--reference", "float"], "--reference float: the gateware trains against "
                                               "the integer reference only"),
    (["--chips", "2", "--curve", "c.txt"], "--curve 'c.txt': the curve is a PNG"),
    (["--chips", "2", "--curve", "no/such/dir/c.png"], "argument --curve: cannot write"),
    (["--chips", "2", "--curve", "."], "argument --curve:"),
    (["--chips", "2", "--epochs", "0"], "argument --epochs: '0' must be at least 1"),
    (["--chips", "2", "--train-samples", "0"], "argument --train-samples: '0' must be at least 1"),
    (["--chips", "2", "--train-samples", "5000"], "--train-samples must be from 1 to 1400, "
                                                  "not 5000"),
    (["--chips", "2", "--train-samples", "4"], "batch size 8 exceeds the 4 training samples"),
    (["--chips", "2", "--net", "vgg16"], "the digits have 10 classes, the network 1000"),
    (["--chips", "2", "--data", "missing.npz"], "cannot read data file 'missing.npz'"),
])
def test_bad_input_is_one_line_and_writes_nothing(argv, message, tmp_path, monkeypatch,
                                                  capsys):
    monkeypatch.chdir(tmp_path)
    assert fpdeep_main(["train", *argv]) == 2
    err = capsys.readouterr().err
    assert f"fpdeep: error: {message}" in err, err
    assert err.count("fpdeep: error:") == 1 and "Traceback" not in err
    assert os.listdir(tmp_path) == []


# Two chips, two epochs of 16 samples, in Verilator: the default design of
# `fpdeep train --chips 2` (seed 1, batch 8), so one build serves both tests below
# (about 10 s each once built; the build takes 2-4 minutes on 2 cores).
SHORT = ["train", "--net", "digits", "--chips", "2", "--backend", "verilator", "--epochs", "2",
         "--train-samples", "16"]


@pytest.mark.slow
def test_short_run_is_bit_exact_over_bit_errors_and_writes_the_curve(tmp_path, capsys):
    curve = tmp_path / "curve.png"
    status = fpdeep_main([*SHORT, "--link-ber", "1e-3", "--curve", str(curve)])
    out = capsys.readouterr().out
    assert status == 0, out
    assert "16 training / 397 held-out samples; 2 epochs of 2 batches of 8" in out
    rows = [line.split() for line in out.splitlines() if line[:5].strip() in ("1", "2")]
    assert [row[0] for row in rows] == ["1", "2"]
    assert all(row[4] == "690/690" for row in rows), out       # every epoch's end
    assert "weights: 690/690 equal the integer reference bit for bit" in out
    replays = int(out.split("links: ")[1].split()[0])
    assert replays > 0 and replays == sum(int(row[5]) for row in rows), out
    assert curve.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["curve.png"]


@pytest.mark.slow
def test_a_difference_stops_the_run_naming_the_weight(tmp_path, monkeypatch, capsys):
    # The reference steps with another learning rate than the gateware's: the first
    # epoch's end finds the difference, and no curve is written.
    from fpdeep.sim.harness import CoreRun
    reference = CoreRun.reference

    def other_rate(run):
        run.lr, lr = run.lr * 2, run.lr
        try:
            return reference(run)
        finally:
            run.lr = lr
    monkeypatch.setattr(CoreRun, "reference", other_rate)
    status = fpdeep_main([*SHORT, "--curve", str(tmp_path / "curve.png")])
    captured = capsys.readouterr()
    assert status == 1
    assert ("the gateware differs from the integer reference after epoch 1: "
            in captured.err), captured.err
    assert "weights differ from the integer reference; the first is conv1.W[" in captured.err
    assert not list(tmp_path.iterdir())


class _Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize("stream", [io.StringIO(), _Terminal()], ids=["lines", "terminal"])
def test_progress_is_a_bar_on_a_terminal_and_a_line_per_tenth_elsewhere(stream):
    bar = ProgressBar(stream, 200, 2)
    for done in range(1, 201):
        if done == 101:
            bar.epoch(EpochFigures(1, 1.25, 0.5, 0.625, (690, 690), 3, 1.0))
        bar(done, 200)
    bar.close()
    text = stream.getvalue()
    assert text.endswith("epoch 1: loss 1.250 bits, accuracy 0.500, held-out 0.625" +
                         ("\x1b[K\n" if stream.isatty() else "\n"))
    if stream.isatty():
        assert text.count("\n") == 1 and text.startswith("\r[") and "200/200" in text
    else:
        lines = text.splitlines()
        assert len(lines) == 11 and all(line.startswith("fpdeep train: epoch ") for line in lines)
        assert "epoch 2/2, 200/200 samples" in lines[-1]


@pytest.mark.parametrize("argv, note", [
    (["--chips", "2"], "fpdeep train: --chips 2 without --backend: training in Verilator"),
    (["--chips", "2", "--backend", "pysim"], "fpdeep train: warning: --backend pysim on 2 chips "
                                             "is slow"),
])
def test_defaults_and_slow_backends_are_said(argv, note, capsys):
    # (Refused afterwards, at the data, so that nothing is simulated.)
    assert fpdeep_main(["train", *argv, "--train-samples", "5000"]) == 2
    err = capsys.readouterr().err
    assert note in err and "fpdeep: error: --train-samples must be" in err
