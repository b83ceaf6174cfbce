"""mIoU evaluation as mmseg computes it, on one or many processes (the command is :mod:`iwin_models.apps.cli.eval`).

Per class, the intersection, union, predicted area and labelled area (pixels whose label is not the
ignore index) are summed over the whole data set; then ``IoU = I / U`` and ``Acc = I / label area``
per class, ``mIoU`` and ``mAcc`` their means over the classes where they are defined (NaN skipped),
and ``aAcc = sum(I) / sum(label area)``. The sums are integers, so the figures are the same whether
one process or many (``torchrun``, each taking every N-th image) computed them.

The four sums are read off the confusion matrix (rows: label, columns: prediction; ignored pixels left
out), which the metric keeps too: :mod:`iwin_models.apps.report` draws its most confused classes. With
``report_worst=N``, :func:`evaluate` also keeps the N images of lowest pixel accuracy (:class:`WorstImage`,
their predictions as PNG bytes), gathered over the processes.
"""
from __future__ import annotations

import heapq
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from ..data import ade20k
from .distributed import gather, raise_if_any_failed, world

__all__ = ["IoUMetric", "WorstImage", "evaluate", "format_results", "summary_line", "json_ready", "percent",
           "merge_worst"]


def _as_long(x, what: str) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{what} must be a numpy array or tensor, got {type(x).__name__}")
    if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
        raise TypeError(f"{what} must hold integer class indices, got dtype {x.dtype}")
    return x.reshape(-1).to(torch.int64)


class IoUMetric:
    """Accumulates per-class intersection, union, predicted and labelled areas (int64, on the CPU).

    ``update(pred, target)`` takes class maps of the same shape (numpy or tensor, any batch shape);
    pixels whose target is ``ignore_index`` are left out. ``compute()`` gives the figures (see the
    module docstring) as a dict: ``aAcc``, ``mIoU``, ``mAcc`` (floats in [0, 1]), ``IoU``, ``Acc``
    (float64 arrays, NaN for classes where they are undefined), the four sums ``area_intersect``,
    ``area_union``, ``area_pred``, ``area_label`` (int64 arrays), ``confusion`` (int64 (C, C): pixels of
    label ``i`` predicted ``j``; its diagonal, row and column sums are the intersection, label and predicted
    areas) and ``num_images`` (update calls). ``update`` returns the image's (correct, labelled) pixel counts.
    ``compute(sync=True)`` first sums the accumulators over all processes when ``torch.distributed``
    is initialised (every process must call it); :meth:`reduce` gives a new metric holding those
    sums. The metric itself is never changed by them.
    """

    def __init__(self, num_classes: int, ignore_index: int = ade20k.IGNORE_INDEX):
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.reset()

    def reset(self) -> None:
        zeros = lambda: torch.zeros(self.num_classes, dtype=torch.int64)
        self.area_intersect, self.area_union, self.area_pred, self.area_label = zeros(), zeros(), zeros(), zeros()
        self.confusion = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)
        self.num_samples = 0  # update() calls (images)

    def __repr__(self) -> str:
        return f"IoUMetric(num_classes={self.num_classes}, ignore_index={self.ignore_index}, " \
               f"pixels={int(self.area_label.sum())})"

    @torch.no_grad()
    def update(self, pred, target) -> tuple[int, int]:
        pred, target = _as_long(pred, "pred"), _as_long(target, "target")
        if pred.numel() != target.numel():
            raise ValueError(f"pred and target differ in size: {pred.numel()} vs {target.numel()} pixels")
        pred, target = pred.cpu(), target.cpu()
        keep = target != self.ignore_index
        pred, target = pred[keep], target[keep]
        n = self.num_classes
        if target.numel() and (target.min() < 0 or target.max() >= n):
            bad = torch.unique(target[(target < 0) | (target >= n)])[:8].tolist()
            raise ValueError(f"target has values outside 0..{n - 1} (ignore {self.ignore_index}): {bad}")
        if pred.numel() and (pred.min() < 0 or pred.max() >= n):
            bad = torch.unique(pred[(pred < 0) | (pred >= n)])[:8].tolist()
            raise ValueError(f"pred has values outside 0..{n - 1}: {bad}")
        # one pass over the pixels: every sum is a reduction of this image's confusion matrix
        confusion = torch.bincount(target * n + pred, minlength=n * n).view(n, n)
        area_pred, area_label, area_intersect = confusion.sum(0), confusion.sum(1), confusion.diagonal()
        self.confusion += confusion
        self.area_intersect += area_intersect
        self.area_union += area_pred + area_label - area_intersect
        self.area_pred += area_pred
        self.area_label += area_label
        self.num_samples += 1
        return int(area_intersect.sum()), int(target.numel())

    def _flat(self) -> torch.Tensor:
        return torch.cat([self.area_intersect, self.area_union, self.area_pred, self.area_label,
                          self.confusion.reshape(-1), torch.tensor([self.num_samples], dtype=torch.int64)])

    def reduce(self) -> IoUMetric:
        """A new metric with the accumulators summed over all processes (a copy without distributed)."""
        totals = self._flat().clone()
        _, world_size = world()
        if world_size > 1:
            backend = dist.get_backend()
            device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
            buf = totals.to(device)
            dist.all_reduce(buf, op=dist.ReduceOp.SUM)
            totals = buf.cpu()
        out = IoUMetric(self.num_classes, self.ignore_index)
        n = self.num_classes
        out.area_intersect, out.area_union, out.area_pred, out.area_label = (
            totals[i * n:(i + 1) * n].clone() for i in range(4))
        out.confusion = totals[4 * n:4 * n + n * n].clone().view(n, n)  # one all-reduce carries everything
        out.num_samples = int(totals[-1])
        return out

    def compute(self, sync: bool = False) -> dict:
        m = self.reduce() if sync else self
        inter = m.area_intersect.numpy().copy()
        union = m.area_union.numpy().copy()
        label = m.area_label.numpy().copy()
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = np.where(union > 0, inter / np.maximum(union, 1), np.nan)
            acc = np.where(label > 0, inter / np.maximum(label, 1), np.nan)
        total = int(label.sum())
        return dict(
            aAcc=float(inter.sum() / total) if total else math.nan,
            mIoU=_nanmean(iou), mAcc=_nanmean(acc), IoU=iou, Acc=acc,
            area_intersect=inter, area_union=union, area_pred=m.area_pred.numpy().copy(), area_label=label,
            confusion=m.confusion.numpy().copy(), num_images=m.num_samples,
        )


def _nanmean(values: np.ndarray) -> float:
    valid = values[~np.isnan(values)]
    return float(valid.mean()) if valid.size else math.nan


@dataclass(frozen=True)
class WorstImage:
    """One of the images of lowest pixel accuracy that ``evaluate(report_worst=N)`` keeps.

    ``index`` in the data set, ``name`` (its image file's name, None when the data set has no files),
    ``accuracy`` (correct / labelled pixels), ``labelled`` (pixels not ignored) and ``prediction``: the
    predicted class map as PNG bytes (8-bit up to 256 classes, else 16-bit), small to keep and to gather;
    :meth:`prediction_map` decodes it.
    """

    index: int
    name: str | None
    accuracy: float
    labelled: int
    prediction: bytes

    def prediction_map(self) -> np.ndarray:
        """The predicted class map, int64 (H, W)."""
        from PIL import Image

        with Image.open(io.BytesIO(self.prediction)) as img:
            return np.asarray(img).astype(np.int64)


def _png_bytes(classes: np.ndarray, num_classes: int) -> bytes:
    from PIL import Image

    dtype = np.uint8 if num_classes <= 256 else np.uint16
    buf = io.BytesIO()
    Image.fromarray(np.asarray(classes).astype(dtype)).save(buf, format="PNG", compress_level=1)  # speed over size
    return buf.getvalue()


def _sample_name(dataset, index: int) -> str | None:
    files = getattr(dataset, "files", None)  # our data sets: (image path, label path) pairs
    try:
        return Path(files[index][0]).name if files is not None else None
    except (IndexError, TypeError, KeyError):
        return None


class _WorstImages:
    """The ``n`` images of lowest pixel accuracy seen so far, ties to the lower index (so one process and many
    pick the same). A heap whose top is the best of those kept: a map is encoded only when it enters, and at
    most ``n`` are held, besides the one being offered."""

    def __init__(self, n: int, num_classes: int):
        self.n, self.num_classes, self.heap = int(n), num_classes, []

    def offer(self, dataset, index: int, correct: int, labelled: int, pred: np.ndarray) -> None:
        if self.n <= 0 or labelled == 0:  # an image with no labelled pixel has no accuracy to rank
            return
        accuracy = correct / labelled
        key = (-accuracy, -index)  # the heap's top is the largest (accuracy, index) kept
        if len(self.heap) == self.n and key <= self.heap[0][0]:
            return
        entry = WorstImage(index, _sample_name(dataset, index), accuracy, labelled,
                           _png_bytes(pred, self.num_classes))
        if len(self.heap) == self.n:
            heapq.heapreplace(self.heap, (key, entry))
        else:
            heapq.heappush(self.heap, (key, entry))

    def gathered(self) -> list[WorstImage]:
        """The ``n`` worst of every process, lowest accuracy first (every process must call it)."""
        if self.n <= 0:
            return []
        return merge_worst(gather([entry for _, entry in self.heap]), self.n)


def merge_worst(lists: Sequence[Sequence[WorstImage]], n: int) -> list[WorstImage]:
    """The ``n`` images of lowest accuracy in ``lists`` (e.g. one list a process), lowest first, ties by index."""
    return sorted((w for part in lists for w in part), key=lambda w: (w.accuracy, w.index))[:n]


def _raw_sample(dataset, index: int):
    """(image, label) without the data set's transform (``load`` of our data sets), else ``dataset[i]``."""
    if hasattr(dataset, "load"):
        return dataset.load(index)
    sample = dataset[index]
    if isinstance(sample, dict):
        return sample["image"], sample["label"]
    return sample


@torch.no_grad()
def evaluate(model, dataset, *, aug: bool = False, slide: bool = False, dtype: torch.dtype | None = None,
             device: str | torch.device | None = None, progress: bool = True,
             scale: Sequence[int] | None = None, limit: int | None = None,
             num_classes: int | None = None, fast: bool | None = None, report_worst: int = 0) -> dict:
    """mIoU of ``model`` on ``dataset`` with the ADE20K test protocol (:func:`iwin_models.engine.inference.segment`).

    Args:
        model: a segmenter (e.g. :class:`~iwin_models.models.upernet.IwinUPerNet`); its training mode is restored.
        dataset: yields ``(uint8 image (H, W, 3), int64 label (H, W))`` with 255 for ignored pixels
            (:class:`~iwin_models.data.ADE20KDataset`, :class:`~iwin_models.data.FolderSegmentationDataset`:
            their ``load`` is used, so a training transform on them does not matter).
        aug, slide, dtype, scale: test-time options of :func:`iwin_models.engine.inference.segment` (``scale`` None:
            the protocol's, 2048x512 for ADE20K).
        fast: ``segment``'s: the CPU fast twins (default: on the CPU unless ``IWIN_FAST_PATH=0``); False
            runs the model as given (e.g. one already converted by ``iwin_models.optimize_for_cpu``).
        device: move the model there first (default: leave it where it is).
        progress: tqdm bar (on rank 0 only).
        limit: evaluate the first ``limit`` samples only.
        num_classes: classes of the metric (default: the data set's ``num_classes``, else the model's).
        report_worst: keep the N images of lowest pixel accuracy (``result["worst"]``, :class:`WorstImage`,
            lowest first; images without a labelled pixel are not ranked) for :mod:`iwin_models.apps.report`.

    Returns :meth:`IoUMetric.compute`'s dict (``confusion`` included) and ``worst`` (empty without
    ``report_worst``). When ``torch.distributed`` is initialised, each process segments samples
    ``rank::world_size`` and every process returns the figures and the worst images of the whole set.
    """
    from .inference import inference_model

    if device is not None:
        model.to(device)
    n = num_classes or getattr(dataset, "num_classes", None) or getattr(model, "num_classes", None)
    if n is None:
        raise ValueError("give num_classes: neither the data set nor the model says how many classes there are")
    model_classes = getattr(model, "num_classes", None)
    if model_classes is not None and model_classes != n:
        raise ValueError(f"the model predicts {model_classes} classes but the data set has {n}")
    if report_worst < 0:
        raise ValueError(f"report_worst must be 0 or more, got {report_worst}")
    total = len(dataset) if limit is None else min(int(limit), len(dataset))
    metric = IoUMetric(n, getattr(dataset, "ignore_index", ade20k.IGNORE_INDEX))
    worst = _WorstImages(report_worst, n)
    was_training = model.training
    error = None
    try:
        runner = inference_model(model, fast)  # converted once, not per image
        _segment_all(runner, dataset, total, metric, worst, progress,
                     dict(aug=aug, slide=slide, dtype=dtype, scale=scale, fast=False))
    except Exception as e:  # the other processes must not wait for this one in the all-reduce
        error = e
    finally:
        model.train(was_training)
    raise_if_any_failed(error, "evaluation")
    result = metric.compute(sync=True)
    result["worst"] = worst.gathered()
    return result


def _segment_all(runner, dataset, total: int, metric: IoUMetric, worst: _WorstImages, progress: bool,
                 options: dict) -> None:
    """Segment this process's share of the first ``total`` samples into ``metric`` and ``worst``."""
    from tqdm import tqdm

    from .inference import segment

    rank, world_size = world()
    bar = tqdm(range(rank, total, world_size), desc="eval" if world_size == 1 else f"eval (rank 0 of {world_size})",
               unit="img", disable=not progress or rank != 0, dynamic_ncols=True)
    for i in bar:
        image, label = _raw_sample(dataset, i)
        pred = segment(runner, image, **options)
        correct, labelled = metric.update(pred, label)
        worst.offer(dataset, i, correct, labelled, pred)
        del image, label, pred  # the next image's arrays are not held alongside these


def format_results(result: dict, class_names: Sequence[str] | None = None) -> str:
    """A per-class table (IoU, Acc in percent) and the summary line ``aAcc .. mIoU .. mAcc ..``."""
    iou, acc = result["IoU"], result["Acc"]
    names = list(class_names) if class_names is not None else [f"class {i}" for i in range(len(iou))]
    width = max([len("Class")] + [len(s.strip()) for s in names])
    pct = lambda v: f"{percent(v):>6}"
    lines = [f"| {'Class':<{width}} |    IoU |    Acc |", f"|{'-' * (width + 2)}|--------|--------|"]
    lines += [f"| {name.strip():<{width}} | {pct(i)} | {pct(a)} |" for name, i, a in zip(names, iou, acc)]
    lines.append(summary_line(result))
    return "\n".join(lines)


def percent(value: float) -> str:
    """A figure as the table writes it: ``12.34`` (percent, two decimals) or ``nan``."""
    return "nan" if math.isnan(value) else f"{100 * value:.2f}"


def summary_line(result: dict) -> str:
    return (f"aAcc {100 * result['aAcc']:.2f}  mIoU {100 * result['mIoU']:.2f}  mAcc {100 * result['mAcc']:.2f}"
            f"  ({result.get('num_images', '?')} images)")


def json_ready(result: dict) -> dict:
    """``result`` with arrays as lists (``confusion``: a list of rows), NaN as None and the ``worst`` images as
    ``{index, name, accuracy, labelled}``, for ``json.dumps``."""
    out = {}
    for k, v in result.items():
        if k == "worst":  # the images without their prediction maps
            v = [dict(index=w.index, name=w.name, accuracy=w.accuracy, labelled=w.labelled) for w in v]
        elif isinstance(v, np.ndarray):
            v = [None if isinstance(x, float) and math.isnan(x) else x for x in v.tolist()]
        elif isinstance(v, float) and math.isnan(v):
            v = None
        out[k] = v
    return out
