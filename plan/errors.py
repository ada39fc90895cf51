"""The one exception type that the command line turns into a one-line message."""

__all__ = ["FpdeepError"]


class FpdeepError(ValueError):
    """Bad user input: a network, plan, board, file or option that cannot be used.

    The message names the offending thing in one line. ``fpdeep`` prints it as
    ``fpdeep: error: <message>`` and exits with status 2; nothing is written.
    """
