"""Pictures of class maps: colours, the image blended with them, and a legend of the classes present.

The legend lists the classes that cover at least :data:`LEGEND_MIN_SHARE` of the pixels (0.1%), largest first,
each with its share; the classes below it (a model's stray pixels: often most of the classes present) are
summed into one ``other (N classes)`` line with their total share.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..data import ade20k

__all__ = ["colorize", "blend", "overlay", "classes_by_area", "legend_entries", "LEGEND_MIN_SHARE"]

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
