"""Segment images as the authors' ADE20K test protocol does, and the ``iwin-seg predict`` command.

Protocol (mmseg config of the official repository): resize keeping the aspect ratio so that the image
fits in 2048x512, normalise, run on the whole image, resize the logits back to the original size
(bilinear, align_corners False), softmax, argmax. Options: sliding-window inference (512 crops,
stride 341) and multi-scale (ratios 0.5..1.75) + horizontal flip with averaged softmax scores.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from . import ade20k

__all__ = ["load_image", "predict_probs", "segment", "colorize", "overlay", "SAMPLE_IMAGE"]

T = TypeVar("T")
SAMPLE_IMAGE = Path(__file__).with_name("assets") / "sample.jpg"
TEST_SCALE = (2048, 512)
AUG_RATIOS = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
SLIDE_CROP, SLIDE_STRIDE = 512, 341


def load_image(source, exif: bool = True) -> np.ndarray:
    """An RGB uint8 array (H, W, 3) from a path, PIL image, array (HxW, HxWx1/3/4) or uint8 tensor.

    Grayscale, RGBA (alpha dropped), palette and 16-bit images are converted to RGB; JPEG EXIF
    orientation is applied (unless ``exif`` is False), so the class map matches the image as a viewer
    shows it.
    """
    if isinstance(source, (str, os.PathLike)):
        return read_image_file(source, lambda img: _checked(_pil_to_rgb(ImageOps.exif_transpose(img) if exif else img)))
    if isinstance(source, Image.Image):
        return _checked(_pil_to_rgb(source))
    if isinstance(source, torch.Tensor):
        source = source.detach().cpu().numpy()
    if isinstance(source, np.ndarray):
        return _checked(_array_to_rgb(source))
    raise TypeError(f"expected an image path, PIL image or HxWx3 uint8 array, got {type(source).__name__}")


def read_image_file(path, read: Callable[[Image.Image], T], kind: str = "image") -> T:
    """``read(img)`` of the decoded image file at ``path``; clear errors for a missing or unreadable file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such {kind} file: {path}")
    try:
        with Image.open(path) as img:
            img.load()
            return read(img)
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        readable = "image" if kind == "image" else f"{kind} image"
        raise ValueError(f"{path} is not a readable {readable} ({e})") from e


def _checked(image: np.ndarray) -> np.ndarray:
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"empty image (size {image.shape[1]}x{image.shape[0]})")
    return image


def _pil_to_rgb(img: Image.Image) -> np.ndarray:
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):  # 16-bit: scale to 8 bits rather than clip
        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if arr.max() > 255 else 255.0
        img = Image.fromarray(np.clip(arr / peak * 255.0 + 0.5, 0, 255).astype(np.uint8))
    return np.array(img.convert("RGB"))  # a writable copy (np.asarray of a PIL image is read-only)


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


def _rescale_size(h: int, w: int, scale: Sequence[int]) -> tuple[int, int]:
    """mmcv's keep-ratio rescale: the largest size fitting ``scale`` (long, short edges)."""
    factor = min(max(scale) / max(h, w), min(scale) / min(h, w))
    return max(int(h * factor + 0.5), 1), max(int(w * factor + 0.5), 1)


def _normalise(image: np.ndarray, size: tuple[int, int], device) -> torch.Tensor:
    x = torch.from_numpy(np.array(image)).to(device).permute(2, 0, 1)[None].float()
    if tuple(x.shape[-2:]) != size:
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    mean = torch.tensor(ade20k.MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(ade20k.STD, device=device).view(1, 3, 1, 1)
    return (x - mean) / std


def _autocast(device, dtype):
    if dtype is None or dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def _forward(model, x: torch.Tensor, flip: bool, dtype) -> torch.Tensor:
    """Logits of x (B=1) at its own size. With ``flip`` the mirrored image rides in the same batch and
    its logits are mirrored back: (2, C, H, W), both in the original orientation."""
    batch = torch.cat([x, x.flip(-1)]) if flip else x
    with _autocast(x.device, dtype):
        logits = model(batch).float()
    return torch.cat([logits[:1], logits[1:].flip(-1)]) if flip else logits


def _slide_logits(model, x: torch.Tensor, flip: bool, dtype, batch_size: int = 4) -> torch.Tensor:
    """mmseg's slide inference: 512 crops at stride 341, overlapping logits averaged."""
    _, _, H, W = x.shape
    crop_h, crop_w = min(SLIDE_CROP, H), min(SLIDE_CROP, W)
    rows = max(H - crop_h + SLIDE_STRIDE - 1, 0) // SLIDE_STRIDE + 1
    cols = max(W - crop_w + SLIDE_STRIDE - 1, 0) // SLIDE_STRIDE + 1
    boxes = []
    for r in range(rows):
        for c in range(cols):
            y2, x2 = min(r * SLIDE_STRIDE + crop_h, H), min(c * SLIDE_STRIDE + crop_w, W)
            boxes.append((y2 - crop_h, x2 - crop_w, y2, x2))
    total = None  # sized from the first logits: the class count is whatever the model returns
    count = x.new_zeros((1, 1, H, W))
    for start in range(0, len(boxes), batch_size):  # crops share one size, so they batch
        chunk = boxes[start:start + batch_size]
        crops = torch.cat([x[:, :, y1:y2, x1:x2] for y1, x1, y2, x2 in chunk])
        if flip:
            crops = torch.cat([crops, crops.flip(-1)])
        with _autocast(x.device, dtype):
            logits = model(crops).float()
        if total is None:
            total = x.new_zeros((2 if flip else 1, logits.shape[1], H, W))
        for i, (y1, x1, y2, x2) in enumerate(chunk):
            total[0, :, y1:y2, x1:x2] += logits[i]
            if flip:  # the mirrored crop's logits, mirrored back into place
                total[1, :, y1:y2, x1:x2] += logits[len(chunk) + i].flip(-1)
            count[:, :, y1:y2, x1:x2] += 1
    return total / count


@torch.no_grad()
def predict_probs(model, image, *, aug: bool = False, slide: bool = False, dtype: torch.dtype | None = None,
                  scale: Sequence[int] = TEST_SCALE) -> torch.Tensor:
    """Softmax class scores (C, H, W) at the image's original size.

    Args:
        model: a segmenter returning logits at its input size (e.g. :class:`IwinUPerNet`); put in
            eval mode here.
        image: path, PIL image, HxWx3 uint8 array or tensor (see :func:`load_image`).
        aug: multi-scale (ratios 0.5..1.75 of ``scale``) + horizontal flip, scores averaged.
        slide: sliding-window inference (512x512 crops, stride 341) instead of whole-image.
        dtype: e.g. ``torch.bfloat16`` to run under autocast (CPU or GPU); scores are float32.
        scale: the (long, short) size the image is fitted into (2048x512 for ADE20K).
    """
    image = load_image(image)
    model.eval()
    device = next(model.parameters()).device
    h, w = image.shape[:2]
    probs = None
    ratios = AUG_RATIOS if aug else (1.0,)
    for ratio in ratios:
        size = _rescale_size(h, w, [s * ratio for s in scale])
        x = _normalise(image, size, device)
        if slide:
            logits = _slide_logits(model, x, aug, dtype)
        else:
            logits = _forward(model, x, aug, dtype)
        if not torch.isfinite(logits).all():
            raise FloatingPointError("the model produced NaN/Inf logits (bad weights, or overflow in low precision)")
        logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
        scores = logits.softmax(dim=1).sum(0)  # with aug: the image and its mirror
        probs = scores if probs is None else probs + scores
    return probs / (len(ratios) * (2 if aug else 1))


def segment(model, image, *, aug: bool = False, slide: bool = False, dtype: torch.dtype | None = None,
            scale: Sequence[int] = TEST_SCALE) -> np.ndarray:
    """The (H, W) int64 class map of ``image`` at its original resolution (see :func:`predict_probs`)."""
    return predict_probs(model, image, aug=aug, slide=slide, dtype=dtype, scale=scale).argmax(0).cpu().numpy()


# --- pictures ------------------------------------------------------------------------------------

def colorize(labels: np.ndarray, palette: Sequence[Sequence[int]] = ade20k.PALETTE) -> np.ndarray:
    """RGB picture (H, W, 3) of a class map."""
    table = np.zeros((256, 3), dtype=np.uint8)
    table[:len(palette)] = np.asarray(palette, dtype=np.uint8)[:256]
    return table[np.clip(labels, 0, 255)]


def overlay(image: np.ndarray, labels: np.ndarray, class_names: Sequence[str] = ade20k.CLASSES,
            palette: Sequence[Sequence[int]] = ade20k.PALETTE, alpha: float = 0.5) -> Image.Image:
    """The image blended with its class colours, with a legend of the classes present (by area)."""
    from PIL import ImageDraw, ImageFont

    blend = (image * (1 - alpha) + colorize(labels, palette) * alpha).astype(np.uint8)
    ids, counts = np.unique(labels, return_counts=True)
    present = [int(i) for i in ids[np.argsort(-counts)] if 0 <= i < len(class_names)]
    font = ImageFont.load_default()
    row, pad = 16, 6
    labels_text = {i: f"{class_names[i].strip()} {counts[ids == i][0] / labels.size:.0%}" for i in present}
    legend_w = 14 + max([int(font.getlength(t)) for t in labels_text.values()] + [60]) + 2 * pad
    h, w = blend.shape[:2]
    canvas = Image.new("RGB", (w + legend_w, max(h, pad * 2 + row * len(present))), "white")
    canvas.paste(Image.fromarray(blend), (0, 0))
    draw = ImageDraw.Draw(canvas)
    for n, i in enumerate(present):
        y = pad + n * row
        draw.rectangle([w + pad, y + 2, w + pad + 10, y + 12], fill=tuple(int(c) for c in palette[i]), outline="black")
        draw.text((w + pad + 14, y), labels_text[i], fill="black", font=font)
    return canvas


# --- iwin-seg predict -----------------------------------------------------------------------------

_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def add_arguments(parser) -> None:
    from .segmenter import SEGMENTERS

    parser.add_argument("images", nargs="*", metavar="IMAGE",
                        help="image files or folders (default: the bundled sample photograph)")
    parser.add_argument("--model", default="iwin_tiny_upernet_ade20k",
                        help=f"segmenter name ({', '.join(SEGMENTERS)}) or a folder written by save_pretrained")
    parser.add_argument("--weights", help="official mmseg .pth, safetensors file or folder, or URL "
                                          "(default: the official checkpoint, from the torch.hub cache)")
    parser.add_argument("--out", default="iwin_seg_out", help="output folder (default: %(default)s)")
    parser.add_argument("--aug", action="store_true", help="multi-scale + flip test-time augmentation")
    parser.add_argument("--slide", action="store_true", help="sliding-window inference (512 crops, stride 341)")
    parser.add_argument("--dtype", choices=sorted(_DTYPES), default="fp32", help="autocast precision")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")


def load_model(name: str, weights: str | None = None, device: str = "cpu"):
    """A segmenter by registered name, or from a ``save_pretrained`` folder; ``weights`` overrides."""
    from .segmenter import SEGMENTERS, IwinUPerNet, create_segmenter, load_segmenter_weights

    try:
        device = torch.device(device)
    except RuntimeError as e:
        raise ValueError(f"bad device {device!r}: {e}") from None
    if name in SEGMENTERS:
        if weights is not None and Path(weights).is_dir():
            model = IwinUPerNet.from_pretrained(weights)
        else:
            model = create_segmenter(name, pretrained=True, weights=weights)
    elif Path(name).is_dir():
        model = IwinUPerNet.from_pretrained(name)
        if weights is not None:  # the folder gives the architecture, --weights the tensors
            load_segmenter_weights(model, weights)
    else:
        raise ValueError(f"unknown model {name!r}: choose one of {', '.join(SEGMENTERS)} or a save_pretrained folder")
    return model.to(device).eval()


def _expand(paths: Sequence[str]) -> list[Path]:
    files = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.suffix.lower() in {".jpg", ".jpeg", ".png", ".bmp", ".webp"})
            if not found:
                raise FileNotFoundError(f"no images in folder {p}")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"no such image file or folder: {p}")
    return files


def run(args) -> int:
    from tqdm import tqdm

    files = _expand(args.images) if args.images else [SAMPLE_IMAGE]
    model = load_model(args.model, args.weights, args.device)
    names = model.class_names or [f"class {i}" for i in range(model.num_classes)]
    palette = model.palette or ade20k.PALETTE
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for path in tqdm(files, desc="segmenting", unit="img", disable=len(files) < 2):
        image = load_image(path)
        labels = segment(model, image, aug=args.aug, slide=args.slide, dtype=_DTYPES[args.dtype])
        overlay(image, labels, names, palette).save(out / f"{path.stem}_overlay.png")
        # raw label map: class index per pixel (uint8 holds up to 256 classes)
        label_image = Image.fromarray(labels.astype(np.uint8 if labels.max() < 256 else np.uint16))
        label_image.save(out / f"{path.stem}_labels.png")
        print(f"{path} -> {out / (path.stem + '_overlay.png')}, {out / (path.stem + '_labels.png')}")
    return 0
