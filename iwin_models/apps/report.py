"""The evaluation report: one self-contained HTML page of an :func:`iwin_models.engine.evaluation.evaluate` result
(``iwin-seg eval --report DIR``).

``DIR/index.html`` holds, in this order: the summary line and the settings; the per-class IoU and accuracy
chart, sorted by IoU; the confusion matrix of the classes most often confused (rows normalised by the
labelled area of their class); the images of lowest pixel accuracy as image | ground truth | prediction;
and the per-class table with the figures :func:`~iwin_models.engine.evaluation.format_results` prints. Every
figure is a PNG inside the page (``data:`` URI), the style is inline and there is no script, so the page
opens anywhere, offline, and can be mailed as one file; the two charts are also written beside it
(``per_class.png``, ``confusion.png``).

Plots need matplotlib (``pip install 'iwin-models[report]'``): imported here only when a chart is drawn,
with ``matplotlib.figure.Figure`` and the Agg canvas, never pyplot, so the user's backend is left alone.
"""
from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from ..data import ade20k
from ..engine.evaluation import WorstImage, _raw_sample, percent, summary_line
from ..extras import require
from ..io.files import write_atomic
from .visualize import classes_by_area, colorize

__all__ = ["write_report", "require_report", "most_confused", "class_chart", "confusion_chart", "worst_panels",
           "full_palette", "CONFUSED", "PAGE_EDGE"]

CONFUSED = 20  # classes in the confusion figure: 20x20 cells stay readable with their names on both axes
PAGE_EDGE = 512  # long edge of a worst image's panels on the page: enough to see the errors, a small page
LEGEND_MIN_SHARE = 0.01  # a worst image's legend lists the classes covering 1% of its labels or prediction
DPI = 100
TABLE_ROWS = 50  # rows of one column of the per-class table


def require_report() -> None:
    """Raise a one-line ImportError with ``pip install 'iwin-models[report]'`` unless matplotlib is installed.
    ``iwin-seg eval --report`` calls it before loading the model."""
    require("report", "matplotlib", purpose="the evaluation report")


def write_report(result: Mapping, dataset, out_dir: str | Path, *, class_names: Sequence[str] | None = None,
                 palette: Sequence[Sequence[int]] | None = None, title: str = "Evaluation report",
                 settings: Mapping[str, object] | None = None, confused: int = CONFUSED) -> Path:
    """Write ``out_dir/index.html`` (and the charts as PNGs beside it) from ``evaluate``'s ``result``;
    returns the page's path.

    ``dataset`` is the one evaluated: the worst images (``result["worst"]``) are read from it again.
    ``class_names`` and ``palette`` default to the data set's (palette: else ADE20K's, extended with
    fixed colours when there are more classes); ``settings`` (name: value) are listed under the title;
    ``confused`` is how many classes the confusion figure shows.
    """
    require_report()
    names = _class_names(result, dataset, class_names)
    colours = full_palette(palette if palette is not None else getattr(dataset, "palette", None), len(names))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    chart = class_chart(result, names)
    picked = most_confused(result["confusion"], confused) if "confusion" in result else []
    matrix = confusion_chart(result["confusion"], names, picked) if picked else None
    for file, png in (("per_class.png", chart), ("confusion.png", matrix)):
        if png is not None:
            write_atomic(out / file, lambda tmp, png=png: Path(tmp).write_bytes(png))
        else:  # not one left from an earlier report of another result
            (out / file).unlink(missing_ok=True)
    worst = [_worst_entry(w, dataset, names, colours) for w in result.get("worst", [])]
    page = _page(title, result, names, settings or {}, chart, (matrix, [names[i] for i in picked]), worst)
    return write_atomic(out / "index.html", lambda tmp: Path(tmp).write_text(page, encoding="utf-8"))


def _class_names(result: Mapping, dataset, class_names: Sequence[str] | None) -> list[str]:
    n = len(result["IoU"])
    names = class_names if class_names is not None else getattr(dataset, "class_names", None)
    names = [str(c).strip() for c in names] if names is not None else [f"class {i}" for i in range(n)]
    if len(names) != n:
        raise ValueError(f"{len(names)} class names for a result of {n} classes")
    return names


def full_palette(palette: Sequence[Sequence[int]] | None, num_classes: int) -> np.ndarray:
    """``palette`` (default ADE20K's) as uint8 (num_classes, 3), extended with fixed random colours if short."""
    base = np.asarray(palette if palette is not None else ade20k.PALETTE, dtype=np.uint8).reshape(-1, 3)
    if len(base) >= num_classes:
        return base[:num_classes]
    extra = np.random.default_rng(0).integers(0, 256, (num_classes - len(base), 3), dtype=np.uint8)
    return np.concatenate([base, extra])


# --- charts (matplotlib, imported here only) --------------------------------------------------------

def _png_of(fig) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)  # the Agg canvas of this figure only; pyplot and the global backend are not touched
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    return buf.getvalue()


def _by_iou(iou: np.ndarray, acc: np.ndarray) -> list[int]:
    """Classes by IoU, highest first (equal IoU: by Acc, then index); classes without an IoU (never labelled
    nor predicted) last."""
    return sorted(range(len(iou)), key=lambda i: (np.isnan(iou[i]), -np.nan_to_num(iou[i]), -np.nan_to_num(acc[i]), i))


def class_chart(result: Mapping, names: Sequence[str]) -> bytes:
    """Horizontal bars of IoU and Acc per class, sorted by IoU (PNG). One row per class at any class count:
    150 rows make a tall figure with small type, each name still beside its bars."""
    from matplotlib.figure import Figure

    order = _by_iou(result["IoU"], result["Acc"])
    n = len(order)
    fig = Figure(figsize=(9.5, 1.2 + 0.15 * n))
    ax = fig.add_subplot()
    y = np.arange(n)
    for values, shift, colour, label in ((result["IoU"], -0.2, "#3b6fb6", "IoU"),
                                         (result["Acc"], 0.2, "#f0a030", "Acc")):
        ax.barh(y + shift, 100 * np.nan_to_num(np.asarray(values)[order]), height=0.4, color=colour, label=label)
    ax.set_yticks(y, [names[i] + (" (n/a)" if np.isnan(result["IoU"][i]) else "") for i in order],
                  fontsize=8 if n <= 40 else 7)
    ax.set_ylim(n - 0.5, -0.5)  # best at the top
    ax.set_xlim(0, 100)
    ax.set_xlabel("%")
    ax.tick_params(axis="x", labeltop=True, top=True)  # a tall chart needs its scale at both ends
    ax.xaxis.grid(True, color="#dddddd")
    ax.set_axisbelow(True)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(f"Per-class IoU and accuracy, sorted by IoU ({n} classes)", fontsize=10)
    return _png_of(fig)


def most_confused(confusion: np.ndarray, k: int = CONFUSED) -> list[int]:
    """The (at most) ``k`` classes with the most confused pixels (labelled as them and predicted otherwise, plus
    predicted as them and labelled otherwise), most first, ties by index; classes never confused are left out."""
    off = np.asarray(confusion, dtype=np.int64).copy()
    np.fill_diagonal(off, 0)
    mass = off.sum(0) + off.sum(1)
    order = np.argsort(-mass, kind="stable")[:k]
    return [int(i) for i in order if mass[i] > 0]


def confusion_chart(confusion: np.ndarray, names: Sequence[str], classes: Sequence[int]) -> bytes:
    """The confusion matrix of ``classes`` (PNG): rows the ground truth, columns the prediction, each row
    divided by its class's whole labelled area (so a row sums to less than 1 where pixels went to classes
    not shown); blank rows: classes predicted but never labelled."""
    from matplotlib.figure import Figure

    confusion = np.asarray(confusion, dtype=np.float64)
    area = confusion.sum(1)[list(classes)]
    with np.errstate(divide="ignore", invalid="ignore"):
        share = confusion[np.ix_(classes, classes)] / np.where(area > 0, area, np.nan)[:, None]
    k = len(classes)
    fig = Figure(figsize=(2.5 + 0.42 * k, 2 + 0.38 * k))
    ax = fig.add_subplot()
    import matplotlib

    cmap = matplotlib.colormaps["Blues"].with_extremes(bad="#dddddd")  # grey rows: never labelled
    shown = ax.imshow(share, cmap=cmap, vmin=0, vmax=1)
    labels = [names[i] for i in classes]
    ax.set_xticks(range(k), labels, rotation=90, fontsize=8)
    ax.set_yticks(range(k), [f"{names[i]} (not labelled)" if a == 0 else names[i] for i, a in zip(classes, area)],
                  fontsize=8)
    ax.set_xlabel("prediction")
    ax.set_ylabel("ground truth")
    _annotate(ax, share)
    fig.colorbar(shown, ax=ax, fraction=0.04, pad=0.02, label="share of the row class's labelled pixels")
    ax.set_title(f"The {k} most confused classes", fontsize=10)
    return _png_of(fig)


def _annotate(ax, share: np.ndarray) -> None:
    """Percentages in the cells of 1% and more (smaller ones would only clutter), white on dark cells."""
    for (r, c), v in np.ndenumerate(share):
        if np.isfinite(v) and v >= 0.01:
            ax.text(c, r, f"{100 * v:.0f}", ha="center", va="center", fontsize=7,
                    color="white" if v > 0.5 else "black")


# --- the worst images ----------------------------------------------------------------------------

def _fit(array: np.ndarray, edge: int, resample) -> np.ndarray:
    """``array`` scaled down so its long edge is at most ``edge`` (smaller images are kept as they are)."""
    h, w = array.shape[:2]
    scale = edge / max(h, w)
    if scale >= 1:
        return array
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(array).resize(size, resample))


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _painted(classes: np.ndarray, palette: np.ndarray, ignored: np.ndarray) -> np.ndarray:
    """Class colours; ignored pixels (and classes beyond the palette) black."""
    rgb = colorize(np.where(ignored, 0, classes), palette)
    rgb[ignored | (classes >= len(palette))] = 0
    return rgb


def worst_panels(image: np.ndarray, label: np.ndarray, pred: np.ndarray, palette: np.ndarray,
                 ignore_index: int = ade20k.IGNORE_INDEX, edge: int = PAGE_EDGE) -> list[bytes]:
    """The image, its ground truth and the prediction as three PNGs, long edge at most ``edge``."""
    nearest, smooth = Image.Resampling.NEAREST, Image.Resampling.BILINEAR  # class maps keep their classes
    return [_png(_fit(np.asarray(image, dtype=np.uint8), edge, smooth)),
            _png(_fit(_painted(label, palette, label == ignore_index), edge, nearest)),
            _png(_fit(_painted(pred, palette, np.zeros(pred.shape, bool)), edge, nearest))]


def _legend(label: np.ndarray, pred: np.ndarray, names: Sequence[str], palette: np.ndarray) -> list[tuple[str, str]]:
    """(colour, name) of the classes covering 1% or more of the labels or of the prediction, largest first."""
    present = dict(classes_by_area(label, len(names)))
    for i, share in classes_by_area(pred, len(names)):
        present[i] = max(share, present.get(i, 0.0))
    shown = sorted((i for i, s in present.items() if s >= LEGEND_MIN_SHARE), key=lambda i: (-present[i], i))
    return [("#" + "".join(f"{int(c):02x}" for c in palette[i]), names[i]) for i in shown]


def _worst_entry(worst: WorstImage, dataset, names: Sequence[str], palette: np.ndarray) -> tuple:
    """(worst, its three panels, its legend), the image read once from the data set (without its transform)."""
    image, label = _raw_sample(dataset, worst.index)
    label, pred = np.asarray(label), worst.prediction_map()
    ignore_index = getattr(dataset, "ignore_index", ade20k.IGNORE_INDEX)
    return worst, worst_panels(image, label, pred, palette, ignore_index), _legend(label, pred, names, palette)


# --- the page ------------------------------------------------------------------------------------

STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px auto; max-width: 1100px; color: #222; padding: 0 12px; }
h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 18px; margin-top: 32px; border-bottom: 1px solid #ccc; }
.summary { font: 15px monospace; background: #f4f4f4; padding: 6px 10px; white-space: pre-wrap; }
table { border-collapse: collapse; } td, th { padding: 2px 10px; border-bottom: 1px solid #eee; }
td.num, th.num { text-align: right; font-family: monospace; }
.settings td:first-child { color: #666; }
img.chart { max-width: 100%; }
.worst { margin: 18px 0; } .worst h3 { font-size: 15px; margin: 4px 0; }
.panels { display: grid; grid-template-columns: repeat(3, 1fr); gap: 6px; }
.panels figure { margin: 0; } .panels img { width: 100%; image-rendering: pixelated; }
.panels figcaption { font-size: 12px; color: #666; text-align: center; }
.legend span.sw { display: inline-block; width: 11px; height: 11px; border: 1px solid #444;
  margin: 0 3px 0 10px; vertical-align: middle; }
.legend { font-size: 12px; } .legend .entry { white-space: nowrap; }
.tables { display: flex; flex-wrap: wrap; gap: 0 40px; align-items: flex-start; }
"""


def _img(png: bytes, alt: str, css: str = "chart") -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img class="{css}" alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _page(title: str, result: Mapping, names: Sequence[str], settings: Mapping, chart: bytes,
          confusion: tuple[bytes | None, list[str]], worst: list) -> str:
    parts = [f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>",
             f"<style>{STYLE}</style></head><body>", f"<h1>{html.escape(title)}</h1>",
             f'<p class="summary">{html.escape(summary_line(result))}</p>', _settings(settings),
             "<h2>Per-class IoU and accuracy</h2>", _img(chart, "per-class IoU and accuracy, sorted by IoU"),
             _confusion_section(*confusion), _worst_section(worst), _table(result, names), "</body></html>\n"]
    return "\n".join(p for p in parts if p)


def _settings(settings: Mapping) -> str:
    if not settings:
        return ""
    rows = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>"
                   for k, v in settings.items())
    return f'<table class="settings">{rows}</table>'


def _confusion_section(png: bytes | None, classes: list[str]) -> str:
    head = "<h2>Most confused classes</h2>"
    if png is None:
        return head + "<p>No pixel was confused: nothing to show.</p>"
    listed = ", ".join(html.escape(c) for c in classes)
    return (f'{head}<figure class="confusion">{_img(png, "confusion matrix of the most confused classes")}'
            f'<figcaption>Rows: ground truth, normalised by the class\'s labelled area; columns: prediction; '
            f'cells in percent. Classes, most confused first: <span class="classes">{listed}</span>'
            f'</figcaption></figure>')


def _worst_section(worst: list) -> str:
    if not worst:
        return ""
    blocks = [f"<h2>The {len(worst)} images of lowest pixel accuracy</h2>"
              "<p>Ignored pixels are black in the ground truth.</p>"]
    for rank, (w, panels, legend) in enumerate(worst, 1):
        raw = w.name if w.name is not None else f"image {w.index}"
        name = html.escape(raw)
        figures = "".join(f"<figure>{_img(png, f'{what} of {raw}', 'panel')}<figcaption>{what}</figcaption></figure>"
                          for png, what in zip(panels, ("image", "ground truth", "prediction")))
        swatches = "".join(f'<span class="entry"><span class="sw" style="background:{c}"></span>{html.escape(n)}</span>'
                           for c, n in legend)
        blocks.append(f'<section class="worst"><h3>{rank}. {name} (#{w.index}): pixel accuracy '
                      f'{percent(w.accuracy)}%</h3><div class="panels">{figures}</div>'
                      f'<div class="legend">{swatches}</div></section>')
    return "\n".join(blocks)


def _table(result: Mapping, names: Sequence[str]) -> str:
    """The per-class table of ``format_results``, same figures (IoU, Acc in percent, nan), same order; in
    columns of up to TABLE_ROWS rows side by side, so 150 classes do not make a page-long strip."""
    rows = [f'<tr><td>{html.escape(n)}</td><td class="num">{percent(i)}</td><td class="num">{percent(a)}</td></tr>'
            for n, i, a in zip(names, result["IoU"], result["Acc"])]
    head = '<tr><th>Class</th><th class="num">IoU</th><th class="num">Acc</th></tr>'
    tables = "".join(f'<table class="classes">{head}{"".join(rows[a:a + TABLE_ROWS])}</table>'
                     for a in range(0, len(rows), TABLE_ROWS))
    return (f'<h2>Per-class table</h2><div class="tables">{tables}</div>'
            f'<p class="summary">{html.escape(summary_line(result))}</p>')
