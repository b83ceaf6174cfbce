"""Pictures of class maps: colours, the image blended with them, and a legend of the classes present; and of
detections (:func:`detection_overlay`: masks in class colours, boxes, names and scores).

The legend lists the classes that cover at least :data:`LEGEND_MIN_SHARE` of the pixels (0.1%), largest first,
each with its share; the classes below it (a model's stray pixels: often most of the classes present) are
summed into one ``other (N classes)`` line with their total share.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..data import ade20k

__all__ = ["colorize", "blend", "overlay", "classes_by_area", "legend_entries", "LEGEND_MIN_SHARE",
           "detection_overlay", "class_colour"]

# Rows blended at a time: the blend's float64 temporaries take 24 bytes a pixel of these rows, not of the
# whole image (a 12 MP photo blended at once: ~290 MB of temporaries).
BLEND_ROWS = 256
# The legend: one line of this many pixels a class, a swatch this wide, this margin around the text.
LEGEND_LINE, LEGEND_SWATCH, LEGEND_PAD = 16, 10, 6
# Classes under this share of the pixels are summed into the legend's "other" line.
LEGEND_MIN_SHARE = 0.001
OTHER_SWATCH = (255, 255, 255)  # "other" is no one class: an empty (white) swatch


def colorize(labels: np.ndarray, palette: Sequence[Sequence[int]] = ade20k.PALETTE) -> np.ndarray:
    """RGB picture (H, W, 3) of a class map; classes beyond the palette (or 255) are black."""
    table = np.zeros((256, 3), dtype=np.uint8)
    table[:len(palette)] = np.asarray(palette, dtype=np.uint8)[:256]
    return table[np.clip(labels, 0, 255)]


def classes_by_area(labels: np.ndarray, num_classes: int) -> list[tuple[int, float]]:
    """(class, share of the pixels) of each class ``0 <= class < num_classes`` in ``labels``, largest first."""
    if labels.dtype.kind in "ui" and labels.size and labels.min() >= 0:
        counts = np.bincount(labels.ravel())  # np.unique would sort a copy of the map
        ids = np.flatnonzero(counts)
        counts = counts[ids]
    else:
        ids, counts = np.unique(labels, return_counts=True)
    order = np.argsort(-counts)  # the default sort, as before: equal areas keep the order of earlier pictures
    return [(int(ids[k]), counts[k] / labels.size) for k in order if 0 <= ids[k] < num_classes]


def _share(share: float) -> str:
    """A share as the legend writes it: ``37%``, ``0.4%``, or ``<0.1%``."""
    return f"{share:.0%}" if share >= 0.01 else f"{share:.1%}" if share >= 0.001 else "<0.1%"


def legend_entries(labels: np.ndarray, class_names: Sequence[str],
                   min_share: float = LEGEND_MIN_SHARE) -> list[tuple[int | None, str]]:
    """The legend's lines, ``(class, "name 37%")`` for each class at ``min_share`` of the pixels or more, largest
    first, then ``(None, "other (N classes) 0.2%")`` for the classes below it, when there are any."""
    areas = classes_by_area(labels, len(class_names))
    lines = [(i, f"{class_names[i].strip()} {_share(share)}") for i, share in areas if share >= min_share]
    rest = [share for _, share in areas if share < min_share]
    if rest:
        lines.append((None, f"other ({len(rest)} class{'es' if len(rest) > 1 else ''}) {_share(sum(rest))}"))
    return lines


def blend(image: np.ndarray, labels: np.ndarray, palette: Sequence[Sequence[int]], alpha: float,
           canvas: np.ndarray) -> None:
    """``image * (1 - alpha) + colours * alpha`` into the top left of ``canvas``, a band of rows at a time."""
    h, w = labels.shape[:2]
    for a in range(0, h, BLEND_ROWS):
        b = min(a + BLEND_ROWS, h)
        canvas[a:b, :w] = (image[a:b] * (1 - alpha) + colorize(labels[a:b], palette) * alpha).astype(np.uint8)


def _draw_legend(picture: Image.Image, left: int, lines: list[tuple[int | None, str]],
                 palette: Sequence[Sequence[int]], font) -> None:
    draw = ImageDraw.Draw(picture)
    for n, (i, text) in enumerate(lines):
        x, y = left + LEGEND_PAD, LEGEND_PAD + n * LEGEND_LINE
        colour = OTHER_SWATCH if i is None else palette[i]
        draw.rectangle([x, y + 2, x + LEGEND_SWATCH, y + 2 + LEGEND_SWATCH], fill=tuple(int(c) for c in colour),
                       outline="black")
        draw.text((x + LEGEND_SWATCH + 4, y), text, fill="black", font=font)


def overlay(image: np.ndarray, labels: np.ndarray, class_names: Sequence[str] = ade20k.CLASSES,
            palette: Sequence[Sequence[int]] = ade20k.PALETTE, alpha: float = 0.5,
            min_share: float = LEGEND_MIN_SHARE) -> Image.Image:
    """The image blended with its class colours, with a legend on its right: the classes at ``min_share`` of the
    pixels or more (0.1%; 0 lists every class) by area, and the rest as one ``other`` line
    (:func:`legend_entries`)."""
    font = ImageFont.load_default()
    lines = legend_entries(labels, class_names, min_share)
    text_w = max([int(font.getlength(text)) for _, text in lines] + [60])
    legend_w = LEGEND_SWATCH + 4 + text_w + 2 * LEGEND_PAD
    h, w = labels.shape[:2]
    canvas = np.full((max(h, 2 * LEGEND_PAD + LEGEND_LINE * len(lines)), w + legend_w, 3), 255, dtype=np.uint8)
    blend(image, labels, palette, alpha, canvas)
    picture = Image.fromarray(canvas)
    del canvas
    _draw_legend(picture, w, lines, palette, font)
    return picture


def class_colour(label: int) -> tuple[int, int, int]:
    """The colour of a detector's class ``label``: the ADE20K palette's, cycled (distinct for 150 classes)."""
    return tuple(int(c) for c in ade20k.PALETTE[int(label) % len(ade20k.PALETTE)])


def _blend_masks(image: np.ndarray, masks: np.ndarray, labels: np.ndarray, order: np.ndarray,
                 alpha: float) -> np.ndarray:
    """``image`` with the masks ``order`` selects blended in their class colours, the first (best) on top; only
    the rows and columns a mask covers are touched, and no mask is copied."""
    canvas = np.array(image[..., :3], dtype=np.uint8)
    for k in order[::-1]:
        mask, label = masks[k], labels[k]
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        if not len(rows):
            continue
        box = np.s_[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
        region, on = canvas[box], mask[box]
        region[on] = (region[on] * (1 - alpha) + np.asarray(class_colour(label)) * alpha).astype(np.uint8)
    return canvas


def _caption_colour(colour: tuple[int, int, int]) -> str:
    return "black" if 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2] > 140 else "white"


def _draw_boxes(picture: Image.Image, detections, order: np.ndarray) -> None:
    """Each box in its class colour with ``name 0.87`` on a filled caption above it (below, at the top edge)."""
    w, h = picture.size
    line = max(1, round(min(w, h) / 320))
    font = ImageFont.load_default(size=max(10, min(w, h) // 45))
    draw = ImageDraw.Draw(picture)
    for k in order[::-1]:  # the best last: on top
        colour = class_colour(detections.labels[k])
        x1, y1, x2, y2 = (float(v) for v in detections.boxes[k])
        draw.rectangle([x1, y1, x2, y2], outline=colour, width=line)
        text = f"{detections.class_names[detections.labels[k]]} {detections.scores[k]:.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        tw, th = right - left + 2 * line, bottom - top + 2 * line
        ty = y1 - th if y1 - th >= 0 else y1
        draw.rectangle([x1, ty, x1 + tw, ty + th], fill=colour)
        draw.text((x1 + line - left, ty + line - top), text, fill=_caption_colour(colour), font=font)


def detection_overlay(image: np.ndarray, detections, score_threshold: float = 0.0,
                      alpha: float = 0.5) -> Image.Image:
    """The image (``HxWx3`` uint8 RGB) with the detections scoring ``score_threshold`` or more
    (:class:`iwin_models.engine.detection.Detections`): masks blended in their class colours (:func:`class_colour`),
    boxes outlined in them, each captioned with its class name and score."""
    order = np.flatnonzero(detections.scores >= score_threshold)
    order = order[np.argsort(-detections.scores[order], kind="stable")]
    picture = Image.fromarray(_blend_masks(image, detections.masks, detections.labels, order, alpha))
    _draw_boxes(picture, detections, order)
    return picture
