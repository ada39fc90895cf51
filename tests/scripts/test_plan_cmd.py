import json

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
