"""The class map of a segmenter's passes, a band of output rows at a time: never ``C x H x W`` at the image's size.

:func:`iwin_models.engine.inference.predict` runs the test protocol through this engine; its plain definition,
:func:`iwin_models.engine.inference.predict_probs`, holds the class scores of every pixel at the original size
(150 classes: 600 bytes a pixel, 7.2 GB for a 12 MP photo). Bilinear resizing is separable and each
output row reads two input rows, so a band of output rows needs a known band of logits rows; a band is
resized, softmaxed, averaged over the passes, argmaxed and released. Each pass keeps only the logits the
model resizes last (``model.low_res_logits``: stride 4 for :class:`~iwin_models.models.upernet.IwinUPerNet`,
16x fewer values than at its input size). With sliding windows the crops run one row of crops at a time
as the bands reach them and are dropped once the bands have passed, so no accumulator spans the image.

The bands repeat PyTorch's CPU bilinear kernel operation for operation (the fused multiply-add included)
and start on the softmax's vector boundaries, so on the CPU the scores are bitwise the definition's
(``tests/test_inference_bands.py``). One exception: PyTorch resizes 3 channels on one thread with another
kernel, so a 3-class model run single-threaded agrees to float32 round-off only.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["BAND_BYTES", "NON_FINITE_LOGITS", "LowResForward", "Pass", "WholePass", "SlidePass", "class_map",
           "resize_rows", "autocast"]

# Output rows per band: about this many bytes per band tensor (C x rows x width float32); up to seven such
# buffers live, kept from band to band (see BandBuffers). Fewer, larger operations matter on a busy CPU
# (each one hands work to the other threads: on 2 shared cores, ~8 ms median for a 1.6 MB operation,
# 0.5 ms alone), so 128 MB: a 12 MP photo in bands of ~50 rows.
BAND_BYTES = 128 * 2 ** 20
# PyTorch's CPU bilinear resize takes its channels-last kernel, which rounds differently, when the output's
# height + width is at most this (a speed threshold: ``_use_channels_last_kernel_2d`` in
# aten/src/ATen/native/cpu/UpSampleKernel.cpp). Such small outputs are resized whole, as the definition does.
CHANNELS_LAST_RESIZE_MAX_EDGES = 128
# PyTorch's vectorised softmax over (1, C, R, W) splits the R * W pixels into vectors of this many; a band
# starting on a multiple of it is split as the whole map is, so its scores are bitwise the same.
SOFTMAX_VECTOR_PIXELS = 64
# Output rows sharing their two source rows are computed together (two operations a run, no copies); with
# this many runs or more in a band the rows are gathered instead (four operations, two more copies).
GATHER_FROM_RUNS = 4
NON_FINITE_LOGITS = "the model produced NaN/Inf logits (bad weights, or overflow in low precision)"


def autocast(device: torch.device | str, dtype: torch.dtype | None):
    """``torch.autocast`` to ``dtype`` on ``device``'s type; nothing for None or float32."""
    if dtype is None or dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


class FiniteCheck:
    """Whether every logit seen was finite, asked once at the end of a call: one device synchronisation a
    call instead of one a forward pass (each stalled a GPU between the crops of a sliding window)."""

    def __init__(self):
        self._all_finite: torch.Tensor | None = None

    def see(self, logits: torch.Tensor) -> torch.Tensor:
        finite = torch.isfinite(logits).all()
        self._all_finite = finite if self._all_finite is None else self._all_finite & finite
        return logits

    def raise_if_not_finite(self) -> None:
        if self._all_finite is not None and not bool(self._all_finite):
            raise FloatingPointError(NON_FINITE_LOGITS)


class LowResForward:
    """The logits ``model(x)`` resizes to ``x``'s size last, as float32 NCHW: ``model.low_res_logits(x)``
    where the model has it (:class:`~iwin_models.models.upernet.IwinUPerNet`: stride 4), else ``model(x)``.
    Under autocast the final resize then runs in float32 rather than in the autocast type."""

    def __init__(self, model, dtype: torch.dtype | None = None):
        self.model, self.dtype, self.finite = model, dtype, FiniteCheck()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with autocast(x.device, self.dtype):
            logits = self.model.low_res_logits(x) if hasattr(self.model, "low_res_logits") else self.model(x)
        return self.finite.see(logits.float().contiguous())


# --- buffers kept from band to band ----------------------------------------------------------------

class Buffer:
    """One band-sized tensor kept from band to band, grown when a band needs more. PyTorch's CPU allocator
    hands big blocks back to the system, and a fresh 260 MB tensor costs ~5x the arithmetic written into it
    in page faults (index_select into a fresh tensor 122 ms, into a kept one 20 ms)."""

    def __init__(self):
        self._tensor: torch.Tensor | None = None

    def take(self, shape: Sequence[int], like: torch.Tensor) -> torch.Tensor:
        """A tensor of ``shape`` with ``like``'s dtype and device, valid until the next ``take``."""
        n = math.prod(shape)
        t = self._tensor
        if t is None or t.numel() < n or t.device != like.device or t.dtype != like.dtype:
            t = self._tensor = like.new_empty(n)
        return t[:n].view(shape)


@dataclasses.dataclass
class ResizeBuffers:
    """What :func:`resize_rows` writes: the resized rows, and the gathered upper source rows."""

    rows: Buffer = dataclasses.field(default_factory=Buffer)
    upper: Buffer = dataclasses.field(default_factory=Buffer)


@dataclasses.dataclass
class BandBuffers:
    """Every band-sized tensor of :func:`class_map`, by what it holds."""

    pass_rows: ResizeBuffers = dataclasses.field(default_factory=ResizeBuffers)  # a pass at its input size
    crop_rows: ResizeBuffers = dataclasses.field(default_factory=ResizeBuffers)  # a crop at the crop size
    output_rows: ResizeBuffers = dataclasses.field(default_factory=ResizeBuffers)  # a pass at the output size
    logits: Buffer = dataclasses.field(default_factory=Buffer)  # output rows as (1, C, R, W), the softmax's layout
    total: Buffer = dataclasses.field(default_factory=Buffer)  # scores summed over the first scale, then all
    scale_sum: Buffer = dataclasses.field(default_factory=Buffer)  # scores summed over a later scale's passes
    scores: Buffer = dataclasses.field(default_factory=Buffer)  # a mirrored pass's scores, before being added


# --- the separable resize, a band of rows at a time ------------------------------------------------

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


def rows_first(logits: torch.Tensor) -> torch.Tensor:
    """(1, C, H, W) logits as (H, C, W), the layout of the bands: a row is one contiguous block, so
    resizing, slicing and accumulating rows are plain vectorised loops."""
    return logits[0].transpose(0, 1).contiguous()


def channels_first(rows: torch.Tensor) -> torch.Tensor:
    """(R, C, W) rows as (1, C, R, W), the layout the definition's softmax runs on."""
    return rows.transpose(0, 1).contiguous()[None]


def _resize_width(rows: torch.Tensor, width: int) -> torch.Tensor:
    """(R, C, w) rows resized to (R, C, width): the column half of the bilinear resize."""
    if rows.shape[-1] == width:
        return rows
    r, c, _ = rows.shape
    return F.interpolate(rows.reshape(1, r * c, -1), size=width, mode="linear", align_corners=False).view(r, c, width)


def resize_rows(source: Callable[[int, int], torch.Tensor], in_size: Sequence[int], out_size: Sequence[int],
                start: int, stop: int, flip: bool = False, into: ResizeBuffers | None = None) -> torch.Tensor:
    """Rows ``start:stop`` of ``F.interpolate(src, out_size, mode="bilinear", align_corners=False)`` as
    (R, C, W) (mirrored with ``flip``), reading only the rows of ``src`` they need: ``source(first, last)``
    gives its rows ``first:last`` as (rows, C, w). Written into ``into`` (default: new tensors)."""
    (in_h, in_w), (out_h, out_w) = in_size, out_size
    small = out_h + out_w <= CHANNELS_LAST_RESIZE_MAX_EDGES
    if in_h == out_h and (in_w == out_w or not small):  # the columns only, or nothing
        rows = _resize_width(source(start, stop), out_w)
    elif small or (start, stop) == (0, out_h):  # PyTorch's other kernel, or all rows: the definition itself
        whole = F.interpolate(channels_first(source(0, in_h)), size=out_size, mode="bilinear", align_corners=False)
        rows = rows_first(whole[:, :, start:stop])
    else:
        return _interpolate_rows(source, in_size, out_size, start, stop, flip, into or ResizeBuffers())
    return rows.flip(-1) if flip else rows


def _interpolate_rows(source: Callable[[int, int], torch.Tensor], in_size: Sequence[int], out_size: Sequence[int],
                      start: int, stop: int, flip: bool, into: ResizeBuffers) -> torch.Tensor:
    """:func:`resize_rows` of a band of an output taller or shorter than its input, as PyTorch's kernel does it:
    the columns first, then each output row as ``x0 * w0 + (x1 * w1)``, one fused multiply-add (addcmul)."""
    i0, i1, w0, w1 = (t[start:stop] for t in _row_weights(in_size[0], out_size[0]))
    first = int(i0[0])
    band = _resize_width(source(first, int(i1[-1]) + 1), out_size[1])
    band = band.flip(-1) if flip else band  # the rows' weights are alike in every column: flip commutes
    w0, w1 = (w.to(band.device).view(-1, 1, 1) for w in (w0, w1))
    out = into.rows.take((stop - start, *band.shape[1:]), band)
    change = np.flatnonzero(np.diff(i0.numpy())) + 1
    if len(change) >= GATHER_FROM_RUNS:  # many runs: gather the rows (4 operations, each over the whole band)
        i0, i1 = (i.to(band.device) - first for i in (i0, i1))
        upper = torch.index_select(band, 0, i0, out=into.upper.take(out.shape, band))
        return torch.index_select(band, 0, i1, out=out).mul_(w1).addcmul_(upper, w0)
    for a, b in zip([0, *change], [*change, stop - start]):  # the output rows that read the same two rows
        r0, r1 = int(i0[a]) - first, int(i1[a]) - first
        torch.mul(band[r1], w1[a:b], out=out[a:b]).addcmul_(band[r0], w0[a:b])
    return out


# --- passes: what one forward pass keeps, and its rows on request ------------------------------------

class Pass:
    """One forward pass of the protocol (a scale, maybe mirrored): rows of what the definition's
    ``model(x)`` gives there (mirrored back), made on request from what the pass keeps."""

    size: tuple[int, int]  # the model's input size at this scale
    num_classes: int

    def rows(self, start: int, stop: int, buffers: BandBuffers) -> torch.Tensor:
        """Rows ``start:stop`` of the logits at the input size, (R, C, W), possibly in ``buffers``
        (valid until the next call)."""
        raise NotImplementedError


class WholePass(Pass):
    """The whole (resized) image in one forward pass; keeps the low-resolution logits only."""

    def __init__(self, forward: LowResForward, x: torch.Tensor, flip: bool):
        self.size, self.flip = tuple(x.shape[-2:]), flip
        low = forward(x.flip(-1) if flip else x)
        self.low_size, self.num_classes = tuple(low.shape[-2:]), low.shape[1]
        self.low = rows_first(low)

    def rows(self, start: int, stop: int, buffers: BandBuffers) -> torch.Tensor:
        return resize_rows(lambda a, b: self.low[a:b], self.low_size, self.size, start, stop, self.flip,
                           buffers.pass_rows)


Spans = list[tuple[int, int]]


class SlidePass(Pass):
    """Sliding windows over an input of ``size``: the crops are every span of ``boxes[0]`` (rows) with every
    span of ``boxes[1]`` (columns), and ``crop(y1, x1, y2, x2)`` gives one, normalised.

    A row of crops is run when a band first needs it and forgotten when the bands have moved past it: with
    crops shorter than twice the stride (mmseg's 512 at 341) at most two rows of crops are kept.
    """

    def __init__(self, forward: LowResForward, crop: Callable[[int, int, int, int], torch.Tensor],
                 size: Sequence[int], flip: bool, boxes: tuple[Spans, Spans]):
        self.forward, self.crop, self.size, self.flip = forward, crop, tuple(size), flip
        self.row_spans, self.col_spans = boxes
        self.cache: dict[int, list[tuple[tuple[int, int], torch.Tensor]]] = {}
        # crops per pixel: the crops are a grid, so the count is (crops per row) x (crops per column)
        self.row_count = _coverage(self.row_spans, self.size[0])
        self.col_count = _coverage(self.col_spans, self.size[1])
        self.num_classes = self._crop_row(0)[0][1].shape[1]

    def _crop_row(self, r: int) -> list[tuple[tuple[int, int], torch.Tensor]]:
        """(size, rows-first low-resolution logits) of each crop of row ``r``."""
        if r not in self.cache:
            y1, y2 = self.row_spans[r]
            self.cache[r] = []
            for x1, x2 in self.col_spans:
                crop = self.crop(y1, x1, y2, x2)
                low = self.forward(crop.flip(-1) if self.flip else crop)
                self.cache[r].append((tuple(low.shape[-2:]), rows_first(low)))
        return self.cache[r]

    def rows(self, start: int, stop: int, buffers: BandBuffers) -> torch.Tensor:
        total = None
        for r, (y1, y2) in enumerate(self.row_spans):  # crops in the definition's order: row by row
            if y2 <= start or y1 >= stop:
                continue
            lo, hi = max(y1, start), min(y2, stop)
            for (x1, x2), (low_size, low) in zip(self.col_spans, self._crop_row(r)):
                part = resize_rows(lambda a, b, low=low: low[a:b], low_size, (y2 - y1, x2 - x1), lo - y1, hi - y1,
                                   self.flip, buffers.crop_rows)
                if total is None:
                    total = buffers.pass_rows.rows.take((stop - start, part.shape[1], self.size[1]), part).zero_()
                total[lo - start:hi - start, :, x1:x2] += part
        for r in [r for r in self.cache if self.row_spans[r][1] <= start]:  # the bands have passed them
            del self.cache[r]
        count = self.row_count[start:stop, None, None] * self.col_count
        return total.div_(count.to(total.device))


def _coverage(spans: Spans, size: int) -> torch.Tensor:
    count = torch.zeros(size)
    for a, b in spans:
        count[a:b] += 1
    return count


# --- bands: resize, softmax, average, argmax --------------------------------------------------------

def band_rows(num_classes: int, out_size: tuple[int, int], passes: list[Pass], budget: int | None = None) -> int:
    """Rows per band: the widest band tensor (C x rows x width, at the output size or a pass's input size
    per output row) within ``budget`` bytes (default :data:`BAND_BYTES`), starting on softmax vectors."""
    out_h, out_w = out_size
    width = max([out_w] + [p.size[1] * p.size[0] / out_h for p in passes])
    quantum = SOFTMAX_VECTOR_PIXELS // math.gcd(out_w, SOFTMAX_VECTOR_PIXELS)  # rows whose pixels fill vectors
    rows = int((budget or BAND_BYTES) // (4 * num_classes * width)) // quantum * quantum
    return min(max(rows, quantum), out_h)


def _output_rows(p: Pass, start: int, stop: int, out_size: tuple[int, int], buffers: BandBuffers) -> torch.Tensor:
    """Rows of the pass's logits resized to the original size (the definition's last resize), (R, C, W)."""
    return resize_rows(lambda a, b: p.rows(a, b, buffers), p.size, out_size, start, stop, into=buffers.output_rows)


def _averaged_scores(groups: list[list[Pass]], start: int, stop: int, out_size: tuple[int, int],
                     buffers: BandBuffers) -> torch.Tensor:
    """The definition's softmax scores of rows ``start:stop``, averaged over the passes: (C, R, W)."""
    total = scale_sum = None
    for g, group in enumerate(groups):  # the definition's order of sums: the passes of a scale, then scales
        for i, p in enumerate(group):
            rows = _output_rows(p, start, stop, out_size, buffers)
            logits = buffers.logits.take((1, rows.shape[1], rows.shape[0], rows.shape[2]), rows)
            logits[0].copy_(rows.transpose(0, 1))  # softmax on (1, C, R, W) as the definition's: bitwise alike
            into = buffers.scores if i else buffers.total if g == 0 else buffers.scale_sum
            scores = torch.softmax(logits, 1, out=into.take(logits.shape, logits))
            scale_sum = scores if i == 0 else scale_sum.add_(scores)
        total = scale_sum if g == 0 else total.add_(scale_sum)
    return total.div_(sum(len(group) for group in groups))[0]


def class_map(groups: list[list[Pass]], out_size: tuple[int, int], *, rows: int | None = None,
              confidence: bool = False, labels_dtype=np.int64) -> tuple[np.ndarray, np.ndarray | None]:
    """Labels (and with ``confidence`` the winning averaged score) of every pixel of the ``out_size`` map,
    ``rows`` output rows a band (default :func:`band_rows`); ``groups``: the passes of each scale."""
    passes = [p for g in groups for p in g]
    rows = rows or band_rows(passes[0].num_classes, out_size, passes)
    if sum(out_size) <= CHANNELS_LAST_RESIZE_MAX_EDGES:  # resized whole anyway (see resize_rows): one band
        rows = out_size[0]
    labels = np.empty(out_size, dtype=labels_dtype)
    scores = np.empty(out_size, dtype=np.float32) if confidence else None
    buffers = BandBuffers()
    for start in range(0, out_size[0], rows):
        stop = min(start + rows, out_size[0])
        if len(passes) == 1 and not confidence:  # softmax keeps the order: argmax of the logits
            labels[start:stop] = _output_rows(passes[0], start, stop, out_size, buffers).max(1).indices.cpu().numpy()
            continue
        best = _averaged_scores(groups, start, stop, out_size, buffers).max(0)  # the first of equal ones, as argmax
        labels[start:stop] = best.indices.cpu().numpy()
        if confidence:
            scores[start:stop] = best.values.cpu().numpy()
    return labels, scores
