"""``iwin-det convert``: an authors' mmdet checkpoint -> a safetensors folder (``save_pretrained``).

The folder holds ``model.safetensors`` (this port's names), ``config.json`` (name, architecture, classes) and a
``README.md`` model card; ``iwin_models.create_detector(NAME, weights=FOLDER)`` and ``iwin-det ... --weights
FOLDER`` read it back. Upload it with ``huggingface-cli upload <org>/<repo> <folder>``.
"""
from __future__ import annotations

from pathlib import Path


def add_arguments(parser) -> None:
    from ....models.detection.weights import DETECTORS

    parser.add_argument("checkpoint", help="the authors' mmdet .pth (a path, a file in the torch.hub cache, or a URL)")
    parser.add_argument("--model", required=True, metavar="NAME", help=f"detector name ({', '.join(DETECTORS)})")
    parser.add_argument("--out", required=True, help="output folder")


def run(args) -> int:
    from ....models.detectors import create_detector

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} is a file, not a folder")
    model = create_detector(args.model, weights=args.checkpoint)
    model.save_pretrained(out)
    print(f"wrote {out}: " + ", ".join(sorted(p.name for p in out.iterdir())))
    return 0
