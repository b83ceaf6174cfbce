"""The CPU speed-ups as one explicit conversion (as ``timm.utils.reparameterize_model`` is for timm).

Every model the package builds is plain: its forwards are the definition, on any device, under any
tracer, hook or dispatch mode. :func:`optimize_for_cpu` returns it with CPU fast twins in place of the
modules that have one (this sub-package): the patch embedding, the blocks, the UPerNet decoder.
A twin shares the plain module's parameters, so ``state_dict`` keys and values are unchanged: a converted
model trains, saves plain checkpoints and loads them. :func:`restore_plain` undoes the conversion, for the
tools that record a graph (TorchScript, FX, ``torch.compile``, ``torch.export``, ONNX), which a converted
model refuses with a clear error.

    model = iwin_models.optimize_for_cpu(timm.create_model("iwin_tiny", pretrained=True).eval())

Which twins and which of their tricks are installed follows the switches of :mod:`iwin_models.fast.config`
at the time of the call (``IWIN_FAST_PATH=0``, ``IWIN_CHUNKED=0``, ...), less ``exclude``.
"""
from __future__ import annotations

import copy
import itertools
import warnings
from collections.abc import Iterable, Iterator

import torch.nn as nn

from ..models.iwin import IwinBlock, PatchEmbed
from ..models.upernet import IwinUPerNetDecoder
from .config import FAST_PATHS, enabled_fast_paths, use_fast_path
from .iwin_cpu import CpuIwinBlock, CpuPatchEmbed
from .twin import CpuTwin
from .upernet_cpu import CpuUPerNetDecoder

__all__ = ["optimize_for_cpu", "restore_plain", "with_cpu_twins", "shared_weights_copy", "CPU_TWINS"]

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


def shared_weights_copy(model: nn.Module) -> nn.Module:
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

    Works on an Iwin backbone, a ``features_only`` model, an ``IwinUPerNet``, an smp model with a
    ``tu-iwin_*`` encoder and an Iwin (Cascade) Mask R-CNN (its backbone's patch embedding and blocks; the FPN and
    heads stay as they are). Idempotent; ``inplace=False`` converts a copy of the module tree that shares the
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
    return _convert(model if inplace else shared_weights_copy(model), paths)


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


_REFUSALS_SEEN: set[str] = set()  # why a model could not be converted, each said once per process


def with_cpu_twins(model: nn.Module, fast: bool | None = None) -> nn.Module:
    """The package's one policy for running a model with its CPU fast twins: ``segment()``, ``evaluate()``, the
    demo and every ``iwin-seg`` command run what this returns.

    ``fast=None`` (the default): a converted copy sharing the weights (``optimize_for_cpu(model,
    inplace=False)``) when the model is on the CPU and the fast paths are on (not ``IWIN_FAST_PATH=0``); a model
    it cannot convert runs plain, with a warning naming why (once per reason); a model with nothing to convert
    (not an Iwin model) runs as it is. ``fast=True`` converts or raises. ``fast=False`` gives the model as it
    is, as does a model already converted.
    """
    converted = any(isinstance(m, CpuTwin) for m in model.modules())
    on_cpu = use_fast_path() and _devices(model) <= {"cpu"}
    if fast is False or converted or (fast is None and not on_cpu):
        return model
    try:
        return optimize_for_cpu(model, inplace=False)
    except (TypeError, ValueError) as e:
        if fast:  # asked for: refuse as the conversion does
            raise
        if isinstance(e, ValueError) and str(e) not in _REFUSALS_SEEN:  # an Iwin model it cannot convert
            _REFUSALS_SEEN.add(str(e))
            warnings.warn(f"running the plain model: {e}", RuntimeWarning, stacklevel=2)
        return model  # TypeError: nothing to convert (not an Iwin model)


def restore_plain(model: nn.Module, *, inplace: bool = True) -> nn.Module:
    """``model`` with its plain modules back in place of any CPU twin (the definition; same weights)."""
    if not inplace:
        model = shared_weights_copy(model)
    for parent, attr, _, plain in list(_walk(model)):
        model = _replace(model, parent, attr, plain)
    return model


assert set().union(*(needs for _, needs in CPU_TWINS.values())) <= set(FAST_PATHS)
