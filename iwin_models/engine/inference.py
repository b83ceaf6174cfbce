"""Segment images with a segmenter's test protocol (:class:`~iwin_models.models.weights.EvalProtocol`; default the
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
  (:mod:`iwin_models.engine.bands`), never holding ``C x H x W`` at the original size; on the CPU the scores are
  bitwise those of :func:`predict_probs` (tested).

On the CPU all three run the model with its fast twins as :func:`iwin_models.fast.with_cpu_twins` decides (a
converted copy sharing the weights; ``fast=False`` or ``IWIN_FAST_PATH=0`` runs the model as given). Pictures
of the result are in :mod:`iwin_models.apps.visualize`, image decoding in :mod:`iwin_models.io.images`.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..data.transforms import rescale_size
from ..fast import with_cpu_twins
from ..io.images import load_image
from ..models.weights import ADE20K_PROTOCOL, EvalProtocol
from . import bands

__all__ = ["predict", "predict_probs", "segment", "input_sizes", "inference_model"]


# --- the protocol's pieces ------------------------------------------------------------------------

def input_sizes(h: int, w: int, aug: bool = False, scale: Sequence[int] | None = None,
                protocol: EvalProtocol = ADE20K_PROTOCOL) -> list[tuple[int, int]]:
    """The model's input size (h, w) of each scale the protocol runs for an h x w image (one without ``aug``):
    mmcv's keep-ratio fit into ``scale`` (default ``protocol.scale``) times each of ``protocol.aug_ratios``."""
    scale = protocol.scale if scale is None else scale
    return [rescale_size(h, w, [s * ratio for s in scale]) for ratio in (protocol.aug_ratios if aug else (1.0,))]


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
    """``model`` in eval mode, run with its CPU fast twins as the package's one policy decides
    (:func:`iwin_models.fast.with_cpu_twins`). Callers that segment many images (``evaluate``) make it once and
    pass ``fast=False`` to each call."""
    return with_cpu_twins(model.eval(), fast)


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
        image: path, PIL image, HxWx3 uint8 array or tensor (see :func:`iwin_models.io.images.load_image`).
        aug: multi-scale (``protocol.aug_ratios`` of ``scale``) + horizontal flip, scores averaged; the
            mirrored image runs in a forward pass of its own.
        slide: sliding-window inference (``protocol.slide_crop`` crops at ``protocol.slide_stride``)
            instead of whole-image.
        dtype: e.g. ``torch.bfloat16`` to run under autocast (CPU or GPU); scores are float32.
        scale: the (long, short) size the image is fitted into (default ``protocol.scale``).
        protocol: the test protocol (default the authors' ADE20K one; a registered segmenter's is
            ``iwin_models.models.weights.SEGMENTERS[name].protocol``).
        fast: run the model with its CPU fast twins (default: on the CPU unless ``IWIN_FAST_PATH=0``;
            True: always, refusing a model they cannot convert; False: the model as given).
    """
    image = load_image(image)
    model = inference_model(model, fast)
    device, finite = _device(model), bands.FiniteCheck()
    h, w = image.shape[:2]
    probs = None
    sizes = input_sizes(h, w, aug, scale, protocol)
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
              for size in input_sizes(h, w, aug, scale, protocol)]
    labels, confidence = bands.class_map(groups, (h, w), rows=band_rows, confidence=return_confidence,
                                         labels_dtype=labels_dtype)
    forward.finite.raise_if_not_finite()
    return (labels, confidence) if return_confidence else labels


def segment(model, image, *, aug: bool = False, slide: bool = False, dtype: torch.dtype | None = None,
            scale: Sequence[int] | None = None, protocol: EvalProtocol = ADE20K_PROTOCOL,
            fast: bool | None = None) -> np.ndarray:
    """The (H, W) int64 class map of ``image`` at its original resolution (see :func:`predict`)."""
    return predict(model, image, aug=aug, slide=slide, dtype=dtype, scale=scale, protocol=protocol, fast=fast)
