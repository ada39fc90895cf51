"""Tests of :mod:`fpdeep.scripts.train_quality` and ``fpdeep train``: the integer
reference trains the digits CNN as well as float does."""

import io

import pytest

from fpdeep.plan.errors import FpdeepError
from fpdeep.scripts import train_quality
from fpdeep.scripts.cli import main as fpdeep_main
from fpdeep.scripts.train_quality import load_digits_split, train_side_by_side


def test_split_is_fixed_and_disjoint():
    x_train, y_train, x_test, y_test = load_digits_split()
    assert x_train.shape == (1400, 1, 8, 8) and x_test.shape == (397, 1, 8, 8)
    assert 0.0 <= x_train.min() and x_train.max() <= 1.0
    again = load_digits_split()
    assert (again[0] == x_train).all() and (again[3] == y_test).all()
    train_rows = {row.tobytes() for row in x_train.reshape(1400, -1)}
    shared = sum(row.tobytes() in train_rows for row in x_test.reshape(397, -1))
    assert shared < 10            # load_digits holds a few duplicate images, no more


def test_short_run_int_trains_like_float():
    """2 epochs on half the training split (a few seconds)."""
    out = io.StringIO()
    runs = train_side_by_side(epochs=2, train_samples=700, out=out)
    text = out.getvalue()
    assert len(runs["int"].accuracies) == len(runs["float"].accuracies) == 2
    assert runs["int"].final >= 0.8, text
    assert abs(runs["int"].final - runs["float"].final) <= 0.05, text
    assert runs["int"].saturations == {"fp": 0, "bp": 0, "update": 0}
    assert "int - float:" in text and "points" in text


@pytest.mark.slow
def test_full_run_claim():
    """The README's claim, with the default hyper-parameters: int >= 0.90 held-out accuracy,
    within 2 points of float (about 15 s; run with -m slow)."""
    out = io.StringIO()
    runs = train_side_by_side(out=out)
    text = out.getvalue()
    assert runs["int"].final >= 0.90, text
    assert abs(runs["int"].final - runs["float"].final) <= 0.02, text


def test_fpdeep_train_subcommand(capsys):
    status = fpdeep_main(["train", "--net", "digits", "--reference", "int", "--epochs", "1",
                          "--train-samples", "200", "--batch", "4"])
    out = capsys.readouterr().out
    assert status == 0
    assert "200 training / 397 held-out" in out and "batch 4" in out
    assert "int" in out.splitlines()[1] and "float" not in out


def test_script_main_prints_both_modes(capsys):
    assert train_quality.main(["--epochs", "1", "--train-samples", "96", "--batch", "16"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split() == ["epoch", "int", "float"]
    assert lines[2].split()[0] == "1" and lines[3].startswith("final")


@pytest.mark.parametrize("argv, message", [
    (["train", "--net", "vgg16"], "the digits have 10 classes, the network 1000"),
    (["train", "--batch", "0"], "argument --batch: '0' must be at least 1"),
    (["train", "--epochs", "0"], "argument --epochs: '0' must be at least 1"),
    (["train", "--lr", "0"], "argument --lr: '0' must be above 0"),
    (["train", "--lr", "nan"], "argument --lr: 'nan' is not a finite number"),
    (["train", "--seed", "-2"], "argument --seed: '-2' must be at least 0"),
    (["train", "--train-samples", "5000"], "--train-samples must be from 1 to 1400, not 5000"),
    (["train", "--train-samples", "4", "--batch", "8"], "batch size 8 exceeds the 4 training"),
])
def test_fpdeep_train_refuses_bad_options(argv, message, capsys):
    assert fpdeep_main(argv) == 2
    assert f"fpdeep: error: {message}" in capsys.readouterr().err


def test_unknown_mode_is_refused():
    with pytest.raises(FpdeepError, match="mode must be 'int' or 'float', not 'half'"):
        train_side_by_side(modes=("half",), epochs=1)
