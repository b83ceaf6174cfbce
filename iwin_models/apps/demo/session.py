"""The demo page: ``iwin-seg demo`` serves it, ``examples/space/app.py`` is the same page as a Hugging Face Space.

Two layers. The first is plain Python, testable without Gradio: :class:`DemoSession` resolves the model choices
(:func:`default_choices`: the registered segmenters, plus a folder or weights file given on the command line)
and caches each model, built on first use and converted once to its CPU fast twins; its
:meth:`~DemoSession.run_segmentation` reads a photo as :func:`iwin_models.io.images.load_image` does (EXIF
orientation applied once, the size checked from the header before decoding, a readable message for a file
that is not an image) and runs :func:`iwin_models.engine.inference.predict`, banded, so memory is bounded at any size.
One inference runs at a time per process (a lock, and one Gradio queue). The render functions make the
pictures: :func:`overlay_picture` (the blend of :mod:`iwin_models.apps.visualize`, with one class highlighted),
:func:`class_map_picture`, :func:`confidence_picture` (the top softmax score), :func:`legend_html` (the lines
of :func:`iwin_models.apps.visualize.legend_entries`). Large photos are shown downscaled (:data:`PREVIEW_EDGE`);
the downloads (the label PNG of class indices and the overlay PNG) are full size, written atomically.

The second, :func:`build_app` and :func:`serve`, only wires Gradio components to the first. Gradio is imported
there, lazily (``import iwin_models.apps.demo`` does not import it): ``pip install 'iwin-models[demo]'``. Nothing
is fetched from outside the machine: Gradio's analytics and version check are off
(``GRADIO_ANALYTICS_ENABLED=False``, ``analytics_enabled=False``, and so Hugging Face telemetry), the theme's
fonts are the system's, the page loads no CDN script, and the server never shares a link (``share=False``).
"""
from __future__ import annotations

import base64
import binascii
import dataclasses
import html
import inspect
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from ...engine.inference import input_sizes
from ...io import images
from ...models.weights import ADE20K_PROTOCOL, SEGMENTERS, EvalProtocol
from .. import visualize

__all__ = ["ModelChoice", "DemoResult", "DemoSession", "PhotoError", "PROTOCOLS", "default_choices",
           "registered_choices", "read_photo", "overlay_picture", "class_map_picture", "confidence_picture",
           "legend_html", "info_markdown", "build_app", "serve"]

TITLE = "Iwin Transformer: semantic segmentation (ADE20K)"
PROTOCOLS = {  # the page's protocol choices -> predict()'s arguments
    "whole": dict(aug=False, slide=False),
    "slide": dict(aug=False, slide=True),
    "multi-scale + flip": dict(aug=True, slide=False),
}
PREVIEW_EDGE = 2048  # the pictures on the page: long edge at most this (the downloads are full size)
MAX_PIXELS = 100_000_000  # a photo over this many pixels (header) is refused before decoding
MAX_FILE_SIZE = "100mb"  # Gradio refuses larger uploads
KEEP_RESULTS = 16  # results kept for re-rendering (photo and class map: ~4 bytes a pixel each), newest first
KEEP_FOLDERS = 32  # download folders kept on disk (older ones are removed)
DIM = 0.3  # a highlighted class's overlay: the other pixels at this brightness
# The confidence pictures' colours (viridis at five stops): 0 -> dark purple ... 1 -> yellow.
CONFIDENCE_STOPS = ((68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37))
FONT = ["system-ui", "-apple-system", "Segoe UI", "Roboto", "Helvetica Neue", "Arial", "sans-serif"]
FONT_MONO = ["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "Liberation Mono", "monospace"]
CSS = """
#legend ul {list-style: none; padding: 1.9em 0 0 0; margin: 0; columns: 2;}
#legend li {margin: 2px 0; white-space: nowrap;}
#legend .swatch {display: inline-block; width: 14px; height: 14px; margin-right: 6px; vertical-align: -2px;
                 border: 1px solid #444;}
#status p, #note p {font-weight: 600; border-radius: 6px; padding: 6px 10px;}
#status p {color: #b91c1c; background: #fef2f2; border: 1px solid #fca5a5;}
#note p {color: #92400e; background: #fffbeb; border: 1px solid #fcd34d;}
.confidence-scale {display: flex; align-items: center; gap: 6px; font-size: 0.85em;}
.confidence-scale .bar {flex: 1; height: 12px; border: 1px solid #444;}
"""


class PhotoError(ValueError):
    """A photo the page cannot segment (missing, not an image, corrupt, too large): the message says why."""


# --- the model choices ---------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ModelChoice:
    """One entry of the page's model menu: what :func:`iwin_models.models.segmenters.load_segmenter` is given."""

    label: str
    model: str
    weights: str | None = None
    start: str = "official"
    protocol: EvalProtocol = ADE20K_PROTOCOL
    note: str = ""  # said next to each result of this model (random weights)


def registered_choices(download: bool = False) -> list[ModelChoice]:
    """The registered segmenters (T/S/B): with their official weights where the torch.hub cache has them (or
    ``download``: fetched there on first use), else with random weights and a note saying so."""
    from ...io.checkpoint import cached_path_for_url

    out = []
    for name, spec in SEGMENTERS.items():
        cached = Path(cached_path_for_url(spec.url))
        if download or cached.is_file():
            out.append(ModelChoice(spec.title, name, protocol=spec.protocol))
            continue
        note = (f"{spec.title} has RANDOM weights: its official checkpoint {spec.file_name} is not in the torch.hub "
                f"cache ({cached.parent}), so the classes below mean nothing. Download it there, or start "
                f"`iwin-seg demo --download`.")
        out.append(ModelChoice(f"{spec.title} (random weights)", name, start="random", protocol=spec.protocol,
                               note=note))
    return out


def command_line_choice(model: str, weights: str | None = None) -> ModelChoice | None:
    """The choice ``--model``/``--weights`` add (a folder, a weights file, a hub repository); None for a
    registered name alone (it is one of :func:`registered_choices`)."""
    if model in SEGMENTERS and weights is None:
        return None
    spec = SEGMENTERS.get(model)
    if weights is not None:
        label = f"{spec.title if spec else Path(model).name} + {Path(weights).name}"
    elif Path(model).exists():
        label = f"{Path(model).resolve().name} (local {'folder' if Path(model).is_dir() else 'file'})"
    else:
        label = f"{model} (hub)"
    return ModelChoice(label, str(model), None if weights is None else str(weights),
                       protocol=spec.protocol if spec else ADE20K_PROTOCOL)


def default_choices(model: str | None = None, weights: str | None = None,
                    download: bool = False) -> tuple[list[ModelChoice], str]:
    """The page's model menu and its selected entry: the command line's model first (when it adds one), then
    the registered segmenters (:func:`registered_choices`)."""
    registered = registered_choices(download)
    extra = command_line_choice(model, weights) if model else None
    if extra is not None:
        return [extra, *registered], extra.label
    default = next((c.label for c in registered if c.model == model), registered[0].label)
    return registered, default


# --- reading a photo -----------------------------------------------------------------------------

def _renamed(message: str, path: Path, name: str) -> str:
    """``message`` with the upload's temporary path written as the photo's own name."""
    return message.replace(str(path), name)


def read_photo(path: str | os.PathLike, name: str | None = None, max_pixels: int | None = MAX_PIXELS) -> np.ndarray:
    """The photo at ``path`` as RGB uint8 (EXIF orientation applied), as :func:`iwin_models.io.images.load_image`
    reads it; a :class:`PhotoError` naming the photo as ``name`` (its file name) when it is missing, not an
    image, corrupt, or over ``max_pixels`` (read from the header, before decoding)."""
    path = Path(path)
    name = name or path.name
    try:
        w, h = images.image_size(path)
    except Exception:  # noqa: BLE001 (not readable: load_image below says why, in its words)
        w = h = 0
    if max_pixels and w * h > max_pixels:
        raise PhotoError(f"{name} has {w} x {h} pixels ({w * h / 1e6:.0f} MP), over the limit of this page "
                         f"({max_pixels / 1e6:.0f} MP): downscale it first")
    try:
        return images.load_image(path)
    except (ValueError, TypeError, OSError) as e:  # unreadable, corrupt, too large for the package, gone
        raise PhotoError(_renamed(str(e), path, name)) from None


def photo_file(payload, folder: Callable[[], Path]) -> tuple[Path, str]:
    """(path, name) of the photo Gradio hands over unprocessed (its file data: ``path`` and ``orig_name``, or a
    ``data:`` URL, written to a file in ``folder()``); a :class:`PhotoError` when there is none."""
    if isinstance(payload, (str, os.PathLike)):
        return Path(payload), Path(payload).name
    if not payload or not (payload.get("path") or payload.get("url")):
        raise PhotoError("no photo: upload one, drag it onto the photo box, paste it, or pick the sample")
    name = payload.get("orig_name") or Path(payload.get("path") or "photo").name
    if payload.get("path"):
        return Path(payload["path"]), name
    url = payload["url"]
    if not url.startswith("data:") or "," not in url:
        raise PhotoError(f"{name}: the page sent no file")
    try:
        data = base64.b64decode(url.split(",", 1)[1], validate=False)
    except (binascii.Error, ValueError) as e:
        raise PhotoError(f"{name}: the page sent an unreadable photo ({e})") from None
    path = folder() / "pasted"
    path.write_bytes(data)
    return path, name


# --- pictures ------------------------------------------------------------------------------------

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


# --- segmenting ----------------------------------------------------------------------------------

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


class DemoSession:
    """The page's state shared by every visitor: the model choices, the models built so far (each on first use,
    on ``device``, converted once to the CPU fast twins unless ``fast`` is False), one inference at a time
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

    def model(self, label: str):
        """The model of choice ``label``, built and converted on first use (under the lock)."""
        from ...fast import with_cpu_twins
        from ...models.segmenters import load_segmenter

        if label not in self.choices:
            raise ValueError(f"no model choice {label!r}: {', '.join(self.choices)}")
        with self._lock:
            if label not in self._models:
                choice = self.choices[label]
                model = load_segmenter(choice.model, choice.weights, device=self.device, start=choice.start,
                                       warn=False)
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
        model_key = model_key or self.default
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


def info_markdown(result: DemoResult) -> str:
    """The line under a result: the photo's size, the model's input size(s), the settings and the seconds."""
    w, h = result.size
    sizes = result.input_sizes
    model_size = (f"{sizes[0][1]} x {sizes[0][0]}" if len(sizes) == 1 else
                  f"{len(sizes)} scales, {sizes[0][1]} x {sizes[0][0]} to {sizes[-1][1]} x {sizes[-1][0]}")
    shown = "" if result.shown_labels.shape == result.labels.shape else (
        f" (shown at {result.shown_labels.shape[1]} x {result.shown_labels.shape[0]}; downloads full size)")
    s = result.seconds
    return (f"**{html.escape(result.name)}**: {w} x {h} pixels ({w * h / 1e6:.1f} MP){shown}; model input "
            f"{model_size}; {html.escape(result.model)}, {result.protocol}, {result.precision}; "
            f"**{s['total']:.2f} s** (model {s['model']:.2f} s, reading {s['read']:.2f} s); mean confidence "
            f"{result.mean_confidence:.2f}")


def highlight_choices(result: DemoResult) -> list[tuple[str, int]]:
    """The highlight menu: every class of the legend (``-1``: none)."""
    return [("none (all classes)", -1)] + [(text, i) for i, text in result.legend if i is not None]


# --- the Gradio page -----------------------------------------------------------------------------

def _gradio():
    """Gradio, imported with its analytics, version check and Hugging Face telemetry off (read at import and
    at ``Blocks()``: set before both)."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    import gradio as gr

    return gr


def _accepted(function, **kwargs) -> dict:
    """Those of ``kwargs`` that ``function`` takes (Gradio 5 and 6 differ: theme and css moved to launch())."""
    parameters = inspect.signature(function).parameters
    return {k: v for k, v in kwargs.items() if k in parameters}


def _style(gr) -> dict:
    """The page's theme (system fonts only: nothing loaded from outside) and CSS."""
    theme = gr.themes.Default(font=FONT, font_mono=FONT_MONO)
    return dict(theme=theme, css=CSS)


def build_app(session: DemoSession | None = None, *, title: str = TITLE):
    """The demo page as a ``gr.Blocks`` (not served: see :func:`serve`); ``session`` (default: the registered
    segmenters) holds the models. The session is ``app.iwin_session``."""
    gr = _gradio()
    session = session if session is not None else DemoSession()
    style = _style(gr)
    at_launch = int(gr.__version__.split(".")[0]) >= 6  # Gradio 6 takes theme and css at launch(), 5 at Blocks()
    blocks_kwargs = {} if at_launch else style
    with gr.Blocks(title=title, analytics_enabled=False, delete_cache=(3600, 3600), **blocks_kwargs) as app:
        ui = _layout(gr, session, title)
        _wire(gr, session, ui)
    app.queue(default_concurrency_limit=1)
    app.iwin_session, app.iwin_ui = session, ui
    app.iwin_launch = style if at_launch else {}
    return app


def _layout(gr, session: DemoSession, title: str) -> dict:
    """The components, by name."""
    from ...data import SAMPLE_IMAGE

    ui = {}
    gr.Markdown(f"## {title}\nUpload, drag or paste a photo (or pick the sample), then **Segment**.")
    with gr.Row():
        with gr.Column(scale=1):
            ui["photo"] = gr.Image(label="Photo", type="filepath", image_mode=None, sources=["upload", "clipboard"],
                                   elem_id="photo", height=320)
            gr.Examples(examples=[[str(SAMPLE_IMAGE)]], inputs=[ui["photo"]], label="Sample")
            ui["model"] = gr.Dropdown(list(session.choices), value=session.default, label="Segmenter",
                                      elem_id="model")
            ui["protocol"] = gr.Radio(list(PROTOCOLS), value="whole", label="Protocol", elem_id="protocol")
            ui["precision"] = gr.Radio(list(session.precisions), value=session.precision, label="Precision",
                                       elem_id="precision")
            ui["run"] = gr.Button("Segment", variant="primary", elem_id="run")
            ui["status"] = gr.Markdown("", elem_id="status")  # what is wrong with the photo, under the button
        with gr.Column(scale=2):
            ui["note"] = gr.Markdown("", elem_id="note")  # random weights, next to the result
            ui["info"] = gr.Markdown("", elem_id="info")
            ui.update(_results(gr))
    ui["state"] = gr.State(None)  # the key of the visitor's last result (DemoSession.keep)
    return ui


def _results(gr) -> dict:
    """The result's components: overlay and its controls, class map, confidence, legend, downloads."""
    ui = {}
    ui["overlay"] = gr.Image(label="Overlay", type="numpy", format="png", interactive=False, elem_id="overlay")
    with gr.Row():
        ui["opacity"] = gr.Slider(0, 1, value=0.5, step=0.05, label="Opacity", elem_id="opacity")
        ui["highlight"] = gr.Dropdown([("none (all classes)", -1)], value=-1, label="Highlight a class",
                                      elem_id="highlight")
    ui["legend"] = gr.HTML("", label="Classes present (share of the pixels)", show_label=True,
                           container=True, elem_id="legend")
    with gr.Row():
        ui["class_map"] = gr.Image(label="Class map", type="numpy", format="png", interactive=False,
                                   elem_id="class_map")
        with gr.Column():
            ui["confidence"] = gr.Image(label="Confidence (top softmax score)", type="numpy", format="png",
                                        interactive=False, elem_id="confidence")
            gr.HTML(confidence_scale_html(), elem_id="confidence_scale")
    ui["downloads"] = gr.File(label="Downloads (full size: label PNG of class indices, overlay PNG)",
                              file_count="multiple", interactive=False, elem_id="downloads")
    return ui


def _wire(gr, session: DemoSession, ui: dict) -> None:
    """The events: Segment runs the model (one at a time, queued); opacity and highlight only re-render."""
    run_outputs = [ui[k] for k in ("overlay", "class_map", "confidence", "legend", "highlight", "downloads", "info",
                                   "note", "status", "state")]
    # preprocess=False: gr.Image would open the upload with PIL before our code runs (a corrupt file or an
    # oversize photo would then end in Gradio's bare "Error", and a JPEG's EXIF would be applied by Gradio as
    # well as by load_image); unprocessed, the handler gets the uploaded file's data (path, orig_name), which
    # Gradio has checked is one of its uploads, and reads it as `iwin-seg predict` does.
    ui["run"].click(lambda *a: handle_run(gr, session, *a), preprocess=False, concurrency_id="inference",
                    concurrency_limit=1, api_name="segment", outputs=run_outputs,
                    inputs=[ui[k] for k in ("photo", "model", "protocol", "precision", "opacity")])
    render = dict(fn=lambda *a: handle_render(gr, session, *a), outputs=[ui["overlay"], ui["downloads"]],
                  inputs=[ui["state"], ui["opacity"], ui["highlight"]], concurrency_id="render", concurrency_limit=1)
    ui["opacity"].release(**render, api_name="opacity")
    ui["highlight"].input(**render, api_name="highlight")


def handle_run(gr, session: DemoSession, photo, model_key, protocol, precision, opacity) -> tuple:
    """Segment: the outputs of a result (and its model's note), or on a photo that cannot be segmented the outputs
    cleared, the reason in the status line under the button and a toast (the server goes on serving)."""
    try:
        path, name = photo_file(photo, session.new_folder)
        result = session.run_segmentation(path, model_key, protocol, precision, name=name)
        opacity = float(opacity)
        files = [str(p) for p in session.downloads(result, opacity)]
    except (ValueError, TypeError, OSError, RuntimeError) as e:
        message = str(e) if isinstance(e, PhotoError) else f"cannot segment this photo: {e}"
        gr.Warning(message, **_accepted(gr.Warning, title="Cannot segment"))
        cleared = gr.update(choices=[("none (all classes)", -1)], value=-1)
        return None, None, None, "", cleared, None, "", "", f"**Error:** {html.escape(message)}", None
    note = f"**Warning:** {html.escape(result.note)}" if result.note else ""
    return (overlay_picture(result.shown_image, result.shown_labels, result.palette, opacity),
            class_map_picture(result.shown_labels, result.palette), result.confidence,
            legend_html(result.legend, result.palette), gr.update(choices=highlight_choices(result), value=-1),
            files, info_markdown(result), note, "", session.keep(result))


def handle_render(gr, session: DemoSession, key: str | None, opacity, highlight) -> tuple:
    """The overlay again at another opacity or highlight (no model run), and its download; unchanged, with a
    toast, once the result is no longer kept."""
    result = session.result(key)
    if result is None:
        if key:
            gr.Warning(f"this result is no longer kept (the server keeps the last {KEEP_RESULTS}): press Segment again")
        return gr.update(), gr.update()
    highlight = None if highlight is None or int(highlight) < 0 else int(highlight)
    shown = overlay_picture(result.shown_image, result.shown_labels, result.palette, float(opacity), highlight)
    return shown, [str(p) for p in session.downloads(result, float(opacity), highlight)]


def serve(app, host: str | None = "127.0.0.1", port: int | None = 7860, *, max_file_size: str | int = MAX_FILE_SIZE,
          block: bool = True, quiet: bool = True) -> str:
    """Serve ``app`` (from :func:`build_app`) on ``host``:``port`` (None: Gradio's default, or
    ``GRADIO_SERVER_NAME``/``GRADIO_SERVER_PORT`` as a Space sets them): never a share link, errors shown, uploads
    up to ``max_file_size``. Returns the local URL; with ``block`` it serves until Ctrl-C first."""
    gr = _gradio()
    options = dict(server_name=host, server_port=port, share=False, show_error=True, max_file_size=max_file_size,
                   ssr_mode=False, quiet=quiet, prevent_thread_lock=True, **getattr(app, "iwin_launch", {}))
    app.launch(**_accepted(gr.Blocks.launch, **options))
    url = app.local_url
    if block:
        print(f"iwin-seg demo: serving {url} (Ctrl-C stops)", flush=True)
        app.block_thread()
    return url
