from fpdeep.scripts.cli import main


def test_waves_from_a_saved_plan_and_the_options_it_decides(tmp_path, capsys):
    plan, vcd = tmp_path / "p.json", tmp_path / "p.vcd"
    assert main(["plan", "--net", "digits", "--chips", "2", "--target", "gateware",
                 "--batch", "1", "-o", str(plan)]) == 0
    capsys.readouterr()
    for argv, word in ((["--chips", "3"], "--chips 3"), (["--batch-size", "2"], "--batch-size 2")):
        assert main(["waves", "--plan", str(plan), *argv, "-o", str(vcd)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("fpdeep: error:") and word in err and "\n" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.json"]
    assert main(["waves", "--plan", str(plan), "-o", str(vcd)]) == 0
    out = capsys.readouterr().out
    assert "on 2 chip(s), 1 batches of 1" in out
    assert "-link0.down" in vcd.with_suffix(".gtkw").read_text()
