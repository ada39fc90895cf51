"""The bad-input contract of ``fpdeep``, property-based: generated network and plan
files, valid and mutated (wrong types, missing keys, absurd values, NaN, bad
encodings, deep nesting, truncation), fed to the loaders and to the command line in
process. Every run either succeeds, or exits with status 2, one line on stderr
starting ``fpdeep: error:``, and no file written. docs/bad-input.md lists the kinds
and the tests that cover them."""

import contextlib
import io
import json
import os
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from fpdeep.plan import zoo
from fpdeep.plan.boards import Cluster
from fpdeep.plan.errors import FpdeepError
from fpdeep.plan.network import load_network
from fpdeep.plan.plan import Plan, plan_network
from fpdeep.scripts.cli import main


def run_cli(argv):
    """``(status, stderr)`` of ``fpdeep argv``, in process."""
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        status = main(argv)
    return status, err.getvalue()


def assert_contract(status, err, directory, before):
    assert status in (0, 2), (status, err)
    if status == 2:
        assert err.startswith("fpdeep: error: ") and err.count("\n") == 1, err
        assert sorted(os.listdir(directory)) == before, "a failed run left a file"


# -- generated files and their mutations ---------------------------------------------

WRONG = st.one_of(st.none(), st.booleans(), st.text(max_size=5), st.just([]), st.just({}),
                  st.sampled_from([0, -1, -7, 1.5, 2.0, 10**12, 2**63, "3", [3], [1, 2, 3]]))


def paths(tree, prefix=()):
    """Every path to a value in a JSON tree."""
    yield prefix
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from paths(value, prefix + (key,))
    elif isinstance(tree, list):
        for index, value in enumerate(tree):
            yield from paths(value, prefix + (index,))


def mutated(tree, path, how, value):
    """``tree`` with the value at ``path`` deleted, replaced by ``value``, or nested deep."""
    tree = json.loads(json.dumps(tree))
    if not path:
        return value if how != "delete" else None
    parent = tree
    for key in path[:-1]:
        parent = parent[key]
    if how == "delete":
        del parent[path[-1]]
    elif how == "nest":
        parent[path[-1]] = "__DEEP__"     # file_text writes the deep list in its place
    else:
        parent[path[-1]] = value
    return tree


def file_text(tree, how):
    text = json.dumps(tree, indent=1)
    if how == "nest":
        text = text.replace('"__DEEP__"', "[" * 3000 + "]" * 3000)
    return text


@st.composite
def networks(draw):
    """A network dict: convs (with or without ReLU and pool) then FC layers and the loss;
    its sizes drawn so that it is often, not always, consistent."""
    c, h = draw(st.integers(1, 3)), draw(st.sampled_from([4, 6, 8]))
    shape, layers = [c, h, h], []
    for k in range(draw(st.integers(0, 2))):
        out, kernel = draw(st.integers(1, 4)), draw(st.sampled_from([1, 3]))
        pad = draw(st.integers(0, kernel - 1))
        layers.append({"type": "Conv2d", "name": f"conv{k}", "in_channels": shape[0],
                       "out_channels": out, "kernel": kernel, "padding": pad})
        shape = [out, shape[1] + 2 * pad - kernel + 1, shape[2] + 2 * pad - kernel + 1]
        if draw(st.booleans()):
            layers.append({"type": "ReLU", "name": f"relu{k}"})
        if draw(st.booleans()) and shape[1] % 2 == 0:
            layers.append({"type": "MaxPool2d", "name": f"pool{k}"})
            shape = [shape[0], shape[1] // 2, shape[2] // 2]
    inputs = shape[0] * shape[1] * shape[2]
    layers.append({"type": "Linear", "name": "fc", "in_features": inputs,
                   "out_features": draw(st.integers(2, 10))})
    layers.append({"type": "SoftmaxCrossEntropy", "name": "loss"})
    return {"name": "gen", "input_shape": [c, h, h], "layers": layers}


@st.composite
def mutations(draw, tree):
    how = draw(st.sampled_from(["keep", "delete", "replace", "replace", "nest", "nan",
                                "utf8", "truncate"]))
    candidates = list(paths(tree))[1:]
    path = draw(st.sampled_from(candidates))
    value = draw(WRONG)
    if how in ("keep", "nan", "utf8", "truncate"):
        text = json.dumps(tree, indent=1)
        if how == "nan":
            numbers = [p for p in candidates if isinstance(_at(tree, p), (int, float))
                       and not isinstance(_at(tree, p), bool)]
            if numbers:
                changed = mutated(tree, draw(st.sampled_from(numbers)), "replace", "__NAN__")
                text = json.dumps(changed, indent=1).replace(
                    '"__NAN__"', draw(st.sampled_from(["NaN", "Infinity", "-Infinity"])))
        data = text.encode()
        if how == "utf8":
            at = draw(st.integers(0, len(data)))
            data = data[:at] + draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80"])) \
                + data[at:]
        if how == "truncate":
            data = data[:draw(st.integers(0, len(data) - 1))]
        return how, data
    changed = mutated(tree, path, how, value)
    return how, file_text(changed, how).encode()


def _at(tree, path):
    for key in path:
        tree = tree[key]
    return tree


FAST = settings(max_examples=100, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@FAST
@given(data=st.data())
def test_network_files_load_or_are_refused_in_one_line(data):
    tree = data.draw(networks())
    how, raw = data.draw(mutations(tree))
    suffix = data.draw(st.sampled_from([".json", ".yaml"]))
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "net" + suffix)
        with open(path, "wb") as file:
            file.write(raw)
        try:
            load_network(path)
        except FpdeepError as error:
            assert "\n" not in str(error)
        before = sorted(os.listdir(directory))
        out = os.path.join(directory, "p.json")
        status, err = run_cli(["plan", "--net", path, "-o", out])
        assert_contract(status, err, directory, before)
        if how == "keep":
            assert status == 0 or "does not fit" in err or "layer" in err, err


@pytest.fixture(scope="module")
def plan_tree():
    plan = plan_network(zoo.get("digits"), Cluster.uniform("ulx3s-85f", 2), batch_size=8,
                        target="gateware")
    return json.loads(json.dumps(plan.data))


class Accepted(Exception):
    """Raised where the simulation would start: the plan passed every check."""


@FAST
@given(data=st.data())
def test_plan_files_load_or_are_refused_in_one_line(data, plan_tree, monkeypatch_module):
    how, raw = data.draw(mutations(plan_tree))
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "p.json")
        with open(path, "wb") as file:
            file.write(raw)
        try:
            Plan.load(path)
        except FpdeepError as error:
            assert "\n" not in str(error)
        before = sorted(os.listdir(directory))
        try:
            status, err = run_cli(["sim", "--net", "digits", "--plan", path,
                                   "--vcd", os.path.join(directory, "run.vcd")])
        except Accepted:
            status, err = 0, ""
        assert_contract(status, err, directory, before)
        if how == "keep":
            assert status == 0, err


@pytest.fixture(scope="module")
def monkeypatch_module():
    """Stop ``fpdeep sim`` where its simulation would begin (after every check)."""
    from fpdeep.sim import harness

    def stop(*args, **kwargs):
        raise Accepted()
    original = harness.CoreRun.__init__
    harness.CoreRun.__init__ = stop
    yield
    harness.CoreRun.__init__ = original
