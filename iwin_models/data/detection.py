"""Detection training data: the authors' augmentation before the model's multi-scale resize, and a tiny
synthetic instance set.

:class:`DetectionTrainAugment` is ``RandomFlip(0.5)`` + ``AutoAugment`` of the Iwin COCO configs
(``configs/iwin/*_mstrain_480-800_*.py``, from DETR): with probability 1/2 nothing more (the multi-scale
resize, short side 480-800 step 32 / long side 1333, is the model's ``transform.train_scales``), otherwise a
keep-ratio resize to short side 400, 500 or 600 and a random ``absolute_range`` crop of 384-600 px per side
(boxes clipped to the crop, emptied ones dropped with their masks and labels; a crop may keep no box, as
``allow_negative_crop=True``), which the model then resizes again (the policy's final ``override`` resize).
Samples are ``(image (3, H, W) uint8, target)`` with target ``boxes`` xyxy, ``labels`` 1-based, ``masks``
``(n, H, W)`` uint8; randomness from torch's global generator. Built on ``torchvision.transforms.v2``.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as TF

from .transforms import rescale_size

__all__ = ["DetectionTrainAugment", "synthetic_rectangles"]

Sample = tuple[Tensor, dict[str, Tensor]]


def _randint(low: int, high: int) -> int:
    """Uniform integer in ``[low, high]``."""
    return int(torch.randint(low, high + 1, ()))


class DetectionTrainAugment:
    """Flip, then the crop policy with probability ``crop_prob`` (see the module docstring)."""

    def __init__(self, flip_ratio: float = 0.5, crop_prob: float = 0.5, crop_scales=((1333, 400), (1333, 500),
                 (1333, 600)), crop_range: tuple[int, int] = (384, 600)):
        self.flip_ratio, self.crop_prob = flip_ratio, crop_prob
        self.crop_scales, self.crop_range = tuple(crop_scales), tuple(crop_range)

    def __call__(self, image: Tensor, target: dict[str, Tensor]) -> Sample:
        image, boxes, masks = self._wrap(image, target)
        if torch.rand(()) < self.flip_ratio:
            image, boxes, masks = TF.horizontal_flip(image), TF.horizontal_flip(boxes), TF.horizontal_flip(masks)
        labels = target["labels"]
        if torch.rand(()) < self.crop_prob:
            image, boxes, masks, labels = self.resize_crop(image, boxes, masks, labels)
        return image.as_subclass(Tensor), dict(target, boxes=boxes.as_subclass(Tensor), labels=labels,
                                               masks=masks.as_subclass(Tensor))

    @staticmethod
    def _wrap(image: Tensor, target: dict[str, Tensor]):
        size = tuple(image.shape[-2:])
        boxes = tv_tensors.BoundingBoxes(target["boxes"].float(), format="XYXY", canvas_size=size)
        return tv_tensors.Image(image), boxes, tv_tensors.Mask(target["masks"])

    def resize_crop(self, image, boxes, masks, labels):
        scale = self.crop_scales[_randint(0, len(self.crop_scales) - 1)]
        size = list(rescale_size(*image.shape[-2:], scale))
        image, boxes = TF.resize(image, size, antialias=False), TF.resize(boxes, size)
        masks = TF.resize(masks, size, interpolation=TF.InterpolationMode.NEAREST)
        h, w = size
        crop_h = _randint(min(h, self.crop_range[0]), min(h, self.crop_range[1]))
        crop_w = _randint(min(w, self.crop_range[0]), min(w, self.crop_range[1]))
        top, left = _randint(0, h - crop_h), _randint(0, w - crop_w)
        image, masks = TF.crop(image, top, left, crop_h, crop_w), TF.crop(masks, top, left, crop_h, crop_w)
        boxes = TF.clamp_bounding_boxes(TF.crop(boxes, top, left, crop_h, crop_w))
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        return image, boxes[keep], masks[keep], labels[keep]


COLOURS = ((230, 40, 40), (40, 210, 60), (50, 80, 240), (240, 220, 40), (200, 60, 220))


def synthetic_rectangles(num_images: int = 8, num_classes: int = 3, sizes: tuple[int, int] = (64, 128),
                         max_objects: int = 3, seed: int = 0) -> list[Sample]:
    """``num_images`` noisy dark images of 1..``max_objects`` filled rectangles, the class (1-based) given by
    the colour (``COLOURS``); masks are the visible part of each rectangle (later ones cover earlier ones)."""
    gen = torch.Generator().manual_seed(seed)

    def draw(low: int, high: int) -> int:
        return int(torch.randint(low, high + 1, (), generator=gen))

    samples = []
    for _ in range(num_images):
        h, w = draw(*sizes), draw(*sizes)
        image = (torch.rand(3, h, w, generator=gen) * 40).to(torch.uint8)
        labels, masks = [], []
        for _ in range(draw(1, max_objects)):
            bw, bh = draw(w // 6, w // 2), draw(h // 6, h // 2)
            x0, y0, label = draw(0, w - bw), draw(0, h - bh), draw(1, num_classes)
            image[:, y0:y0 + bh, x0:x0 + bw] = torch.tensor(COLOURS[label - 1], dtype=torch.uint8)[:, None, None]
            for m in masks:
                m[y0:y0 + bh, x0:x0 + bw] = 0
            mask = torch.zeros(h, w, dtype=torch.uint8)
            mask[y0:y0 + bh, x0:x0 + bw] = 1
            labels.append(label)
            masks.append(mask)
        samples.append((image, _visible(torch.stack(masks), torch.tensor(labels))))
    return samples


def _visible(masks: Tensor, labels: Tensor) -> dict[str, Tensor]:
    """Targets of the objects still visible; boxes = their masks' extents."""
    keep = masks.flatten(1).bool().any(dim=1)
    masks, labels = masks[keep], labels[keep]
    boxes = []
    for m in masks:
        ys, xs = m.nonzero().unbind(1)
        boxes.append([int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1])
    return dict(boxes=torch.tensor(boxes, dtype=torch.float32), labels=labels, masks=masks)
