"""Argument types and the parser of the ``fpdeep`` command: bad input in one line.

Every option of every subcommand is parsed with one of these types, so a value is
checked once, here, and never per command:

* :func:`finite_float` (``--lr``, ``--momentum``, ``--link-gbps``, ...): NaN and
  infinities are refused, as are values outside the option's range;
* :func:`positive_int` (counts: ``--batches``, ``--repeats``, ``--chips``, ...) and
  :func:`nonnegative_int` (``--seed``);
* :func:`output_file`: a path that :func:`fpdeep.plan.files.output_target` accepts
  (its directory exists, it is not a directory, a device or read-only); the
  file itself is written later, atomically, by :func:`fpdeep.plan.files.atomic_output`;
* :func:`network_arg`: a built-in network (case-insensitive), or a
  ``.json``/``.yaml``/``.yml``/``.onnx`` file.

:class:`Parser` turns every usage error into one line, ``fpdeep: error: ...``, and
exit status 2 (argparse alone prints the usage too). :func:`refuse_with_plan`
refuses options that a ``--plan`` makes meaningless, and :func:`take_options` those
that a mode of a command does not read, naming the option.
"""

import argparse
import math

from ..plan.errors import FpdeepError

__all__ = ["Parser", "UsageError", "finite_float", "positive_int", "nonnegative_int",
           "output_file", "network_arg", "load_network_arg", "option_name", "refuse_with_plan",
           "take_options"]


class UsageError(Exception):
    """A command-line error, already worded; :func:`~fpdeep.scripts.cli.main` prints it."""


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors raise :class:`UsageError` (one line)."""

    def error(self, message):
        raise UsageError(" ".join(message.split()))


def finite_float(low=None, high=None, *, low_open=False, high_open=False):
    """An argparse type: a finite float within ``[low, high]`` (open at ``low`` with
    ``low_open``, at ``high`` with ``high_open``); the bounds are optional."""
    def parse(text):
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        if low is not None and (value <= low if low_open else value < low):
            raise argparse.ArgumentTypeError(
                f"{text!r} must be {'above' if low_open else 'at least'} {low:g}")
        if high is not None and (value >= high if high_open else value > high):
            raise argparse.ArgumentTypeError(
                f"{text!r} must be {'below' if high_open else 'at most'} {high:g}")
        return value
    parse.__name__ = "number"
    return parse


def _int(text, low):
    try:
        value = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least {low}")
    return value


def positive_int(text):
    """An argparse type: an int of at least 1."""
    return _int(text, 1)


def nonnegative_int(text):
    """An argparse type: an int of at least 0."""
    return _int(text, 0)


def output_file(text):
    """An argparse type: a file path that can be written atomically (checked now)."""
    from ..plan.files import output_target
    try:
        output_target(text)
    except FpdeepError as error:
        raise argparse.ArgumentTypeError(str(error).replace("output path ", "")) from None
    return text


def network_arg(text):
    """An argparse type: a network name or file, as given (loaded by
    :func:`load_network_arg`, so that ``--help`` stays fast)."""
    if not text:
        raise argparse.ArgumentTypeError("an empty network name")
    return text


def load_network_arg(value):
    """The :class:`~fpdeep.plan.network.Network` of a ``--net`` value.

    Raises
    ------
    FpdeepError
        For an unknown name (listing the built-in ones) or a bad file.
    """
    from ..plan import zoo
    lower = value.lower()
    if lower.endswith(".onnx"):
        from ..plan.onnx_import import import_onnx
        return import_onnx(value)
    if lower.endswith((".json", ".yaml", ".yml")):
        from ..plan.network import load_network
        return load_network(value)
    return zoo.get(value)


def option_name(dest):
    """The command-line spelling of an argparse destination: ``batch_size`` -> ``--batch-size``."""
    return "--" + dest.replace("_", "-")


def refuse_with_plan(args, names):
    """Raise FpdeepError if ``args.plan`` is given with any option in ``names`` (their
    defaults are None): the plan decides them, and silently ignoring one misleads."""
    if not getattr(args, "plan", None):
        return
    for name in names:
        if getattr(args, name) is not None:
            raise FpdeepError(f"{option_name(name)} is decided by the plan {args.plan!r}; drop it "
                              f"or plan again with it")


def take_options(args, defaults, reads, doing, *, hint=""):
    """Refuse an option of ``defaults`` that was given (it is not None: the parser's
    default for each is None) but that ``doing`` does not read (it is not in
    ``reads``), naming it; then set the options not given to their ``defaults``.

    Silently ignoring an option misleads: ``plan --sweep --net lenet5`` would not
    plan lenet5.
    """
    for name, default in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, default)
        elif name not in reads:
            raise FpdeepError(f"{doing} does not take {option_name(name)}{hint}; drop it")
