"""Global switches for the CPU fast paths, and the one place that decides when they run.

Like ``timm.layers.config`` (``use_fused_attn``/``set_fused_attn``, ``TIMM_FUSED_ATTN``): each fast path
has a name, a global switch and an environment variable read once at import. ``IWIN_FAST_PATH=0``
turns every one off; ``IWIN_<NAME>=0`` (e.g. ``IWIN_ONEDNN_LINEAR=0``) one of them.

* ``onednn_linear``: float32 CPU linear layers through oneDNN, ~2x MKL's rate on EPYC (``layers/linear.py``);
* ``patch_matmul``: the 4x4 stride-4 patch convolution as one matmul on the patches (``layers/iwin_cpu.py``);
* ``skip_padding``: windows filled without building the padded map, ``qkv`` on the real tokens where the
  padding is a large share, ``proj`` after the padding is dropped (``layers/interleave.py``);
* ``chunked``: inference attention and MLP a few MB at a time, no big fresh buffers (``layers/iwin_cpu.py``);
* ``inplace``: in-place GELU and residual adds written into fresh temporaries (``layers/iwin_cpu.py``);
* ``channels_last_decoder``: the UPerNet decoder run channels-last end to end (``segmenter.py``).

Each is exact up to float32 round-off.

The model file keeps one definitional ``forward`` per module and asks :func:`fast_path` whether to
hand the call to the fast twin. The plain path is what compilers, exporters, tracers (TorchScript,
FX, ``torch.export``, ONNX), dispatch modes (the FLOP counter, fake tensors) and forward hooks see.
"""
from __future__ import annotations

import contextlib
import os

import torch
import torch.nn as nn

__all__ = ["FAST_PATHS", "use_fast_path", "set_fast_path", "fast_paths", "fast_path", "is_traced"]

FAST_PATHS = ("onednn_linear", "patch_matmul", "skip_padding", "chunked", "inplace", "channels_last_decoder")


def _env_flag(name: str) -> bool:
    value = os.environ.get(name)
    return value is None or value.strip().lower() not in ("0", "false", "no", "off")


_ALL = _env_flag("IWIN_FAST_PATH")
_ENABLED = {name: _env_flag(f"IWIN_{name.upper()}") for name in FAST_PATHS}


def _known(name: str) -> str:
    if name not in _ENABLED:
        raise ValueError(f"unknown fast path {name!r}; known: {', '.join(FAST_PATHS)}")
    return name


def use_fast_path(name: str | None = None) -> bool:
    """Whether the fast path ``name`` (or, with None, the fast paths as a whole) is switched on."""
    return _ALL if name is None else _ALL and _ENABLED[_known(name)]


def set_fast_path(enabled: bool, name: str | None = None) -> bool:
    """Switch the fast path ``name`` (None: all of them) on or off; returns the previous setting."""
    global _ALL
    if name is None:
        previous, _ALL = _ALL, bool(enabled)
    else:
        previous, _ENABLED[_known(name)] = _ENABLED[_known(name)], bool(enabled)
    return previous


@contextlib.contextmanager
def fast_paths(enabled: bool, *names: str):
    """Within the block, the named fast paths (all when none are named) are on or off."""
    previous = {n: set_fast_path(enabled, n) for n in names} if names else {None: set_fast_path(enabled)}
    try:
        yield
    finally:
        for n, value in previous.items():
            set_fast_path(value, n)


def is_traced() -> bool:
    """Whether a compiler, exporter or tracer is recording the graph (it then gets the plain path)."""
    if torch.jit.is_scripting() or torch.jit.is_tracing() or torch.compiler.is_compiling():
        return True
    return torch.fx._symbolic_trace.is_fx_symbolic_tracing()  # torch.export is covered by is_compiling()


_OWN_LAYERS = ("torch.nn.", "timm.", "iwin_models.")


def _observed_or_replaced(module: nn.Module | None) -> bool:
    """A dispatch mode (FLOP counter, fake tensors, export) or a forward hook watches the plain ops, or a
    submodule is not one of the layers the fast twin knows (a LoRA adapter, a quantised or user layer)."""
    if torch._C._len_torch_dispatch_stack() > 0:
        return True
    if module is None:
        return False
    if nn.modules.module._global_forward_hooks or nn.modules.module._global_forward_pre_hooks:
        return True
    for m in module.modules():
        if m is not module and (m._forward_hooks or m._forward_pre_hooks):
            return True
        if not type(m).__module__.startswith(_OWN_LAYERS):
            return True
    return False


def fast_path(x: torch.Tensor, module: nn.Module | None = None, name: str | None = None) -> bool:
    """Whether ``module``'s call on ``x`` may go to its fast twin.

    Eager CPU only: GPUs have their own kernels and a caching allocator. Never while a graph is being
    recorded or observed (see :func:`is_traced`, dispatch modes such as ``FlopCounterMode``), nor when
    hooks sit on the submodules the fast twin would bypass (hook-based FLOP counters, feature hooks),
    nor when one of them was swapped for a layer of another library or of the user's own.
    """
    return (use_fast_path(name) and isinstance(x, torch.Tensor) and x.device.type == "cpu"
            and not is_traced() and not _observed_or_replaced(module))
