"""A tiny synthetic COCO data set for the detection tests: :func:`make_coco` (variants: :func:`write_annotations`).

Five small PNGs with rectangles and ellipses of three categories whose ids are not contiguous (3, 7, 12), each
annotated with a polygon and its box; one crowd annotation (an RLE), one image without annotations. The shapes
are drawn with the same polygons the annotations give, so the masks of the file are the pixels drawn.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CATEGORIES = [{"id": 12, "name": "bar"}, {"id": 3, "name": "square"}, {"id": 7, "name": "disk"}]  # file order != id
SIZES = [(64, 80), (72, 64), (60, 90), (64, 64), (48, 70)]  # (h, w); the last image has no annotations
COLOURS = {3: (220, 40, 40), 7: (40, 200, 60), 12: (40, 60, 220)}


def _rectangle(x, y, w, h) -> list[float]:
    return [x, y, x + w, y, x + w, y + h, x, y + h]


def _ellipse(cx, cy, rx, ry, n: int = 24) -> list[float]:
    points = []
    for k in range(n):
        a = 2 * math.pi * k / n
        points += [round(cx + rx * math.cos(a), 1), round(cy + ry * math.sin(a), 1)]
    return points


def _shapes(index: int) -> list[tuple[int, list[float]]]:
    """(category id, polygon) of image ``index``."""
    o = 3 * index
    return [(3, _rectangle(4 + o, 6, 18, 16)), (7, _ellipse(44, 30 + o, 12, 9)),
            (12, _rectangle(8, 40 + o % 7, 30, 8))][: 1 + index % 3] + ([(7, _ellipse(20 + o, 20, 7, 7))]
                                                                      if index == 2 else [])


def _annotation(ann_id: int, image_id: int, cat: int, polygon: list[float]) -> dict:
    xs, ys = polygon[0::2], polygon[1::2]
    x, y = min(xs), min(ys)
    w, h = max(xs) - x, max(ys) - y
    area = 0.5 * abs(sum(xs[i] * ys[i - 1] - xs[i - 1] * ys[i] for i in range(len(xs))))
    return dict(id=ann_id, image_id=image_id, category_id=cat, segmentation=[polygon], bbox=[x, y, w, h],
                area=area, iscrowd=0)


def _crowd(ann_id: int, image_id: int, size: tuple[int, int]) -> dict:
    from pycocotools import mask as mask_util

    m = np.zeros(size, np.uint8)
    m[2:12, size[1] - 20:size[1] - 2] = 1
    rle = mask_util.encode(np.asfortranarray(m))
    return dict(id=ann_id, image_id=image_id, category_id=12, iscrowd=1, area=float(m.sum()),
                bbox=[float(v) for v in mask_util.toBbox(rle)],
                segmentation={"size": list(size), "counts": rle["counts"].decode("ascii")})


def make_coco(root: Path) -> dict:
    """Write ``root/images/*.png`` and ``root/annotations.json``; returns their paths and the data."""
    images_dir = root / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for index, (h, w) in enumerate(SIZES):
        image_id = 100 + 10 * index
        picture = Image.new("RGB", (w, h), (128, 128, 128))
        draw = ImageDraw.Draw(picture)
        shapes = _shapes(index) if index < len(SIZES) - 1 else []
        for cat, polygon in shapes:
            draw.polygon(polygon, fill=COLOURS[cat])
            annotations.append(_annotation(len(annotations) + 1, image_id, cat, polygon))
        if index == 1:
            annotations.append(_crowd(len(annotations) + 1, image_id, (h, w)))
        name = f"img{index}.png"
        picture.save(images_dir / name)
        images.append(dict(id=image_id, file_name=name, height=h, width=w))
    data = dict(images=images, annotations=annotations, categories=CATEGORIES)
    return dict(ann_file=write_annotations(root, data), img_dir=images_dir, data=data)


def write_annotations(root: Path, data: dict, name: str = "annotations.json") -> Path:
    """``data`` as the annotation file ``root/name`` (a variant of :func:`make_coco`'s set)."""
    ann_file = root / name
    ann_file.write_text(json.dumps(data))
    return ann_file


def rectangle_mask(size: tuple[int, int], x: int, y: int, w: int, h: int) -> np.ndarray:
    """The (h, w) uint8 mask of the pixels inside ``_rectangle(x, y, w, h)`` (integer corners), drawn by hand."""
    mask = np.zeros(size, np.uint8)
    mask[y:y + h, x:x + w] = 1
    return mask
