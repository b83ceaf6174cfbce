"""iwin-seg: segment images, evaluate and train on ADE20K, count FLOPs, convert and export.

One module per command (``iwin_models.apps.cli.<command>``, each with ``add_arguments(parser)`` and
``run(args) -> int``); this file only dispatches, importing just the module of the command given, so
start-up stays fast and ``iwin-seg --help`` lists every command. Errors the user can fix (bad paths,
bad checkpoints, bad arguments) are printed as one line, ``iwin-seg <command>: error: ...``, and exit
with status 2, without a traceback; Ctrl-C exits with 130. ``iwin-det`` (the detectors' commands,
:mod:`iwin_models.apps.cli.det`) runs through the same :func:`main`.
"""
from __future__ import annotations

import argparse
import importlib
import sys

__all__ = ["COMMANDS", "build_parser", "main"]

COMMANDS = {  # name: help (the module is iwin_models.apps.cli.<name>)
    "predict": "segment images and write colour overlays and label PNGs",
    "eval": "mIoU on ADE20K (or a folder data set); torchrun for many processes",
    "train": "fine-tune a segmenter with the official ADE20K recipe",
    "flops": "parameters and FLOPs in the mmcv convention",
    "convert": "convert an official checkpoint to a safetensors hub folder",
    "export": "export a segmenter to ONNX or torch.export",
    "demo": "serve the demo page (Gradio) on this machine",
}


def _module(package: str, command: str):
    return importlib.import_module(f"{package}.{command}")


def build_parser(command: str | None = None, *, prog: str = "iwin-seg", commands: dict[str, str] = COMMANDS,
                 package: str = __name__, description: str = __doc__.splitlines()[0]) -> argparse.ArgumentParser:
    """The parser of ``prog`` (``iwin-seg``; ``iwin-det`` with its ``commands`` in ``package``): only
    ``command``'s module is imported and given its options."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text in commands.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:
            _module(package, name).add_arguments(p)
    return parser


def _one_line(error: BaseException) -> str:
    return "; ".join(line.strip() for line in str(error).splitlines() if line.strip())


def main(argv: list[str] | None = None, *, prog: str = "iwin-seg", commands: dict[str, str] = COMMANDS,
         package: str = __name__, description: str = __doc__.splitlines()[0]) -> int:
    """Run ``prog`` with ``argv`` (default: the command line); returns the exit status. ``iwin-seg`` by default;
    :func:`iwin_models.apps.cli.det.main` runs ``iwin-det`` through it (its ``commands`` in its ``package``)."""
    from ...io.checkpoint import CheckpointError

    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(command if command in commands else None, prog=prog, commands=commands, package=package,
                        description=description).parse_args(argv)
    try:
        return _module(package, args.command).run(args) or 0
    except (CheckpointError, FileNotFoundError, ValueError, TypeError, OSError) as e:
        print(f"{prog} {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
