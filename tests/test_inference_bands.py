"""The banded ADE20K protocol (``predict``/``segment``) against its plain definition (``predict_probs``).

The bands repeat PyTorch's bilinear kernel step for step and start on vector boundaries, so with the
automatic band size the scores are bitwise those of the definition; with any other band size (one row,
a few rows) they are within float32 round-off of the softmax (<= 1e-6). Labels may differ only where
the definition's two best scores are tied (within that round-off).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from conftest import MINI
from torch.utils._python_dispatch import TorchDispatchMode

import iwin_models.bands as bands
import iwin_models.inference as inference
from iwin_models.inference import predict, predict_probs, segment
from iwin_models.segmenter import IwinUPerNet
from iwin_models.weights import ADE20K_PROTOCOL

CLASSES = 150


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = IwinUPerNet("iwin_tiny", encoder_kwargs=MINI, decoder_channels=32, aux_channels=0, classes=CLASSES)
    with torch.no_grad():  # a spread of classes in the predictions, so the comparisons say something
        m.segmentation_head.conv_seg.weight.mul_(30)
    return m.eval()


# sliding windows of 64 at stride 43 (the same geometry as 512/341), so that slide tests stay small
SMALL_WINDOWS = dataclasses.replace(ADE20K_PROTOCOL, slide_crop=64, slide_stride=43)


def _rgb(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


def _assert_same_class_map(labels, probs, tol=0.0):
    """``labels`` is the argmax of ``probs`` (C, H, W) wherever its two best scores differ by more than ``tol``."""
    top2 = probs.topk(2, dim=0).values
    decided = (top2[0] - top2[1] > tol).numpy()
    expected = probs.argmax(0).numpy()
    assert np.array_equal(labels[decided], expected[decided])
    assert decided.mean() > 0.99, "hardly any pixel is decided: the comparison says nothing"


# --- banded == plain ----------------------------------------------------------------------------------

PROTOCOLS = {
    # name: (image height, width, keyword arguments); the image is resized to the fitted scale and back
    "odd_logits_shrink": (37, 53, dict(scale=(128, 64))),  # model input 64x92 > image: logits downscaled
    "odd_logits_grow": (101, 67, dict(scale=(64, 48))),  # model input 64x42 < image: logits upscaled
    "same_size": (64, 96, dict(scale=(96, 64))),  # no resize at all
    "tall_one_column": (90, 1, dict(scale=(64, 32))),
    "aug": (50, 131, dict(scale=(100, 64), aug=True)),  # 6 scales x 2 mirrored passes
    "slide_native": (150, 131, dict(scale=(150, 150), slide=True, protocol=SMALL_WINDOWS)),  # crops read as needed
    "slide_resized_aug": (40, 30, dict(scale=(90, 64), slide=True, aug=True, protocol=SMALL_WINDOWS)),
}
_DEFINITIONS = {}


def _definition(model, name, seed):
    """``(image, predict_probs(model, image, ...))`` of a protocol case, computed once."""
    if (name, seed) not in _DEFINITIONS:
        h, w, kw = PROTOCOLS[name]
        image = _rgb(h, w, seed)
        _DEFINITIONS[name, seed] = image, predict_probs(model, image, **kw)
    return _DEFINITIONS[name, seed]


@pytest.mark.parametrize("name", PROTOCOLS)
def test_automatic_bands_are_bitwise_the_definition(model, name):
    h, w, kw = PROTOCOLS[name]
    image, probs = _definition(model, name, 0)
    labels, confidence = predict(model, image, return_confidence=True, **kw)
    assert labels.shape == (h, w) and labels.dtype == np.int64 and confidence.dtype == np.float32
    assert torch.equal(torch.from_numpy(confidence), probs.amax(0))
    _assert_same_class_map(labels, probs)
    _assert_same_class_map(segment(model, image, **kw), probs)  # labels only: argmax of the logits


@pytest.mark.parametrize("name", ["odd_logits_shrink", "odd_logits_grow", "aug", "slide_native", "slide_resized_aug"])
@pytest.mark.parametrize("band_rows", [1, 3, 10 ** 6])  # one row a band, a few, one band for all
def test_any_band_size_matches_the_definition(model, name, band_rows):
    _, _, kw = PROTOCOLS[name]
    image, probs = _definition(model, name, 1)
    labels, confidence = predict(model, image, return_confidence=True, band_rows=band_rows, **kw)
    assert (torch.from_numpy(confidence) - probs.amax(0)).abs().max() <= 1e-6
    _assert_same_class_map(labels, probs, tol=1e-6)
    small = predict(model, image, band_rows=band_rows, labels_dtype=np.uint8, return_confidence=True, **kw)[0]
    assert small.dtype == np.uint8 and np.array_equal(small, labels)


# --- memory: never C x H x W at the original size ------------------------------------------------------

class LargestTensor(TorchDispatchMode):
    """Records the element count of the largest tensor any operation creates."""

    def __init__(self):
        super().__init__()
        self.numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.numel = max(self.numel, t.numel())
        return out


def _largest(fn) -> int:
    with LargestTensor() as mode:
        fn()
    return mode.numel


def test_the_tracker_sees_the_full_resolution_scores(model):
    """The definition allocates C x H x W: the tracker catches it (so the test below can fail)."""
    image = _rgb(120, 160)
    assert _largest(lambda: predict_probs(model, image, scale=(64, 48))) >= CLASSES * 120 * 160
    assert _largest(lambda: predict(model, image, scale=(64, 48), band_rows=8)) < CLASSES * 120 * 160 // 4


@pytest.mark.parametrize("kw", [dict(), dict(aug=True), dict(return_confidence=True)],
                         ids=["whole", "aug", "confidence"])
def test_large_photo_never_holds_full_resolution_scores(model, kw, monkeypatch):
    """C x H x W would be 72 M floats (288 MB); the largest tensor is a band (bands of 8 MB here)."""
    monkeypatch.setattr(bands, "BAND_BYTES", 8 * 2 ** 20)
    h, w = 600, 800
    image = _rgb(h, w)
    largest = _largest(lambda: predict(model, image, scale=(128, 96), **kw))
    band = bands.BAND_BYTES // 4  # elements of a band tensor
    assert largest <= band and 30 * band < CLASSES * h * w, largest


def test_native_slide_never_holds_an_accumulator_over_the_image(model):
    h, w = 300, 200  # 7 x 4 crops of 64
    assert inference._rescale_size(h, w, (300, 300)) == (h, w)  # at its own size
    largest = _largest(lambda: predict(model, _rgb(h, w), scale=(300, 300), slide=True, band_rows=8,
                                       protocol=SMALL_WINDOWS))
    assert largest < CLASSES * h * w // 10, largest  # a band of rows, or two rows of crops at stride 4


# --- the decoder's concatenation-free fusion -----------------------------------------------------------

def _decoders():
    from segmentation_models_pytorch.decoders.upernet.decoder import UPerNetDecoder

    from iwin_models.segmenter import UPerNetDecoderChannelsLast

    torch.manual_seed(0)
    channels = (3, 0, 32, 64, 128, 256)
    ours, smps = UPerNetDecoderChannelsLast(channels, 5, 64).eval(), UPerNetDecoder(channels, 5, 64).eval()
    ours.load_state_dict(smps.state_dict(), strict=True)
    with torch.no_grad():  # non-trivial BatchNorm statistics
        for m in ours.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2)
    smps.load_state_dict(ours.state_dict())
    features = [torch.randn(1, c, 75 // 2 ** i + 1, 53 // 2 ** i + 1) for i, c in enumerate(channels)]
    features = [f.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2) for f in features]  # channels-last, as Iwin's
    return ours, smps, features


def test_fusion_by_channel_groups_equals_smp_forward():
    from iwin_models.layers.config import fast_paths

    ours, smps, features = _decoders()
    calls = []
    grouped = ours._fuse_by_channel_groups
    ours._fuse_by_channel_groups = lambda maps: calls.append("groups") or grouped(maps)
    with torch.no_grad():
        expected = smps(list(features))
        with fast_paths(False):  # the plain path: smp's forward itself
            assert torch.equal(ours(list(features)), expected)
        assert calls == []
        fast = ours(list(features))
        assert calls == ["groups"]
        torch.testing.assert_close(fast, expected, rtol=1e-5, atol=1e-5)
        calls.clear()
        ours.fusion_block.register_forward_hook(lambda *a: calls.append("fusion_block"))
        torch.testing.assert_close(ours(list(features)), expected, rtol=1e-5, atol=1e-5)
        assert calls == ["fusion_block"], "a hook on the fusion block sees it run: the plain fusion"
    calls.clear()
    with torch.enable_grad():  # training: the concatenation (one tensor kept for backward, not four)
        torch.testing.assert_close(ours(list(features)), expected, rtol=1e-5, atol=1e-5)
    assert calls == ["fusion_block"]


def test_aug_runs_the_mirrored_image_in_a_pass_of_its_own(model):
    """No batch of two at 1.75x the test scale (that pass alone set --aug's peak before)."""
    batches = []
    hook = model.encoder.register_forward_pre_hook(lambda module, args: batches.append(tuple(args[0].shape)))
    try:
        predict(model, _rgb(30, 40), scale=(64, 48), aug=True)
    finally:
        hook.remove()
    assert len(batches) == 12 and all(b[0] == 1 for b in batches)
    assert sorted({b[2:] for b in batches}) == sorted({inference._rescale_size(30, 40, (64 * r, 48 * r))
                                                        for r in ADE20K_PROTOCOL.aug_ratios})
