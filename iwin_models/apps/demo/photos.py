"""Reading a visitor's photo: :func:`photo_file` (the file Gradio hands over, or a pasted ``data:`` URL) and
:func:`read_photo` (as :func:`iwin_models.io.images.load_image` reads it: EXIF orientation applied once, the size
checked from the header before decoding); what cannot be read is a :class:`PhotoError` whose message says why."""
from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ...io import images

__all__ = ["MAX_PIXELS", "PhotoError", "read_photo", "photo_file"]

MAX_PIXELS = 100_000_000  # a photo over this many pixels (header) is refused before decoding


class PhotoError(ValueError):
    """A photo the page cannot segment (missing, not an image, corrupt, too large): the message says why."""


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
