import errno
import os
import stat

import pytest

from fpdeep.plan.errors import FpdeepError
from fpdeep.plan.files import atomic_output, atomic_write_text, output_target, read_text


def test_new_file_gets_the_umask_mode_and_nothing_else_is_left(tmp_path):
    path = tmp_path / "out.txt"
    atomic_write_text(path, "hello")
    umask = os.umask(0)
    os.umask(umask)
    assert path.read_text() == "hello"
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    assert os.listdir(tmp_path) == ["out.txt"]


def test_existing_file_is_replaced_keeping_its_mode(tmp_path):
    path = tmp_path / "out.txt"
    path.write_text("old")
    path.chmod(0o640)
    atomic_write_text(path, "new")
    assert path.read_text() == "new" and stat.S_IMODE(path.stat().st_mode) == 0o640


def test_symlink_is_written_through(tmp_path):
    target = tmp_path / "real.json"
    target.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    atomic_write_text(link, "new")
    assert link.is_symlink() and target.read_text() == "new"


@pytest.mark.parametrize("make, words", [
    (lambda p: p / "missing" / "x", "no directory"),
    (lambda p: p, "is a directory"),
    (lambda p: "/dev/null", "not a regular file"),
    (lambda p: "", "empty"),
])
def test_refused_paths(tmp_path, make, words):
    with pytest.raises(FpdeepError, match=words):
        atomic_write_text(make(tmp_path), "x")
    assert not (tmp_path / "missing").exists()


def test_read_only_file_is_refused(tmp_path):
    path = tmp_path / "ro.txt"
    path.write_text("mine")
    path.chmod(0o444)
    with pytest.raises(FpdeepError, match="read-only"):
        atomic_write_text(path, "x")
    assert path.read_text() == "mine"


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_a_failed_write_leaves_the_earlier_output(tmp_path, error):
    first, second = tmp_path / "a.vcd", tmp_path / "a.gtkw"
    first.write_text("earlier")
    with pytest.raises(error):
        with atomic_output(first, second) as (a, b):
            open(a, "w").write("partial")
            raise error()
    assert first.read_text() == "earlier" and not second.exists()
    assert sorted(os.listdir(tmp_path)) == ["a.vcd"]


def test_output_target_of_a_dangling_symlink_is_its_target(tmp_path):
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "later.txt")
    assert output_target(link) == str(tmp_path / "later.txt")


def test_read_text_refuses_invalid_utf8(tmp_path):
    path = tmp_path / "bad.json"
    path.write_bytes(b'{"name": "\xff"}')
    with pytest.raises(FpdeepError, match="not UTF-8 text: byte 0xff at offset 10"):
        read_text(path, what="network file")


@pytest.mark.parametrize("first_existed", [False, True])
def test_a_failed_rename_puts_back_the_pair(tmp_path, monkeypatch, first_existed):
    table, plot = tmp_path / "scaling.md", tmp_path / "scaling.png"
    if first_existed:
        table.write_text("earlier table")
    plot.write_text("earlier plot")
    replace = os.replace

    def second_fails(src, dst):
        if os.fspath(dst) == str(plot):
            raise OSError(errno.ENOSPC, "No space left on device")
        replace(src, dst)
    monkeypatch.setattr(os, "replace", second_fails)
    with pytest.raises(FpdeepError, match="cannot write output .*scaling.md.* and "
                                          ".*scaling.png.*: No space left on device"):
        with atomic_output(table, plot) as (a, b):
            open(a, "w").write("new table")
            open(b, "w").write("new plot")
    assert plot.read_text() == "earlier plot"
    if first_existed:
        assert table.read_text() == "earlier table"
    assert sorted(os.listdir(tmp_path)) == (["scaling.md"] if first_existed else []) + [
        "scaling.png"]


def test_a_pair_is_replaced_together(tmp_path):
    table, plot = tmp_path / "scaling.md", tmp_path / "scaling.png"
    table.write_text("earlier table")
    with atomic_output(table, plot) as (a, b):
        open(a, "w").write("new table")
        open(b, "w").write("new plot")
    assert table.read_text() == "new table" and plot.read_text() == "new plot"
    assert sorted(os.listdir(tmp_path)) == ["scaling.md", "scaling.png"]


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EFBIG])
def test_a_full_disk_is_one_line_and_keeps_the_earlier_file(tmp_path, code):
    path = tmp_path / "plan.json"
    path.write_text("earlier")
    with pytest.raises(FpdeepError, match=f"cannot write output '{path}': {os.strerror(code)}"):
        with atomic_output(path) as temp:
            with open(temp, "w") as file:
                file.write("x")
                raise OSError(code, os.strerror(code))
    assert path.read_text() == "earlier" and os.listdir(tmp_path) == ["plan.json"]


def test_other_os_errors_in_the_block_are_not_blamed_on_the_output(tmp_path):
    with pytest.raises(FileNotFoundError):
        with atomic_output(tmp_path / "out.txt"):
            open(tmp_path / "no" / "such")
    assert os.listdir(tmp_path) == []
