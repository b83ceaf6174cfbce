"""Pictures of class maps: colours, the image blended with them, and a legend of the classes present."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from . import ade20k

__all__ = ["colorize", "overlay", "classes_by_area"]

# Rows blended at a time: the blend's float64 temporaries take 24 bytes a pixel of these rows, not of the
# whole image (a 12 MP photo blended at once: ~290 MB of temporaries).
BLEND_ROWS = 256
# The legend: one line of this many pixels a class, a swatch this wide, this margin around the text.
LEGEND_LINE, LEGEND_SWATCH, LEGEND_PAD = 16, 10, 6


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


def _blend(image: np.ndarray, labels: np.ndarray, palette: Sequence[Sequence[int]], alpha: float,
           canvas: np.ndarray) -> None:
    """``image * (1 - alpha) + colours * alpha`` into the top left of ``canvas``, a band of rows at a time."""
    h, w = labels.shape[:2]
    for a in range(0, h, BLEND_ROWS):
        b = min(a + BLEND_ROWS, h)
        canvas[a:b, :w] = (image[a:b] * (1 - alpha) + colorize(labels[a:b], palette) * alpha).astype(np.uint8)


def _draw_legend(picture: Image.Image, left: int, lines: list[tuple[int, str]],
                 palette: Sequence[Sequence[int]], font) -> None:
    draw = ImageDraw.Draw(picture)
    for n, (i, text) in enumerate(lines):
        x, y = left + LEGEND_PAD, LEGEND_PAD + n * LEGEND_LINE
        draw.rectangle([x, y + 2, x + LEGEND_SWATCH, y + 2 + LEGEND_SWATCH], fill=tuple(int(c) for c in palette[i]),
                       outline="black")
        draw.text((x + LEGEND_SWATCH + 4, y), text, fill="black", font=font)


def overlay(image: np.ndarray, labels: np.ndarray, class_names: Sequence[str] = ade20k.CLASSES,
            palette: Sequence[Sequence[int]] = ade20k.PALETTE, alpha: float = 0.5) -> Image.Image:
    """The image blended with its class colours, with a legend of the classes present (by area) on its right."""
    font = ImageFont.load_default()
    lines = [(i, f"{class_names[i].strip()} {share:.0%}") for i, share in classes_by_area(labels, len(class_names))]
    text_w = max([int(font.getlength(text)) for _, text in lines] + [60])
    legend_w = LEGEND_SWATCH + 4 + text_w + 2 * LEGEND_PAD
    h, w = labels.shape[:2]
    canvas = np.full((max(h, 2 * LEGEND_PAD + LEGEND_LINE * len(lines)), w + legend_w, 3), 255, dtype=np.uint8)
    _blend(image, labels, palette, alpha, canvas)
    picture = Image.fromarray(canvas)
    del canvas
    _draw_legend(picture, w, lines, palette, font)
    return picture
