"""Segmentation data: ADE20K (SceneParsing) and folder data sets, and the authors' training pipeline.

Samples are ``(image, label)`` tuples. Without a transform the image is the RGB ``uint8`` array
(H, W, 3), EXIF orientation applied, and the label the ``int64`` array (H, W) of class indices
0..C-1 with **255 for ignored pixels** (whatever ignore value the files use); with a transform,
whatever ``transform(image, label)`` returns (for :func:`build_train_transform`: a normalised float32
tensor (3, H, W) and an int64 tensor (H, W)). ``dataset.load(i)`` always gives the raw pair.

ADE20K (mmseg's ``ADE20KDataset``): ``ADEChallengeData2016/{images,annotations}/{training,validation}``,
JPEG images, PNG labels with 0 = "other" and 1..150 the classes, read with ``reduce_zero_label``:
0 -> 255 (ignored), k -> k-1.

Training pipeline (mmseg config of the official repository), :func:`build_train_transform`:
random resize of the 2048x512 scale by a ratio in [0.5, 2.0] keeping the aspect ratio, random crop
512x512 whose largest class covers less than 75% of the labelled pixels (up to 10 tries), horizontal
flip with probability 0.5, photometric distortion (brightness, contrast, saturation, hue), normalise,
pad to 512x512 (image 0, label 255). Labels are only ever resized with nearest-neighbour. Every
random draw comes from torch's global generator, so a sample is a function of the RNG state.
"""
from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from . import ade20k
from .images import SIXTEEN_BIT_MODES, load_image, read_image_file
from .weights import ADE20K_PROTOCOL

__all__ = [
    "ADE20KDataset", "FolderSegmentationDataset", "SegmentationFiles", "TrainTransform", "build_train_transform",
    "read_image", "read_label", "read_class_names", "IMAGE_SUFFIXES", "IGNORE_INDEX",
]

IGNORE_INDEX = ade20k.IGNORE_INDEX  # 255: the value of ignored pixels in every label this module returns
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


# --- reading files --------------------------------------------------------------------------------

def read_image(path: str | Path, exif: bool = True) -> np.ndarray:
    """RGB uint8 array (H, W, 3) of an image file; grey, RGBA, palette and 16-bit images are converted
    and (with ``exif``) the EXIF orientation is applied (see :func:`iwin_models.images.load_image`)."""
    return load_image(Path(path), exif=exif)


def read_label(path: str | Path) -> np.ndarray:
    """The class indices stored in a label PNG, as int64 (H, W), without any colour conversion:
    palette ('P') images give their indices, 'L' and 16-bit images their values. An RGB file is
    accepted only when it is grey (R = G = B)."""
    mode, arr = read_image_file(path, lambda img: (img.mode, np.asarray(img)), kind="label")
    if mode in ("P", "L", "1") or mode in SIXTEEN_BIT_MODES:
        return arr.astype(np.int64)
    if mode in ("RGB", "RGBA") and arr.ndim == 3 and (arr[..., 0] == arr[..., 1]).all() \
            and (arr[..., 0] == arr[..., 2]).all():
        return arr[..., 0].astype(np.int64)
    raise ValueError(f"label file {path} has mode {mode!r}: labels must be single-channel class indices "
                     f"(8-bit grey 'L', palette 'P' or 16-bit), not colour images")


def read_class_names(value: str | Path | Sequence[str]) -> list[str]:
    """Class names from a text file (one per line), a JSON file (a list), a comma-separated string or a list."""
    if isinstance(value, (list, tuple)):
        names = [str(v) for v in value]
    else:
        path = Path(value)
        if path.is_file():
            text = path.read_text(encoding="utf-8")
            if path.suffix.lower() == ".json":
                names = json.loads(text)
                if not isinstance(names, list):
                    raise ValueError(f"{path}: expected a JSON list of class names")
                names = [str(n) for n in names]
            else:
                names = [line.strip() for line in text.splitlines() if line.strip()]
        elif path.suffix.lower() in (".txt", ".json", ".csv") or "/" in str(value) or "\\" in str(value):
            raise FileNotFoundError(f"no such class-names file: {path}")
        else:  # a comma-separated list
            names = [s.strip() for s in str(value).split(",") if s.strip()]
    if not names:
        raise ValueError(f"no class names in {value!r}")
    return names


# --- data sets ------------------------------------------------------------------------------------

def _check_class_names(class_names: Sequence[str]) -> list[str]:
    if isinstance(class_names, str):
        raise TypeError("class_names must be a list of names, not a string (see read_class_names)")
    names = [str(n) for n in class_names]
    if not 1 <= len(names) <= 255:
        raise ValueError(f"between 1 and 255 classes are supported (255 marks ignored pixels), got {len(names)}")
    return names


class SegmentationFiles(torch.utils.data.Dataset):
    """Pairs of (image file, label file) read as described in the module docstring.

    Attributes: ``files`` (list of (image path, label path)), ``class_names``, ``num_classes``,
    ``ignore_index`` (always 255: the value ignored pixels have in the labels returned), ``palette``
    (or None), ``transform``.
    """

    ignore_index = IGNORE_INDEX

    def __init__(self, files: Sequence[tuple[Path, Path]], class_names: Sequence[str], *, file_ignore_index: int = 255,
                 reduce_zero_label: bool = False, transform: Callable | None = None,
                 palette: Sequence[Sequence[int]] | None = None):
        self.class_names = _check_class_names(class_names)
        self.num_classes = len(self.class_names)
        if not 0 <= file_ignore_index <= 65535:
            raise ValueError(f"ignore_index must be a label value in 0..65535, got {file_ignore_index}")
        self.files = [(Path(i), Path(lab)) for i, lab in files]
        self.file_ignore_index = int(file_ignore_index)
        self.reduce_zero_label = bool(reduce_zero_label)
        self.transform = transform
        self.palette = palette

    def __len__(self) -> int:
        return len(self.files)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({len(self)} images, {self.num_classes} classes, "
                f"reduce_zero_label={self.reduce_zero_label}, transform={self.transform!r})")

    def _label(self, raw: np.ndarray, path: Path) -> np.ndarray:
        """Check the stored values and map them to 0..C-1 / 255 (ignored)."""
        top = self.num_classes if self.reduce_zero_label else self.num_classes - 1  # largest valid stored value
        bad = (raw > top) & (raw != self.file_ignore_index)
        if raw.size and (bad.any() or raw.min() < 0):
            values = np.unique(raw[bad | (raw < 0)])
            shown = ", ".join(map(str, values[:8])) + (", ..." if len(values) > 8 else "")
            raise ValueError(f"label file {path} has values outside 0..{top} (and ignore {self.file_ignore_index}): "
                             f"{shown}; wrong number of classes or not a class-index PNG?")
        label = raw.astype(np.int64, copy=True)
        ignored = raw == self.file_ignore_index
        if self.reduce_zero_label:  # mmseg: 0 -> 255, k -> k-1, 255 stays 255
            ignored |= raw == 0
            label -= 1
        label[ignored] = IGNORE_INDEX
        return label

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The raw sample: RGB uint8 image (H, W, 3) and int64 label (H, W) with 255 for ignored pixels."""
        image_path, label_path = self.files[index]
        label = self._label(read_label(label_path), label_path)
        image = read_image(image_path)
        if image.shape[:2] != label.shape:
            raw = read_image(image_path, exif=False)  # a label drawn on the stored (un-rotated) pixels
            if raw.shape[:2] != label.shape:
                raise ValueError(f"image {image_path} is {image.shape[1]}x{image.shape[0]} but its label {label_path} "
                                 f"is {label.shape[1]}x{label.shape[0]} (width x height)")
            image = raw
        return image, label

    def __getitem__(self, index: int):
        image, label = self.load(index)
        if self.transform is not None:
            return self.transform(image, label)
        return image, label


def _list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                  and not p.name.startswith("."))


def _pair_files(images_dir: Path, labels_dir: Path) -> list[tuple[Path, Path]]:
    for folder, what in ((images_dir, "images"), (labels_dir, "labels")):
        if not folder.is_dir():
            raise FileNotFoundError(f"no {what} folder at {folder}")
    images = _list_images(images_dir)
    if not images:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {images_dir}")
    stems: dict[str, Path] = {}
    for p in images:
        if p.stem in stems:
            raise ValueError(f"two images with the stem {p.stem!r} in {images_dir}: {stems[p.stem].name} and {p.name}")
        stems[p.stem] = p
    labels = {p.stem: p for p in labels_dir.iterdir() if p.is_file() and p.suffix.lower() == ".png"}
    missing = [p for p in images if p.stem not in labels]
    if missing:
        shown = ", ".join(p.name for p in missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise ValueError(f"{len(missing)} image(s) without a label PNG in {labels_dir}: {shown} "
                         f"(e.g. expected {labels_dir / (missing[0].stem + '.png')})")
    return [(p, labels[p.stem]) for p in images]


class FolderSegmentationDataset(SegmentationFiles):
    """A user's data set: ``images_dir`` (jpg/png) and ``labels_dir`` (png, class index per pixel)
    with matching file stems.

    Args:
        class_names: names of the classes (their count is the number of classes).
        ignore_index: the label value of pixels to ignore in the files (mapped to 255 in the output).
        reduce_zero_label: the files hold 0 = "unlabelled" and 1..C the classes (as ADE20K).
        transform: ``transform(image, label)`` applied to each sample, e.g. :func:`build_train_transform`.
    """

    def __init__(self, images_dir: str | Path, labels_dir: str | Path, class_names: Sequence[str],
                 ignore_index: int = IGNORE_INDEX, reduce_zero_label: bool = False,
                 transform: Callable | None = None, palette: Sequence[Sequence[int]] | None = None):
        _check_class_names(class_names)
        self.images_dir, self.labels_dir = Path(images_dir), Path(labels_dir)
        files = _pair_files(self.images_dir, self.labels_dir)
        super().__init__(files, class_names, file_ignore_index=ignore_index, reduce_zero_label=reduce_zero_label,
                         transform=transform, palette=palette)


_SPLITS = {"training": "training", "train": "training", "validation": "validation", "val": "validation"}


class ADE20KDataset(SegmentationFiles):
    """ADE20K SceneParsing (150 classes), mmseg's ``ADE20KDataset`` with ``reduce_zero_label``.

    Args:
        root: the ``ADEChallengeData2016`` folder or its parent.
        split: ``'validation'`` (2000 images) or ``'training'`` (20210 images); ``val``/``train`` also work.
        transform: ``transform(image, label)`` applied to each sample, e.g. :func:`build_train_transform`.
    """

    def __init__(self, root: str | Path, split: str = "validation", transform: Callable | None = None):
        if split not in _SPLITS:
            raise ValueError(f"unknown ADE20K split {split!r}: choose 'training' or 'validation'")
        self.split = _SPLITS[split]
        self.root = self._find_root(Path(root))
        files = _pair_files(self.root / "images" / self.split, self.root / "annotations" / self.split)
        super().__init__(files, ade20k.CLASSES, file_ignore_index=IGNORE_INDEX, reduce_zero_label=True,
                         transform=transform, palette=ade20k.PALETTE)

    @staticmethod
    def _find_root(root: Path) -> Path:
        if not root.is_dir():
            raise FileNotFoundError(f"no ADE20K folder at {root}")
        for candidate in (root, root / "ADEChallengeData2016"):
            if (candidate / "images").is_dir() and (candidate / "annotations").is_dir():
                return candidate
        raise FileNotFoundError(f"{root} is not an ADE20K folder: expected ADEChallengeData2016/images and "
                                f"ADEChallengeData2016/annotations (each with training/ and validation/) in it")


# --- training pipeline ----------------------------------------------------------------------------

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
TRAIN_SCALE = ADE20K_PROTOCOL.scale


class TrainTransform:
    """The ADE20K training pipeline (see :func:`build_train_transform`); picklable for loader workers."""

    def __init__(self, crop_size=512, scale=TRAIN_SCALE, ratio_range=(0.5, 2.0), cat_max_ratio: float = 0.75,
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
        long_edge, short_edge = int(self.scale[0] * ratio), int(self.scale[1] * ratio)
        long_edge, short_edge = max(long_edge, short_edge), min(long_edge, short_edge)
        factor = min(long_edge / max(h, w), short_edge / min(h, w))
        return max(int(h * factor + 0.5), 1), max(int(w * factor + 0.5), 1)

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


def build_train_transform(crop_size=512, scale=TRAIN_SCALE, ratio_range=(0.5, 2.0),
                          cat_max_ratio: float = 0.75) -> TrainTransform:
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
