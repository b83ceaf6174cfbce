"""The optional extras (``pip install 'iwin-models[<extra>]'``) and the one check a feature makes before its slow
work: :func:`require` raises a one-line ImportError naming what is missing and the extra that brings it.

A check looks modules up (``importlib.util.find_spec``) without importing them, so it costs nothing where
the extra is installed; the feature imports them lazily afterwards.
"""
from __future__ import annotations

import importlib.util

__all__ = ["EXTRAS", "install_hint", "missing", "require"]

EXTRAS = {  # extra: the modules it brings (setup.cfg's [options.extras_require]; a test keeps them equal)
    "onnx": ("onnx", "onnxscript", "onnxruntime"),
    "transformers": ("transformers",),
    "demo": ("gradio",),
    "report": ("matplotlib", "tensorboard"),
}


def install_hint(extra: str) -> str:
    """``pip install 'iwin-models[extra]'``."""
    if extra not in EXTRAS:
        raise KeyError(f"no extra named {extra!r}: {', '.join(EXTRAS)}")
    return f"pip install 'iwin-models[{extra}]'"


def missing(*modules: str) -> list[str]:
    """Those of ``modules`` that are not installed (found without importing them)."""
    out = []
    for module in modules:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # a parent package missing, or a broken half-import
            found = False
        if not found:
            out.append(module)
    return out


def require(extra: str, *modules: str, purpose: str) -> None:
    """Raise ``ImportError("<purpose> needs <modules> (<missing> not installed): pip install 'iwin-models[extra]'")``
    when one of ``modules`` (default: all of the extra's) is missing."""
    modules = modules or EXTRAS[extra]
    absent = missing(*modules)
    if absent:
        raise ImportError(f"{purpose} needs {' and '.join(modules)} ({' and '.join(absent)} not installed): "
                          f"{install_hint(extra)}")
