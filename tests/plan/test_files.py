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
