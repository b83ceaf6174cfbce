"""iwin-det: detect objects in images, evaluate COCO mAP and convert checkpoints of the COCO detectors.

One module per command (``iwin_models.apps.cli.det.<command>``, each with ``add_arguments(parser)`` and
``run(args) -> int``), dispatched by ``iwin-seg``'s :func:`iwin_models.apps.cli.main`: the same one-line errors
(``iwin-det <command>: error: ...``, exit status 2) and start-up that imports just the command given.
"""
from __future__ import annotations

from .. import main as _run_cli

__all__ = ["COMMANDS", "main"]

COMMANDS = {  # name: help (the module is iwin_models.apps.cli.det.<name>)
    "predict": "detect objects in images and write overlays and COCO-style JSON",
    "eval": "COCO box and mask mAP on a COCO-format data set; torchrun for many processes",
    "convert": "convert an authors' mmdet checkpoint to a safetensors folder (save_pretrained)",
}


def main(argv: list[str] | None = None) -> int:
    """Run ``iwin-det`` with ``argv`` (default: the command line); returns the exit status."""
    return _run_cli(argv, prog="iwin-det", commands=COMMANDS, package=__name__,
                    description=__doc__.splitlines()[0])
