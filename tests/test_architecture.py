"""The package keeps the shape ARCHITECTURE.md describes: short functions, imports that run one way.

Imports are read from the source (module level and inside functions, i.e. static and run-time ones).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
from conftest import REPO

PACKAGE = REPO / "iwin_models"


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _resolve(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[:len(base) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Package modules that ``module`` imports anywhere in its source."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, node, path.name == "__init__.py")
            names = [target] + [f"{target}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != module and name != "iwin_models":
                found.add(name)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {m: _imports(m, p, modules) for m, p in modules.items() if m != "iwin_models"}


def test_no_import_cycles():
    graph = _graph()
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]):
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt] if nxt in stack else [node, nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])


@pytest.mark.parametrize("low, high", [
    ("iwin_models.iwin", "iwin_models.segmenter"),
    ("iwin_models.layers.config", "iwin_models.iwin"),
    ("iwin_models.layers.iwin_cpu", "iwin_models.iwin"),
    ("iwin_models.checkpoint", "iwin_models.iwin"),
    ("iwin_models.convert", "iwin_models.iwin"),
    ("iwin_models.convert", "iwin_models.segmenter"),
    ("iwin_models.data", "iwin_models.inference"),
    ("iwin_models.io", "iwin_models.inference"),
    ("iwin_models.training", "iwin_models.cli"),
    ("iwin_models.evaluation", "iwin_models.cli"),
    ("iwin_models.inference", "iwin_models.cli"),
])
def test_imports_run_downwards(low, high):
    """A lower room never imports a higher one, directly or through others."""
    graph = _graph()
    seen, todo = set(), [low]
    while todo:
        node = todo.pop()
        for nxt in graph.get(node, ()):
            assert not (nxt == high or nxt.startswith(high + ".")), f"{low} reaches {high} (via {node})"
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)


def test_no_function_over_80_lines():
    long = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > 80:
                    long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, long


def test_model_file_has_no_backend_machinery():
    """iwin.py holds the architecture; the oneDNN, chunking and in-place code lives in layers/."""
    source = (PACKAGE / "iwin.py").read_text()
    for word in ("mkldnn", "_CHUNK", "gelu_", "add_(", "register_flop_formula", "divmod"):
        assert word not in source, word
