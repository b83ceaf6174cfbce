"""The pictures of a result: :func:`overlay_picture` (the blend of :mod:`iwin_models.apps.visualize`, with one
class highlighted), :func:`class_map_picture`, :func:`confidence_picture` (the top softmax score) and its scale,
:func:`legend_html` (the lines of :func:`iwin_models.apps.visualize.legend_entries`), and :func:`preview` and
:func:`preview_detections` (what the page shows of a large photo: downscaled to :data:`PREVIEW_EDGE`; the downloads
are full size)."""
from __future__ import annotations

import dataclasses
import html
from collections.abc import Sequence

import numpy as np
from PIL import Image

from .. import visualize

__all__ = ["PREVIEW_EDGE", "DIM", "CONFIDENCE_STOPS", "overlay_picture", "class_map_picture", "confidence_picture",
           "confidence_scale_html", "legend_html", "preview", "preview_detections"]

PREVIEW_EDGE = 2048  # the pictures on the page: long edge at most this (the downloads are full size)
DIM = 0.3  # a highlighted class's overlay: the other pixels at this brightness
# The confidence pictures' colours (viridis at five stops): 0 -> dark purple ... 1 -> yellow.
CONFIDENCE_STOPS = ((68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37))


def overlay_picture(image: np.ndarray, labels: np.ndarray, palette: Sequence[Sequence[int]], opacity: float,
                    highlight: int | None = None) -> np.ndarray:
    """``image * (1 - opacity) + colours * opacity`` cast to uint8 (the blend of
    :func:`iwin_models.apps.visualize.overlay`), a band of rows at a time; with ``highlight`` (a class) the other
    pixels are the photo dimmed to :data:`DIM`."""
    out = np.empty(image.shape, dtype=np.uint8)
    visualize.blend(image, labels, palette, opacity, out)
    if highlight is None:
        return out
    for a in range(0, labels.shape[0], visualize.BLEND_ROWS):  # in bands too: the float temporaries stay small
        rest = labels[a:a + visualize.BLEND_ROWS] != highlight
        out[a:a + visualize.BLEND_ROWS][rest] = (image[a:a + visualize.BLEND_ROWS][rest] * DIM).astype(np.uint8)
    return out


def class_map_picture(labels: np.ndarray, palette: Sequence[Sequence[int]]) -> np.ndarray:
    """The class colours alone (:func:`iwin_models.apps.visualize.colorize`)."""
    return visualize.colorize(labels, palette)


def _confidence_table() -> np.ndarray:
    stops = np.asarray(CONFIDENCE_STOPS, dtype=np.float64)
    where = np.linspace(0, 1, len(stops))
    x = np.linspace(0, 1, 256)
    return np.stack([np.interp(x, where, stops[:, c]) for c in range(3)], axis=1).round().astype(np.uint8)


def confidence_picture(confidence: np.ndarray) -> np.ndarray:
    """RGB picture of per-pixel confidences in [0, 1] (the top softmax score): :data:`CONFIDENCE_STOPS`'
    colours, from 0 (dark purple) to 1 (yellow)."""
    index = np.clip(np.nan_to_num(confidence, nan=0.0) * 255 + 0.5, 0, 255).astype(np.uint8)
    return _confidence_table()[index]


def confidence_scale_html() -> str:
    """The confidence pictures' colour scale (0 ... 1), as HTML."""
    stops = ", ".join(f"rgb{tuple(c)} {100 * i // (len(CONFIDENCE_STOPS) - 1)}%"
                      for i, c in enumerate(CONFIDENCE_STOPS))
    return (f'<div class="confidence-scale"><span>0</span><span class="bar" style="background: '
            f'linear-gradient(to right, {stops})"></span><span>1</span><span>(top softmax score)</span></div>')


def legend_html(entries: Sequence[tuple[int | None, str]], palette: Sequence[Sequence[int]]) -> str:
    """The legend as HTML: one line a class, a swatch of its colour and ``name share`` (the lines of
    :func:`iwin_models.apps.visualize.legend_entries`, in their order)."""
    lines = []
    for i, text in entries:
        r, g, b = visualize.OTHER_SWATCH if i is None else (int(c) for c in palette[i])
        lines.append(f'<li><span class="swatch" style="background: rgb({r}, {g}, {b})"></span>'
                     f'{html.escape(text)}</li>')
    return f"<ul>{''.join(lines)}</ul>"


def _shrunk(size: tuple[int, int], edge: int) -> tuple[int, int]:
    """(h, w) fitted into ``edge`` on the long side (unchanged when it fits)."""
    h, w = size
    factor = min(1.0, edge / max(h, w))
    return max(1, round(h * factor)), max(1, round(w * factor))


def preview(image: np.ndarray, labels: np.ndarray, confidence: np.ndarray,
            edge: int = PREVIEW_EDGE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What the page shows of a result: the arrays themselves when the long edge is ``edge`` or less, else
    downscaled (the photo and the confidences by area averaging, the classes by nearest neighbour)."""
    h, w = _shrunk(labels.shape, edge)
    if (h, w) == labels.shape:
        return image, labels, confidence
    small = np.asarray(Image.fromarray(image).resize((w, h), Image.Resampling.BOX))
    rows = (np.arange(h) * labels.shape[0] // h)[:, None]
    cols = (np.arange(w) * labels.shape[1] // w)[None, :]
    conf = np.asarray(Image.fromarray(confidence.astype(np.float32, copy=False), mode="F")
                      .resize((w, h), Image.Resampling.BOX))
    return small, labels[rows, cols], conf


def preview_detections(image: np.ndarray, found, edge: int = PREVIEW_EDGE) -> tuple[np.ndarray, object]:
    """What the page shows of a detection result (:class:`iwin_models.engine.detection.Detections`): the photo and
    the detections themselves when the long edge is ``edge`` or less, else the photo downscaled by area averaging,
    the boxes scaled and the masks sampled by nearest neighbour."""
    h, w = _shrunk(image.shape[:2], edge)
    if (h, w) == image.shape[:2]:
        return image, found
    small = np.asarray(Image.fromarray(image).resize((w, h), Image.Resampling.BOX))
    rows = np.arange(h) * image.shape[0] // h
    cols = np.arange(w) * image.shape[1] // w
    scale = np.array([w / image.shape[1], h / image.shape[0]] * 2, dtype=np.float32)
    masks = found.masks[:, rows][:, :, cols]
    return small, dataclasses.replace(found, boxes=found.boxes * scale, masks=masks)
