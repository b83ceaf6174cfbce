"""The package keeps the shape ARCHITECTURE.md describes: floors that import downwards (import-linter's contract in
pyproject.toml), no cycle, short functions, plain model files, no compatibility layer.

The cycle check reads imports from the source (module level and inside functions, i.e. static and run-time ones).
"""
from __future__ import annotations

import ast
import importlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch.nn as nn
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
            # ``from pkg import submodule`` depends on the submodule; ``from pkg import name`` on pkg
            names = [f"{target}.{a.name}" if f"{target}.{a.name}" in modules else target for a in node.names]
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


def _lint_imports(cwd: Path) -> subprocess.CompletedProcess:
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    assert exe, "lint-imports (import-linter, in the dev extra) is not installed"
    return subprocess.run([exe, "--no-cache"], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_the_import_contract_holds():
    """The floors of pyproject.toml's import-linter contract (ARCHITECTURE.md), checked by import-linter itself."""
    result = _lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout and "KEPT" in result.stdout


def test_the_import_contract_catches_an_upward_import(tmp_path):
    """The contract can fail: a copy of the package whose key maps import the command line breaks it."""
    shutil.copytree(PACKAGE, tmp_path / "iwin_models", ignore=shutil.ignore_patterns("__pycache__", "assets"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    keymaps = tmp_path / "iwin_models" / "models" / "keymaps.py"
    keymaps.write_text(keymaps.read_text() + "\nfrom ..apps.cli import common  # noqa\n")
    result = subprocess.run([sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; "
                             "sys.exit(lint_imports_command())", "--no-cache"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert result.returncode != 0 and "BROKEN" in result.stdout, result.stdout + result.stderr
    assert "iwin_models.models.keymaps -> iwin_models.apps.cli.common" in result.stdout


def test_the_top_level_holds_only_the_surface():
    """The floors are sub-packages; beside them only the public surface, the version and the extras check."""
    modules = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert modules == ["__init__.py", "extras.py", "version.py"], modules
    floors = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file())
    assert floors == ["apps", "data", "engine", "fast", "interop", "io", "layers", "models"], floors


def test_no_compatibility_layer():
    """The package is unreleased: no module-level __getattr__ (old names), nothing put into sys.modules, no
    deprecated spelling kept beside the new one."""
    found = []
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and node.name == "__getattr__":
                found.append(f"{path.relative_to(REPO)}: module __getattr__")
        code = _code_only(path)
        for word in ("sys.modules[", "DeprecationWarning", "InitVar"):
            if word in code:
                found.append(f"{path.relative_to(REPO)}: {word}")
    assert not found, found


def test_no_function_over_80_lines():
    long = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > 80:
                    long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, long


# Model definitions may be long classes (an architecture reads best in one piece); nothing else may. Each entry is
# an nn.Module model under models/.
LONG_MODEL_CLASSES = {("models/iwin.py", "IwinTransformer"), ("models/upernet/model.py", "IwinUPerNet")}


def _classes() -> dict[tuple[str, str], int]:
    """(file under the package, class) -> its length in lines, for every class of the package."""
    out = {}
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                out[(path.relative_to(PACKAGE).as_posix(), node.name)] = node.end_lineno - node.lineno + 1
    return out


def test_no_class_over_150_lines_but_the_models():
    classes = _classes()
    long = [f"{where}: {name} ({lines} lines)" for (where, name), lines in sorted(classes.items())
            if lines > 150 and (where, name) not in LONG_MODEL_CLASSES]
    assert not long, long
    assert LONG_MODEL_CLASSES <= set(classes), "an allowed model class is gone: update LONG_MODEL_CLASSES"
    for where, name in LONG_MODEL_CLASSES:
        module = importlib.import_module("iwin_models." + where.removesuffix(".py").replace("/", "."))
        assert where.startswith("models/") and issubclass(getattr(module, name), nn.Module), (where, name)


def test_model_file_has_no_backend_machinery():
    """models/iwin.py holds the architecture; the oneDNN, chunking and in-place code lives in fast/."""
    source = (PACKAGE / "models" / "iwin.py").read_text()
    for word in ("mkldnn", "_CHUNK", "gelu_", "add_(", "register_flop_formula", "divmod"):
        assert word not in source, word


# Where torch documents no public form of something export needs, the one function that uses it.
PRIVATE_TORCH_ALLOWED = {
    ("iwin_models/interop/export.py", "size_oblivious_tracing"),  # torch.fx.experimental._config
    ("iwin_models/interop/export.py", "program_guards"),  # ExportedProgram._guards_code
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


MODEL_FILES = ["models/iwin.py", "models/upernet/model.py", "models/upernet/decoder.py", "layers/pool.py",
               "layers/norm.py", "layers/conv.py"]


@pytest.mark.parametrize("model_file", MODEL_FILES)
def test_model_forwards_do_not_ask_who_is_watching(model_file):
    """Plain by default: no dispatch on device, tracer, hooks or dispatch modes, no data-dependent check, and no
    global read in a forward: the export forms are a module's own attribute (``export_forms`` sets it on a copy)."""
    source = _code_only(PACKAGE / model_file)
    assert "def " in source
    for word in ("fast_path", "is_traced", "is_compiling", "is_tracing", "_forward_hooks", "device.type",
                 "isfinite", ".item()", "dispatch", "iwin_cpu", "upernet_cpu", "dynamic_tracing", "global "):
        assert word not in source, word


def test_no_module_named_like_the_standard_library():
    """Except the floor ``io``: the interpreter imports the standard ``io`` before ``sys.path`` is read (it is in
    ``sys.modules`` from start-up), so a folder of that name never shadows it, wherever it lands on the path."""
    assert "io" in sys.builtin_module_names or subprocess.run(
        [sys.executable, "-S", "-c", "import sys; assert 'io' in sys.modules"], check=False).returncode == 0
    names = {p.stem for p in PACKAGE.rglob("*.py")} | {p.name for p in PACKAGE.rglob("*") if p.is_dir()}
    assert {"iwin", "upernet", "images", "files"} <= names  # the scan sees the package
    shadowing = sorted(p.relative_to(REPO).as_posix() for p in PACKAGE.rglob("*")
                       if (p.stem if p.suffix == ".py" else p.name) in sys.stdlib_module_names - {"io"}
                       and not p.stem.startswith("__"))
    assert not shadowing, shadowing
