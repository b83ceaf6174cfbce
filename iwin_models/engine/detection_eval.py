"""COCO box and mask mAP of a detector: :func:`evaluate_detector` (the authors' test protocol, mmdet's figures).

Each image of a COCO-format annotation file goes through :func:`~iwin_models.engine.detection.detect`, one at a
time; its detections become COCO result dicts at once (:func:`coco_results`: ``bbox`` xywh, ``score``,
``category_id``, ``segmentation`` RLE), so no image's full-size masks are kept past it. ``pycocotools``' COCOeval
then gives the ``bbox`` and ``segm`` figures under mmdet's names (``bbox_mAP``, ``bbox_mAP_50``, ...).

The model's class ``i`` is the file's ``i``-th category sorted by id, as mmdet's ``CocoDataset`` maps its
``cat_ids``: the file must have as many categories as the model has classes. Under ``torchrun`` the images are
split ``rank::world_size``, the results gathered to rank 0 in the file's image order, and COCOeval run once
there; every process returns the figures.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..data.coco import read_coco_json
from ..io.images import load_image
from .detection import Detections, detect
from .distributed import gather, raise_if_any_failed, world

__all__ = ["evaluate_detector", "coco_results", "detections_json", "load_coco", "category_ids_for",
           "format_detection_results", "METRIC_NAMES"]

# COCOeval's stats[0:6], under mmdet's names (mmdet/datasets/coco.py: 'mAP', 'mAP_50', ...)
METRIC_NAMES = ("mAP", "mAP_50", "mAP_75", "mAP_s", "mAP_m", "mAP_l")
IOU_TYPES = ("bbox", "segm")


def load_coco(ann_file: str | os.PathLike):
    """A ``pycocotools.coco.COCO`` of ``ann_file``; a ValueError naming the file when it is not COCO JSON."""
    from pycocotools.coco import COCO

    data = read_coco_json(ann_file)
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # "creating index..."
        coco.createIndex()
    return coco


def category_ids_for(coco, model, ann_file: str | os.PathLike = "the annotation file") -> list[int]:
    """The file's category ids sorted (the model's class ``i`` -> ``ids[i]``); a ValueError when the file's
    category count is not the model's class count."""
    ids = sorted(coco.getCatIds())
    names = getattr(model, "class_names", None)
    classes = len(names) if names else model.config.num_classes
    if len(ids) != classes:
        raise ValueError(f"{ann_file} has {len(ids)} categories but the model predicts {classes} classes: give a "
                         f"model made for these categories (create_detector(..., num_classes={len(ids)}) and "
                         f"trained weights)")
    return ids


def coco_results(found: Detections, image_id: int, category_ids: Sequence[int] | None = None) -> list[dict]:
    """COCO result dicts of one image's detections: ``image_id``, ``bbox`` (x, y, w, h), ``score``,
    ``category_id`` (``category_ids[label]``; default the model's ``found.category_ids``, else the label) and
    ``segmentation`` (RLE, ``counts`` a str), one mask encoded at a time."""
    from pycocotools import mask as mask_util

    ids = category_ids if category_ids is not None else found.category_ids
    out = []
    for box, score, label, mask in zip(found.boxes, found.scores, found.labels, found.masks):
        x1, y1, x2, y2 = (float(v) for v in box)
        rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8, copy=False)))
        rle["counts"] = rle["counts"].decode("ascii")
        out.append(dict(image_id=int(image_id), bbox=[x1, y1, x2 - x1, y2 - y1], score=float(score),
                        category_id=int(ids[label]) if ids is not None else int(label), segmentation=rle))
    return out


def detections_json(found: Detections, image: str, shape: Sequence[int]) -> dict:
    """One image's detections as ``iwin-det predict`` and the demo page write them: ``image`` (its name),
    ``height``, ``width`` and ``detections``, the :func:`coco_results` of ``found`` without ``image_id``, each
    with ``category_name`` and ``label`` (the class index)."""
    results = coco_results(found, 0)
    for r, label, name in zip(results, found.labels, found.names):
        del r["image_id"]
        r.update(category_name=name, label=int(label))
    return dict(image=str(image), height=int(shape[0]), width=int(shape[1]), detections=results)


def _image_path(img_dir: Path, info: dict) -> Path:
    return img_dir / info["file_name"]


def _detect_share(model, coco, image_ids: Sequence[int], img_dir: Path, cat_ids: list[int], options: dict,
                  progress: bool) -> tuple[dict[int, list[dict]], list[tuple[str, int, str]]]:
    """This process's share of ``image_ids``: their results by image id, and (file, image id, reason) of each
    image that could not be read (reported on stderr as it happens)."""
    from tqdm import tqdm

    rank, world_size = world()
    results, failed = {}, []
    mine = image_ids[rank::world_size]
    bar = tqdm(mine, desc="eval" if world_size == 1 else f"eval (rank 0 of {world_size})", unit="img",
               disable=not progress or rank != 0, dynamic_ncols=True)
    for image_id in bar:
        path = _image_path(img_dir, coco.imgs[image_id])
        try:
            rgb = load_image(path)
        except (ValueError, TypeError, OSError) as e:  # missing, unreadable, corrupt, too large
            failed.append((str(path), image_id, str(e)))
            tqdm.write(f"evaluate_detector: skipped image {image_id} ({path}): {e}", file=sys.stderr)
            continue
        found = detect(model, rgb, **options)
        del rgb
        results[image_id] = coco_results(found, image_id, cat_ids)
        del found  # the (N, H, W) masks go now: only their RLE stays
    return results, failed


def _cocoeval(coco, results: list[dict], image_ids: list[int], iou_type: str) -> dict[str, float]:
    """COCOeval's six figures under mmdet's names (``bbox_mAP``, ...); -1 where it has no ground truth, 0 for
    every figure when there are no detections (loadRes refuses an empty list)."""
    from pycocotools.cocoeval import COCOeval

    names = [f"{iou_type}_{m}" for m in METRIC_NAMES]
    if not results:
        return dict.fromkeys(names, 0.0)
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        dt = coco.loadRes(results if iou_type == "segm" else [{k: v for k, v in r.items() if k != "segmentation"}
                                                             for r in results])
        ev = COCOeval(coco, dt, iou_type)
        ev.params.imgIds = list(image_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {name: float(v) for name, v in zip(names, ev.stats[:6])}


def _write_results(results_file: str | os.PathLike, results: list[dict]) -> None:
    from ..io.files import write_atomic

    path = Path(results_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda tmp: Path(tmp).write_text(json.dumps(results), encoding="utf-8"))


def evaluate_detector(model, ann_file: str | os.PathLike, img_dir: str | os.PathLike, *, limit: int | None = None,
                      progress: bool = True, results_file: str | os.PathLike | None = None,
                      score_threshold: float | None = None, fast: bool | None = None) -> dict:
    """COCO bbox and segm mAP of ``model`` on the images of ``ann_file`` under ``img_dir``.

    Args:
        model: a detector (:func:`iwin_models.create_detector`) with as many classes as the file has categories.
        ann_file: COCO-format annotations (``images``, ``annotations``, ``categories``).
        img_dir: the folder the images' ``file_name`` are in.
        limit: evaluate the first ``limit`` images of the file only.
        progress: a tqdm bar (rank 0).
        results_file: also write the COCO results JSON there (atomically, by rank 0).
        score_threshold, fast: as :func:`~iwin_models.engine.detection.detect` takes them.

    Returns:
        ``bbox_mAP, bbox_mAP_50, bbox_mAP_75, bbox_mAP_s, bbox_mAP_m, bbox_mAP_l``, the same ``segm_*``, the
        ``*_mAP_copypaste`` strings, ``num_images`` (evaluated), ``num_detections`` and ``skipped``: (file, image
        id, reason) of each image that could not be read (reported and left out; the rest are evaluated).
    """
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be positive, got {limit}")
    coco = load_coco(ann_file)
    cat_ids = category_ids_for(coco, model, ann_file)
    image_ids = list(coco.getImgIds())[:limit]
    options = dict(score_threshold=score_threshold, fast=fast)
    error, results, failed = None, {}, []
    try:
        results, failed = _detect_share(model, coco, image_ids, Path(img_dir), cat_ids, options, progress)
    except Exception as e:  # the other processes must not wait for this one at the gather
        error = e
    raise_if_any_failed(error, "evaluate_detector")
    parts = gather((results, failed))
    return _summarise(coco, image_ids, parts, results_file)


def _summarise(coco, image_ids: list[int], parts: list, results_file) -> dict:
    """Rank 0: the gathered results in the file's image order through COCOeval; the figures to every process."""
    rank, _ = world()
    figures = None
    if rank == 0:
        by_image = {k: v for results, _ in parts for k, v in results.items()}
        skipped = sorted((f for _, failed in parts for f in failed), key=lambda f: image_ids.index(f[1]))
        done = [i for i in image_ids if i in by_image]
        results = [r for i in done for r in by_image[i]]
        if results_file is not None:
            _write_results(results_file, results)
        figures = {}
        for iou_type in IOU_TYPES:
            figures.update(_cocoeval(coco, results, done, iou_type))
            stats = " ".join(f"{figures[f'{iou_type}_{m}']:.3f}" for m in METRIC_NAMES)
            figures[f"{iou_type}_mAP_copypaste"] = stats
        figures.update(num_images=len(done), num_detections=len(results), skipped=skipped)
    return gather(figures)[0]


def format_detection_results(figures: dict) -> str:
    """A table of the figures (percent, one decimal as mmdet's logs): a row for bbox and one for segm."""
    head = "| metric | " + " | ".join(f"{m:>6}" for m in METRIC_NAMES) + " |"
    lines = [head, "|--------|" + "|".join("-" * 8 for _ in METRIC_NAMES) + "|"]
    for iou_type in IOU_TYPES:
        cells = (figures[f"{iou_type}_{m}"] for m in METRIC_NAMES)
        lines.append(f"| {iou_type:<6} | " + " | ".join(f"{'n/a' if v < 0 else f'{100 * v:.1f}':>6}" for v in cells)
                     + " |")
    lines.append(f"({figures['num_images']} images, {figures['num_detections']} detections"
                 + (f", {len(figures['skipped'])} skipped" if figures["skipped"] else "") + ")")
    return "\n".join(lines)
