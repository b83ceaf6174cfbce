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
    ("iwin_models.layers.twin", "iwin_models.iwin"),
    ("iwin_models.layers.iwin_cpu", "iwin_models.optimize"),
    ("iwin_models.layers.config", "iwin_models.segmenter"),
    ("iwin_models.iwin", "iwin_models.optimize"),
    ("iwin_models.segmenter", "iwin_models.optimize"),
    ("iwin_models.weights", "iwin_models.segmenter"),
    ("iwin_models.bands", "iwin_models.inference"),
    ("iwin_models.resolve", "iwin_models.cli"),
    ("iwin_models.checkpoint", "iwin_models.resolve"),
    ("iwin_models.segmenter", "iwin_models.resolve"),
    ("iwin_models.weights", "iwin_models.resolve"),
    ("iwin_models.convert", "iwin_models.resolve"),
    ("iwin_models.transformers_port", "iwin_models.cli"),
    ("iwin_models.bands", "iwin_models.segmenter"),
    ("iwin_models.visualize", "iwin_models.inference"),
    ("iwin_models.images", "iwin_models.inference"),
    ("iwin_models.files", "iwin_models.training"),
    ("iwin_models.checkpoint", "iwin_models.segmenter"),
    ("iwin_models.training", "iwin_models.cli"),
    ("iwin_models.evaluation", "iwin_models.cli"),
    ("iwin_models.inference", "iwin_models.cli"),
    ("iwin_models.report", "iwin_models.cli"),
    ("iwin_models.evaluation", "iwin_models.report"),
    ("iwin_models.visualize", "iwin_models.report"),
    ("iwin_models.files", "iwin_models.report"),
    ("iwin_models.extras", "iwin_models.export"),
    ("iwin_models.files", "iwin_models.runlog"),
    ("iwin_models.extras", "iwin_models.runlog"),
    ("iwin_models.runlog", "iwin_models.training"),
    ("iwin_models.runlog", "iwin_models.cli"),
    ("iwin_models.demo", "iwin_models.cli"),
    ("iwin_models.resolve", "iwin_models.demo"),
    ("iwin_models.inference", "iwin_models.demo"),
    ("iwin_models.visualize", "iwin_models.demo"),
    ("iwin_models.training", "iwin_models.demo"),
    ("iwin_models.extras", "iwin_models.demo"),
])
def test_imports_run_downwards(low, high):
    """A lower room never imports a higher one, directly or through others."""
    graph = _graph()
    assert low in graph and high in _modules(), f"no module {low} or {high}: update this list with the rooms"
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


# Where torch documents no public form of something export needs, the one function that uses it.
PRIVATE_TORCH_ALLOWED = {
    ("iwin_models/layers/config.py", "size_oblivious_tracing"),  # torch.fx.experimental._config
    ("iwin_models/export.py", "program_guards"),  # ExportedProgram._guards_code
}


def _dotted(node: ast.AST) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return ".".join(reversed(parts))


def _private(name: str) -> bool:
    parts = name.split(".")
    is_private = [p.startswith("_") and not p.startswith("__") for p in parts[1:]]
    return (parts[0] in ("torch", "nn", "F") and any(is_private)) or "_guards_code" in parts


def _private_uses(path: Path) -> list[tuple[str, str]]:
    """(function, private name) for every private torch name used in ``path``."""
    uses = []

    def visit(node: ast.AST, function: str):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            function = node.name
        if isinstance(node, ast.Attribute) and not isinstance(getattr(node, "parent", None), ast.Attribute):
            name = _dotted(node)
            if _private(name):
                uses.append((function, name))
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("torch"):
            for alias in node.names:
                if _private(f"{node.module}.{alias.name}"):
                    uses.append((function, f"{node.module}.{alias.name}"))
        for child in ast.iter_child_nodes(node):
            child.parent = node
            visit(child, function)

    visit(ast.parse(path.read_text()), "<module>")
    return uses


def test_no_private_torch_api_outside_the_two_documented_functions():
    found = {}
    for path in PACKAGE.rglob("*.py"):
        where = str(path.relative_to(REPO))
        for function, name in _private_uses(path):
            found.setdefault((where, function), set()).add(name)
    unexpected = {k: v for k, v in found.items() if k not in PRIVATE_TORCH_ALLOWED}
    assert not unexpected, unexpected
    assert set(found) == PRIVATE_TORCH_ALLOWED, "the checker no longer sees the two known uses: it is broken"


def test_the_checker_sees_the_private_names_the_issue_lists():
    code = ("def f(x):\n    torch._C._len_torch_dispatch_stack()\n"
            "    torch.fx._symbolic_trace.is_fx_symbolic_tracing()\n"
            "    nn.modules.module._global_forward_hooks\n    torch.ops.aten._softmax.out(x, 0, False, out=x)\n")
    path = REPO / "tests" / "_private_probe.py"
    try:
        path.write_text(code)
        names = {name for _, name in _private_uses(path)}
    finally:
        path.unlink()
    assert names == {"torch._C._len_torch_dispatch_stack", "torch.fx._symbolic_trace.is_fx_symbolic_tracing",
                     "nn.modules.module._global_forward_hooks", "torch.ops.aten._softmax.out"}, names


def _code_only(path: Path) -> str:
    """The source without comments, docstrings or other strings (messages may name anything)."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            node.value = ""
    return ast.unparse(tree)


@pytest.mark.parametrize("model_file", ["iwin.py", "segmenter.py"])
def test_model_forwards_do_not_ask_who_is_watching(model_file):
    """Plain by default: no dispatch on device, tracer, hooks or dispatch modes, no data-dependent check.
    The one context a forward reads is the export entry points' ``is_dynamic_tracing()``."""
    source = _code_only(PACKAGE / model_file)
    assert "def forward" in source
    for word in ("fast_path", "is_traced", "is_compiling", "is_tracing", "_forward_hooks", "device.type",
                 "isfinite", ".item()", "dispatch", "iwin_cpu", "upernet_cpu"):
        assert word not in source, word


def test_no_module_named_like_the_standard_library():
    import sys

    names = {p.stem for p in PACKAGE.rglob("*.py")}
    assert {"iwin", "segmenter", "images", "files"} <= names  # the scan sees the package
    shadowing = sorted(p.relative_to(REPO).as_posix() for p in PACKAGE.rglob("*.py")
                       if p.stem in sys.stdlib_module_names and not p.stem.startswith("__"))
    assert not shadowing, shadowing
