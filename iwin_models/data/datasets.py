"""Segmentation data sets: ADE20K (SceneParsing) and folder data sets (the training pipeline is :mod:`.transforms`).

Samples are ``(image, label)`` tuples. Without a transform the image is the RGB ``uint8`` array
(H, W, 3), EXIF orientation applied, and the label the ``int64`` array (H, W) of class indices
0..C-1 with **255 for ignored pixels** (whatever ignore value the files use); with a transform,
whatever ``transform(image, label)`` returns (for :func:`~.transforms.build_train_transform`: a normalised float32
tensor (3, H, W) and an int64 tensor (H, W)). ``dataset.load(i)`` always gives the raw pair.

ADE20K (mmseg's ``ADE20KDataset``): ``ADEChallengeData2016/{images,annotations}/{training,validation}``,
JPEG images, PNG labels with 0 = "other" and 1..150 the classes, read with ``reduce_zero_label``:
0 -> 255 (ignored), k -> k-1.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from ..io.images import SIXTEEN_BIT_MODES, load_image, read_image_file
from . import ade20k

__all__ = [
    "ADE20KDataset", "FolderSegmentationDataset", "SegmentationFiles", "read_image", "read_label", "read_class_names",
    "IMAGE_SUFFIXES", "IGNORE_INDEX",
]

IGNORE_INDEX = ade20k.IGNORE_INDEX  # 255: the value of ignored pixels in every label this module returns
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


# --- reading files --------------------------------------------------------------------------------

def read_image(path: str | Path, exif: bool = True) -> np.ndarray:
    """RGB uint8 array (H, W, 3) of an image file; grey, RGBA, palette and 16-bit images are converted
    and (with ``exif``) the EXIF orientation is applied (see :func:`iwin_models.io.images.load_image`)."""
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
