"""``iwin-det predict``: detect objects in images (files or folders) and write an overlay PNG and a JSON per image.

The overlay (:func:`iwin_models.apps.visualize.detection_overlay`) shows the detections scoring
``--score-threshold`` or more: masks in class colours, boxes, names and scores. The JSON holds the same
detections, COCO style: ``bbox`` (x, y, w, h in the image's pixels), ``score``, ``category_id`` (the COCO id
where the model's classes are COCO's, else the class index), ``category_name``, ``label`` (the class index) and
``segmentation`` (RLE, ``counts`` a str): :func:`iwin_models.engine.detection_eval.detections_json`. Outputs are
named as ``iwin-seg predict`` names them
(:func:`iwin_models.apps.cli.predict.output_names`: ``OUT/<stem>_overlay.png`` and ``OUT/<stem>.json``, folders
mirrored, no two images writing one file) and written atomically. A file that cannot be read is reported and
skipped; the command exits with status 2 at the end, naming them. ``torchrun`` splits the images (``rank::N``).
"""
from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..common import add_batch_options, add_detector_arguments, fast_model, resolve_detector
from ..predict import (
    decoded,
    expand_images,
    output_folder,
    output_names,
    predict_files,
    save_atomic,
    unique_images,
)

ENDINGS = ("_overlay.png", ".json")


def add_arguments(parser) -> None:
    parser.add_argument("images", nargs="*", metavar="IMAGE",
                        help="image files or folders (default: the bundled sample photograph)")
    add_detector_arguments(parser)
    parser.add_argument("--score-threshold", type=float, default=0.3, metavar="S",
                        help="keep the detections scoring S or more (default: %(default)s)")
    parser.add_argument("--out", default="iwin_det_out", help="output folder (default: %(default)s)")
    add_batch_options(parser, outputs="overlay and JSON")


def outputs(out: Path, target: Path) -> tuple[Path, Path]:
    """The overlay PNG and the JSON written for the image whose results go to ``target``."""
    return tuple(out / f"{target}{ending}" for ending in ENDINGS)


def write_outputs(out: Path, target: Path, path: Path, image, found, score_threshold: float) -> None:
    """The overlay and the JSON of one image (folders made), each written atomically."""
    from ....engine.detection_eval import detections_json
    from ....io.files import write_atomic
    from ...visualize import detection_overlay

    overlay_path, json_path = outputs(out, target)
    overlay_path.parent.mkdir(parents=True, exist_ok=True)
    save_atomic(detection_overlay(image, found, score_threshold), overlay_path)
    text = json.dumps(detections_json(found, path, image.shape), indent=1)
    write_atomic(json_path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def detect_files(model, files: Sequence[Path], out: Path, targets: Mapping[Path, Path], args,
                 progress: bool) -> list[tuple[str, str]]:
    """Detect in ``files`` into ``out``; the (file, reason) of each one that could not be read (reported on
    stderr as it happens)."""
    from tqdm import tqdm

    from ....engine.detection import detect

    failed = []
    bar = tqdm(decoded(files, args.prefetch), total=len(files), desc="detecting", unit="img", dynamic_ncols=True,
               disable=not progress or len(files) < 2)
    for path, image, error in bar:
        if error is not None:
            failed.append((str(path), error))
            tqdm.write(f"iwin-det predict: skipped {path}: {error}", file=sys.stderr)
            continue
        found = detect(model, image, score_threshold=args.score_threshold, fast=False)  # fast_model decided
        write_outputs(out, targets[path], path, image, found, args.score_threshold)
        tqdm.write(f"{path} -> {', '.join(map(str, outputs(out, targets[path])))} ({len(found)} detections)")
        del image, found
    return failed


def _check(args) -> Path:
    if not 0 <= args.score_threshold <= 1:
        raise ValueError(f"--score-threshold must be in [0, 1], got {args.score_threshold}")
    if args.prefetch < 0:
        raise ValueError(f"--prefetch must be 0 or more, got {args.prefetch}")
    return output_folder(args.out)


def run(args) -> int:
    from ....data import SAMPLE_IMAGE

    out = _check(args)
    files = unique_images(expand_images(args.images)) if args.images else [SAMPLE_IMAGE]
    targets = output_names(files, ENDINGS)  # every process the same, before any work
    failed, rank = predict_files(
        args, files,
        load=lambda device: fast_model(resolve_detector(args.model, args.weights, device=device), args.fast),
        work=lambda model, mine, progress: detect_files(model, mine, out, targets, args, progress=progress),
        done=lambda f: all(p.is_file() for p in outputs(out, targets[f])), what="iwin-det predict")
    if failed and rank == 0:
        print(f"iwin-det predict: error: {len(failed)} of {len(files)} images could not be read: "
              f"{', '.join(f for f, _ in failed)}", file=sys.stderr)
    return 2 if failed else 0
