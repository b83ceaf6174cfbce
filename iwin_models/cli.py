"""iwin-seg: segment images, evaluate and train on ADE20K, count FLOPs, convert and export.

Each command's options and work live in the module of its concern; this file only dispatches.
Errors the user can fix (bad paths, bad checkpoints, bad arguments) are printed as one line and
exit with status 2, without a traceback.
"""
from __future__ import annotations

import argparse
import sys

from .checkpoint import CheckpointError

COMMANDS = {
    # name: (module, help)
    "predict": ("iwin_models.inference", "segment images and write colour overlays and label PNGs"),
    "eval": ("iwin_models.evaluation", "mIoU on ADE20K (or a folder data set); torchrun for many processes"),
    "train": ("iwin_models.training", "fine-tune a segmenter with the official ADE20K recipe"),
    "flops": ("iwin_models.flops", "parameters and FLOPs in the mmcv convention"),
    "convert": ("iwin_models.hub", "convert an official checkpoint to a safetensors hub folder"),
    "export": ("iwin_models.export", "export a segmenter to ONNX or torch.export"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only ``command``'s module is imported (start-up stays fast, ``--help`` lists all)."""
    import importlib

    parser = argparse.ArgumentParser(prog="iwin-seg", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:
            importlib.import_module(module).add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    import importlib

    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(command).parse_args(argv)
    try:
        return importlib.import_module(args._module).run(args) or 0
    except (CheckpointError, FileNotFoundError, ValueError, TypeError, OSError) as e:
        message = "; ".join(line.strip() for line in str(e).splitlines() if line.strip())  # one line
        print(f"iwin-seg {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
