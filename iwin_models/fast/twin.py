"""The base of the CPU fast twins that :func:`iwin_models.optimize_for_cpu` puts in place of plain modules.

A twin is made from a plain module and shares everything it holds: parameters, buffers, submodules,
hooks and attributes (so ``state_dict`` keys and values are the plain module's, and a converted model
saves and loads plain checkpoints). Only ``forward`` differs: the same result to float32 round-off,
computed with CPU kernels and memory tricks the definition does not use. Which tricks, is decided once,
at conversion (``fast_paths``), never per call. ``to_plain()`` gives the plain module back.

A twin's forward is written for eager execution: ``torch.compile`` runs it eagerly between graphs, and
the tools that must record it (FX, TorchScript, ``torch.jit.trace``, ``torch.export``, ONNX) get a clear
error that names the plain model, which is what they should record (``iwin_models.restore_plain(model)``).
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn as nn

__all__ = ["CpuTwin", "eager_only", "refuse_tracing", "bypassed_problems"]

_TRACE_ADVICE = ("a model converted by iwin_models.optimize_for_cpu runs eagerly only; trace, script, compile or "
                 "export the plain model instead: iwin_models.restore_plain(model) gives it back (same weights)")


def refuse_tracing(x) -> None:
    """Raise a clear error where a tracer or compiler records a twin's forward (public checks only)."""
    if isinstance(x, torch.fx.Proxy) or torch.jit.is_tracing() or torch.compiler.is_compiling():
        raise RuntimeError(_TRACE_ADVICE)


def eager_only(forward):
    """A twin's ``forward``: ``torch.compile`` runs it eagerly (a graph break: the compiled model still gives
    the right result), and ``fullgraph=True`` reports why it cannot (torch >= 2.8 shows ``reason``)."""
    try:
        return torch.compiler.disable(forward, reason=_TRACE_ADVICE)
    except TypeError:  # an older torch without ``reason``
        return torch.compiler.disable(forward)


def bypassed_problems(owner: str, modules: dict[str, nn.Module | None], kind: type | None = None) -> list[str]:
    """Why the twin cannot stand in for ``owner``: a submodule whose ``forward`` it does not call (it computes
    from the weights directly) is not exactly ``kind`` (None: any type will do) or carries hooks that would
    no longer fire."""
    problems = []
    for name, module in modules.items():
        where = f"{owner}.{name}" if owner else name
        if kind is not None and type(module) is not kind:
            problems.append(f"{where} is a {type(module).__module__}.{type(module).__qualname__}, "
                            f"not {kind.__module__}.{kind.__qualname__}")
        elif module._forward_hooks or module._forward_pre_hooks:
            problems.append(f"{where} has forward hooks, which the fast twin would not call")
    return problems


class CpuTwin(nn.Module):
    """A fast twin: the plain module's state with another ``forward``.

    Subclasses define ``forward`` and may define ``problems(module, owner)`` listing why a plain module
    cannot be converted (an empty list when it can).
    """

    plain_class: type
    fast_paths: frozenset[str]

    @classmethod
    def problems(cls, module: nn.Module, owner: str) -> list[str]:
        return []

    @classmethod
    def from_plain(cls, module: nn.Module, fast_paths: Iterable[str]) -> CpuTwin:
        twin = cls.__new__(cls)
        # the plain module's own state (dicts copied, tensors and submodules shared)
        twin.__dict__.update({k: v.copy() if isinstance(v, dict) else v for k, v in module.__dict__.items()})
        twin.plain_class = type(module)
        twin.fast_paths = frozenset(fast_paths)
        return twin

    def to_plain(self) -> nn.Module:
        plain = self.plain_class.__new__(self.plain_class)
        state = {k: v.copy() if isinstance(v, dict) else v for k, v in self.__dict__.items()}
        del state["plain_class"], state["fast_paths"]
        plain.__dict__.update(state)
        return plain

    def uses(self, name: str) -> bool:
        """Whether the fast path ``name`` was switched on when this twin was made."""
        return name in self.fast_paths

    def __prepare_scriptable__(self):  # torch.jit.script calls it on every module before compiling
        raise RuntimeError(_TRACE_ADVICE)

    def extra_repr(self) -> str:
        plain = self.plain_class.extra_repr(self)
        paths = ", ".join(sorted(self.fast_paths))
        return f"{plain + ', ' if plain else ''}cpu twin of {self.plain_class.__name__} ({paths})"
