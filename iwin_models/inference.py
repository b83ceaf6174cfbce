"""Segment images with a segmenter's test protocol (:class:`~iwin_models.weights.EvalProtocol`; default the
authors' ADE20K one), in memory bounded by the work.

The protocol (mmseg's test pipeline): resize keeping the aspect ratio so that the image fits in
``protocol.scale``, normalise with its mean and std, run on the whole image, resize the logits back to the
original size (bilinear, align_corners False), softmax, argmax. Options: sliding-window inference
(``slide_crop`` crops at ``slide_stride``, overlapping logits averaged) and multi-scale (``aug_ratios``)
+ horizontal flip, the softmax scores averaged.

It is written twice:

* :func:`predict_probs` is the definition, plainly: it holds the class scores of every pixel at the
  original size, ``4 * C * H * W`` bytes (150 classes: 600 bytes a pixel, 7.2 GB for a 12 MP photo).
* :func:`predict` and :func:`segment` compute the same class map in bands of output rows
  (:mod:`iwin_models.bands`), never holding ``C x H x W`` at the original size; on the CPU the scores are
  bitwise those of :func:`predict_probs` (tested).

On the CPU all three run the model with its fast twins (:func:`iwin_models.optimize_for_cpu`, a converted
copy sharing the weights; ``fast=False`` or ``IWIN_FAST_PATH=0`` runs the model as given). Pictures of the
result are in :mod:`iwin_models.visualize`, image decoding in :mod:`iwin_models.images` (their functions
are re-exported here).
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import bands, optimize
from .images import load_image, read_image_file  # noqa: F401  (re-exported: their old home)
from .layers.twin import CpuTwin
from .visualize import colorize, overlay  # noqa: F401  (re-exported: their old home)
from .weights import ADE20K_PROTOCOL, EvalProtocol

__all__ = ["load_image", "predict", "predict_probs", "segment", "colorize", "overlay", "SAMPLE_IMAGE"]

SAMPLE_IMAGE = Path(__file__).with_name("assets") / "sample.jpg"
# The ADE20K protocol under its old names (read-only aliases: pass ``protocol=`` to change it)
TEST_SCALE = ADE20K_PROTOCOL.scale
AUG_RATIOS = ADE20K_PROTOCOL.aug_ratios
SLIDE_CROP, SLIDE_STRIDE = ADE20K_PROTOCOL.slide_crop, ADE20K_PROTOCOL.slide_stride
_WARNED: set[str] = set()  # fast-twin refusals already reported


# --- the protocol's pieces ------------------------------------------------------------------------

def _rescale_size(h: int, w: int, scale: Sequence[float]) -> tuple[int, int]:
    """mmcv's keep-ratio rescale: the largest size fitting ``scale`` (long, short edges)."""
    factor = min(max(scale) / max(h, w), min(scale) / min(h, w))
    return max(int(h * factor + 0.5), 1), max(int(w * factor + 0.5), 1)


def _scales(h: int, w: int, aug: bool, scale: Sequence[int] | None, protocol: EvalProtocol) -> list[tuple[int, int]]:
    """The model's input size of each scale the protocol runs (one without ``aug``)."""
    scale = protocol.scale if scale is None else scale
    return [_rescale_size(h, w, [s * ratio for s in scale]) for ratio in (protocol.aug_ratios if aug else (1.0,))]


def _flips(aug: bool, protocol: EvalProtocol) -> tuple[bool, ...]:
    return (False, True) if aug and protocol.aug_flip else (False,)


def _normalise(image: np.ndarray, size: tuple[int, int], device, protocol: EvalProtocol) -> torch.Tensor:
    """(1, 3, *size) normalised float input of an RGB uint8 image (or a crop of one)."""
    x = torch.from_numpy(image if image.flags.writeable else image.copy()).to(device).permute(2, 0, 1)[None].float()
    if tuple(x.shape[-2:]) != size:
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    mean = torch.tensor(protocol.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(protocol.std, device=device).view(1, 3, 1, 1)
    return (x - mean) / std


def _slide_boxes(h: int, w: int, protocol: EvalProtocol) -> tuple[bands.Spans, bands.Spans]:
    """mmseg's sliding windows over an h x w input: the (start, stop) rows and columns of the crops
    (the crops are every row span with every column span, taken row by row)."""
    def spans(size: int) -> bands.Spans:
        crop, stride = min(protocol.slide_crop, size), protocol.slide_stride
        n = max(size - crop + stride - 1, 0) // stride + 1
        return [(min(i * stride + crop, size) - crop, min(i * stride + crop, size)) for i in range(n)]
    return spans(h), spans(w)


def inference_model(model, fast: bool | None = None):
    """``model`` in eval mode, with its CPU fast twins by default: a converted copy sharing the weights
    (``optimize_for_cpu(model, inplace=False)``) when it is on the CPU and ``IWIN_FAST_PATH`` is not 0.

    ``fast=False`` gives the model as it is; ``fast=True`` converts or raises. A model already converted
    is given as it is. Callers that segment many images (``evaluate``) make it once and pass ``fast=False``.
    """
    model.eval()
    converted = any(isinstance(m, CpuTwin) for m in model.modules())
    if fast is False or converted or (fast is None and not optimize.wants_cpu_twins(model)):
        return model
    try:
        return optimize.optimize_for_cpu(model, inplace=False)
    except (TypeError, ValueError) as e:
        if fast:  # asked for: refuse as the conversion does
            raise
        if isinstance(e, ValueError) and str(e) not in _WARNED:  # an Iwin model it cannot convert
            _WARNED.add(str(e))
            warnings.warn(f"running the plain model: {e}", RuntimeWarning, stacklevel=3)
        return model  # TypeError: nothing to convert (not an Iwin model)


def _device(model) -> torch.device:
    return next(model.parameters()).device


# --- the definition: full-resolution scores --------------------------------------------------------

def _model_logits(model, x: torch.Tensor, flip: bool, dtype, finite: bands.FiniteCheck) -> torch.Tensor:
    """``model(x)`` (float32), or with ``flip`` the logits of the mirrored input mirrored back."""
    with bands.autocast(x.device, dtype):
        logits = finite.see(model(x.flip(-1) if flip else x).float())
    return logits.flip(-1) if flip else logits


def _slide_logits(model, x: torch.Tensor, flip: bool, dtype, finite: bands.FiniteCheck,
                  protocol: EvalProtocol) -> torch.Tensor:
    """mmseg's slide inference: crops at a stride, overlapping logits averaged (whole accumulator)."""
    _, _, h, w = x.shape
    row_spans, col_spans = _slide_boxes(h, w, protocol)
    total = None  # sized from the first logits: the class count is whatever the model returns
    count = x.new_zeros((1, 1, h, w))
    for y1, y2 in row_spans:
        for x1, x2 in col_spans:
            logits = _model_logits(model, x[:, :, y1:y2, x1:x2].contiguous(), flip, dtype, finite)
            if total is None:
                total = x.new_zeros((1, logits.shape[1], h, w))
            total[:, :, y1:y2, x1:x2] += logits
            count[:, :, y1:y2, x1:x2] += 1
    return total / count


@torch.no_grad()
def predict_probs(model, image, *, aug: bool = False, slide: bool = False, dtype: torch.dtype | None = None,
                  scale: Sequence[int] | None = None, protocol: EvalProtocol = ADE20K_PROTOCOL,
                  fast: bool | None = None) -> torch.Tensor:
    """Softmax class scores (C, H, W) at the image's original size: the protocol written out plainly.

    Costs ``4 * C * H * W`` bytes for the result and as much again while it is made (150 classes: 600
    bytes a pixel, 7.2 GB for a 12-megapixel photo). For the class map and the per-pixel confidence
    use :func:`predict`, which computes the same scores a band of rows at a time.

    Args:
        model: a segmenter returning logits at its input size (e.g. :class:`IwinUPerNet`); put in
            eval mode here.
        image: path, PIL image, HxWx3 uint8 array or tensor (see :func:`iwin_models.images.load_image`).
        aug: multi-scale (``protocol.aug_ratios`` of ``scale``) + horizontal flip, scores averaged; the
            mirrored image runs in a forward pass of its own.
        slide: sliding-window inference (``protocol.slide_crop`` crops at ``protocol.slide_stride``)
            instead of whole-image.
        dtype: e.g. ``torch.bfloat16`` to run under autocast (CPU or GPU); scores are float32.
        scale: the (long, short) size the image is fitted into (default ``protocol.scale``).
        protocol: the test protocol (default the authors' ADE20K one; a registered segmenter's is
            ``iwin_models.weights.SEGMENTERS[name].protocol``).
        fast: run the model with its CPU fast twins (default: on the CPU unless ``IWIN_FAST_PATH=0``;
            True: always, refusing a model they cannot convert; False: the model as given).
    """
    image = load_image(image)
    model = inference_model(model, fast)
    device, finite = _device(model), bands.FiniteCheck()
    h, w = image.shape[:2]
    probs = None
    sizes = _scales(h, w, aug, scale, protocol)
    for size in sizes:
        x = _normalise(image, size, device, protocol)
        scores = None
        for flip in _flips(aug, protocol):
            logits = (_slide_logits(model, x, flip, dtype, finite, protocol) if slide
                      else _model_logits(model, x, flip, dtype, finite))
            s = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False).softmax(dim=1)
            scores = s if scores is None else scores + s
        probs = scores if probs is None else probs + scores
    finite.raise_if_not_finite()
    return (probs / (len(sizes) * len(_flips(aug, protocol))))[0]


# --- the same in bands of rows ---------------------------------------------------------------------

def _passes(forward: bands.LowResForward, image: np.ndarray, size: tuple[int, int], aug: bool, slide: bool,
            protocol: EvalProtocol, device) -> list[bands.Pass]:
    """The passes of one scale: the image, and with ``aug`` its mirror (each its own forward pass)."""
    flips = _flips(aug, protocol)
    if slide:
        boxes = _slide_boxes(*size, protocol)
        if size == image.shape[:2]:  # native resolution: crops normalised as they are needed
            def crop(y1, x1, y2, x2):
                return _normalise(image[y1:y2, x1:x2], (y2 - y1, x2 - x1), device, protocol).contiguous()
        else:
            x = _normalise(image, size, device, protocol)

            def crop(y1, x1, y2, x2):
                return x[:, :, y1:y2, x1:x2].contiguous()
        return [bands.SlidePass(forward, crop, size, flip, boxes) for flip in flips]
    x = _normalise(image, size, device, protocol)
    return [bands.WholePass(forward, x, flip) for flip in flips]


@torch.no_grad()
def predict(model, image, *, aug: bool = False, slide: bool = False, dtype: torch.dtype | None = None,
            scale: Sequence[int] | None = None, return_confidence: bool = False, labels_dtype=np.int64,
            band_rows: int | None = None, protocol: EvalProtocol = ADE20K_PROTOCOL, fast: bool | None = None):
    """The class map (H, W) of ``image`` at its original size, and with ``return_confidence`` the
    averaged softmax score of each pixel's class (H, W float32): ``(labels, confidence)``.

    The scores are those of :func:`predict_probs` (same arguments), computed a band of output rows at a
    time: memory is the model's forward pass plus ~``bands.BAND_BYTES`` a band, never ``C x H x W``.

    Args:
        labels_dtype: of the returned class map (e.g. ``np.uint8`` for up to 256 classes).
        band_rows: output rows per band (default: about ``bands.BAND_BYTES`` per band tensor, on vector
            boundaries so that the scores are bitwise those of :func:`predict_probs`).
        model, image, aug, slide, dtype, scale, protocol, fast: see :func:`predict_probs`.
    """
    image = load_image(image)
    model = inference_model(model, fast)
    forward = bands.LowResForward(model, dtype)
    h, w = image.shape[:2]
    groups = [_passes(forward, image, size, aug, slide, protocol, _device(model))
              for size in _scales(h, w, aug, scale, protocol)]
    labels, confidence = bands.class_map(groups, (h, w), rows=band_rows, confidence=return_confidence,
                                         labels_dtype=labels_dtype)
    forward.finite.raise_if_not_finite()
    return (labels, confidence) if return_confidence else labels


def segment(model, image, *, aug: bool = False, slide: bool = False, dtype: torch.dtype | None = None,
            scale: Sequence[int] | None = None, protocol: EvalProtocol = ADE20K_PROTOCOL,
            fast: bool | None = None) -> np.ndarray:
    """The (H, W) int64 class map of ``image`` at its original resolution (see :func:`predict`)."""
    return predict(model, image, aug=aug, slide=slide, dtype=dtype, scale=scale, protocol=protocol, fast=fast)
