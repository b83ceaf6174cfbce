"""Image decoding: files, PIL images, arrays and tensors to RGB uint8 arrays, with a size check up front.

The data sets (:mod:`iwin_models.data`) and inference (:mod:`iwin_models.engine`) read images here.

Size limit: a file whose header says it has more than :data:`MAX_IMAGE_PIXELS` pixels is refused
before any pixel is decoded, with an error naming its size. The default, 2**30 pixels (e.g.
32768 x 32768; 3 GiB as decoded RGB, and about 20 bytes per pixel for a whole ``iwin-seg predict``
run), replaces PIL's own decompression-bomb limit (89 MP warning, 179 MP error) for the files read
here, so 100-megapixel aerial and microscopy tiles load. Change it with the environment variable
``IWIN_MAX_IMAGE_PIXELS`` (0: no limit) or by setting ``iwin_models.io.images.MAX_IMAGE_PIXELS`` (``None``: no limit).
"""
from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = ["load_image", "read_image_file", "image_size", "ImageTooLargeError", "MAX_IMAGE_PIXELS", "SIXTEEN_BIT_MODES"]

T = TypeVar("T")
MAX_IMAGE_PIXELS: int | None = int(os.environ.get("IWIN_MAX_IMAGE_PIXELS") or 2 ** 30) or None  # 0: no limit
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")  # PIL modes of 16-bit (and 32-bit int) images
_PIL_LIMIT = threading.Lock()  # PIL's limit is a module global: swap it for one open() at a time


class ImageTooLargeError(ValueError):
    """An image file larger than :data:`MAX_IMAGE_PIXELS` (raised before decoding)."""


def load_image(source, exif: bool = True) -> np.ndarray:
    """An RGB uint8 array (H, W, 3) from a path, PIL image, array (HxW, HxWx1/3/4) or uint8 tensor.

    Grayscale, RGBA (alpha dropped), palette and 16-bit images are converted to RGB; JPEG EXIF
    orientation is applied (unless ``exif`` is False), so the class map matches the image as a viewer
    shows it. A file over :data:`MAX_IMAGE_PIXELS` raises :class:`ImageTooLargeError` before decoding.
    """
    if isinstance(source, (str, os.PathLike)):
        return read_image_file(source, lambda img: _checked(_pil_to_rgb(_upright(img) if exif else img)))
    if isinstance(source, Image.Image):
        return _checked(_pil_to_rgb(source))
    if isinstance(source, torch.Tensor):
        source = source.detach().cpu().numpy()
    if isinstance(source, np.ndarray):
        return _checked(_array_to_rgb(source))
    raise TypeError(f"expected an image path, PIL image or HxWx3 uint8 array, got {type(source).__name__}")


def read_image_file(path, read: Callable[[Image.Image], T], kind: str = "image") -> T:
    """``read(img)`` of the decoded image file at ``path``; clear errors for a missing, unreadable or
    too large file (the size is checked from the header, before decoding)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such {kind} file: {path}")
    try:
        with _open(path) as img:
            _check_size(path, img.size)
            img.load()
            return read(img)
    except Image.DecompressionBombError as e:  # frames checked by PIL itself while decoding (GIF, ICO)
        raise ImageTooLargeError(f"{path}: {e}") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        readable = "image" if kind == "image" else f"{kind} image"
        raise ValueError(f"{path} is not a readable {readable} ({e})") from e


def image_size(path) -> tuple[int, int]:
    """(width, height) of an image file from its header, without decoding it."""
    with _open(Path(path)) as img:
        return img.size


def _open(path: Path) -> Image.Image:
    """``Image.open`` (header only) with PIL's decompression-bomb check replaced by ours."""
    with _PIL_LIMIT:
        saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            return Image.open(path)
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def _check_size(path: Path, size: tuple[int, int]) -> None:
    w, h = size
    limit = MAX_IMAGE_PIXELS
    if limit is not None and w * h > limit:
        raise ImageTooLargeError(
            f"{path}: image of {w}x{h} pixels ({w * h / 1e6:.0f} MP, {3 * w * h / 2 ** 30:.1f} GiB as RGB) is over "
            f"the limit of {limit} pixels (iwin_models.io.images.MAX_IMAGE_PIXELS / $IWIN_MAX_IMAGE_PIXELS); "
            f"raise it if this machine has the memory")


def _upright(img: Image.Image) -> Image.Image:
    """The image as a viewer shows it (EXIF orientation applied); no copy when there is nothing to do."""
    if img.getexif().get(0x0112, 1) not in range(2, 9):  # exif_transpose would copy the whole image anyway
        return img
    return ImageOps.exif_transpose(img)


def _checked(image: np.ndarray) -> np.ndarray:
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"empty image (size {image.shape[1]}x{image.shape[0]})")
    return image


def _pil_to_rgb(img: Image.Image) -> np.ndarray:
    if img.mode in SIXTEEN_BIT_MODES:  # 16-bit: scale to 8 bits rather than clip
        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if arr.max() > 255 else 255.0
        img = Image.fromarray(np.clip(arr / peak * 255.0 + 0.5, 0, 255).astype(np.uint8))
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.array(img)  # a writable copy (np.asarray of a PIL image is read-only)


def _array_to_rgb(arr: np.ndarray) -> np.ndarray:
    if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
        raise ValueError(f"expected a channels-last image (H, W, 3), got shape {arr.shape} (channels first?)")
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    if arr.ndim != 3 or arr.shape[-1] not in (3, 4):
        raise ValueError(f"expected an image array of shape (H, W), (H, W, 3) or (H, W, 4), got {arr.shape}")
    arr = arr[..., :3]
    if arr.dtype != np.uint8:
        raise TypeError(f"expected a uint8 image array (0-255), got dtype {arr.dtype}; convert it first")
    return np.ascontiguousarray(arr)
