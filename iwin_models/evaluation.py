"""mIoU evaluation as mmseg computes it, on one or many processes (the command is :mod:`iwin_models.cli.eval`).

Per class, the intersection, union, predicted area and labelled area (pixels whose label is not the
ignore index) are summed over the whole data set; then ``IoU = I / U`` and ``Acc = I / label area``
per class, ``mIoU`` and ``mAcc`` their means over the classes where they are defined (NaN skipped),
and ``aAcc = sum(I) / sum(label area)``. The sums are integers, so the figures are the same whether
one process or many (``torchrun``, each taking every N-th image) computed them.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.distributed as dist

from . import ade20k
from .distributed import any_process, world

__all__ = ["IoUMetric", "evaluate", "format_results", "summary_line", "json_ready"]


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
    ``area_union``, ``area_pred``, ``area_label`` (int64 arrays) and ``num_images`` (update calls).
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
        self.num_samples = 0  # update() calls (images)

    def __repr__(self) -> str:
        return f"IoUMetric(num_classes={self.num_classes}, ignore_index={self.ignore_index}, " \
               f"pixels={int(self.area_label.sum())})"

    @torch.no_grad()
    def update(self, pred, target) -> None:
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
        area_pred = torch.bincount(pred, minlength=n)
        area_label = torch.bincount(target, minlength=n)
        area_intersect = torch.bincount(target[pred == target], minlength=n)
        self.area_intersect += area_intersect
        self.area_union += area_pred + area_label - area_intersect
        self.area_pred += area_pred
        self.area_label += area_label
        self.num_samples += 1

    def _flat(self) -> torch.Tensor:
        return torch.cat([self.area_intersect, self.area_union, self.area_pred, self.area_label,
                          torch.tensor([self.num_samples], dtype=torch.int64)])

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
            num_images=m.num_samples,
        )


def _nanmean(values: np.ndarray) -> float:
    valid = values[~np.isnan(values)]
    return float(valid.mean()) if valid.size else math.nan


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
             num_classes: int | None = None, fast: bool | None = None) -> dict:
    """mIoU of ``model`` on ``dataset`` with the ADE20K test protocol (:func:`iwin_models.inference.segment`).

    Args:
        model: a segmenter (e.g. :class:`~iwin_models.segmenter.IwinUPerNet`); its training mode is restored.
        dataset: yields ``(uint8 image (H, W, 3), int64 label (H, W))`` with 255 for ignored pixels
            (:class:`~iwin_models.data.ADE20KDataset`, :class:`~iwin_models.data.FolderSegmentationDataset`:
            their ``load`` is used, so a training transform on them does not matter).
        aug, slide, dtype, scale: test-time options of :func:`iwin_models.inference.segment` (``scale`` None:
            the protocol's, 2048x512 for ADE20K).
        fast: ``segment``'s: the CPU fast twins (default: on the CPU unless ``IWIN_FAST_PATH=0``); False
            runs the model as given (e.g. one already converted by ``iwin_models.optimize_for_cpu``).
        device: move the model there first (default: leave it where it is).
        progress: tqdm bar (on rank 0 only).
        limit: evaluate the first ``limit`` samples only.
        num_classes: classes of the metric (default: the data set's ``num_classes``, else the model's).

    When ``torch.distributed`` is initialised, each process segments samples ``rank::world_size`` and
    every process returns the figures of the whole set (see :meth:`IoUMetric.compute`).
    """
    from tqdm import tqdm

    from .inference import inference_model, segment

    if device is not None:
        model.to(device)
    n = num_classes or getattr(dataset, "num_classes", None) or getattr(model, "num_classes", None)
    if n is None:
        raise ValueError("give num_classes: neither the data set nor the model says how many classes there are")
    model_classes = getattr(model, "num_classes", None)
    if model_classes is not None and model_classes != n:
        raise ValueError(f"the model predicts {model_classes} classes but the data set has {n}")
    rank, world_size = world()
    total = len(dataset) if limit is None else min(int(limit), len(dataset))
    metric = IoUMetric(n, getattr(dataset, "ignore_index", ade20k.IGNORE_INDEX))
    was_training = model.training
    runner = inference_model(model, fast)  # converted once, not per image
    error = None
    try:
        indices = range(rank, total, world_size)
        bar = tqdm(indices, desc="eval" if world_size == 1 else f"eval (rank 0 of {world_size})", unit="img",
                   disable=not progress or rank != 0, dynamic_ncols=True)
        for i in bar:
            image, label = _raw_sample(dataset, i)
            pred = segment(runner, image, aug=aug, slide=slide, dtype=dtype, scale=scale, fast=False)
            metric.update(pred, label)
    except Exception as e:  # the other processes must not wait for this one in the all-reduce
        error = e
    finally:
        model.train(was_training)
    if world_size > 1:
        failed = any_process(error is not None)
        if failed and error is None:
            raise RuntimeError("evaluation failed in another process (see its message)")
    if error is not None:
        raise error
    return metric.compute(sync=True)


def format_results(result: dict, class_names: Sequence[str] | None = None) -> str:
    """A per-class table (IoU, Acc in percent) and the summary line ``aAcc .. mIoU .. mAcc ..``."""
    iou, acc = result["IoU"], result["Acc"]
    names = list(class_names) if class_names is not None else [f"class {i}" for i in range(len(iou))]
    width = max([len("Class")] + [len(s.strip()) for s in names])
    pct = lambda v: "   nan" if math.isnan(v) else f"{100 * v:6.2f}"
    lines = [f"| {'Class':<{width}} |    IoU |    Acc |", f"|{'-' * (width + 2)}|--------|--------|"]
    lines += [f"| {name.strip():<{width}} | {pct(i)} | {pct(a)} |" for name, i, a in zip(names, iou, acc)]
    lines.append(summary_line(result))
    return "\n".join(lines)


def summary_line(result: dict) -> str:
    return (f"aAcc {100 * result['aAcc']:.2f}  mIoU {100 * result['mIoU']:.2f}  mAcc {100 * result['mAcc']:.2f}"
            f"  ({result.get('num_images', '?')} images)")


def json_ready(result: dict) -> dict:
    """``result`` with arrays as lists and NaN as None, for ``json.dumps``."""
    out = {}
    for k, v in result.items():
        if isinstance(v, np.ndarray):
            v = [None if isinstance(x, float) and math.isnan(x) else x for x in v.tolist()]
        elif isinstance(v, float) and math.isnan(v):
            v = None
        out[k] = v
    return out
