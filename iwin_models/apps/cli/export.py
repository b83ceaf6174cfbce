"""``iwin-seg export``: a segmenter as ONNX and/or a ``torch.export`` program (see :mod:`iwin_models.interop.export`).

The model comes from ``--model`` and ``--weights`` (anything :func:`iwin_models.load_segmenter` takes).
``--onnx`` needs the ``onnx`` extra (``pip install 'iwin-models[onnx]'``): checked first, before the model is
loaded, and a one-line error with that hint when it is missing.
Without ``--weights`` a registered name gives a model with *random* weights (a warning says so; useful
to try the export or measure speed offline), rather than downloading the official checkpoint behind
the user's back: pass ``--weights`` with the official ``.pth`` (or a converted folder) for a useful model.
"""
from __future__ import annotations

from pathlib import Path

from .common import add_model_arguments, check_dependencies, resolve_model


def add_arguments(parser) -> None:
    add_model_arguments(parser, default=None,
                        weights_help="official mmseg .pth (a path, or the file name of a download in "
                                     "$TORCH_HOME/hub/checkpoints), safetensors file, save_pretrained/convert folder "
                                     "or hub repo (without it a registered name gets random weights, with a "
                                     "warning)")
    parser.add_argument("--onnx", metavar="OUT.onnx", help="write an ONNX file")
    parser.add_argument("--program", metavar="OUT.pt2", help="write a torch.export program (torch.export.save)")
    parser.add_argument("--height", type=int, default=512, help="input height (default: %(default)s)")
    parser.add_argument("--width", type=int, default=512, help="input width (default: %(default)s)")
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset (default: %(default)s)")
    parser.add_argument("--dynamic", action="store_true",
                        help="free batch, height and width in the graph (--height/--width only size the "
                             "example input); default: a graph for that one size")


def run(args) -> int:
    import torch

    from ...interop.export import export_onnx, export_program, require_onnx
    from ...io.files import write_atomic

    if not args.onnx and not args.program:
        raise ValueError("nothing to do: give --onnx OUT.onnx and/or --program OUT.pt2")
    check_dependencies(*([require_onnx] if args.onnx else []))  # before the model: a missing extra fails at once
    model = resolve_model(args.model, args.weights, start="random")
    size = f"{'Nx3xHxW' if args.dynamic else f'1x3x{args.height}x{args.width}'}"
    if args.onnx:
        path = export_onnx(model, args.onnx, args.height, args.width, args.opset, dynamic=args.dynamic)
        print(f"wrote {path} (input 'image' {size}, output 'logits')")
    if args.program:
        program = export_program(model, args.height, args.width, dynamic=args.dynamic)
        path = Path(args.program)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, lambda tmp: torch.export.save(program, tmp))  # as the ONNX file
        print(f"wrote {args.program} (torch.export, input {size})")
    return 0
