"""The CPU speed-ups as one explicit conversion (as ``timm.utils.reparameterize_model`` is for timm).

Every model the package builds is plain: its forwards are the definition, on any device, under any
tracer, hook or dispatch mode. :func:`optimize_for_cpu` returns it with CPU fast twins in place of the
modules that have one (``iwin_models.layers``): the patch embedding, the blocks, the UPerNet decoder.
A twin shares the plain module's parameters, so ``state_dict`` keys and values are unchanged: a converted
model trains, saves plain checkpoints and loads them. :func:`restore_plain` undoes the conversion, for the
tools that record a graph (TorchScript, FX, ``torch.compile``, ``torch.export``, ONNX), which a converted
model refuses with a clear error.

    model = iwin_models.optimize_for_cpu(timm.create_model("iwin_tiny", pretrained=True).eval())

Which twins and which of their tricks are installed follows the switches of ``iwin_models.layers.config``
at the time of the call (``IWIN_FAST_PATH=0``, ``IWIN_CHUNKED=0``, ...), less ``exclude``.
"""
from __future__ import annotations

import copy
import itertools
from collections.abc import Iterable, Iterator

import torch.nn as nn

from .iwin import IwinBlock, PatchEmbed
from .layers.config import FAST_PATHS, enabled_fast_paths, use_fast_path
from .layers.iwin_cpu import CpuIwinBlock, CpuPatchEmbed
from .layers.twin import CpuTwin
from .layers.upernet_cpu import CpuUPerNetDecoder
from .segmenter import IwinUPerNetDecoder

__all__ = ["optimize_for_cpu", "restore_plain", "wants_cpu_twins", "CPU_TWINS"]

# plain class -> (its twin, the fast paths of which one must be on for the twin to be installed)
CPU_TWINS: dict[type, tuple[type[CpuTwin], frozenset[str]]] = {
    PatchEmbed: (CpuPatchEmbed, frozenset({"patch_matmul"})),
    IwinBlock: (CpuIwinBlock, frozenset({"onednn_linear", "skip_padding", "chunked", "inplace"})),
    IwinUPerNetDecoder: (CpuUPerNetDecoder, frozenset({"channels_last_decoder"})),
}


def _plain(module: nn.Module) -> nn.Module:
    return module.to_plain() if isinstance(module, CpuTwin) else module


def _twin_for(module: nn.Module) -> tuple[type[CpuTwin], frozenset[str]] | None:
    """The twin of ``module``'s class: its own class or a subclass that keeps the plain ``forward``."""
    for plain_class, twin in CPU_TWINS.items():
        if isinstance(module, plain_class) and type(module).forward is plain_class.forward:
            return twin
    return None


def _walk(module: nn.Module, name: str = "") -> Iterator[tuple[nn.Module | None, str, str, nn.Module]]:
    """(parent, attribute, qualified name, plain module) for every module that has a twin (twins do not
    nest); the parent of the root is None. Twins already in place are seen as their plain modules."""
    plain = _plain(module)
    if _twin_for(plain) is not None:
        yield None, "", name, plain
        return
    for attr, child in module.named_children():
        for parent, child_attr, where, found in _walk(child, f"{name}.{attr}" if name else attr):
            yield (module, attr, where, found) if parent is None else (parent, child_attr, where, found)


def _devices(model: nn.Module) -> set[str]:
    return {t.device.type for t in itertools.chain(model.parameters(), model.buffers())}


def _structural_copy(model: nn.Module) -> nn.Module:
    """A copy of the module tree that shares every parameter and buffer (no tensor is copied)."""
    memo = {id(t): t for t in itertools.chain(model.parameters(), model.buffers())}
    return copy.deepcopy(model, memo)


def _replace(root: nn.Module, parent: nn.Module | None, attr: str, new: nn.Module) -> nn.Module:
    if parent is None:
        return new
    setattr(parent, attr, new)
    return root


def optimize_for_cpu(model: nn.Module, *, inplace: bool = True, exclude: Iterable[str] = ()) -> nn.Module:
    """``model`` with the CPU fast twins in place of its plain modules (same outputs to float32 round-off).

    Works on an Iwin backbone, a ``features_only`` model, an ``IwinUPerNet`` and an smp model with a
    ``tu-iwin_*`` encoder. Idempotent; ``inplace=False`` converts a copy of the module tree that shares the
    weights, leaving ``model`` plain. ``exclude`` names fast paths to leave out (``layers.config.FAST_PATHS``).

    Raises ValueError for a model on another device than the CPU, or with a part a twin would bypass (a
    linear layer replaced by an adapter, a hook on a layer the twin computes itself): the message names it.
    Raises TypeError if ``model`` holds nothing a twin exists for.
    """
    paths = enabled_fast_paths(tuple(exclude))
    devices = _devices(model) - {"cpu"}
    if devices:
        raise ValueError(f"optimize_for_cpu: the model is on {', '.join(sorted(devices))}; its fast twins are CPU "
                         f"kernels. Move it to the CPU first, or run the plain model on that device.")
    found = list(_walk(model))
    if not found:
        raise TypeError(f"optimize_for_cpu: {type(model).__name__} holds no Iwin module with a CPU twin "
                        f"({', '.join(c.__name__ for c in CPU_TWINS)})")
    problems = [p for _, _, where, plain in found for p in _problems(plain, where)]
    if problems:
        raise ValueError("optimize_for_cpu cannot convert this model; its fast twins would bypass:\n  "
                         + "\n  ".join(problems) + "\nRun it plain, or convert it before adapting those layers.")
    if not inplace:
        return optimize_for_cpu(_structural_copy(model), inplace=True, exclude=exclude)
    return _convert(model, paths)


def _problems(plain: nn.Module, where: str) -> list[str]:
    twin_class, _ = _twin_for(plain)
    try:
        return twin_class.problems(plain, where)
    except AttributeError as e:  # a part the twin computes with is missing or renamed
        return [f"{where or type(plain).__name__}: not the layout its twin expects ({e})"]


def _convert(model: nn.Module, paths: frozenset[str]) -> nn.Module:
    for parent, attr, _, plain in list(_walk(model)):
        twin_class, needs = _twin_for(plain)
        new = twin_class.from_plain(plain, paths & (needs | {"onednn_linear"})) if paths & needs else plain
        model = _replace(model, parent, attr, new)
    return model


def wants_cpu_twins(model: nn.Module) -> bool:
    """The default of ``segment()`` and the commands: convert when the fast paths are on (not
    ``IWIN_FAST_PATH=0``) and the model is on the CPU."""
    return use_fast_path() and _devices(model) <= {"cpu"}


def restore_plain(model: nn.Module, *, inplace: bool = True) -> nn.Module:
    """``model`` with its plain modules back in place of any CPU twin (the definition; same weights)."""
    if not inplace:
        model = _structural_copy(model)
    for parent, attr, _, plain in list(_walk(model)):
        model = _replace(model, parent, attr, plain)
    return model


assert set().union(*(needs for _, needs in CPU_TWINS.values())) <= set(FAST_PATHS)
