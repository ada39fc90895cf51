import errno
import json
import os

import pytest

from fpdeep.scripts.cli import main


def test_plan_writes_json(tmp_path, capsys):
    out = tmp_path / "plan.json"
    assert main(["plan", "--net", "vgg16", "--board", "vc709", "--chips", "16",
                 "--link-gbps", "250", "-o", str(out), "--compare"]) == 0
    text = capsys.readouterr().out
    assert "balance" in text and "contiguous-layer DP" in text and "whole layers" in text
    assert {"balance", "images_per_s", "limiting_factor"} <= set(
        json.loads(out.read_text())["summary"])


@pytest.mark.parametrize("args, message", [
    (["--net", "nope"], "unknown network"),
    (["--board", "nope"], "unknown board"),
    (["--chips", "0"], "--chips: '0' must be at least 1"),
    (["--chips", "-3"], "--chips: '-3' must be at least 1"),
    (["--net", "vgg16", "--board", "icebreaker", "--chips", "2"], ""),
    (["--net", "MISSING.json"], "cannot read"),
])
def test_bad_input(tmp_path, capsys, args, message):
    out = tmp_path / "plan.json"
    assert main(["plan", *args, "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fpdeep: error: ") and message in err and err.count("\n") == 1
    assert not out.exists()


def test_malformed_file(tmp_path, capsys):
    bad = tmp_path / "net.yaml"
    bad.write_text("name: [unclosed")
    assert main(["plan", "--net", str(bad)]) == 2
    assert "malformed" in capsys.readouterr().err


def test_link_ber_reaches_the_plan(tmp_path, capsys):
    from fpdeep.plan.model.timing import link_efficiency
    out = tmp_path / "plan.json"
    assert main(["plan", "--net", "lenet5", "--board", "vc709", "--chips", "2",
                 "--link-ber", "1e-4", "-o", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["cluster"]["link_ber"] == 1e-4
    assert data["summary"]["assumptions"]["link_efficiency"] == link_efficiency(1e-4)


@pytest.fixture(scope="module")
def sweep_rows():
    from fpdeep.plan.scaling import sweep
    return sweep(chips=range(1, 2))


@pytest.fixture
def quick_sweep(monkeypatch, sweep_rows):
    import fpdeep.plan.scaling
    monkeypatch.setattr(fpdeep.plan.scaling, "sweep", lambda **kwargs: sweep_rows)


def _sweep(out_dir):
    return ["plan", "--sweep", "--max-chips", "1", "--out-dir", str(out_dir)]


def test_sweep_writes_its_table_and_plot(tmp_path, capsys, quick_sweep):
    assert main(_sweep(tmp_path / "new")) == 0
    assert sorted(os.listdir(tmp_path / "new")) == ["scaling.md", "scaling.png"]
    assert (tmp_path / "new" / "scaling.md").read_text().startswith("| net | link |")
    assert (tmp_path / "new" / "scaling.png").read_bytes().startswith(b"\x89PNG")


def test_sweep_replaces_both_files_or_neither(tmp_path, capsys, monkeypatch, quick_sweep):
    (tmp_path / "scaling.md").write_text("earlier table")
    (tmp_path / "scaling.png").write_text("earlier plot")
    replace = os.replace

    def plot_fails(src, dst):
        if os.fspath(dst).endswith("scaling.png"):
            raise OSError(errno.ENOSPC, "No space left on device")
        replace(src, dst)
    monkeypatch.setattr(os, "replace", plot_fails)
    assert main(_sweep(tmp_path)) == 2
    err = capsys.readouterr().err
    assert err.startswith("fpdeep: error: cannot write output ") and err.count("\n") == 1
    assert "No space left on device" in err
    assert (tmp_path / "scaling.md").read_text() == "earlier table"
    assert (tmp_path / "scaling.png").read_text() == "earlier plot"
    assert sorted(os.listdir(tmp_path)) == ["scaling.md", "scaling.png"]


def test_an_interrupted_sweep_leaves_no_directory(tmp_path, capsys, monkeypatch, quick_sweep):
    import matplotlib.figure

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", interrupted)
    assert main(_sweep(tmp_path / "new")) == 130
    assert capsys.readouterr().err == "fpdeep: interrupted\n"
    assert os.listdir(tmp_path) == []
