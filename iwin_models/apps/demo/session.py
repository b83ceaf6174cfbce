"""The demo page's state, shared by every visitor and testable without Gradio: :class:`DemoSession` (the model
choices, segmenters and detectors, each model built on first use (:func:`build_model`) and converted once to its CPU
fast twins; one inference at a time;
:meth:`~DemoSession.run_segmentation` through :func:`iwin_models.engine.inference.predict`, banded, so memory is
bounded at any size; the last :data:`KEEP_RESULTS` results kept for re-rendering; the download folders) and
:class:`DemoResult`, one segmented photo."""
from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from ...engine.inference import input_sizes
from .. import visualize
from .choices import PROTOCOLS, ModelChoice, registered_choices
from .photos import MAX_PIXELS, read_photo
from .pictures import confidence_picture, overlay_picture, preview

__all__ = ["KEEP_RESULTS", "KEEP_FOLDERS", "DemoResult", "DemoSession", "build_model"]

KEEP_RESULTS = 16  # results kept for re-rendering (photo and class map: ~4 bytes a pixel each), newest first
KEEP_FOLDERS = 32  # download folders kept on disk (older ones are removed)


@dataclasses.dataclass
class DemoResult:
    """One segmented photo: full-size photo and class map (for the downloads), what the page shows, and how."""

    name: str
    image: np.ndarray  # (H, W, 3) uint8, upright
    labels: np.ndarray  # (H, W) class indices (uint8, or uint16 over 256 classes)
    shown_image: np.ndarray  # the photo as the page shows it (long edge <= PREVIEW_EDGE)
    shown_labels: np.ndarray
    confidence: np.ndarray  # the confidence picture as shown (RGB uint8)
    mean_confidence: float
    legend: list[tuple[int | None, str]]
    class_names: list[str]
    palette: list[tuple[int, int, int]]
    model: str  # the choice's label
    protocol: str
    precision: str
    input_sizes: list[tuple[int, int]]  # (h, w) of each scale the model ran at
    seconds: dict[str, float]  # read, model, total
    note: str = ""
    folder: Path | None = None  # where the downloads go

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the photo."""
        return self.labels.shape[1], self.labels.shape[0]


def build_model(choice: ModelChoice, device: str):
    """The model of ``choice`` on ``device``: a segmenter through
    :func:`~iwin_models.models.segmenters.load_segmenter`, a detector through
    :func:`~iwin_models.models.detectors.create_detector` (its official weights unless it starts random)."""
    if choice.kind == "detector":
        from ...models.detectors import create_detector

        model = create_detector(choice.model, pretrained=choice.start == "official", weights=choice.weights)
        return model.to(device).eval()
    from ...models.segmenters import load_segmenter

    return load_segmenter(choice.model, choice.weights, device=device, start=choice.start, warn=False)


class DemoSession:
    """The page's state shared by every visitor: the model choices, the models built so far (each on first use,
    on ``device``, converted once to the CPU fast twins unless ``fast`` is False; ``default``: the entry selected
    in its kind's menu, the first of each other kind selected in its own), one inference at a time
    (a lock), the last :data:`KEEP_RESULTS` results (the page keeps their keys: memory stays bounded however many
    visitors come), and the folders the downloads are written to (the last :data:`KEEP_FOLDERS`)."""

    def __init__(self, choices: Sequence[ModelChoice] | None = None, *, default: str | None = None,
                 device: str = "cpu", fast: bool = True, max_pixels: int | None = MAX_PIXELS,
                 precision: str = "fp32", workdir: str | os.PathLike | None = None):
        from ...engine.precision import PRECISIONS

        self.choices = {c.label: c for c in (choices if choices is not None else registered_choices())}
        if not self.choices:
            raise ValueError("the demo needs at least one model")
        self.default = default if default is not None else next(iter(self.choices))
        if self.default not in self.choices:
            raise ValueError(f"no model choice {self.default!r}: {', '.join(self.choices)}")
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}: {', '.join(PRECISIONS)}")
        self.precisions, self.precision = dict(PRECISIONS), precision
        self.device, self.fast, self.max_pixels = device, fast, max_pixels
        self._workdir = Path(workdir) if workdir is not None else None
        self._models: dict[str, object] = {}
        self._lock = threading.RLock()
        self._folders: deque[Path] = deque()
        self._results: OrderedDict[str, DemoResult] = OrderedDict()

    @property
    def lock(self) -> threading.RLock:
        """Held for each model build and run: one inference at a time, whichever the tab."""
        return self._lock

    def labels(self, kind: str = "segmenter") -> list[str]:
        """The labels of the choices of ``kind`` (a menu)."""
        return [label for label, c in self.choices.items() if c.kind == kind]

    def default_for(self, kind: str = "segmenter") -> str | None:
        """The entry selected in the menu of ``kind``: :attr:`default` if of that kind, else its first (None)."""
        labels = self.labels(kind)
        return self.default if self.default in labels else next(iter(labels), None)

    def model(self, label: str):
        """The model of choice ``label``, built and converted on first use (under the lock)."""
        from ...fast import with_cpu_twins

        if label not in self.choices:
            raise ValueError(f"no model choice {label!r}: {', '.join(self.choices)}")
        with self._lock:
            if label not in self._models:
                model = build_model(self.choices[label], self.device)
                self._models[label] = with_cpu_twins(model, None if self.fast else False)
            return self._models[label]

    def new_folder(self) -> Path:
        """A new folder for one result's downloads (the oldest removed past :data:`KEEP_FOLDERS`)."""
        if self._workdir is None:
            self._workdir = Path(tempfile.mkdtemp(prefix="iwin-seg-demo-"))
        self._workdir.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(dir=self._workdir))
        self._folders.append(folder)
        while len(self._folders) > KEEP_FOLDERS:
            shutil.rmtree(self._folders.popleft(), ignore_errors=True)
        return folder

    def run_segmentation(self, path: str | os.PathLike, model_key: str | None = None, protocol: str = "whole",
                         precision: str | None = None, *, name: str | None = None) -> DemoResult:
        """Segment the photo at ``path`` (shown as ``name``) with choice ``model_key``, protocol (a key of
        :data:`PROTOCOLS`) and precision (a key of ``training.PRECISIONS``): the class map of
        :func:`iwin_models.engine.inference.predict`, with its confidences, legend and timings."""
        model_key = model_key or self.default_for("segmenter")
        precision = precision or self.precision
        if protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {protocol!r}: {', '.join(PROTOCOLS)}")
        if precision not in self.precisions:
            raise ValueError(f"unknown precision {precision!r}: {', '.join(self.precisions)}")
        start = time.perf_counter()
        image = read_photo(path, name, self.max_pixels)
        read = time.perf_counter() - start
        with self._lock:
            model = self.model(model_key)
            labels, confidence, seconds = self._predict(model, image, self.choices[model_key], protocol, precision)
        seconds = dict(read=read, model=seconds, total=time.perf_counter() - start)
        return self._result(name or Path(path).name, image, labels, confidence, model, model_key, protocol,
                            precision, seconds)

    def _predict(self, model, image: np.ndarray, choice: ModelChoice, protocol: str, precision: str):
        from ...engine.inference import predict

        start = time.perf_counter()
        labels_dtype = np.uint8 if model.num_classes <= 256 else np.uint16
        labels, confidence = predict(model, image, **PROTOCOLS[protocol], dtype=self.precisions[precision],
                                     protocol=choice.protocol, return_confidence=True, labels_dtype=labels_dtype,
                                     fast=False)  # converted once, in model()
        return labels, confidence, time.perf_counter() - start

    def _result(self, name, image, labels, confidence, model, model_key, protocol, precision, seconds) -> DemoResult:
        from ...data import ade20k

        names = list(model.class_names or [f"class {i}" for i in range(model.num_classes)])
        palette = [tuple(int(c) for c in p) for p in (model.palette or ade20k.PALETTE)]
        choice = self.choices[model_key]
        shown_image, shown_labels, shown_conf = preview(image, labels, confidence)
        mean = float(confidence.mean(dtype=np.float64))
        del confidence  # only the picture is kept
        return DemoResult(
            name=name, image=image, labels=labels, shown_image=shown_image, shown_labels=shown_labels,
            confidence=confidence_picture(shown_conf), mean_confidence=mean,
            legend=visualize.legend_entries(labels, names), class_names=names, palette=palette, model=model_key,
            protocol=protocol, precision=precision, input_sizes=input_sizes(
                *labels.shape, aug=PROTOCOLS[protocol]["aug"], protocol=choice.protocol),
            seconds=seconds, note=choice.note)

    def keep(self, result: DemoResult) -> str:
        """Keep ``result`` for re-rendering (the oldest dropped past :data:`KEEP_RESULTS`); its key."""
        key = uuid.uuid4().hex
        with self._lock:
            self._results[key] = result
            while len(self._results) > KEEP_RESULTS:
                self._results.popitem(last=False)
        return key

    def result(self, key: str | None) -> DemoResult | None:
        """The result kept under ``key`` (None once dropped)."""
        with self._lock:
            return self._results.get(key) if key else None

    def downloads(self, result: DemoResult, opacity: float, highlight: int | None = None) -> list[Path]:
        """The label PNG (class indices, written once) and the overlay PNG at ``opacity`` (``highlight``: one
        class), full size, written atomically to the result's folder; their paths."""
        from ...io.files import write_atomic

        if result.folder is None or not result.folder.is_dir():
            result.folder = self.new_folder()
        stem = Path(result.name).stem or "photo"
        labels_path, overlay_path = result.folder / f"{stem}_labels.png", result.folder / f"{stem}_overlay.png"
        if not labels_path.is_file():
            write_atomic(labels_path, lambda tmp: Image.fromarray(result.labels).save(tmp, format="PNG"))
        picture = Image.fromarray(overlay_picture(result.image, result.labels, result.palette, opacity, highlight))
        write_atomic(overlay_path, lambda tmp: picture.save(tmp, format="PNG", compress_level=1))
        return [labels_path, overlay_path]
