"""COCO-format instance data for training the detectors: :class:`CocoDetection` and :func:`collate`.

mmdet 2.11's ``CocoDataset`` semantics (the loader of the authors' detectors):

* classes: the file's categories sorted by id (optionally only those named in ``class_names``); the class of
  category ``c`` is its index there (mmdet's ``cat_ids`` / ``cat2label``, as ``evaluate_detector``), and its
  label in the targets that index + 1 (torchvision: 1-based, 0 = background);
* ``_parse_ann_info``: annotations with ``ignore`` set, ``area <= 0``, ``w < 1`` or ``h < 1`` are dropped
  silently, as are those of a category left out by ``class_names``; boxes are xyxy ``[x, y, x + w, y + h]``;
  crowd annotations (``iscrowd``) give ``ignore_boxes`` only (mmdet's ``bboxes_ignore``), not targets;
* ``_filter_imgs``: with ``skip_empty`` (mmdet's ``filter_empty_gt``) images without a usable annotation are left
  out (an image whose only annotations are crowd ones stays, with no targets, as in mmdet), and always images
  whose short side is under ``min_size`` (32) px;
* masks: ``pycocotools.mask`` as mmdet's ``LoadAnnotations._poly2mask`` (polygons ``frPyObjects`` + ``merge``,
  uncompressed RLE ``frPyObjects``, compressed RLE as is; then ``decode``).

Bad data (each case reported once, at construction, in ``dataset.problems``: one line naming the file and the
annotation or image id; a summary of them is issued once as a warning), the rest of the set stays usable:

* not COCO JSON (not JSON, or no ``images`` / ``annotations`` / ``categories`` lists): ``ValueError`` naming the
  file;
* unknown ``category_id`` (not among the file's categories): annotation skipped (mmdet skips it silently);
* box with no overlap with its image: skipped (mmdet skips it silently); a box reaching more than 1 px beyond
  the image but overlapping it: clipped to the image and kept, reported (mmdet keeps it, and its ``Resize``
  clips it, ``bbox_clip_border=True``); within 1 px it is clipped silently;
* box not 4 finite numbers, or ``image_id`` of no image: annotation skipped (mmdet would fail);
* polygon with fewer than 3 points (or an odd number of coordinates): that polygon is dropped, as mmdet's
  ``LoadAnnotations.process_polygons``; an annotation with no valid polygon left (or no segmentation, or an
  RLE whose size is not its image's) is skipped (mmdet's ``_poly2mask`` would fail);
* image file missing (a cheap existence check): the image is reported (file name, image id) and left out; a
  file that cannot be read later raises a ``ValueError`` naming it from ``__getitem__``, as does an image whose
  decoded size is not the size the annotation file gives it.
"""
from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..io.images import image_size, load_image

__all__ = ["CocoDetection", "collate", "read_coco_json", "decode_masks"]

Target = dict[str, Tensor]
TOLERANCE = 1.0  # px a box may reach beyond its image without being reported


def read_coco_json(ann_file: str | os.PathLike) -> dict:
    """The parsed COCO annotation file; a ValueError naming it when it is not COCO JSON."""
    path = Path(ann_file)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not a COCO annotation file (not JSON text: {e})") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not a COCO annotation file (not JSON: {e})") from None
    missing = [k for k in ("images", "annotations", "categories") if not isinstance(data, dict) or k not in data]
    if missing:
        raise ValueError(f"{path} is not a COCO annotation file (no {', '.join(missing)})")
    wrong = [k for k in ("images", "annotations", "categories") if not isinstance(data[k], list)]
    if wrong:
        raise ValueError(f"{path} is not a COCO annotation file ({', '.join(wrong)} not a list)")
    return data


def decode_masks(segmentations: Sequence, height: int, width: int) -> Tensor:
    """``(n, height, width)`` uint8 masks of COCO segmentations (polygon lists or RLE dicts), as mmdet."""
    from pycocotools import mask as mask_util

    masks = np.zeros((len(segmentations), height, width), np.uint8)
    for i, segm in enumerate(segmentations):
        if isinstance(segm, list):
            rle = mask_util.merge(mask_util.frPyObjects(segm, height, width))
        elif isinstance(segm["counts"], list):
            rle = mask_util.frPyObjects(segm, height, width)
        else:
            rle = segm
        masks[i] = mask_util.decode(rle)
    return torch.from_numpy(masks)


def collate(batch: Sequence[tuple[Tensor, Target]]) -> tuple[list[Tensor], list[Target]]:
    """``DataLoader`` collate for the detectors: ``(images, targets)`` as lists (images differ in size)."""
    return [image for image, _ in batch], [target for _, target in batch]


@dataclass
class _Image:
    """One image of the set and its usable annotations (parsed, masks not yet decoded)."""
    id: int
    file_name: str
    height: int
    width: int
    boxes: list[list[float]] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    segmentations: list = field(default_factory=list)
    ignore_boxes: list[list[float]] = field(default_factory=list)
    known_annotations: int = 0  # annotations of a kept category (crowd ones included): mmdet's filter_empty_gt


class _Skip(Exception):
    """An annotation left out, with the reason (reported)."""


def _box(ann: dict, image: _Image, notes: list[str]) -> list[float] | None:
    """xyxy of a valid annotation box, clipped to the image (noted beyond 1 px); None where mmdet drops it
    silently; _Skip for a box that is not one or lies outside its image."""
    bbox = ann.get("bbox")
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4 or not all(
            isinstance(v, (int, float)) and math.isfinite(v) for v in bbox):
        raise _Skip(f"bbox {bbox!r} is not [x, y, w, h]")
    x, y, w, h = (float(v) for v in bbox)
    area = ann.get("area", w * h)  # COCO files have it; where one does not, the box's
    if not isinstance(area, (int, float)):
        raise _Skip(f"area {area!r} is not a number")
    if area <= 0 or w < 1 or h < 1:
        return None
    if max(0.0, min(x + w, image.width) - max(x, 0.0)) * max(0.0, min(y + h, image.height) - max(y, 0.0)) == 0:
        raise _Skip(f"bbox {bbox} lies outside its {image.width}x{image.height} image")
    if x < -TOLERANCE or y < -TOLERANCE or x + w > image.width + TOLERANCE or y + h > image.height + TOLERANCE:
        notes.append(f"bbox {bbox} reaches beyond its {image.width}x{image.height} image: clipped to it")
    return [max(x, 0.0), max(y, 0.0), min(x + w, float(image.width)), min(y + h, float(image.height))]


def _valid_polygon(polygon) -> bool:
    return isinstance(polygon, list) and len(polygon) >= 6 and len(polygon) % 2 == 0


def _segmentation(ann: dict, image: _Image, notes: list[str]):
    """The annotation's segmentation with invalid polygons dropped (noted); _Skip when none is usable."""
    segm = ann.get("segmentation")
    if isinstance(segm, dict):
        if list(segm.get("size", ())) != [image.height, image.width] or "counts" not in segm:
            raise _Skip(f"RLE size {segm.get('size')} is not its image's [height, width] {[image.height, image.width]}")
        return segm
    if not isinstance(segm, list) or not segm:
        raise _Skip("no segmentation (Mask R-CNN needs a mask per object)")
    good = [p for p in segm if _valid_polygon(p)]
    if len(good) < len(segm):
        points = ", ".join(f"{len(p) / 2:g}" if isinstance(p, list) else repr(p)[:20]
                           for p in segm if not _valid_polygon(p))
        reason = f"polygon(s) of {points} points (fewer than 3, or an odd coordinate count)"
        if not good:
            raise _Skip(reason)
        notes.append(f"{reason} dropped")
    return good


def _read_annotation(ann: dict, image: _Image, label: int, notes: list[str]) -> None:
    """Add one annotation of a kept category to ``image``; _Skip when it cannot be used."""
    box = _box(ann, image, notes)
    if box is None:
        return
    if ann.get("iscrowd", 0):
        image.ignore_boxes.append(box)
        return
    segm = _segmentation(ann, image, notes)
    image.boxes.append(box)
    image.labels.append(label)
    image.segmentations.append(segm)


def _categories(data: dict, path: Path, class_names: Sequence[str] | None) -> tuple[list[int], list[str]]:
    """(ids, names) of the kept categories, sorted by id; ValueError for bad categories or unknown names."""
    try:
        cats = sorted((int(c["id"]), str(c.get("name", c["id"]))) for c in data["categories"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path}: a category without an integer id ({e!r})") from None
    if len({c for c, _ in cats}) != len(cats):
        raise ValueError(f"{path}: category ids repeat: {[c for c, _ in cats]}")
    if class_names is not None:
        unknown = sorted(set(class_names) - {n for _, n in cats})
        if unknown:
            raise ValueError(f"{path} has no categories named {unknown} (it has {[n for _, n in cats]})")
        cats = [(c, n) for c, n in cats if n in set(class_names)]
    if not cats:
        raise ValueError(f"{path} has no categories")
    return [c for c, _ in cats], [n for _, n in cats]


class CocoDetection(Dataset):
    """A COCO-format instance set as ``(image (3, H, W) uint8, target)`` samples for the detectors' training.

    ``target``: ``boxes`` ``(n, 4)`` xyxy float32, ``labels`` ``(n,)`` int64 1-based, ``masks`` ``(n, H, W)``
    uint8, ``image_id`` int64, ``ignore_boxes`` ``(m, 4)`` xyxy of the crowd annotations. Semantics (mmdet's
    ``CocoDataset``) and the handling of bad data: the module docstring; ``problems`` lists what was left out.
    ``transform(image, target)``, if given, maps each sample (e.g. ``DetectionTrainAugment``).
    """

    def __init__(self, ann_file: str | os.PathLike, img_dir: str | os.PathLike, *,
                 transform: Callable[[Tensor, Target], tuple[Tensor, Target]] | None = None,
                 class_names: Sequence[str] | None = None, skip_empty: bool = True, min_size: int = 32):
        self.ann_file, self.img_dir, self.transform = Path(ann_file), Path(img_dir), transform
        data = read_coco_json(self.ann_file)
        self._ids, self._names = _categories(data, self.ann_file, class_names)
        self.problems: list[str] = []
        self._left_out: set[int] = set()  # ids of the images whose file is missing
        images = self._read_images(data["images"])
        self._read_annotations(data["annotations"], images, {int(c["id"]) for c in data["categories"]})
        self.images = [im for im in images.values() if min(im.height, im.width) >= min_size
                       and not (skip_empty and im.known_annotations == 0)]
        if self.problems:
            shown = "\n  ".join(self.problems[:10]) + ("\n  ..." if len(self.problems) > 10 else "")
            warnings.warn(f"{self.ann_file}: {len(self.problems)} problem(s), the annotations or images named were "
                          f"left out (all in dataset.problems):\n  {shown}", stacklevel=2)

    @property
    def num_classes(self) -> int:
        return len(self._ids)

    @property
    def class_names(self) -> list[str]:
        """The class names, class ``i`` (label ``i + 1``) first: the categories sorted by id."""
        return list(self._names)

    @property
    def category_ids(self) -> list[int]:
        """The COCO category id of each class (sorted)."""
        return list(self._ids)

    def _report(self, what: str) -> None:
        self.problems.append(f"{self.ann_file}: {what}")

    def _read_images(self, entries: list) -> dict[int, _Image]:
        images: dict[int, _Image] = {}
        for entry in entries:
            try:
                image_id, name = int(entry["id"]), str(entry["file_name"])
            except (KeyError, TypeError, ValueError):
                self._report(f"image entry {str(entry)[:80]} has no id or file_name: left out")
                continue
            path = self.img_dir / name
            if image_id in images:
                self._report(f"image {name}: image id {image_id} repeats (image {images[image_id].file_name}): "
                             "left out")
                continue
            if not path.is_file():
                self._left_out.add(image_id)
                self._report(f"image {name} (image id {image_id}) not found in {self.img_dir}: left out")
                continue
            height, width = entry.get("height"), entry.get("width")
            if not (isinstance(height, int) and isinstance(width, int)):
                width, height = image_size(path)
            images[image_id] = _Image(image_id, name, height, width)
        return images

    def _read_annotations(self, annotations: list, images: dict[int, _Image], file_cats: set) -> None:
        labels = {c: i + 1 for i, c in enumerate(self._ids)}
        for ann in annotations:
            if not isinstance(ann, dict):
                self._report(f"annotation {str(ann)[:40]} is not an object: skipped")
                continue
            if ann.get("ignore", False):
                continue
            where = f"annotation id {ann.get('id')}"
            image_id, cat = ann.get("image_id"), ann.get("category_id")
            if isinstance(image_id, int) and image_id in self._left_out:
                continue  # its image is reported already
            image = images.get(image_id) if isinstance(image_id, int) else None
            if image is None:
                self._report(f"{where}: image id {ann.get('image_id')} is not in the set: skipped")
            elif not isinstance(cat, int) or cat not in file_cats:
                self._report(f"{where} (image {image.file_name}): unknown category_id {cat!r}: skipped")
            elif cat in labels:
                image.known_annotations += 1
                notes: list[str] = []
                try:
                    _read_annotation(ann, image, labels[cat], notes)
                except _Skip as e:
                    notes.append(f"{e}: skipped")
                for note in notes:
                    self._report(f"{where} (image {image.file_name}): {note}")

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Tensor, Target]:
        image, target = self.load(index)
        return self.transform(image, target) if self.transform is not None else (image, target)

    def load(self, index: int) -> tuple[Tensor, Target]:
        """The sample without the transform."""
        info = self.images[index]
        path = self.img_dir / info.file_name
        try:
            pixels = load_image(path)
        except (OSError, ValueError) as e:
            raise ValueError(f"image {path} (image id {info.id}) cannot be read: {e}") from e
        if pixels.shape[:2] != (info.height, info.width):
            raise ValueError(f"image {path} (image id {info.id}) is {pixels.shape[1]}x{pixels.shape[0]} but "
                             f"{self.ann_file} gives {info.width}x{info.height}")
        boxes = torch.tensor(info.boxes, dtype=torch.float32).reshape(-1, 4)
        target = dict(boxes=boxes, labels=torch.tensor(info.labels, dtype=torch.int64),
                      masks=decode_masks(info.segmentations, info.height, info.width),
                      image_id=torch.tensor(info.id, dtype=torch.int64),
                      ignore_boxes=torch.tensor(info.ignore_boxes, dtype=torch.float32).reshape(-1, 4))
        return torch.from_numpy(pixels).permute(2, 0, 1).contiguous(), target
