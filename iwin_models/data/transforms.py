"""The authors' ADE20K training pipeline (mmseg config of the official repository), and mmcv's keep-ratio rescale.

:func:`build_train_transform`: random resize of the 2048x512 scale by a ratio in [0.5, 2.0] keeping the aspect
ratio, random crop 512x512 whose largest class covers less than 75% of the labelled pixels (up to 10 tries),
horizontal flip with probability 0.5, photometric distortion (brightness, contrast, saturation, hue), normalise,
pad to 512x512 (image 0, label 255). Labels are only ever resized with nearest-neighbour. Every random draw comes
from torch's global generator, so a sample is a function of the RNG state.

:func:`rescale_size` is mmcv's keep-ratio rescale, the one used by the training resize, the test protocol
(:mod:`iwin_models.engine.inference`) and the demo.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from . import ade20k
from .datasets import IGNORE_INDEX

__all__ = ["TrainTransform", "build_train_transform", "rescale_size", "TRAIN_SCALE", "CROP_SIZE", "RATIO_RANGE",
           "CAT_MAX_RATIO"]


def rescale_size(h: int, w: int, scale: Sequence[float]) -> tuple[int, int]:
    """mmcv's keep-ratio rescale (``imrescale``): the largest (h, w) that fits ``scale`` (long and short edge, in
    either order) keeping the aspect ratio, each side rounded half up and at least 1."""
    factor = min(max(scale) / max(h, w), min(scale) / min(h, w))
    return max(int(h * factor + 0.5), 1), max(int(w * factor + 0.5), 1)


def _pair(value, name: str) -> tuple[int, int]:
    h, w = (value, value) if isinstance(value, int) else tuple(value)
    if int(h) < 1 or int(w) < 1:
        raise ValueError(f"{name} must be positive, got {value}")
    return int(h), int(w)


def _uniform(low: float, high: float) -> float:
    return float(torch.rand(()) * (high - low) + low)


def _coin() -> bool:
    return bool(torch.randint(2, ()))


def _scale_saturation(img: torch.Tensor, factor: float) -> torch.Tensor:
    """(3, H, W) RGB with its HSV saturation multiplied by ``factor`` and clipped to 1 (mmcv's step).

    Not ``TF.adjust_saturation``: that blends with the grey image (PIL's definition). With hue and
    value kept, each channel is ``V - S * V * k(H)``, so scaling S scales every channel's distance to
    the pixel's maximum ``V``: exact, with no HSV round trip. The clip at S = 1 caps the factor per
    pixel at ``V / (V - min)``.
    """
    v = img.amax(0, keepdim=True)
    spread = v - img.amin(0, keepdim=True)
    cap = torch.where(spread > 0, v / spread.clamp_min(1e-12), torch.full_like(v, math.inf))
    return v - cap.clamp(max=max(factor, 0.0)) * (v - img)


def _saturation_and_hue(img: torch.Tensor, saturation: float | None, hue: int | None) -> torch.Tensor:
    """mmseg's saturation (HSV S times ``saturation``, clipped to 1) and hue (H plus ``hue`` steps of
    OpenCV's 0..180 scale) steps on a float (3, H, W) RGB image in 0..255; whole numbers out."""
    from torchvision.transforms.v2 import functional as TF

    if saturation is not None:
        img = _scale_saturation(img, saturation)
    if hue is not None:  # torchvision's HSV round trip; its hue shift is in turns, in [-0.5, 0.5]
        img = TF.adjust_hue(img / 255.0, (hue / 180.0 + 0.5) % 1.0 - 0.5) * 255.0
    return img.round().clamp(0, 255)


# the authors' training resize (mmseg's img_scale): the test scale, then a random ratio of it
TRAIN_SCALE = ade20k.TEST_SCALE
RATIO_RANGE = (0.5, 2.0)  # the random ratio of TRAIN_SCALE (mmseg's ratio_range)
CROP_SIZE = 512  # the random crop (and pad) size
CAT_MAX_RATIO = 0.75  # a crop is redrawn while one class covers this share of its labelled pixels


class TrainTransform:
    """The ADE20K training pipeline (see :func:`build_train_transform`); picklable for loader workers."""

    def __init__(self, crop_size=CROP_SIZE, scale=TRAIN_SCALE, ratio_range=RATIO_RANGE,
                 cat_max_ratio: float = CAT_MAX_RATIO,
                 flip_prob: float = 0.5, brightness_delta: float = 32, contrast_range=(0.5, 1.5),
                 saturation_range=(0.5, 1.5), hue_delta: int = 18, mean=ade20k.MEAN, std=ade20k.STD,
                 ignore_index: int = IGNORE_INDEX):
        self.crop_size = _pair(crop_size, "crop_size")
        self.scale = _pair(scale, "scale")
        lo, hi = map(float, ratio_range)
        if not 0 < lo <= hi:
            raise ValueError(f"ratio_range must be 0 < low <= high, got {ratio_range}")
        if not 0 < cat_max_ratio <= 1:
            raise ValueError(f"cat_max_ratio must be in (0, 1], got {cat_max_ratio}")
        self.ratio_range = (lo, hi)
        self.cat_max_ratio = float(cat_max_ratio)
        self.flip_prob = float(flip_prob)
        self.brightness_delta = float(brightness_delta)
        self.contrast_range = tuple(map(float, contrast_range))
        self.saturation_range = tuple(map(float, saturation_range))
        self.hue_delta = int(hue_delta)
        self.mean, self.std = tuple(map(float, mean)), tuple(map(float, std))
        self.ignore_index = int(ignore_index)

    def __repr__(self) -> str:
        return (f"TrainTransform(crop_size={self.crop_size}, scale={self.scale}, ratio_range={self.ratio_range}, "
                f"cat_max_ratio={self.cat_max_ratio})")

    # mmseg Resize(img_scale, ratio_range, keep_ratio=True)
    def target_size(self, h: int, w: int, ratio: float) -> tuple[int, int]:
        return rescale_size(h, w, (int(self.scale[0] * ratio), int(self.scale[1] * ratio)))

    def resize(self, image, label):
        from torchvision.transforms.v2 import InterpolationMode
        from torchvision.transforms.v2 import functional as TF

        ratio = _uniform(*self.ratio_range)
        size = list(self.target_size(*image.shape[-2:], ratio))
        # bilinear without antialiasing (cv2 INTER_LINEAR, as mmcv); masks always go nearest
        image = TF.resize(image, size, interpolation=InterpolationMode.BILINEAR, antialias=False)
        label = TF.resize(label, size, interpolation=InterpolationMode.NEAREST)
        return image, label

    # mmseg RandomCrop(crop_size, cat_max_ratio)
    def _crop_box(self, h: int, w: int) -> tuple[int, int, int, int]:
        ch, cw = min(self.crop_size[0], h), min(self.crop_size[1], w)
        top = int(torch.randint(h - ch + 1, ()))
        left = int(torch.randint(w - cw + 1, ()))
        return top, left, ch, cw

    def _crop_ok(self, label: torch.Tensor) -> bool:
        counts = torch.bincount(label.reshape(-1).long(), minlength=256)
        if self.ignore_index < counts.numel():
            counts[self.ignore_index] = 0
        counts = counts[counts > 0]
        return len(counts) > 1 and float(counts.max()) / float(counts.sum()) < self.cat_max_ratio

    def crop(self, image, label):
        from torchvision.transforms.v2 import functional as TF

        h, w = label.shape[-2:]
        box = self._crop_box(h, w)
        if self.cat_max_ratio < 1.0:
            for _ in range(10):  # as mmseg: up to 10 checked boxes, then an 11th unchecked one
                top, left, ch, cw = box
                if self._crop_ok(label[top:top + ch, left:left + cw]):
                    break
                box = self._crop_box(h, w)
        return TF.crop(image, *box), TF.crop(label, *box)

    def flip(self, image, label):
        from torchvision.transforms.v2 import functional as TF

        if float(torch.rand(())) < self.flip_prob:
            image, label = TF.horizontal_flip(image), TF.horizontal_flip(label)
        return image, label

    # mmseg PhotoMetricDistortion, on float 0-255 with the uint8 truncation mmseg's steps have
    def photometric(self, image: torch.Tensor) -> torch.Tensor:
        img = image.float()
        if _coin():  # brightness
            img = (img + _uniform(-self.brightness_delta, self.brightness_delta)).clamp(0, 255).floor()
        contrast_first = bool(torch.randint(2, ()))  # mmseg: mode 1 -> contrast first, 0 -> last

        def contrast(x):
            if _coin():
                x = (x * _uniform(*self.contrast_range)).clamp(0, 255).floor()
            return x

        if contrast_first:
            img = contrast(img)
        saturation = _uniform(*self.saturation_range) if _coin() else None  # HSV S channel factor
        # hue: an integer shift on OpenCV's 0..180 hue scale (2 degrees a step), as mmseg
        hue = int(torch.randint(-self.hue_delta, self.hue_delta, ())) if _coin() else None
        if saturation is not None or hue is not None:
            img = _saturation_and_hue(img, saturation, hue)
        if not contrast_first:
            img = contrast(img)
        return img

    def normalize(self, image: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.mean).view(3, 1, 1)
        std = torch.tensor(self.std).view(3, 1, 1)
        return (image - mean) / std

    def pad(self, image: torch.Tensor, label: torch.Tensor):
        from torchvision.transforms.v2 import functional as TF

        h, w = label.shape[-2:]
        ph, pw = max(self.crop_size[0] - h, 0), max(self.crop_size[1] - w, 0)
        if ph or pw:  # bottom and right, as mmcv's impad
            image = TF.pad(image, [0, 0, pw, ph], fill=0.0)
            label = TF.pad(label, [0, 0, pw, ph], fill=self.ignore_index)
        return image, label

    def __call__(self, image, label) -> tuple[torch.Tensor, torch.Tensor]:
        from torchvision import tv_tensors

        image, label = (torch.from_numpy(np.array(a)) if isinstance(a, np.ndarray) else torch.as_tensor(a)
                        for a in (image, label))
        if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != torch.uint8:
            raise ValueError(f"expected an RGB uint8 image (H, W, 3), got {tuple(image.shape)} {image.dtype}")
        if label.shape != image.shape[:2]:
            raise ValueError(f"label shape {tuple(label.shape)} does not match the image's {tuple(image.shape[:2])}")
        if label.numel() and (label.min() < 0 or label.max() > 255):
            raise ValueError("labels must be class indices 0..254 with 255 for ignored pixels")
        image = tv_tensors.Image(image.permute(2, 0, 1))
        label = tv_tensors.Mask(label.to(torch.uint8))  # uint8 through the geometric steps (nearest only)
        image, label = self.resize(image, label)
        image, label = self.crop(image, label)
        image, label = self.flip(image, label)
        image = tv_tensors.wrap(self.normalize(self.photometric(image.as_subclass(torch.Tensor))), like=image)
        image, label = self.pad(image, label)
        return (image.as_subclass(torch.Tensor).contiguous().float(),
                label.as_subclass(torch.Tensor).to(torch.int64).contiguous())


def build_train_transform(crop_size=CROP_SIZE, scale=TRAIN_SCALE, ratio_range=RATIO_RANGE,
                          cat_max_ratio: float = CAT_MAX_RATIO) -> TrainTransform:
    """The authors' ADE20K training pipeline as a callable ``(image, label) -> (image, label)``.

    Input: RGB uint8 array (H, W, 3) and integer label (H, W) with 255 for ignored pixels (a data set's
    raw sample). Output: float32 tensor (3, crop_h, crop_w), normalised with the ADE20K mean/std, and
    int64 tensor (crop_h, crop_w), padded with 0 / 255 where the resized image is smaller than the crop.

    Args:
        crop_size: crop (and pad) size, int or (h, w).
        scale: (long, short) edges the image is fitted into before the random ratio.
        ratio_range: the random ratio of ``scale`` (uniform).
        cat_max_ratio: a crop is redrawn (up to 10 times) while its most frequent class covers this
            share or more of its labelled pixels; 1 to disable.
    """
    return TrainTransform(crop_size=crop_size, scale=scale, ratio_range=ratio_range, cat_max_ratio=cat_max_ratio)
