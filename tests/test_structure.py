"""The package's shape: no import cycles (issue 12, point 4) and a light ``import hypergrad`` (point 5)."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hypergrad._imports import MissingDependency, optional_import

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "hypergrad"


# ---------------------------------------------------------------------- import cycles
def _module_names() -> dict[str, Path]:
    """``hypergrad.x.y`` -> its file, for every module under hypergrad/ (a package by its __init__.py)."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, module: str, is_package: bool, modules: set[str]) -> set[str]:
    """The hypergrad modules that ``module`` imports anywhere (in functions too; not under ``if TYPE_CHECKING``).

    ``from pkg import name`` counts as an import of ``pkg.name`` when that is a module, else of ``pkg``.
    """
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in modules else target)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return {m for m in found if m in modules and m != module}


def import_graph() -> dict[str, set[str]]:
    modules = _module_names()
    return {
        name: _imports(ast.parse(path.read_text(encoding="utf-8"), str(path)), name,
                       path.name == "__init__.py", set(modules))
        for name, path in modules.items()
    }


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle ``[a, b, ..., a]`` of ``graph``, or ``None`` (depth-first search, colours white/grey/black)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state and (cycle := dfs(nxt)) is not None:
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := dfs(start)) is not None:
            return cycle
    return None


def test_cycle_finder_finds_cycles_and_only_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None  # a diamond is no cycle


def test_import_graph_sees_function_level_relative_and_submodule_imports():
    modules = {"p", "p.a", "p.b", "p.sub", "p.sub.c"}
    tree = ast.parse(
        "from p import b\n"
        "def f():\n    import p.sub.c\n"
        "def g():\n    from . import b\n    from .sub import c\n"
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from p.sub import helper\n"
    )
    assert _imports(tree, "p.a", False, modules) == {"p.b", "p.sub.c"}
    assert _imports(ast.parse("from .c import x\nfrom .. import a"), "p.sub", True, modules) == {"p.sub.c", "p.a"}


def test_no_import_cycles():
    """No module of hypergrad/ imports itself through others, counting imports inside functions."""
    graph = import_graph()
    assert "hypergrad.cli" in graph and "hypergrad.compare.runners" in graph
    assert "hypergrad.compare" in graph["hypergrad.cli"]  # function-level imports are counted
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_config_imports_only_the_core():
    """hypergrad.config sits below the tuner, the CLI and compare (it may import the numerical core)."""
    above = {"hypergrad.tuner", "hypergrad.cli", "hypergrad.compare", "hypergrad.baselines", "hypergrad.callbacks",
             "hypergrad.workloads"}
    graph = import_graph()
    reached, todo = set(), ["hypergrad.config"]
    while todo:
        for nxt in graph[todo.pop()] - reached:
            reached.add(nxt)
            todo.append(nxt)
    assert not reached & above, sorted(reached & above)


# ---------------------------------------------------------------------- light import
HEAVY = ("optuna", "matplotlib", "tensorboard", "torch.utils.tensorboard")


def test_import_hypergrad_loads_no_optuna_matplotlib_or_tensorboard():
    code = "import json, sys, hypergrad, hypergrad.config; print(json.dumps(sorted(sys.modules)))"
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120, check=True)
    loaded = set(json.loads(proc.stdout))
    assert "hypergrad.tuner" in loaded  # the import really happened
    assert not {m for m in loaded if m.split(".")[0] in HEAVY or m in HEAVY}, sorted(
        m for m in loaded if m.split(".")[0] in HEAVY or m in HEAVY)


def test_optional_import_names_the_package_to_install():
    assert optional_import("json", "json") is json
    with pytest.raises(MissingDependency, match=r"for the plot .*install it with: pip install matplotlib"):
        optional_import("hypergrad_test_no_such_module", "matplotlib", purpose="the plot")


def test_cli_reports_a_missing_optional_package_in_one_line(monkeypatch, capsys):
    from hypergrad.cli import EXIT_USAGE, main

    monkeypatch.setitem(sys.modules, "optuna", None)  # `import optuna` now fails as if it were not installed
    assert main(["compare", "--methods", "tpe", "--budget", "1", "--seeds", "1", "--no-progress"]) == EXIT_USAGE
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("hypergrad: error: optuna is needed"), err
    assert "pip install optuna" in err[0]
