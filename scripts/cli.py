"""The ``fpdeep`` command: ``plan``, ``sim``, ``train``, ``build``, ``waves``, ``bench``.

Each subcommand lives in its own module of this package and registers itself in
``SUBCOMMANDS``: a module exposing ``register(subparsers)``, which adds its parser
and sets ``handler=`` to a function taking the parsed arguments and returning an
exit status. Options are parsed with the types of :mod:`.args`.

Bad input (a usage error, a bad value, file or plan: :class:`.args.UsageError` or
:class:`~fpdeep.plan.errors.FpdeepError`) is reported as one line, ``fpdeep: error:
...``, with exit status 2 and no traceback; outputs are written atomically
(:mod:`fpdeep.plan.files`), so nothing is left behind. Ctrl-C prints one line,
``fpdeep: interrupted``, removes partial output the same way and exits with 130.
"""

import errno
import importlib
import os
import sys
import warnings

from ..plan.errors import FpdeepError
from .args import Parser, UsageError

__all__ = ["main", "console_main", "SUBCOMMANDS"]

# Module names, relative to this package, in the order they appear in --help.
SUBCOMMANDS = ["plan_cmd", "sim_cmd", "train_cmd", "build_cmd", "waves_cmd", "bench_cmd"]


def make_parser():
    parser = Parser(
        prog="fpdeep",
        description="Plan, simulate and build CNN training on a 1-D chain of FPGAs.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"{__package__}.{name}")
        except ModuleNotFoundError as error:
            if error.name == f"{__package__}.{name}":
                continue    # not written yet
            raise
        module.register(subparsers)
    return parser


def _one_line(text):
    return " ".join(str(text).split())


def main(argv=None):
    """Run ``fpdeep`` with ``argv`` (default ``sys.argv[1:]``); return the exit status."""
    try:
        parser = make_parser()
        try:
            args = parser.parse_args(argv)
        except SystemExit as exit:      # --help
            return exit.code or 0
        if not getattr(args, "handler", None):
            parser.print_help()
            return 0
        return args.handler(args) or 0
    except (FpdeepError, UsageError) as error:
        print(f"fpdeep: error: {_one_line(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:
        print("fpdeep: interrupted", file=sys.stderr)
        _collect_quietly(interrupt)
        return 130


def _collect_quietly(interrupt):
    """Free what the interrupted frames held, without a word.

    Ctrl-C inside a simulation leaves its testbench coroutines unfinished; when they
    are collected Python warns "coroutine ... was never awaited" or prints "Exception
    ignored in ...". Neither is news after "interrupted", so they are collected here,
    with warnings and that hook silenced only meanwhile (``main`` also runs in process,
    in the tests)."""
    import gc
    import traceback
    hook = sys.unraisablehook
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sys.unraisablehook = lambda unraisable: None
        try:
            traceback.clear_frames(interrupt.__traceback__)
            gc.collect()
        finally:
            sys.unraisablehook = hook


# Errors of writing standard output (``fpdeep plan > /dev/full``, a full disk). Files
# fpdeep writes report these themselves (plan/files.py), so one that gets here is
# about standard output.
_WRITE_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EIO}


def _drop_stdout():
    # Python flushes standard output again at exit; make that flush succeed quietly.
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def console_main():
    try:
        status = main()
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (``fpdeep ... | head``): stop quietly, as a pipe would.
        _drop_stdout()
        status = 141
    except OSError as error:
        if error.errno not in _WRITE_ERRNOS:
            raise
        _drop_stdout()
        print(f"fpdeep: error: cannot write standard output: {error.strerror}",
              file=sys.stderr)
        status = 2
    sys.exit(status)


if __name__ == "__main__":
    console_main()
