"""Export a segmenter: ONNX (``torch.onnx.export``, dynamo exporter) or ``torch.export`` (an
``ExportedProgram``); the command is :mod:`iwin_models.apps.cli.export`.

The exported graph takes a normalised image batch (N, C, H, W) and returns the logits
(N, classes, H, W); the auxiliary head is not part of it. By default the graph is made for one size,
batch 1 (``height`` x ``width``). With ``dynamic=True`` batch, height and width are free: one graph
serves every size (Iwin's interleave is a reshape and a pad with no roll and no mask, so nothing in it
has to be fixed at export); ``height`` and ``width`` then only size the example input that is traced.
"""
from __future__ import annotations

import contextlib
import warnings
from pathlib import Path

import torch
import torch.nn as nn

from ..extras import install_hint, require
from ..fast.optimize import shared_weights_copy
from ..io.files import write_atomic

__all__ = ["export_onnx", "export_program", "export_detector_backbone", "export_forms", "dynamic_tracing",
           "size_oblivious_tracing", "program_guards", "require_onnx", "ONNX_EXTRA"]


class _LogitsOnly(nn.Module):
    """The segmenter in eval mode with a plain ``forward(x) -> logits`` (no input checks)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class _PyramidOnly(nn.Module):
    """A detector's backbone + FPN with a plain ``forward(x) -> (P2, P3, P4, P5, P6)`` (strides 4 to 64)."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.backbone(x).values())


def export_forms(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """``model`` with the forms that a graph serving every input size needs: every module that has one sets its
    ``export_form`` (the conv3d form of channels-last convolutions, NCHW copies of the decoder's inputs, the
    averaging-matrix pools; the same values to float32 round-off). By default a copy of the module tree that
    shares the weights, so that the model itself, and forwards running on it elsewhere, are untouched.
    :func:`export_program` and :func:`export_onnx` call it for ``dynamic=True``; for
    ``torch.compile(dynamic=True)``, compile ``export_forms(model)`` and make its first call inside
    :func:`dynamic_tracing`."""
    model = model if inplace else shared_weights_copy(model)
    for module in model.modules():
        if hasattr(module, "export_form"):
            module.export_form = True
    return model


@contextlib.contextmanager
def dynamic_tracing(dynamic: bool = True):
    """The tracing mode for graphs that serve every size (a no-op if not ``dynamic``): size-oblivious tracing.

    A symbolic size that is 1 in the example input makes the tracer decide, for each view, broadcast and
    layout, whether that dimension is 1, and bake the answer in as a guard: Iwin's window grids have size 1
    at the last stages of a small example (97x131: 1x1 windows of 7x7 at stride 32), so the graph would
    only serve inputs with such a grid. Size-oblivious tracing treats every size as a general one (>= 2);
    the ops then take their general form, which is also right for 1 (:func:`size_oblivious_tracing`). The
    model's own forms are chosen by :func:`export_forms`, not here: nothing a forward reads changes.
    """
    if not dynamic:
        yield
        return
    with size_oblivious_tracing():
        yield


def size_oblivious_tracing():
    """torch's size-oblivious tracing (a context manager). torch documents no public switch for it: the flag
    lives in the private ``torch.fx.experimental._config``; this is the one place the package reads it, and
    tests/test_export.py fails with this message if torch moves it."""
    try:
        from torch.fx.experimental import _config as shapes_config
    except ImportError:
        shapes_config = None
    if not hasattr(shapes_config, "backed_size_oblivious"):
        raise RuntimeError("this torch has no torch.fx.experimental._config.backed_size_oblivious: dynamic export "
                           "needs it (iwin_models.interop.export.size_oblivious_tracing)")
    return shapes_config.patch(backed_size_oblivious=True)


# The dynamic axes of the exported graphs (ONNX dim_param names). Batch starts at 1 as sizes do;
# the example input has batch 2 because torch.export specialises dimensions of size 0 and 1.
DYNAMIC_AXES = {0: "batch", 2: "height", 3: "width"}


def _example(model: nn.Module, height: int, width: int, batch: int = 1) -> torch.Tensor:
    if height < 1 or width < 1:
        raise ValueError(f"height and width must be positive, got {height}x{width}")
    if batch < 1:
        raise ValueError(f"batch must be positive, got {batch}")
    p = next(model.parameters())
    in_chans = getattr(getattr(model, "backbone", None), "in_chans", 3)
    return torch.randn(batch, in_chans, height, width, device=p.device, dtype=p.dtype)


def _dynamic_shapes(dynamic: bool, min_size: int = 1, batch: bool = True) -> tuple[dict, ...] | None:
    """``dynamic_shapes`` for the one input: named ``Dim``s for batch, height and width, or None.

    Named dims (not ``Dim.AUTO``) make the export fail loudly if the model pins one of them to the
    example's value, instead of silently writing a one-size graph.
    """
    if not dynamic:
        return None
    return ({axis: torch.export.Dim(name, min=1 if axis == 0 else min_size) for axis, name in DYNAMIC_AXES.items()
             if batch or axis != 0},)


def _example_for(model: nn.Module, height: int, width: int, dynamic: bool, batch: bool = True) -> torch.Tensor:
    return _example(model, height, width, batch=2 if dynamic and batch else 1)


def program_guards(program: torch.export.ExportedProgram) -> list[str]:
    """The conditions an exported program checks on its input sizes at each call (empty: every size runs).

    torch documents no public form of them: they are the program's private ``_guards_code``. This is the one
    place that reads it; if torch renames it, this raises (tests/test_export.py runs it) rather than letting
    a one-size graph pass as a dynamic one.
    """
    if not hasattr(program, "_guards_code"):
        raise RuntimeError("this torch's ExportedProgram has no _guards_code: cannot check that the exported graph "
                           "serves every size (iwin_models.interop.export.program_guards)")
    return list(program._guards_code or [])


def export_program(model: nn.Module, height: int = 512, width: int = 512, dynamic: bool = False,
                   min_size: int = 1, dynamic_batch: bool = True) -> torch.export.ExportedProgram:
    """``torch.export`` of ``model`` (eval mode); returns the program.

    Input (1, C, height, width), or with ``dynamic=True`` any (N, C, H, W) with H, W >= ``min_size`` (height
    and width only size the example input; N is 1 without ``dynamic_batch``). ``program.module()(x)`` gives
    the same logits as ``model(x)``.
    """
    model = export_forms(model.eval()) if dynamic else model.eval()
    x = _example_for(model, height, width, dynamic, dynamic_batch)
    shapes = _dynamic_shapes(dynamic, min_size, dynamic_batch)
    with dynamic_tracing(dynamic):
        program = torch.export.export(_LogitsOnly(model), (x,), dynamic_shapes=shapes, strict=False)
    guards = program_guards(program)
    if dynamic and guards:  # not every size runs
        raise RuntimeError(f"the exported graph is specialized: it only runs where {guards} holds")
    return program


def export_detector_backbone(model: nn.Module, height: int = 800, width: int = 1216,
                             dynamic: bool = True) -> torch.export.ExportedProgram:
    """``torch.export`` of an Iwin detector's backbone + FPN (``model.backbone``): a normalised, padded image
    (1, 3, H, W) -> the five pyramid levels (P2..P6, strides 4-64) as a tuple. Batch 1: the detector runs
    each image alone, as the authors' test does (a free batch would specialise to N > 1 in the FPN's trace).

    By default one graph serves every size from 33x33 up (``height`` and ``width`` only size
    the example; the detector's padded inputs are multiples of 32: all but 32 itself, which the tracer's
    size-oblivious P6 (``max_pool2d(P5, 1, 2)``) rules out). The RPN, the RoI heads and the mask paste
    (data-dependent NMS and per-box loops) stay in Python: feed the pyramid to ``model.rpn`` / ``model.roi_heads``.
    """
    return export_program(_PyramidOnly(model.backbone), height, width, dynamic, min_size=33, dynamic_batch=False)


ONNX_EXTRA = install_hint("onnx")  # the extra that brings what export_onnx needs


def require_onnx() -> None:
    """Raise an ImportError (one line: what is missing, and :data:`ONNX_EXTRA`) unless ``onnx`` and ``onnxscript``
    are installed. Call it before any slow work (``iwin-seg export --onnx`` does, before loading the model)."""
    require("onnx", "onnx", "onnxscript", purpose="ONNX export")


def export_onnx(model: nn.Module, path: str | Path, height: int = 512, width: int = 512, opset: int = 18,
                dynamic: bool = False) -> Path:
    """Write ``model`` (eval mode) as ONNX: input ``image`` (1, C, height, width) -> ``logits``.

    With ``dynamic=True`` the input is ``image`` (batch, C, height, width) with all three free
    (symbolic dims named ``batch``, ``height``, ``width``) and one file serves every size.
    Needs the ``onnx`` extra (``pip install iwin-models[onnx]``: onnx, onnxscript).
    """
    require_onnx()
    path = Path(path)
    if path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # Our own torch.export first: given a module, torch.onnx relaxes the named dims (and falls back to
        # strict export, then draft_export), so where the model pins a size it still writes a graph, one
        # that fails or is wrong at other sizes (seen: onnxruntime GatherND "invalid index" at 512x512 for
        # an Iwin graph traced at 97x131). Here such a model raises torch.export's constraint error.
        program = export_program(model, height, width, dynamic)
        onnx_program = torch.onnx.export(
            program, program.example_inputs[0], dynamo=True, opset_version=opset, verbose=False,
            input_names=["image"], output_names=["logits"], external_data=False,
            dynamic_shapes=_dynamic_shapes(dynamic))  # names the free dims batch / height / width
    return write_atomic(path, onnx_program.save)  # never a truncated .onnx at `path`
