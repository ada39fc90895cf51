"""Imports run one way: ``plan/`` ← ``rtl/`` ← ``sim/`` and ``platforms/`` ← ``scripts/``.

A folder may import itself and the folders below it, never one above it or beside
it, not even lazily inside a function (ARCHITECTURE.md). This walks every import
statement of every module, at any depth, and checks it.
"""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
#: What each folder may import (besides itself).
BELOW = {
    "plan": set(),
    "rtl": {"plan"},
    "sim": {"plan", "rtl"},
    "platforms": {"plan", "rtl"},
    "scripts": {"plan", "rtl", "sim", "platforms"},
}


def _imports(source, package):
    """``(line, folder imported)`` for every fpdeep import in ``source``, a module of
    ``package`` (its folders from the top, ``["rtl", "link"]``)."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                target = base + (node.module.split(".") if node.module else [])
                yield node.lineno, target[0] if target else None
            elif node.module and node.module.split(".")[0] == "fpdeep":
                parts = node.module.split(".")
                yield node.lineno, parts[1] if len(parts) > 1 else None
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "fpdeep":
                    yield node.lineno, parts[1] if len(parts) > 1 else None


def _modules():
    for folder in BELOW:
        for path in sorted((ROOT / folder).rglob("*.py")):
            yield folder, path


@pytest.mark.parametrize("folder,path", list(_modules()),
                         ids=lambda v: str(v.relative_to(ROOT)) if isinstance(v, pathlib.Path) else v)
def test_imports_run_one_way(folder, path):
    package = [folder] + list(path.relative_to(ROOT / folder).parent.parts)
    wrong = [(line, target) for line, target in _imports(path.read_text(), package)
             if target != folder and target not in BELOW[folder]]
    assert not wrong, (f"{path.relative_to(ROOT)} imports "
                       + ", ".join(f"{target}/ (line {line})" for line, target in wrong))


def test_the_walk_sees_lazy_relative_and_absolute_imports():
    """The checker itself: imports inside functions, at any relative depth, or absolute."""
    source = ("from . import a\n"
              "def f():\n    from ...sim.reference import init_masters\n"
              "class C:\n    def g(self):\n        import fpdeep.scripts.cli\n"
              "        from ...plan import zoo\n")
    assert [target for _, target in _imports(source, ["rtl", "link"])] == \
        ["rtl", "sim", "scripts", "plan"]
