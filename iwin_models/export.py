"""Export a segmenter for a fixed input size: ONNX (``torch.onnx.export``, dynamo exporter) or
``torch.export`` (an ``ExportedProgram``), and the ``iwin-seg export`` command.

The exported graph takes a normalised image batch (1, 3, height, width) and returns the logits
(1, classes, height, width); the auxiliary head is not part of it. The padding Iwin does inside
every block depends on the size, so the graph is made for one size: export once per size you serve.

``iwin-seg export`` builds the model from ``--model`` (a registered name or a folder written by
``save_pretrained``) and ``--weights``. Without ``--weights`` a registered name gives a model with
*random* weights (a warning says so; useful to try the export or measure speed offline), rather than
downloading the official checkpoint behind the user's back: pass ``--weights`` with the official
``.pth`` (or a converted folder) for a useful model.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torch.nn as nn

__all__ = ["export_onnx", "export_program", "add_arguments", "run"]


class _LogitsOnly(nn.Module):
    """The segmenter in eval mode with a plain ``forward(x) -> logits`` (no input checks)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def _example(model: nn.Module, height: int, width: int) -> torch.Tensor:
    if height < 1 or width < 1:
        raise ValueError(f"height and width must be positive, got {height}x{width}")
    p = next(model.parameters())
    in_chans = getattr(getattr(model, "backbone", None), "in_chans", 3)
    return torch.randn(1, in_chans, height, width, device=p.device, dtype=p.dtype)


def export_program(model: nn.Module, height: int = 512, width: int = 512) -> torch.export.ExportedProgram:
    """``torch.export`` of ``model`` (eval mode) for input (1, C, height, width); returns the program.

    ``program.module()(x)`` gives the same logits as ``model(x)``.
    """
    model = model.eval()
    return torch.export.export(_LogitsOnly(model), (_example(model, height, width),), strict=False)


def export_onnx(model: nn.Module, path: str | Path, height: int = 512, width: int = 512, opset: int = 17) -> Path:
    """Write ``model`` (eval mode) as ONNX for input ``image`` (1, C, height, width) -> ``logits``.

    Needs the ``onnx`` extra (``pip install iwin-models[onnx]``: onnx, onnxscript).
    """
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as e:
        raise ImportError("ONNX export needs onnx and onnxscript: pip install 'iwin-models[onnx]'") from e
    path = Path(path)
    if path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    x = _example(model, height, width)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            _LogitsOnly(model), (x,), dynamo=True, opset_version=opset,
            input_names=["image"], output_names=["logits"], external_data=False)
        program.save(str(path))
    return path


def add_arguments(parser) -> None:
    from .segmenter import SEGMENTERS

    parser.add_argument("--model", required=True,
                        help=f"segmenter name ({', '.join(SEGMENTERS)}) or a folder written by save_pretrained")
    parser.add_argument("--weights", help="official mmseg .pth, safetensors file or save_pretrained folder "
                                          "(without it a registered name gets random weights, with a warning)")
    parser.add_argument("--onnx", metavar="OUT.onnx", help="write an ONNX file")
    parser.add_argument("--program", metavar="OUT.pt2", help="write a torch.export program (torch.export.save)")
    parser.add_argument("--height", type=int, default=512, help="input height (default: %(default)s)")
    parser.add_argument("--width", type=int, default=512, help="input width (default: %(default)s)")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (default: %(default)s)")


def _build(name: str, weights: str | None) -> nn.Module:
    import sys

    from .segmenter import SEGMENTERS, IwinUPerNet, create_segmenter

    if name in SEGMENTERS:
        if weights is not None and Path(weights).is_dir():
            return IwinUPerNet.from_pretrained(weights)
        if weights is None:
            print(f"iwin-seg export: warning: no --weights given, {name} has RANDOM weights "
                  f"(pass --weights with the official checkpoint for a useful model)", file=sys.stderr)
        return create_segmenter(name, pretrained=weights is not None, weights=weights)
    if Path(name).is_dir():
        model = IwinUPerNet.from_pretrained(name)
        if weights is not None:
            from .segmenter import load_segmenter_weights
            load_segmenter_weights(model, weights)
        return model
    raise ValueError(f"unknown model {name!r}: choose one of {', '.join(SEGMENTERS)} or a save_pretrained folder")


def run(args) -> int:
    if not args.onnx and not args.program:
        raise ValueError("nothing to do: give --onnx OUT.onnx and/or --program OUT.pt2")
    model = _build(args.model, args.weights).eval()
    if args.onnx:
        path = export_onnx(model, args.onnx, args.height, args.width, args.opset)
        print(f"wrote {path} (input 'image' 1x3x{args.height}x{args.width}, output 'logits')")
    if args.program:
        program = export_program(model, args.height, args.width)
        Path(args.program).parent.mkdir(parents=True, exist_ok=True)
        torch.export.save(program, args.program)
        print(f"wrote {args.program} (torch.export, input 1x3x{args.height}x{args.width})")
    return 0
