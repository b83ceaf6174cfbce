"""Segment an image with an exported Iwin UPerNet in onnxruntime: numpy and PIL only, no PyTorch.

The authors' ADE20K test protocol, as ``iwin_models.engine.inference.segment`` runs it: fit the image into
2048x512 keeping its aspect ratio, normalise with ADE20K's mean/std, run the graph on the whole
image, resize the logits bilinearly back to the original size, argmax. The graph must accept that
size, so export it with free sizes (one file for every image):

    iwin-seg export --model iwin_tiny_upernet_ade20k --weights upernet_iwin_tiny.pth --onnx iwin_t.onnx --dynamic
    python examples/onnx_inference.py iwin_t.onnx [IMAGE] [--out labels.png]

Without IMAGE the package's sample picture is used. ``--out`` writes the class map as an 8-bit PNG
(pixel value = ADE20K class index, 0..149).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageOps

SAMPLE = Path(__file__).resolve().parents[1] / "iwin_models" / "assets" / "sample.jpg"
# The test protocol (iwin_models.models.weights.ADE20K_PROTOCOL), restated because this example runs without
# PyTorch; tests/test_inference_bands.py keeps these equal to it.
TEST_SCALE = (2048, 512)  # (long, short) edges the image is fitted into
MEAN = np.array([123.675, 116.28, 103.53], dtype=np.float32)  # ADE20K, RGB 0-255
STD = np.array([58.395, 57.12, 57.375], dtype=np.float32)


def fit_size(h: int, w: int, scale=TEST_SCALE) -> tuple[int, int]:
    """mmcv's keep-ratio rescale: the largest (h, w) with the long edge <= 2048 and the short <= 512."""
    factor = min(max(scale) / max(h, w), min(scale) / min(h, w))
    return max(int(h * factor + 0.5), 1), max(int(w * factor + 0.5), 1)


def _weights(in_size: int, out_size: int):
    """Source indices and weights of a bilinear resize along one axis (half-pixel centres, no
    antialiasing: PyTorch's ``F.interpolate(mode='bilinear', align_corners=False)``)."""
    scale = np.float32(in_size) / np.float32(out_size)
    src = np.maximum(((np.arange(out_size) + 0.5) * np.float64(scale) - 0.5).astype(np.float32), np.float32(0))
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    w1 = np.clip(src - i0, 0, 1).astype(np.float32)
    return i0, i1, np.float32(1) - w1, w1


def resize_bilinear(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize the last two axes of a float32 array to ``size`` (columns first, then rows)."""
    (in_h, in_w), (out_h, out_w) = a.shape[-2:], size
    if in_w != out_w:
        i0, i1, w0, w1 = _weights(in_w, out_w)
        a = a[..., i0] * w0 + a[..., i1] * w1
    if in_h != out_h:
        i0, i1, w0, w1 = _weights(in_h, out_h)
        a = a[..., i0, :] * w0[:, None] + a[..., i1, :] * w1[:, None]
    return a


def load_rgb(path) -> np.ndarray:
    """H x W x 3 uint8, upright (JPEG EXIF orientation applied), any mode converted to RGB."""
    with Image.open(path) as img:
        return np.asarray(ImageOps.exif_transpose(img).convert("RGB"))


def segment(session: ort.InferenceSession, image: np.ndarray) -> np.ndarray:
    """(H, W) class indices of an RGB uint8 image at its own size (the ADE20K protocol, whole image)."""
    h, w = image.shape[:2]
    x = resize_bilinear(image.astype(np.float32).transpose(2, 0, 1), fit_size(h, w))
    x = ((x - MEAN[:, None, None]) / STD[:, None, None])[None]
    (logits,) = session.run(["logits"], {"image": np.ascontiguousarray(x, dtype=np.float32)})
    labels = np.empty((h, w), dtype=np.int64)
    rows = max(1, 2 ** 24 // (logits.shape[1] * w))  # ~64 MB of resized logits at a time
    i0, i1, w0, w1 = _weights(logits.shape[2], h)
    for start in range(0, h, rows):  # resize rows in bands: never C x H x W at the original size
        sl = slice(start, min(start + rows, h))
        band = logits[0][:, i0[sl]] * w0[sl, None] + logits[0][:, i1[sl]] * w1[sl, None]
        labels[sl] = resize_bilinear(band, (band.shape[1], w)).argmax(0)
    return labels


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("onnx", help="an exported segmenter (iwin-seg export --onnx F --dynamic)")
    parser.add_argument("image", nargs="?", default=str(SAMPLE), help="image file (default: the sample)")
    parser.add_argument("--out", help="write the class map here as an 8-bit PNG")
    args = parser.parse_args(argv)

    session = ort.InferenceSession(args.onnx, providers=["CPUExecutionProvider"])
    labels = segment(session, load_rgb(args.image))
    ids, counts = np.unique(labels, return_counts=True)
    top = sorted(zip(counts, ids), reverse=True)[:5]
    print(f"{args.image}: {labels.shape[1]}x{labels.shape[0]}, most frequent classes "
          + ", ".join(f"{i} ({c / labels.size:.0%})" for c, i in top))
    if args.out:
        Image.fromarray(labels.astype(np.uint8)).save(args.out)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
