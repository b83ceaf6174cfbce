"""The banded engine (``iwin_models.engine.bands``): its resize, buffers, softmax, band sizes and model reading.

The protocol-level checks (banded == ``predict_probs`` on an Iwin segmenter, memory) are in
``test_inference_bands.py``; here the pieces, on a small stand-in model where a model is needed.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import iwin_models.engine.bands as bands
from iwin_models.engine.inference import predict, predict_probs
from iwin_models.models.weights import ADE20K_PROTOCOL

SMALL_WINDOWS = dataclasses.replace(ADE20K_PROTOCOL, slide_crop=64, slide_stride=43)  # 512/341's geometry


class StrideFourSegmenter(nn.Module):
    """A stand-in segmenter shaped as IwinUPerNet: logits at stride 4, resized to the input last."""

    def __init__(self, classes: int = 7):
        super().__init__()
        torch.manual_seed(0)
        self.classify = nn.Conv2d(3, classes, 4, stride=4)
        self.low_res_calls = 0

    def low_res_logits(self, x):
        self.low_res_calls += 1
        pad_h, pad_w = -x.shape[-2] % 4, -x.shape[-1] % 4
        return self.classify(F.pad(x, (0, pad_w, 0, pad_h))) * 5

    def forward(self, x):
        return F.interpolate(self.low_res_logits(x), size=x.shape[-2:], mode="bilinear", align_corners=False)


def _rgb(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


def _source(t):
    return lambda a, b: t[a:b]


# --- the separable resize in bands -----------------------------------------------------------------

RESIZES = [  # (in_h, in_w, out_h, out_w): up, down, odd, equal heights or widths, a one-row source
    (128, 171, 512, 683), (37, 53, 100, 77), (100, 77, 37, 53), (64, 64, 200, 64), (64, 90, 64, 200),
    (1, 3, 90, 50), (2, 3, 200, 7), (300, 200, 301, 199), (16, 16, 40, 40),  # 40+40 <= 128: PyTorch's other kernel
    (37, 53, 64, 64), (37, 53, 64, 65),  # either side of that threshold
]  # (a 1x1 source is the one case found where PyTorch's kernel rounds otherwise: equal to 1 ulp, not bitwise)


@pytest.mark.parametrize("in_h, in_w, out_h, out_w", RESIZES)
def test_rows_of_a_resize_are_bitwise_f_interpolate(in_h, in_w, out_h, out_w):
    src = torch.randn(1, 5, in_h, in_w, generator=torch.Generator().manual_seed(in_h * in_w)) * 10
    ref = F.interpolate(src, size=(out_h, out_w), mode="bilinear", align_corners=False)
    rows_first = bands.rows_first(src)  # (H, C, W): the bands' layout
    kept = bands.ResizeBuffers()
    for rows in (1, 2, 7, out_h - 1, out_h):
        for into in (None, kept):  # new tensors, or the kept buffers
            parts = [bands.resize_rows(_source(rows_first), (in_h, in_w), (out_h, out_w), s, min(s + rows, out_h),
                                       into=into).clone() for s in range(0, out_h, max(rows, 1))]
            assert torch.equal(bands.channels_first(torch.cat(parts)), ref), (rows, into)


def test_flipped_rows_are_the_resize_mirrored():
    """A mirrored pass's logits are mirrored back after the resize, as the definition does."""
    src = torch.randn(1, 3, 20, 31, generator=torch.Generator().manual_seed(1))
    ref = F.interpolate(src, size=(90, 70), mode="bilinear", align_corners=False).flip(-1)
    rows = bands.resize_rows(_source(bands.rows_first(src)), (20, 31), (90, 70), 10, 50, flip=True)
    assert torch.equal(bands.channels_first(rows), ref[:, :, 10:50])


def test_small_outputs_take_pytorchs_other_kernel():
    """CHANNELS_LAST_RESIZE_MAX_EDGES is PyTorch's: at out_h + out_w <= 128 its CPU kernel rounds otherwise
    than the separable form, above it alike. If this fails, torch moved its threshold: update the constant."""
    src = torch.randn(1, 5, 37, 53, generator=torch.Generator().manual_seed(0)) * 10
    rows_first = bands.rows_first(src)
    edges = bands.CHANNELS_LAST_RESIZE_MAX_EDGES

    def separable_equals_torch(out_h, out_w):
        rows = bands._interpolate_rows(_source(rows_first), (37, 53), (out_h, out_w), 0, out_h, False,
                                       bands.ResizeBuffers())
        ref = F.interpolate(src, size=(out_h, out_w), mode="bilinear", align_corners=False)
        torch.testing.assert_close(bands.channels_first(rows), ref)  # the same resize, whatever the rounding
        return torch.equal(bands.channels_first(rows), ref)

    assert not separable_equals_torch(edges // 2, edges - edges // 2), f"torch's CPU bilinear kernel choice moved: " \
        f"an output of {edges} edges no longer takes the channels-last kernel"
    assert separable_equals_torch(edges // 2, edges - edges // 2 + 1), "torch's CPU bilinear kernel choice moved"


# --- buffers, softmax, band sizes --------------------------------------------------------------------

def test_a_buffer_is_kept_grown_and_retyped():
    buffer, like = bands.Buffer(), torch.zeros(1)
    first = buffer.take((4, 5), like)
    assert buffer.take((2, 3), like).data_ptr() == first.data_ptr(), "a smaller band reuses the tensor"
    bigger = buffer.take((10, 10), like)
    assert bigger.shape == (10, 10) and buffer.take((4, 5), like).data_ptr() == bigger.data_ptr()
    assert buffer.take((4, 5), torch.zeros(1, dtype=torch.float64)).dtype == torch.float64


def test_band_buffers_are_distinct_by_role():
    buffers = bands.BandBuffers()
    roles = [getattr(buffers, f.name) for f in dataclasses.fields(buffers)]
    tensors = [b for r in roles for b in ((r.rows, r.upper) if isinstance(r, bands.ResizeBuffers) else (r,))]
    like = torch.zeros(1)
    assert len({b.take((8,), like).data_ptr() for b in tensors}) == len(tensors) == 10


def test_averaged_scores_are_the_definitions_softmax_in_a_kept_buffer():
    """The softmax writes into the band's buffer (a public out= form, no temporary) and is bitwise
    ``F.interpolate(...).softmax(1)``, the definition's, over a mirror pair of passes."""
    model = StrideFourSegmenter().eval()
    forward = bands.LowResForward(model)
    x = torch.randn(1, 3, 45, 70, generator=torch.Generator().manual_seed(2))
    passes = [bands.WholePass(forward, x, flip) for flip in (False, True)]
    buffers = bands.BandBuffers()
    with torch.no_grad():
        scores = bands._averaged_scores([passes], 0, 64, (64, 96), buffers)
        ref = sum(F.interpolate(model(x.flip(-1)).flip(-1) if flip else model(x), size=(64, 96), mode="bilinear",
                                align_corners=False).softmax(1) for flip in (False, True)) / 2
    assert torch.equal(scores, ref[0])
    assert scores.data_ptr() == buffers.total.take((1,), scores).data_ptr()


@pytest.mark.parametrize("out_size", [(3000, 4000), (1001, 333), (50, 97)])
def test_band_rows_start_on_softmax_vectors_within_the_budget(out_size):
    class Pass:
        size = (512, 683)

    rows = bands.band_rows(150, out_size, [Pass()], budget=2 ** 22)
    assert rows == out_size[0] or rows * out_size[1] % bands.SOFTMAX_VECTOR_PIXELS == 0
    quantum = bands.SOFTMAX_VECTOR_PIXELS // np.gcd(out_size[1], bands.SOFTMAX_VECTOR_PIXELS)
    assert rows == min(quantum, out_size[0]) or 4 * 150 * rows * max(out_size[1], 512 * 683 / out_size[0]) <= 2 ** 22


# --- reading the model -------------------------------------------------------------------------------

def test_low_res_forward_reads_the_public_method():
    model = StrideFourSegmenter().eval()
    x = torch.randn(1, 3, 30, 41)
    with torch.no_grad():
        low = bands.LowResForward(model)(x)
    assert low.shape == (1, 7, 8, 11) and model.low_res_calls == 1

    class Plain(nn.Module):  # no low_res_logits: its forward's output is the logits
        def forward(self, x):
            return x[:, :2].double()

    out = bands.LowResForward(Plain())(x)
    assert out.dtype == torch.float32 and torch.equal(out, x[:, :2])


def test_non_finite_logits_are_reported_once_at_the_end():
    forward = bands.LowResForward(nn.Identity())
    forward(torch.zeros(1, 2, 3, 3))
    forward.finite.raise_if_not_finite()  # all finite: nothing
    forward(torch.tensor([[[[1.0, float("inf")]]]]))
    forward(torch.zeros(1, 2, 3, 3))  # a later finite pass does not clear it
    with pytest.raises(FloatingPointError, match="NaN/Inf logits"):
        forward.finite.raise_if_not_finite()


# --- sliding windows ------------------------------------------------------------------------------------

def test_slide_keeps_two_rows_of_crops(monkeypatch):
    """Crops run row by row as the bands reach them; a row of crops is dropped once the bands pass it."""
    kept, created = [], []
    original = bands.SlidePass._crop_row

    def crop_row(self, r):
        if r not in self.cache:
            created.append(r)
        kept.append(len(self.cache))
        return original(self, r)

    monkeypatch.setattr(bands.SlidePass, "_crop_row", crop_row)
    model = StrideFourSegmenter()
    image = _rgb(300, 100)  # native: 7 rows of crops (64, stride 43), 2 columns
    labels, confidence = predict(model, image, scale=(300, 300), slide=True, band_rows=4, protocol=SMALL_WINDOWS,
                                 return_confidence=True)
    assert created == list(range(7)), "every row of crops is run once, in order"
    assert max(kept) <= 2
    assert model.low_res_calls == 7 * 2
    probs = predict_probs(model, image, scale=(300, 300), slide=True, protocol=SMALL_WINDOWS)
    assert (torch.from_numpy(confidence) - probs.amax(0)).abs().max() <= 1e-6
