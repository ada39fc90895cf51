from fpdeep.scripts.cli import main


def test_two_chips_train_bit_exactly_and_write_waves(tmp_path, capsys):
    vcd = tmp_path / "run.vcd"
    status = main(["sim", "--net", "digits", "--chips", "2", "--batches", "1",
                   "--batch-size", "2", "--vcd", str(vcd)])
    out = capsys.readouterr().out
    assert status == 0, out
    assert "690/690 equal the integer reference bit for bit" in out
    assert "chip 0: conv1; chip 1: fc1" in out
    assert vcd.exists() and vcd.with_suffix(".gtkw").exists()
    gtkw = vcd.with_suffix(".gtkw").read_text()
    assert "-chip0" in gtkw and "-chip1" in gtkw and "-conv1.fp" in gtkw
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.gtkw", "run.vcd"]


def test_bad_input_is_one_line(tmp_path, capsys):
    for argv, word in ((["sim", "--chips", "3"], "--chips 3"),
                       (["sim", "--chips", "0"], "--chips"),
                       (["sim", "--net", "nosuchnet"], "nosuchnet"),
                       (["sim", "--net", "lenet5"], "lenet5"),
                       (["sim", "--batches", "1", "--batch-size", "1",
                         "--vcd", str(tmp_path / "missing" / "run.vcd")], "missing")):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("fpdeep: error:") and word in err and "\n" not in err
    assert list(tmp_path.iterdir()) == []


def test_waves_writes_vcd_and_save_file(tmp_path, capsys):
    vcd = tmp_path / "w.vcd"
    assert main(["waves", "--batch-size", "1", "-o", str(vcd)]) == 0
    assert "gtkwave" in capsys.readouterr().out
    assert vcd.stat().st_size > 0 and "-chip0" in vcd.with_suffix(".gtkw").read_text()
