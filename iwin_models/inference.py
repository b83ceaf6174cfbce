"""Segment images with the authors' ADE20K test protocol, in memory bounded by the work.

Protocol (mmseg config of the official repository): resize keeping the aspect ratio so that the image
fits in 2048x512, normalise, run on the whole image, resize the logits back to the original size
(bilinear, align_corners False), softmax, argmax. Options: sliding-window inference (512 crops,
stride 341, overlapping logits averaged) and multi-scale (ratios 0.5..1.75) + horizontal flip, the
softmax scores averaged.

The protocol is written twice:

* :func:`predict_probs` is the definition, plainly: it holds the class scores of every pixel at the
  original size, ``4 * C * H * W`` bytes (150 classes: 600 bytes a pixel, 7.2 GB for a 12 MP photo).
* :func:`predict` and :func:`segment` compute the same class map in bands of output rows, never holding
  ``C x H x W`` at the original size. Bilinear resizing is separable and each output row reads two
  input rows, so a band of output rows needs a known band of logits rows; a band is resized, softmaxed,
  averaged over the passes, argmaxed and released. Each pass keeps only the model's stride-4 logits
  (16x fewer values than at its input size). With sliding windows the crops are run one row of crops at
  a time as the bands reach them and dropped once the bands have passed, so no accumulator spans the
  image. The bands repeat PyTorch's CPU bilinear kernel operation for operation (the fused
  multiply-add included) and start on vector boundaries, so on the CPU the scores are bitwise those of
  :func:`predict_probs` (tested); labels can differ only where two classes' scores are exactly equal.

Image decoding lives in :mod:`iwin_models.io` (``load_image`` is re-exported here).
"""
from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from . import ade20k
from .io import load_image, read_image_file  # noqa: F401  (re-exported: their old home)

__all__ = ["load_image", "predict", "predict_probs", "segment", "colorize", "overlay", "SAMPLE_IMAGE"]

SAMPLE_IMAGE = Path(__file__).with_name("assets") / "sample.jpg"
TEST_SCALE = (2048, 512)
AUG_RATIOS = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
SLIDE_CROP, SLIDE_STRIDE = 512, 341
# Output rows per band: about this many bytes per band tensor (C x rows x width float32); up to seven such
# buffers live, kept from band to band (see _Workspace). Fewer, larger operations matter on a busy CPU
# (each one hands work to the other threads: on 2 shared cores, ~8 ms median for a 1.6 MB operation,
# 0.5 ms alone), so 128 MB: a 12 MP photo in bands of ~50 rows.
BAND_BYTES = 128 * 2 ** 20
# Rows sharing their two source rows are computed together (two operations a run, no copies); with this
# many runs or more in a band the rows are gathered instead (four operations, two more copies).
_RUNS = 4


# --- the protocol's pieces ------------------------------------------------------------------------

def _rescale_size(h: int, w: int, scale: Sequence[float]) -> tuple[int, int]:
    """mmcv's keep-ratio rescale: the largest size fitting ``scale`` (long, short edges)."""
    factor = min(max(scale) / max(h, w), min(scale) / min(h, w))
    return max(int(h * factor + 0.5), 1), max(int(w * factor + 0.5), 1)


def _normalise(image: np.ndarray, size: tuple[int, int], device) -> torch.Tensor:
    """(1, 3, *size) normalised float input of an RGB uint8 image (or a crop of one)."""
    x = torch.from_numpy(image if image.flags.writeable else image.copy()).to(device).permute(2, 0, 1)[None].float()
    if tuple(x.shape[-2:]) != size:
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    mean = torch.tensor(ade20k.MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(ade20k.STD, device=device).view(1, 3, 1, 1)
    return (x - mean) / std


def _autocast(device, dtype):
    if dtype is None or dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def _finite(logits: torch.Tensor) -> torch.Tensor:
    if not torch.isfinite(logits).all():
        raise FloatingPointError("the model produced NaN/Inf logits (bad weights, or overflow in low precision)")
    return logits


def _model_logits(model, x: torch.Tensor, flip: bool, dtype) -> torch.Tensor:
    """``model(x)`` (float32), or with ``flip`` the logits of the mirrored input mirrored back."""
    with _autocast(x.device, dtype):
        logits = _finite(model(x.flip(-1) if flip else x).float())
    return logits.flip(-1) if flip else logits


def _decodes_at_stride_4(model) -> bool:
    from .segmenter import IwinUPerNet

    return isinstance(model, IwinUPerNet) and type(model).forward is IwinUPerNet.forward


def _low_res_logits(model, x: torch.Tensor, dtype) -> torch.Tensor:
    """The logits ``model(x)`` resizes to ``x``'s size last (NCHW float32): for :class:`IwinUPerNet` its
    decode head's stride-4 logits, 16x fewer values; for another model ``model(x)`` itself.
    (Under autocast the final resize then runs in float32 rather than in the autocast type.)"""
    with _autocast(x.device, dtype):
        if _decodes_at_stride_4(model):
            model.check_input_shape(x)
            logits = model.decode(model.encoder(x))
        else:
            logits = model(x)
    return _finite(logits.float().contiguous())


def _slide_boxes(h: int, w: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """mmseg's sliding windows over an h x w input: the (start, stop) rows and columns of the crops
    (the crops are every row span with every column span, taken row by row)."""
    def spans(size: int) -> list[tuple[int, int]]:
        crop = min(SLIDE_CROP, size)
        n = max(size - crop + SLIDE_STRIDE - 1, 0) // SLIDE_STRIDE + 1
        return [(min(i * SLIDE_STRIDE + crop, size) - crop, min(i * SLIDE_STRIDE + crop, size)) for i in range(n)]
    return spans(h), spans(w)


# --- the definition: full-resolution scores --------------------------------------------------------

def _slide_logits(model, x: torch.Tensor, flip: bool, dtype) -> torch.Tensor:
    """mmseg's slide inference: 512 crops at stride 341, overlapping logits averaged (whole accumulator)."""
    _, _, h, w = x.shape
    row_spans, col_spans = _slide_boxes(h, w)
    total = None  # sized from the first logits: the class count is whatever the model returns
    count = x.new_zeros((1, 1, h, w))
    for y1, y2 in row_spans:
        for x1, x2 in col_spans:
            logits = _model_logits(model, x[:, :, y1:y2, x1:x2].contiguous(), flip, dtype)
            if total is None:
                total = x.new_zeros((1, logits.shape[1], h, w))
            total[:, :, y1:y2, x1:x2] += logits
            count[:, :, y1:y2, x1:x2] += 1
    return total / count


@torch.no_grad()
def predict_probs(model, image, *, aug: bool = False, slide: bool = False, dtype: torch.dtype | None = None,
                  scale: Sequence[int] = TEST_SCALE) -> torch.Tensor:
    """Softmax class scores (C, H, W) at the image's original size: the protocol written out plainly.

    Costs ``4 * C * H * W`` bytes for the result and as much again while it is made (150 classes: 600
    bytes a pixel, 7.2 GB for a 12-megapixel photo). For the class map and the per-pixel confidence
    use :func:`predict`, which computes the same scores a band of rows at a time.

    Args:
        model: a segmenter returning logits at its input size (e.g. :class:`IwinUPerNet`); put in
            eval mode here.
        image: path, PIL image, HxWx3 uint8 array or tensor (see :func:`iwin_models.io.load_image`).
        aug: multi-scale (ratios 0.5..1.75 of ``scale``) + horizontal flip, scores averaged; the
            mirrored image runs in a forward pass of its own.
        slide: sliding-window inference (512x512 crops, stride 341) instead of whole-image.
        dtype: e.g. ``torch.bfloat16`` to run under autocast (CPU or GPU); scores are float32.
        scale: the (long, short) size the image is fitted into (2048x512 for ADE20K).
    """
    image = load_image(image)
    model.eval()
    device = next(model.parameters()).device
    h, w = image.shape[:2]
    ratios = AUG_RATIOS if aug else (1.0,)
    probs = None
    for ratio in ratios:
        x = _normalise(image, _rescale_size(h, w, [s * ratio for s in scale]), device)
        scores = None
        for flip in (False, True) if aug else (False,):
            logits = _slide_logits(model, x, flip, dtype) if slide else _model_logits(model, x, flip, dtype)
            s = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False).softmax(dim=1)
            scores = s if scores is None else scores + s
        probs = scores if probs is None else probs + scores
    return (probs / (len(ratios) * (2 if aug else 1)))[0]


# --- the same in bands of rows ---------------------------------------------------------------------

@functools.lru_cache(maxsize=256)
def _row_weights(in_size: int, out_size: int) -> tuple[torch.Tensor, ...]:
    """PyTorch's bilinear (align_corners False) source rows ``i0, i1`` and weights ``w0, w1`` of every
    output row, float32 as its CPU kernel computes them: ``scale * (i + 0.5) - 0.5`` is one fused
    multiply-add there (exact in float64 here, then rounded once), clamped at 0."""
    scale = np.float32(in_size) / np.float32(out_size)
    src = np.maximum(((np.arange(out_size) + 0.5) * np.float64(scale) - 0.5).astype(np.float32), np.float32(0))
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    w1 = np.clip(src - i0.astype(np.float32), 0, 1).astype(np.float32)
    i1 = i0 + (i0 < in_size - 1)
    return torch.from_numpy(i0), torch.from_numpy(i1), torch.from_numpy(np.float32(1) - w1), torch.from_numpy(w1)


def _rows_first(logits: torch.Tensor) -> torch.Tensor:
    """(1, C, H, W) logits as (H, C, W), the layout of the bands: a row is one contiguous block, so
    resizing, slicing and accumulating rows are plain vectorised loops."""
    return logits[0].transpose(0, 1).contiguous()


def _channels_first(rows: torch.Tensor) -> torch.Tensor:
    """(R, C, W) rows as (1, C, R, W), the layout the definition's softmax runs on."""
    return rows.transpose(0, 1).contiguous()[None]


def _resize_width(rows: torch.Tensor, width: int) -> torch.Tensor:
    """(R, C, w) rows resized to (R, C, width): the column half of the bilinear resize."""
    if rows.shape[-1] == width:
        return rows
    r, c, _ = rows.shape
    return F.interpolate(rows.reshape(1, r * c, -1), size=width, mode="linear", align_corners=False).view(r, c, width)


def _rows_of(t: torch.Tensor) -> Callable[[int, int], torch.Tensor]:
    """The ``source`` of :func:`_resize_rows` for rows at hand."""
    return lambda a, b: t[a:b]


class _Workspace:
    """Band-sized buffers kept from band to band. PyTorch's CPU allocator hands big blocks back to the
    system, and a fresh 260 MB tensor costs ~5x the arithmetic written into it in page faults (index_select
    into a fresh tensor 122 ms, into a kept one 20 ms)."""

    def __init__(self):
        self._buffers: dict[str, torch.Tensor] = {}

    def get(self, name: str | None, shape: Sequence[int], like: torch.Tensor) -> torch.Tensor:
        if name is None:
            return like.new_empty(shape)
        n = math.prod(shape)
        buffer = self._buffers.get(name)
        if buffer is None or buffer.numel() < n or buffer.device != like.device or buffer.dtype != like.dtype:
            buffer = self._buffers[name] = like.new_empty(n)
        return buffer[:n].view(shape)


_FRESH = _Workspace()  # get(None, ...): a new tensor


def _resize_rows(source: Callable[[int, int], torch.Tensor], in_size: Sequence[int], out_size: Sequence[int],
                 start: int, stop: int, flip: bool = False, ws: _Workspace = _FRESH,
                 name: str | None = None) -> torch.Tensor:
    """Rows ``start:stop`` of ``F.interpolate(src, out_size, mode="bilinear", align_corners=False)`` as
    (R, C, W) (mirrored with ``flip``), reading only the rows of ``src`` they need: ``source(first, last)``
    gives its rows ``first:last`` as (rows, C, w). The result is the buffer ``name`` of ``ws``, if given."""
    (in_h, in_w), (out_h, out_w) = in_size, out_size
    if (in_h, in_w) == (out_h, out_w) or (start, stop) == (0, out_h) or out_h + out_w <= 128 or in_h == out_h:
        if (in_h, in_w) == (out_h, out_w):
            rows = source(start, stop)
        elif in_h == out_h and out_h + out_w > 128:
            rows = _resize_width(source(start, stop), out_w)
        else:  # all rows, or an output so small that PyTorch takes its channels-last kernel: the definition
            whole = F.interpolate(_channels_first(source(0, in_h)), size=out_size, mode="bilinear", align_corners=False)
            rows = _rows_first(whole[:, :, start:stop])
        return rows.flip(-1) if flip else rows
    i0, i1, w0, w1 = (t[start:stop] for t in _row_weights(in_h, out_h))
    first = int(i0[0])
    band = _resize_width(source(first, int(i1[-1]) + 1), out_w)  # PyTorch's order: columns, then rows
    band = band.flip(-1) if flip else band  # the rows' weights are alike in every column: flip commutes
    w0, w1 = (w.to(band.device).view(-1, 1, 1) for w in (w0, w1))
    out = ws.get(name, (stop - start, *band.shape[1:]), band)
    # PyTorch's kernel: x0 * w0 + (x1 * w1) as one fused multiply-add, which addcmul is
    change = np.flatnonzero(np.diff(i0.numpy())) + 1
    if len(change) >= _RUNS:  # many runs: gather the rows (4 operations, each over the whole band)
        i0, i1 = (i.to(band.device) - first for i in (i0, i1))
        above = ws.get(name and name + ".above", out.shape, band)
        return torch.index_select(band, 0, i1, out=out).mul_(w1).addcmul_(torch.index_select(band, 0, i0, out=above),
                                                                          w0)
    for a, b in zip([0, *change], [*change, stop - start]):  # the output rows that read the same two rows
        r0, r1 = int(i0[a]) - first, int(i1[a]) - first
        torch.mul(band[r1], w1[a:b], out=out[a:b]).addcmul_(band[r0], w0[a:b])
    return out


class _Pass:
    """One forward pass of the protocol (a scale, maybe mirrored): rows of what the definition's
    ``model(x)`` gives there (mirrored back), made on request from what the pass keeps."""

    size: tuple[int, int]  # the model's input size at this scale
    num_classes: int

    def rows(self, start: int, stop: int, ws: _Workspace = _FRESH) -> torch.Tensor:
        """Rows ``start:stop`` of the logits at the input size, (R, C, W), possibly in a buffer of ``ws``
        (valid until the next call)."""
        raise NotImplementedError


class _WholePass(_Pass):
    """The whole (resized) image in one forward pass; keeps the stride-4 logits only."""

    def __init__(self, model, x: torch.Tensor, flip: bool, dtype):
        self.size, self.flip = tuple(x.shape[-2:]), flip
        low = _low_res_logits(model, x.flip(-1) if flip else x, dtype)
        self.low_size, self.num_classes = tuple(low.shape[-2:]), low.shape[1]
        self.low = _rows_first(low)

    def rows(self, start: int, stop: int, ws: _Workspace = _FRESH) -> torch.Tensor:
        return _resize_rows(_rows_of(self.low), self.low_size, self.size, start, stop, self.flip, ws, "pass")


class _SlidePass(_Pass):
    """Sliding windows over an input of ``size``; ``crop(y1, x1, y2, x2)`` gives a normalised crop.

    A row of crops is run when a band first needs it and forgotten when the bands have moved past it:
    at most two rows of crops (crop 512 < 2 x stride 341) are kept, as stride-4 logits.
    """

    def __init__(self, model, crop: Callable[[int, int, int, int], torch.Tensor], size, flip: bool, dtype):
        self.model, self.crop, self.size, self.flip, self.dtype = model, crop, tuple(size), flip, dtype
        self.row_spans, self.col_spans = _slide_boxes(*self.size)
        self.cache: dict[int, list[tuple[tuple[int, int], torch.Tensor]]] = {}
        # crops per pixel: the crops are a grid, so the count is (crops per row) x (crops per column)
        self.row_count, self.col_count = (_coverage(spans, n) for spans, n in zip((self.row_spans, self.col_spans),
                                                                                   self.size))
        self.num_classes = self._crop_row(0)[0][1].shape[1]

    def _crop_row(self, r: int) -> list[tuple[tuple[int, int], torch.Tensor]]:
        """(size, rows-first stride-4 logits) of each crop of row ``r``."""
        if r not in self.cache:
            y1, y2 = self.row_spans[r]
            self.cache[r] = []
            for x1, x2 in self.col_spans:
                low = _low_res_logits(self.model, self._flipped(self.crop(y1, x1, y2, x2)), self.dtype)
                self.cache[r].append((tuple(low.shape[-2:]), _rows_first(low)))
        return self.cache[r]

    def _flipped(self, x: torch.Tensor) -> torch.Tensor:
        return x.flip(-1) if self.flip else x

    def rows(self, start: int, stop: int, ws: _Workspace = _FRESH) -> torch.Tensor:
        total = None
        for r, (y1, y2) in enumerate(self.row_spans):  # crops in the definition's order: row by row
            if y2 <= start or y1 >= stop:
                continue
            lo, hi = max(y1, start), min(y2, stop)
            for (x1, x2), (low_size, low) in zip(self.col_spans, self._crop_row(r)):
                part = _resize_rows(_rows_of(low), low_size, (y2 - y1, x2 - x1), lo - y1, hi - y1, self.flip, ws,
                                    "crop")
                if total is None:
                    total = ws.get("pass", (stop - start, part.shape[1], self.size[1]), part).zero_()
                total[lo - start:hi - start, :, x1:x2] += part
        for r in [r for r in self.cache if self.row_spans[r][1] <= start]:  # the bands have passed them
            del self.cache[r]
        count = self.row_count[start:stop, None, None] * self.col_count
        return total.div_(count.to(total.device))


def _coverage(spans: list[tuple[int, int]], size: int) -> torch.Tensor:
    count = torch.zeros(size)
    for a, b in spans:
        count[a:b] += 1
    return count


def _passes(model, image: np.ndarray, size: tuple[int, int], aug: bool, slide: bool, dtype, device) -> list[_Pass]:
    """The passes of one scale: the image, and with ``aug`` its mirror (each its own forward pass)."""
    flips = (False, True) if aug else (False,)
    if slide and size == image.shape[:2]:  # native resolution: crops normalised as they are needed
        def crop(y1, x1, y2, x2):
            return _normalise(image[y1:y2, x1:x2], (y2 - y1, x2 - x1), device).contiguous()
        return [_SlidePass(model, crop, size, flip, dtype) for flip in flips]
    x = _normalise(image, size, device)
    if slide:
        return [_SlidePass(model, lambda y1, x1, y2, x2: x[:, :, y1:y2, x1:x2].contiguous(), size, flip, dtype)
                for flip in flips]
    return [_WholePass(model, x, flip, dtype) for flip in flips]


def _band_rows(num_classes: int, out_size: tuple[int, int], passes: list[_Pass], budget: int | None = None) -> int:
    """Rows per band: the widest band tensor (C x rows x width, at the output size or a pass's input size
    per output row) within ``budget`` bytes. Bands start where ``start * width`` is a multiple of 64, so
    PyTorch's vectorised softmax splits a band's pixels as it splits the whole map's (bitwise equal)."""
    out_h, out_w = out_size
    width = max([out_w] + [p.size[1] * p.size[0] / out_h for p in passes])
    quantum = 64 // math.gcd(out_w, 64)
    rows = int((budget or BAND_BYTES) // (4 * num_classes * width)) // quantum * quantum
    return min(max(rows, quantum), out_h)


def _output_rows(p: _Pass, start: int, stop: int, out_size: tuple[int, int], ws: _Workspace) -> torch.Tensor:
    """Rows of the pass's logits resized to the original size (the definition's last resize), (R, C, W)."""
    return _resize_rows(lambda a, b: p.rows(a, b, ws), p.size, out_size, start, stop, ws=ws, name="out")


def _averaged_scores(groups: list[list[_Pass]], start: int, stop: int, out_size: tuple[int, int],
                     ws: _Workspace) -> torch.Tensor:
    """The definition's softmax scores of rows ``start:stop``, averaged over the passes: (C, R, W)."""
    probs = pair = None
    for g, group in enumerate(groups):  # the definition's order of sums: mirror pairs, then scales
        for i, p in enumerate(group):
            rows = _output_rows(p, start, stop, out_size, ws)
            logits = ws.get("logits", (1, rows.shape[1], rows.shape[0], rows.shape[2]), rows)
            logits[0].copy_(rows.transpose(0, 1))  # softmax on (1, C, R, W) as the definition's: bitwise alike
            into = ws.get(("probs" if g == 0 else "pair") if i == 0 else "softmax", logits.shape, logits)
            scores = torch.ops.aten._softmax.out(logits, 1, False, out=into)
            pair = scores if i == 0 else pair.add_(scores)
        probs = pair if g == 0 else probs.add_(pair)
    return probs.div_(sum(len(group) for group in groups))[0]


def _resolve_bands(groups: list[list[_Pass]], out_size: tuple[int, int], band_rows: int | None,
                   confidence: bool, labels_dtype) -> tuple[np.ndarray, np.ndarray | None]:
    """Labels (and the winning averaged score) of every pixel, band by band; ``groups`` per scale."""
    passes = [p for g in groups for p in g]
    rows = band_rows or _band_rows(passes[0].num_classes, out_size, passes)
    if sum(out_size) <= 128:  # resized whole anyway (see _resize_rows): one band
        rows = out_size[0]
    labels = np.empty(out_size, dtype=labels_dtype)
    scores = np.empty(out_size, dtype=np.float32) if confidence else None
    ws = _Workspace()
    for start in range(0, out_size[0], rows):
        stop = min(start + rows, out_size[0])
        if len(passes) == 1 and not confidence:  # softmax keeps the order: argmax of the logits
            labels[start:stop] = _output_rows(passes[0], start, stop, out_size, ws).max(1).indices.cpu().numpy()
            continue
        best = _averaged_scores(groups, start, stop, out_size, ws).max(0)  # the first of equal ones, as argmax
        labels[start:stop] = best.indices.cpu().numpy()
        if confidence:
            scores[start:stop] = best.values.cpu().numpy()
    return labels, scores


@torch.no_grad()
def predict(model, image, *, aug: bool = False, slide: bool = False, dtype: torch.dtype | None = None,
            scale: Sequence[int] = TEST_SCALE, return_confidence: bool = False, labels_dtype=np.int64,
            band_rows: int | None = None):
    """The class map (H, W) of ``image`` at its original size, and with ``return_confidence`` the
    averaged softmax score of each pixel's class (H, W float32): ``(labels, confidence)``.

    The scores are those of :func:`predict_probs` (same arguments), computed a band of output rows at a
    time: memory is the model's forward pass plus ~``BAND_BYTES`` a band, never ``C x H x W``.

    Args:
        labels_dtype: of the returned class map (e.g. ``np.uint8`` for up to 256 classes).
        band_rows: output rows per band (default: about ``BAND_BYTES`` per band tensor, on vector
            boundaries so that the scores are bitwise those of :func:`predict_probs`).
        model, image, aug, slide, dtype, scale: see :func:`predict_probs`.
    """
    image = load_image(image)
    model.eval()
    device = next(model.parameters()).device
    h, w = image.shape[:2]
    groups = [_passes(model, image, _rescale_size(h, w, [s * ratio for s in scale]), aug, slide, dtype, device)
              for ratio in (AUG_RATIOS if aug else (1.0,))]
    labels, confidence = _resolve_bands(groups, (h, w), band_rows, return_confidence, labels_dtype)
    return (labels, confidence) if return_confidence else labels


def segment(model, image, *, aug: bool = False, slide: bool = False, dtype: torch.dtype | None = None,
            scale: Sequence[int] = TEST_SCALE) -> np.ndarray:
    """The (H, W) int64 class map of ``image`` at its original resolution (see :func:`predict`)."""
    return predict(model, image, aug=aug, slide=slide, dtype=dtype, scale=scale)


# --- pictures ------------------------------------------------------------------------------------

_PICTURE_ROWS = 256  # rows blended at a time: float64 temporaries of 24 bytes a pixel, not of the whole image


def colorize(labels: np.ndarray, palette: Sequence[Sequence[int]] = ade20k.PALETTE) -> np.ndarray:
    """RGB picture (H, W, 3) of a class map."""
    table = np.zeros((256, 3), dtype=np.uint8)
    table[:len(palette)] = np.asarray(palette, dtype=np.uint8)[:256]
    return table[np.clip(labels, 0, 255)]


def _class_counts(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(labels, return_counts=True)`` without sorting a copy of the map."""
    if labels.dtype.kind in "ui" and labels.size and labels.min() >= 0:
        counts = np.bincount(labels.ravel())
        ids = np.flatnonzero(counts)
        return ids, counts[ids]
    return np.unique(labels, return_counts=True)


def overlay(image: np.ndarray, labels: np.ndarray, class_names: Sequence[str] = ade20k.CLASSES,
            palette: Sequence[Sequence[int]] = ade20k.PALETTE, alpha: float = 0.5) -> Image.Image:
    """The image blended with its class colours, with a legend of the classes present (by area)."""
    from PIL import ImageDraw, ImageFont

    ids, counts = _class_counts(labels)
    present = [int(i) for i in ids[np.argsort(-counts)] if 0 <= i < len(class_names)]
    font = ImageFont.load_default()
    row, pad = 16, 6
    labels_text = {i: f"{class_names[i].strip()} {counts[ids == i][0] / labels.size:.0%}" for i in present}
    legend_w = 14 + max([int(font.getlength(t)) for t in labels_text.values()] + [60]) + 2 * pad
    h, w = labels.shape[:2]
    canvas = np.full((max(h, pad * 2 + row * len(present)), w + legend_w, 3), 255, dtype=np.uint8)
    for a in range(0, h, _PICTURE_ROWS):
        b = min(a + _PICTURE_ROWS, h)
        canvas[a:b, :w] = (image[a:b] * (1 - alpha) + colorize(labels[a:b], palette) * alpha).astype(np.uint8)
    picture = Image.fromarray(canvas)
    del canvas
    draw = ImageDraw.Draw(picture)
    for n, i in enumerate(present):
        y = pad + n * row
        draw.rectangle([w + pad, y + 2, w + pad + 10, y + 12], fill=tuple(int(c) for c in palette[i]), outline="black")
        draw.text((w + pad + 14, y), labels_text[i], fill="black", font=font)
    return picture
