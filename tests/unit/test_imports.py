"""Imports point one way (DESIGN.md): read from the source with ``ast``, module level and inside
functions, so a lazy import cannot hide a circle.

- no import circle between any two modules of ``raydeep/``;
- ``datasets/`` never imports ``trainers/``, ``sweeps/`` or ``config``; ``cluster/`` imports none of
  ``datasets/``, ``trainers/``, ``sweeps/``; ``trainers/`` never imports ``sweeps/``;
- ``config.py`` imports only leaf modules;
- no ``raydeep`` import inside a function (``cli.py`` alone defers its commands' modules, so
  ``raydeep --help`` does not import torch and Ray).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

CONFIG_MAY_IMPORT = {"raydeep.sections", "raydeep.errors", "raydeep.config_files", "raydeep.trainers.schedules",
                     "raydeep.trainers.class_weights", "raydeep.datasets.storage", "raydeep.sweeps.space",
                     "raydeep.trainers.mlflow_log"}
FORBIDDEN = [  # (importer prefix, imported prefixes it must not reach)
    ("raydeep.datasets", ("raydeep.trainers", "raydeep.sweeps", "raydeep.config")),
    ("raydeep.cluster", ("raydeep.datasets", "raydeep.trainers", "raydeep.sweeps")),
    ("raydeep.trainers", ("raydeep.sweeps",)),
]
MAY_DEFER = {"raydeep.cli"}


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _type_checking_only(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def _in_function(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            return True
    return False


def import_graph(package_root: Path, package: str) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """``({module: modules it imports}, {module: modules it imports inside functions})`` among the
    package's own modules; ``from pkg.mod import name`` counts ``pkg.mod.name`` when that is a module."""
    files = {module_name(p, package_root): p for p in (package_root / package).rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in files}
    deferred: dict[str, set[str]] = {m: set() for m in files}
    for mod, path in files.items():
        tree = ast.parse(path.read_text())
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in files else node.module
                           for a in node.names]
            else:
                continue
            if _type_checking_only(node, parents):
                continue
            for t in targets:
                if t in files and t != mod:
                    graph[mod].add(t)
                    if _in_function(node, parents):
                        deferred[mod].add(t)
    return graph, deferred


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def violations(graph: dict[str, set[str]], deferred: dict[str, set[str]]) -> list[str]:
    out = [f"import circle: {' <-> '.join(c)}" for c in cycles(graph)]
    for mod, targets in sorted(graph.items()):
        for prefix, banned in FORBIDDEN:
            if mod == prefix or mod.startswith(prefix + "."):
                out += [f"{mod} imports {t}" for t in sorted(targets)
                        if any(t == b or t.startswith(b + ".") for b in banned)]
        if mod == "raydeep.config":
            out += [f"raydeep.config imports {t}, not a leaf module" for t in sorted(targets - CONFIG_MAY_IMPORT)]
        if mod not in MAY_DEFER:
            out += [f"{mod} imports {t} inside a function" for t in sorted(deferred[mod])]
    return out


def test_raydeep_imports_point_one_way():
    graph, deferred = import_graph(ROOT, "raydeep")
    assert len(graph) > 40  # the parser found the package
    assert violations(graph, deferred) == []


def _plant(tmp_path: Path, files: dict[str, str]) -> tuple[dict, dict]:
    for name, text in files.items():
        p = tmp_path / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return import_graph(tmp_path, "raydeep")


BASE = {"raydeep/__init__.py": "", "raydeep/config.py": "from raydeep.sections import Section\n",
        "raydeep/sections.py": "", "raydeep/datasets/__init__.py": "", "raydeep/datasets/splits.py": "",
        "raydeep/trainers/__init__.py": "", "raydeep/trainers/loop.py": "import raydeep.config\n",
        "raydeep/sweeps/__init__.py": "", "raydeep/sweeps/runner.py": "from raydeep.trainers import loop\n"}


def test_the_planted_tree_is_clean(tmp_path):
    assert violations(*_plant(tmp_path, BASE)) == []


@pytest.mark.parametrize("planted, expected", [
    ({"raydeep/sections.py": "def f():\n    from raydeep import config\n"},
     ["import circle: raydeep.config <-> raydeep.sections", "raydeep.sections imports raydeep.config inside a function"]),
    ({"raydeep/datasets/splits.py": "from raydeep.trainers.loop import x\n"},
     ["raydeep.datasets.splits imports raydeep.trainers.loop"]),
    ({"raydeep/trainers/loop.py": "from raydeep.sweeps import runner\n"},
     ["import circle: raydeep.sweeps.runner <-> raydeep.trainers.loop", "raydeep.trainers.loop imports raydeep.sweeps.runner"]),
    ({"raydeep/config.py": "from raydeep.datasets.splits import open_split\n"},
     ["raydeep.config imports raydeep.datasets.splits, not a leaf module"]),
    ({"raydeep/trainers/loop.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from raydeep.sweeps import runner\n"},
     []),  # annotations only: never executed
], ids=["lazy-circle", "datasets-to-trainers", "trainers-to-sweeps", "config-not-leaf", "type-checking-only"])
def test_a_planted_violation_is_named(tmp_path, planted, expected):
    assert violations(*_plant(tmp_path, {**BASE, **planted})) == expected
