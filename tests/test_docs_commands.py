"""Every ``fpdeep ...`` command in the ``sh`` blocks of README.md and docs/*.md runs
and exits with status 0.

The commands are parsed from whatever the files hold (a trailing ``# comment`` is
dropped), and each file's run in order, in one fresh directory, so that ``-o
p.json`` comes before ``--plan p.json``. An input file a command names that no
earlier command of its file made comes from :data:`PREPARED`. Skipped, with the
reason: commands with ``--port /dev/tty...`` (a board on a serial port) and
``gtkwave`` (a viewer); lines not starting with ``fpdeep ``.

The README and the tutorial walk the same path, so they run as one journey in one
directory (the README first) and a command that both print runs once: the bitstream
build alone takes about 16 minutes. The other pages (results, the CLI notes, the
schema) reproduce measurements; they run one directory each, under the same markers.

Costs: the default run takes the quick ones (:func:`cost`: planning, but the
gateware planning of anything bigger than digits, and help); the
``slow`` marker runs every command but bitstream builds, the ``build`` marker
those. A command whose trailing comment names ``-m reproduce`` (a measurement that
takes longer than CI can give it, such as 10 epochs on 4 simulated chips) runs
only under the ``reproduce`` marker. Commands run in process
(``fpdeep.scripts.cli.main``).
"""

import re
import shlex
from pathlib import Path

import pytest

from fpdeep.scripts.cli import main

ROOT = Path(__file__).resolve().parent.parent
#: The user's path from installed to bitstream, run as one sequence.
JOURNEY = [ROOT / "README.md", ROOT / "docs" / "tutorial.md"]
#: Every page with commands: the journey as one entry, then each other page alone.
DOCS = [JOURNEY, *([page] for page in sorted((ROOT / "docs").glob("*.md"))
                   if page not in JOURNEY)]


def _ids(pages):
    return "+".join(page.name for page in pages)

SKIPS = [(re.compile(r"--port\s+/dev/tty"), "needs a board on a serial port"),
         (re.compile(r"^gtkwave\b"), "opens a waveform viewer")]


def _plan_p(path):
    assert main(["plan", "--net", "digits", "--chips", "4", "--target", "gateware",
                 "-o", str(path)]) == 0


def _network(path):
    from fpdeep.plan.network import digits_cnn, save_network
    save_network(digits_cnn(), path)


def _npz(path):
    import numpy as np
    from fpdeep.sim.data import digits_dataset
    data = digits_dataset((1, 8, 8), 10)
    np.savez(path, x=data.x[:200], y=data.y[:200])


#: Input files commands may name without making them first: name -> maker(path).
PREPARED = {"p.json": _plan_p, "plan.json": _plan_p, "net.json": _network,
            "mynet.json": _network, "digits.npz": _npz, "data.npz": _npz}

#: Options whose value is a file the command reads.
INPUTS = ("--plan", "--net", "--data")


def commands(path):
    """``(line number, text)`` of each command line in ``path``'s ``sh`` blocks."""
    found, block = [], False
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        stripped = line.strip()
        if stripped.startswith("```"):
            block = not block and stripped[3:].strip() in ("sh", "shell", "bash", "console")
            continue
        if block and stripped and not stripped.startswith("#"):
            text = stripped.removeprefix("$ ")
            found.append((number, text))
    return found


def split(text):
    """The argv of a command line, without its trailing comment."""
    return shlex.split(text, comments=True)


def cost(argv):
    """``"fast"``, ``"slow"`` or ``"build"`` for ``fpdeep`` arguments ``argv``."""
    if not argv or "--help" in argv or "-h" in argv:
        return "fast"
    if argv[0] == "build":
        return "slow" if "--verilog-only" in argv else "build"
    if argv[0] == "plan" and "--sweep" not in argv and "--balance" not in argv:
        # The gateware planner simulates candidate chains: quick for digits only.
        gateware = "gateware" in argv and argv[argv.index("--target") + 1] == "gateware"
        net = argv[argv.index("--net") + 1].lower() if "--net" in argv else "digits"
        return "slow" if gateware and net != "digits" else "fast"
    return "slow"


def kind(text):
    """:func:`cost` of a command line, or ``"reproduce"`` if its comment says ``-m reproduce``."""
    if re.search(r"\s#.*-m reproduce", text):
        return "reproduce"
    return cost(split(text)[1:])


def skip_reason(text):
    for pattern, reason in SKIPS:
        if pattern.search(text):
            return reason
    if not text.startswith("fpdeep "):
        return "not an fpdeep command"
    return None


def run_file(docs, directory, kinds, capsys):
    """Run the commands of the pages ``docs`` whose cost is in ``kinds``, in order, in
    ``directory``; a command that an earlier page printed the same runs once."""
    ran = []
    for doc, number, text in ((doc, n, t) for doc in docs for n, t in commands(doc)):
        if skip_reason(text) or text in ran:
            continue
        argv = split(text)[1:]
        if kind(text) not in kinds:
            continue
        for option, value in zip(argv, argv[1:]):
            if option in INPUTS and value.endswith((".json", ".yaml", ".npz", ".onnx")) \
                    and not (directory / value).exists():
                assert value in PREPARED, (f"{doc.name}:{number}: {text!r} reads {value}, "
                                           f"which no earlier command makes; add it to "
                                           f"PREPARED")
                PREPARED[value](directory / value)
        status = main(argv)
        captured = capsys.readouterr()
        assert status == 0, f"{doc.name}:{number}: {text!r} exited {status}: {captured.err}"
        ran.append(text)
    return ran


def test_the_parser_finds_and_classifies_commands(tmp_path):
    doc = tmp_path / "x.md"
    doc.write_text("text\n```sh\nfpdeep plan --net digits -o p.json   # a plan\n"
                   "fpdeep sim --plan p.json\ngtkwave run.gtkw\n```\n"
                   "```python\nfpdeep not a command\n```\n")
    found = commands(doc)
    assert [number for number, _ in found] == [3, 4, 5]
    assert split(found[0][1]) == ["fpdeep", "plan", "--net", "digits", "-o", "p.json"]
    assert [cost(split(text)[1:]) for _, text in found[:2]] == ["fast", "slow"]
    assert skip_reason(found[2][1]) == "opens a waveform viewer"
    assert cost(["build", "--board", "x"]) == "build"
    assert cost(["plan", "--net", "LeNet5", "--target", "gateware"]) == "slow"
    assert cost(["plan", "--net", "lenet5"]) == "fast"
    assert skip_reason("fpdeep link-test --port /dev/ttyUSB0") == "needs a board on a serial port"
    assert kind("fpdeep train --chips 4 --epochs 10   # 10 minutes: -m reproduce") == "reproduce"
    assert kind("fpdeep train --chips 2   # a minute") == "slow"
    assert kind("fpdeep plan --net digits") == "fast"


@pytest.mark.parametrize("docs", DOCS, ids=_ids)
def test_quick_commands_run(docs, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    run_file(docs, tmp_path, {"fast"}, capsys)


# The journey's long commands run in CI (slow, build); the other pages reproduce
# measurements (a sweep, link benchmarks, LeNet-5 in Verilator), which would not fit
# CI's 90 minutes beside them: they run under `-m reproduce`.
LONG = [pytest.param(docs, marks=pytest.mark.reproduce if docs is not JOURNEY else (),
                     id=_ids(docs)) for docs in DOCS]


@pytest.mark.slow
@pytest.mark.parametrize("docs", LONG)
def test_every_command_runs(docs, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    run_file(docs, tmp_path, {"fast", "slow"}, capsys)


@pytest.mark.reproduce
@pytest.mark.parametrize("docs", DOCS, ids=_ids)
def test_measurements_run(docs, tmp_path, monkeypatch, capsys):
    """Every command but bitstream builds, with those marked ``-m reproduce`` (hours)."""
    monkeypatch.chdir(tmp_path)
    run_file(docs, tmp_path, {"fast", "slow", "reproduce"}, capsys)


@pytest.mark.build
@pytest.mark.parametrize("docs", LONG)
def test_build_commands_run(docs, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    run_file(docs, tmp_path, {"fast", "build"}, capsys)
