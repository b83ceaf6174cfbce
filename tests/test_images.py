"""Image decoding in ``iwin_models.io.images``: the size check before decoding, PIL's limit replaced, the
modules that read images through it, and the old import path ``iwin_models.io`` (warns, same objects)."""
from __future__ import annotations

import struct
import subprocess
import sys
import warnings
import zlib

import numpy as np
import pytest
from conftest import REPO
from PIL import Image

import iwin_models.io.images as images


def _png_header(path, width: int, height: int):
    """A PNG file that claims ``width`` x ``height`` pixels and holds almost nothing (a decompression bomb's header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


def test_an_image_over_the_limit_is_refused_from_its_header(tmp_path):
    bomb = _png_header(tmp_path / "bomb.png", 50000, 50000)  # 2.5 gigapixels, 7 GB as RGB
    assert images.image_size(bomb) == (50000, 50000)
    with pytest.raises(images.ImageTooLargeError, match=r"bomb.png: image of 50000x50000 pixels \(2500 MP, 7.0 GiB"):
        images.load_image(bomb)
    with pytest.raises(ValueError, match="iwin_models.io.images.MAX_IMAGE_PIXELS"):  # a ValueError: the CLI goes on
        images.read_image_file(bomb, lambda img: img, kind="label")


def test_pil_limit_is_replaced_by_ours_and_restored(tmp_path, monkeypatch):
    """A 100 MP aerial tile is over PIL's 89 MP bomb warning; our limit decides instead (here scaled down)."""
    path = tmp_path / "tile.png"
    Image.fromarray(np.full((40, 50, 3), 7, np.uint8)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)  # PIL would raise (2000 px > 2 x 500)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert images.load_image(path).shape == (40, 50, 3)
    assert Image.MAX_IMAGE_PIXELS == 500  # put back
    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 1999)
    with pytest.raises(images.ImageTooLargeError, match="50x40 pixels"):
        images.load_image(path)
    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", None)  # no limit
    assert images.load_image(path).shape == (40, 50, 3)


def test_default_limit_admits_aerial_tiles():
    assert images.MAX_IMAGE_PIXELS >= 10000 * 10000 * 4 and images.MAX_IMAGE_PIXELS <= 2 ** 31


def test_data_and_inference_read_through_this_module(tmp_path):
    import iwin_models.data.datasets as data
    import iwin_models.engine.inference as inference

    assert inference.load_image is images.load_image
    rgb = np.random.default_rng(0).integers(0, 255, (9, 11, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    assert np.array_equal(data.read_image(tmp_path / "a.png"), rgb)
    Image.fromarray(rgb[..., 0]).save(tmp_path / "l.png")
    assert np.array_equal(data.read_label(tmp_path / "l.png"), rgb[..., 0].astype(np.int64))
    out = images.load_image(tmp_path / "a.png")
    assert out.flags.writeable and out.flags.c_contiguous


def test_sixteen_bit_images_scale_to_eight_bits_and_labels_keep_their_values(tmp_path):
    import iwin_models.data.datasets as data

    deep = (np.arange(12, dtype=np.uint16) * 5000).reshape(3, 4)  # up to 55000
    Image.fromarray(deep).save(tmp_path / "deep.png")
    rgb = images.load_image(tmp_path / "deep.png")
    np.testing.assert_array_equal(rgb[..., 0], np.clip(deep / 65535 * 255 + 0.5, 0, 255).astype(np.uint8))
    np.testing.assert_array_equal(data.read_label(tmp_path / "deep.png"), deep.astype(np.int64))


# --- the old module name ---------------------------------------------------------------------------

def _python(*args: str, code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
