"""The detection tab's results, testable without Gradio: :func:`run_detection` (one photo through
:func:`iwin_models.engine.detection.detect` with the model's own threshold, on the session's model, one inference
at a time), :class:`DetectionResult` (kept by the session; the page's score threshold only filters it:
:func:`above`, :func:`class_counts`, :func:`counts_html`, :func:`overlay`), and :func:`detection_downloads` (the
overlay PNG and the COCO-style JSON at a threshold, full size, written atomically)."""
from __future__ import annotations

import dataclasses
import html
import json
import os
import time
from collections import Counter
from pathlib import Path

import numpy as np

from .. import visualize
from .photos import read_photo
from .pictures import preview_detections
from .session import DemoSession

__all__ = ["DetectionResult", "run_detection", "above", "class_counts", "counts_html", "overlay", "detection_info",
           "detection_downloads"]


@dataclasses.dataclass
class DetectionResult:
    """One photo's detections at the model's own threshold: full size (for the downloads) and as shown."""

    name: str
    image: np.ndarray  # (H, W, 3) uint8, upright
    found: object  # Detections, the image's pixels
    shown_image: np.ndarray  # the photo as the page shows it (long edge <= PREVIEW_EDGE)
    shown: object  # the detections in the shown photo's pixels
    model: str  # the choice's label
    seconds: dict[str, float]  # read, model, total
    note: str = ""
    folder: Path | None = None  # where the downloads go

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the photo."""
        return self.image.shape[1], self.image.shape[0]


def run_detection(session: DemoSession, path: str | os.PathLike, model_key: str | None = None, *,
                  name: str | None = None) -> DetectionResult:
    """Detect objects in the photo at ``path`` (shown as ``name``) with the session's detector ``model_key``
    (default: the detector menu's entry), keeping every detection the model's own threshold keeps."""
    from ...engine.detection import detect

    model_key = model_key or session.default_for("detector")
    choice = session.choices.get(model_key)
    if choice is None or choice.kind != "detector":
        raise ValueError(f"no detector {model_key!r}: {', '.join(session.labels('detector'))}")
    start = time.perf_counter()
    image = read_photo(path, name, session.max_pixels)
    read = time.perf_counter() - start
    with session.lock:
        model = session.model(model_key)
        started = time.perf_counter()
        found = detect(model, image, fast=False)  # converted once, in session.model()
        ran = time.perf_counter() - started
    shown_image, shown = preview_detections(image, found)
    seconds = dict(read=read, model=ran, total=time.perf_counter() - start)
    return DetectionResult(name or Path(path).name, image, found, shown_image, shown, model_key, seconds,
                           choice.note)


def above(found, threshold: float):
    """The detections scoring ``threshold`` or more."""
    return found.keep(found.scores >= threshold)


def class_counts(found, threshold: float) -> list[tuple[int, str, int]]:
    """``(class, name, count)`` of the detections scoring ``threshold`` or more, most first (equal counts: the
    class of the better detection first)."""
    labels = [int(i) for i in found.labels[found.scores >= threshold]]
    counts = Counter(labels)  # in the order of first appearance: best score first
    order = sorted(counts, key=lambda i: -counts[i])  # stable
    return [(i, found.class_names[i], counts[i]) for i in order]


def counts_html(found, threshold: float) -> str:
    """The detected classes with their counts at ``threshold``, a swatch of each class's colour, as HTML."""
    counts = class_counts(found, threshold)
    total = sum(n for _, _, n in counts)
    lines = []
    for i, name, n in counts:
        r, g, b = visualize.class_colour(i)
        lines.append(f'<li><span class="swatch" style="background: rgb({r}, {g}, {b})"></span>'
                     f'{html.escape(name)} <b>{n}</b></li>')
    head = (f'<p class="total">{total} detection{"" if total == 1 else "s"} scoring {threshold:.2f} or more '
            f'(of {len(found)})</p>')
    return head + f"<ul>{''.join(lines)}</ul>"


def overlay(result: DetectionResult, threshold: float) -> np.ndarray:
    """The shown photo with the detections scoring ``threshold`` or more
    (:func:`iwin_models.apps.visualize.detection_overlay`)."""
    return np.asarray(visualize.detection_overlay(result.shown_image, result.shown, threshold))


def detection_info(result: DetectionResult) -> str:
    """The line under a result: the photo's size, the model, the seconds."""
    w, h = result.size
    shown = "" if result.shown_image.shape == result.image.shape else (
        f" (shown at {result.shown_image.shape[1]} x {result.shown_image.shape[0]}; downloads full size)")
    s = result.seconds
    return (f"**{html.escape(result.name)}**: {w} x {h} pixels ({w * h / 1e6:.1f} MP){shown}; "
            f"{html.escape(result.model)}; **{s['total']:.2f} s** (model {s['model']:.2f} s, reading "
            f"{s['read']:.2f} s)")


def detection_downloads(session: DemoSession, result: DetectionResult, threshold: float) -> list[Path]:
    """The overlay PNG and the COCO-style JSON (:func:`iwin_models.engine.detection_eval.detections_json`) of the
    detections scoring ``threshold`` or more, full size, written atomically to the result's folder; their paths."""
    from ...engine.detection_eval import detections_json
    from ...io.files import write_atomic

    if result.folder is None or not result.folder.is_dir():
        result.folder = session.new_folder()
    stem = Path(result.name).stem or "photo"
    overlay_path, json_path = result.folder / f"{stem}_overlay.png", result.folder / f"{stem}_detections.json"
    picture = visualize.detection_overlay(result.image, result.found, threshold)
    write_atomic(overlay_path, lambda tmp: picture.save(tmp, format="PNG", compress_level=1))
    record = dict(detections_json(above(result.found, threshold), result.name, result.image.shape),
                  score_threshold=float(threshold), model=result.model)
    text = json.dumps(record, indent=1)
    write_atomic(json_path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return [overlay_path, json_path]
