"""Output files written whole or not at all, and input files read as UTF-8 text.

Every file fpdeep writes goes through :func:`atomic_output`: it is written to a
temporary file in the target's own directory and renamed over the target only once
it is complete, so an interrupted or failed write (an exception, Ctrl-C) leaves
no file behind and an earlier output intact.

* A symlink is written *through*: its target is replaced, the link stays.
* An existing file keeps its permission bits; a new one gets ``0o666 & ~umask``,
  as ``open`` would give it.
* Refused, in one line naming the path (:class:`~fpdeep.plan.errors.FpdeepError`):
  an empty path, a missing parent directory, a directory, anything that is not a
  regular file (``/dev/null``, a FIFO: renaming over them would replace the
  device node), a read-only file, an unwritable directory.
"""

import contextlib
import errno
import os
import shutil
import stat
import tempfile

from .errors import FpdeepError

__all__ = ["output_target", "output_directory", "atomic_output", "atomic_write_text",
           "read_text", "MAX_NESTING", "check_nesting"]

#: The deepest bracket nesting a network or plan file may have (they need about 6).
#: Deeper files are refused before parsing: PyYAML's scanner takes time quadratic in
#: the depth of ``[[[...]]]``, and the parsers recurse.
MAX_NESTING = 64


def output_target(path, *, what="output"):
    """The file that writing ``path`` replaces (a symlink's target), checked.

    Raises
    ------
    FpdeepError
        If ``path`` cannot be written as a regular file (see the module docstring).
    """
    text = os.fspath(path)
    if not isinstance(text, str) or not text:
        raise FpdeepError(f"{what} path {path!r} is empty")
    target = os.path.realpath(text) if os.path.islink(text) else os.path.abspath(text)
    try:
        st = os.stat(target)
    except FileNotFoundError:
        st = None
    except OSError as error:
        raise FpdeepError(f"cannot write {what} {text!r}: {error.strerror}") from None
    if st is not None:
        if stat.S_ISDIR(st.st_mode):
            raise FpdeepError(f"cannot write {what} {text!r}: it is a directory")
        if not stat.S_ISREG(st.st_mode):
            raise FpdeepError(f"cannot write {what} {text!r}: not a regular file (a device "
                              f"or pipe)")
        # The owner's write bit too: root may write anything, but a file made
        # read-only is meant to stay as it is.
        if not st.st_mode & stat.S_IWUSR or not os.access(target, os.W_OK):
            raise FpdeepError(f"cannot write {what} {text!r}: the file is read-only")
    parent = os.path.dirname(target)
    if not os.path.isdir(parent):
        raise FpdeepError(f"cannot write {what} {text!r}: no directory "
                          f"{os.path.dirname(text) or parent!r}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise FpdeepError(f"cannot write {what} {text!r}: its directory is not writable")
    return target


def output_directory(path, *, what="output directory"):
    """Check that files can be written into the directory ``path``: it exists, or its
    parent does (the caller makes it only when it writes, so that a failed or
    interrupted run leaves no empty directory behind).

    Raises
    ------
    FpdeepError
        If ``path`` is empty, not a directory, or has no writable parent.
    """
    text = os.fspath(path)
    if not text:
        raise FpdeepError(f"{what} path {path!r} is empty")
    if os.path.isdir(text):
        return
    if os.path.exists(text):
        raise FpdeepError(f"{what} {text!r} is not a directory")
    parent = os.path.dirname(os.path.abspath(text))
    if not os.path.isdir(parent):
        raise FpdeepError(f"cannot make {what} {text!r}: no directory "
                          f"{os.path.dirname(text) or parent!r}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise FpdeepError(f"cannot make {what} {text!r}: its parent is not writable")


def _mode_for(target):
    try:
        return stat.S_IMODE(os.stat(target).st_mode)
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


# Errors of writing an output (a full disk, a file size limit, a quota) that the
# block given to atomic_output meets while writing its temporary files; other
# OSErrors from that block are not about the output and propagate as they are.
_WRITE_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS, errno.EIO}


def _temp_beside(target, suffix):
    fd, temp = tempfile.mkstemp(prefix=f".{os.path.basename(target)}.", suffix=suffix,
                                dir=os.path.dirname(target))
    os.close(fd)
    return temp


def _replace_all(temps, targets):
    """Rename each temporary file over its target, as one step: if a rename fails
    (or Ctrl-C comes between two), the targets already replaced get their earlier
    content back, so a set of outputs (a VCD and its .gtkw, a table and its plot)
    never mixes an old file with a new one."""
    replaced, earliers = [], []     # (target, a link to its earlier file or None)
    try:
        for temp, target in zip(temps, targets):
            earlier = None
            if len(targets) > 1 and os.path.exists(target):
                earlier = _temp_beside(target, ".earlier")
                earliers.append(earlier)
                os.unlink(earlier)
                try:
                    os.link(target, earlier)
                except OSError:     # no hard links on this file system
                    shutil.copy2(target, earlier)
            os.replace(temp, target)
            replaced.append((target, earlier))
    except BaseException:
        for target, earlier in reversed(replaced):
            with contextlib.suppress(OSError):
                if earlier:
                    os.replace(earlier, target)
                else:
                    os.unlink(target)
        raise
    finally:
        for earlier in earliers:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(earlier)


@contextlib.contextmanager
def atomic_output(*paths, what="output"):
    """Yield a temporary path per path in ``paths``; rename them over their targets
    (:func:`output_target`) together when the block ends without an exception, else
    remove them all. All targets are checked before anything is written.

    Example::

        with atomic_output("run.vcd", "run.gtkw") as (vcd, gtkw):
            ...   # write vcd and gtkw

    Raises
    ------
    FpdeepError
        If a target is refused, or writing fails (a full disk, say), naming the path.
    """
    targets = [output_target(path, what=what) for path in paths]
    temps = []

    def refuse(error):
        return FpdeepError(f"cannot write {what} {_named(paths, temps, error)}: "
                           f"{error.strerror or error}")
    try:
        try:
            for target in targets:
                temps.append(_temp_beside(target, ".partial"))
        except OSError as error:
            raise refuse(error) from None
        try:
            yield temps if len(paths) != 1 else temps[0]
        except OSError as error:
            if error.errno not in _WRITE_ERRNOS and error.filename not in temps:
                raise
            raise refuse(error) from None
        try:
            for temp, target in zip(temps, targets):
                os.chmod(temp, _mode_for(target))
            _replace_all(temps, targets)
        except OSError as error:
            raise refuse(error) from None
    finally:
        for temp in temps:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)


def _named(paths, temps, error):
    """The path (or paths) an OSError of :func:`atomic_output` is about, as given."""
    for path, temp in zip(paths, temps):
        if error.filename == temp:
            return repr(os.fspath(path))
    return " and ".join(repr(os.fspath(path)) for path in paths)


def atomic_write_text(path, text, *, what="output"):
    """Write ``text`` (UTF-8) to ``path`` with :func:`atomic_output`."""
    with atomic_output(path, what=what) as temp:
        with open(temp, "w", encoding="utf-8") as file:
            file.write(text)


def read_text(path, *, what):
    """The UTF-8 text of the file ``path``.

    Raises
    ------
    FpdeepError
        If it cannot be read, is a directory, or is not UTF-8 (naming the byte).
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise FpdeepError(f"cannot read {what} {path!r}: it is a directory")
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError as error:
        raise FpdeepError(f"cannot read {what} {path!r}: {error.strerror}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise FpdeepError(f"{what} {path!r} is not UTF-8 text: byte "
                          f"{data[error.start]:#04x} at offset {error.start}") from None


def check_nesting(text, *, what, path):
    """Raise FpdeepError if brackets in ``text`` nest deeper than :data:`MAX_NESTING`
    (counted over every ``[``/``{``, quoted or not: a generous upper bound)."""
    depth = 0
    for char in text:
        if char in "[{":
            depth += 1
            if depth > MAX_NESTING:
                raise FpdeepError(f"malformed {what} {path!r}: nested too deeply (over "
                                  f"{MAX_NESTING} levels)")
        elif char in "]}":
            depth = max(0, depth - 1)
