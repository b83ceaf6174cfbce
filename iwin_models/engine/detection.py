"""Detect objects in one image with an Iwin detector and its authors' test pipeline: :func:`detect`.

The image is decoded as :func:`iwin_models.io.images.load_image` does (EXIF orientation applied; grey, RGBA,
palette and 16-bit images made RGB uint8), then run through the model's own test transform (mmcv's keep-ratio
resize into 1333x800 with cv2 on the uint8 image, normalise, pad to a multiple of 32), in eval mode, without
gradients, with the CPU fast twins as :func:`iwin_models.fast.with_cpu_twins` decides. Masks are pasted one box
at a time into the original image (never a full-size float map per detection).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from ..fast import with_cpu_twins
from ..io.images import load_image

__all__ = ["Detections", "detect"]


@dataclasses.dataclass(frozen=True)
class Detections:
    """The detections of one image, best score first, in the original image's pixels.

    ``labels`` are **0-based indices into** ``class_names`` (the background is not a class here; the
    torchvision-style model itself returns labels 1-based with 0 for the background: ``detect`` subtracts 1).

    Attributes:
        boxes: ``(N, 4)`` float32, ``x1, y1, x2, y2`` in original-image pixels.
        scores: ``(N,)`` float32.
        labels: ``(N,)`` int64, 0-based into ``class_names``.
        masks: ``(N, H, W)`` bool, the original image's size.
        class_names: the model's classes (``'class i'`` where the model has no names).
        category_ids: the COCO category id of each class (None where the classes are not COCO's).
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    masks: np.ndarray
    class_names: list[str]
    category_ids: list[int] | None = None

    def __len__(self) -> int:
        return len(self.scores)

    @property
    def names(self) -> list[str]:
        """The class name of each detection."""
        return [self.class_names[i] for i in self.labels]

    def keep(self, selected: np.ndarray) -> Detections:
        """The detections a boolean or index array selects."""
        return dataclasses.replace(self, boxes=self.boxes[selected], scores=self.scores[selected],
                                   labels=self.labels[selected], masks=self.masks[selected])


def _class_info(model) -> tuple[list[str], list[int] | None]:
    names = getattr(model, "class_names", None)
    ids = getattr(model, "category_ids", None)
    if names is None:
        names = [f"class {i}" for i in range(model.config.num_classes)]
    return list(names), None if ids is None else list(ids)


def _device(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def detect(model, image, *, score_threshold: float | None = None, fast: bool | None = None) -> Detections:
    """Detect objects in ``image`` with an Iwin (Cascade) Mask R-CNN (:func:`iwin_models.create_detector`).

    Args:
        model: the detector; run in eval mode (it is put there).
        image: path, PIL image, ``HxW[x1/3/4]`` numpy array or tensor (see :func:`iwin_models.io.images.load_image`).
        score_threshold: keep the detections with ``score >= score_threshold``. Default None: the model's
            ``test_cfg`` alone (the authors': score > 0.05, at most 100). A threshold below the model's own
            keeps nothing more (lower ``model.roi_heads.score_thresh`` for that).
        fast: run with the CPU fast twins (default: on the CPU unless ``IWIN_FAST_PATH=0``; True: always,
            refusing a model they cannot convert; False: the model as given).
    """
    rgb = load_image(image)
    runner = with_cpu_twins(model.eval(), fast)
    transform = runner.transform
    batch = transform.from_resized(transform.resize(rgb), rgb.shape[:2], device=_device(runner))
    out = runner.detect_prepared(batch)[0]
    names, ids = _class_info(model)
    found = Detections(boxes=out["boxes"].float().cpu().numpy(), scores=out["scores"].float().cpu().numpy(),
                       labels=(out["labels"] - 1).cpu().numpy().astype(np.int64),
                       masks=out["masks"][:, 0].cpu().numpy(), class_names=names, category_ids=ids)
    if score_threshold is None:
        return found
    selected = found.scores >= score_threshold
    return found if selected.all() else found.keep(selected)
