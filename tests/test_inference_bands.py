"""The banded ADE20K protocol (``predict``/``segment``) against its plain definition (``predict_probs``).

The bands repeat PyTorch's bilinear kernel step for step and start on vector boundaries, so with the
automatic band size the scores are bitwise those of the definition; with any other band size (one row,
a few rows) they are within float32 round-off of the softmax (<= 1e-6). Labels may differ only where
the definition's two best scores are tied (within that round-off).
"""
from __future__ import annotations

import dataclasses
import functools
import importlib.util
import warnings

import numpy as np
import pytest
import torch
from conftest import MINI, REPO
from torch.utils._python_dispatch import TorchDispatchMode

import iwin_models.engine.bands as bands
import iwin_models.engine.inference as inference
from iwin_models.data.transforms import rescale_size
from iwin_models.engine.inference import predict, predict_probs, segment
from iwin_models.models.upernet import IwinUPerNet
from iwin_models.models.weights import ADE20K_PROTOCOL, EvalProtocol

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


# the 12-pass and sliding cases are the slow tier's (the bitwise band sweep)
_HEAVY = {"aug", "slide_native", "slide_resized_aug"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in _HEAVY else n for n in PROTOCOLS])
def test_automatic_bands_are_bitwise_the_definition(model, name):
    h, w, kw = PROTOCOLS[name]
    image, probs = _definition(model, name, 0)
    labels, confidence = predict(model, image, return_confidence=True, **kw)
    assert labels.shape == (h, w) and labels.dtype == np.int64 and confidence.dtype == np.float32
    assert torch.equal(torch.from_numpy(confidence), probs.amax(0))
    _assert_same_class_map(labels, probs)
    _assert_same_class_map(segment(model, image, **kw), probs)  # labels only: argmax of the logits


@pytest.mark.slow
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


@pytest.mark.parametrize("kw", [dict(), pytest.param(dict(aug=True), marks=pytest.mark.slow),
                                dict(return_confidence=True)],
                         ids=["whole", "aug", "confidence"])
def test_large_photo_never_holds_full_resolution_scores(model, kw, monkeypatch):
    """C x H x W would be 72 M floats (288 MB); the largest tensor is a band (bands of 8 MB here)."""
    monkeypatch.setattr(bands, "BAND_BYTES", 8 * 2 ** 20)
    h, w = 600, 800
    image = _rgb(h, w)
    largest = _largest(lambda: predict(model, image, scale=(128, 96), **kw))
    band = bands.BAND_BYTES // 4  # elements of a band tensor
    assert largest <= band and 30 * band < CLASSES * h * w, largest


@pytest.mark.slow
def test_native_slide_never_holds_an_accumulator_over_the_image(model):
    h, w = 300, 200  # 7 x 4 crops of 64
    assert rescale_size(h, w, (300, 300)) == (h, w)  # at its own size
    largest = _largest(lambda: predict(model, _rgb(h, w), scale=(300, 300), slide=True, band_rows=8,
                                       protocol=SMALL_WINDOWS))
    assert largest < CLASSES * h * w // 10, largest  # a band of rows, or two rows of crops at stride 4


# --- the protocol's passes ---------------------------------------------------------------------------

def test_aug_runs_the_mirrored_image_in_a_pass_of_its_own(model):
    """No batch of two at 1.75x the test scale (that pass alone set --aug's peak before)."""
    batches = []
    hook = model.encoder.register_forward_pre_hook(lambda module, args: batches.append(tuple(args[0].shape)))
    try:
        predict(model, _rgb(30, 40), scale=(64, 48), aug=True)
    finally:
        hook.remove()
    assert len(batches) == 12 and all(b[0] == 1 for b in batches)
    assert sorted({b[2:] for b in batches}) == sorted({rescale_size(30, 40, (64 * r, 48 * r))
                                                        for r in ADE20K_PROTOCOL.aug_ratios})


def test_the_protocol_is_read_from_eval_protocol(model):
    """Scale, ratios, flip, mean and std come from the EvalProtocol given (no module-level copies of them)."""
    assert not any(hasattr(inference, name) for name in ("TEST_SCALE", "AUG_RATIOS", "SLIDE_CROP", "SLIDE_STRIDE"))
    custom = EvalProtocol(scale=(80, 40), aug_ratios=(1.0, 0.5), aug_flip=False, mean=(10.0, 20.0, 30.0),
                          std=(2.0, 4.0, 8.0))
    inputs = []
    hook = model.encoder.register_forward_pre_hook(lambda module, args: inputs.append(args[0].clone()))
    image = np.full((30, 60, 3), 50, np.uint8)  # flat: the normalised input is (50 - mean) / std everywhere
    try:
        labels, confidence = predict(model, image, aug=True, protocol=custom, return_confidence=True)
    finally:
        hook.remove()
    assert [tuple(x.shape[2:]) for x in inputs] == [(40, 80), (20, 40)]  # fitted in 80x40, then 0.5x; no mirror
    for x in inputs:
        assert torch.equal(x[0, :, 0, 0], torch.tensor([20.0, 7.5, 2.5]))
    assert torch.equal(torch.from_numpy(confidence), predict_probs(model, image, aug=True, protocol=custom).amax(0))


def test_the_onnx_example_restates_the_protocol():
    """examples/onnx_inference.py runs without PyTorch, so it writes the protocol's numbers out: these."""
    pytest.importorskip("onnxruntime")
    spec = importlib.util.spec_from_file_location("onnx_example", REPO / "examples" / "onnx_inference.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    assert example.TEST_SCALE == ADE20K_PROTOCOL.scale
    assert np.array_equal(example.MEAN, np.float32(ADE20K_PROTOCOL.mean))
    assert np.array_equal(example.STD, np.float32(ADE20K_PROTOCOL.std))


# --- the fast twins: on the CPU by default, once a call -------------------------------------------------

@pytest.fixture
def conversions(monkeypatch):
    """Each optimize_for_cpu call made by inference: (keyword arguments, the model it returned)."""
    import iwin_models.fast.optimize as optimize

    calls, depth, real = [], [], optimize.optimize_for_cpu

    def spy(model, **kwargs):
        depth.append(1)  # the conversion may call itself: record the outer calls only
        try:
            out = real(model, **kwargs)
        finally:
            depth.pop()
        if not depth:
            calls.append((kwargs, out))
        return out

    monkeypatch.setattr(optimize, "optimize_for_cpu", spy)
    return calls


def test_fast_twins_by_default_on_the_cpu_once_a_call(model, conversions):
    from iwin_models.fast.twin import CpuTwin

    image = _rgb(30, 40)
    labels, confidence = predict(model, image, scale=(64, 48), aug=True, return_confidence=True)  # 12 passes
    [(kwargs, converted)] = conversions
    assert kwargs == {"inplace": False} and converted is not model
    assert any(isinstance(m, CpuTwin) for m in converted.modules())
    assert not any(isinstance(m, CpuTwin) for m in model.modules()), "the caller's model stays plain"
    plain_labels, plain_confidence = predict(model, image, scale=(64, 48), aug=True, return_confidence=True,
                                             fast=False)
    assert len(conversions) == 1, "fast=False runs the model as given"
    assert np.abs(plain_confidence - confidence).max() < 1e-5  # round-off (1.4e-6 measured)
    assert (plain_labels == labels).mean() > 0.99


def test_fast_paths_switched_off_run_the_model_as_given(model, conversions):
    from iwin_models.fast.config import fast_paths

    with fast_paths(False):  # as IWIN_FAST_PATH=0
        segment(model, _rgb(20, 30), scale=(32, 32))
        assert conversions == []
        segment(model, _rgb(20, 30), scale=(32, 32), fast=True)  # asked for: converted all the same
    assert len(conversions) == 1


@pytest.mark.parametrize("error", [TypeError, ValueError])  # nothing to convert; a part the twins cannot stand in
def test_a_model_the_twins_refuse_runs_plain(model, monkeypatch, error):
    import iwin_models.fast.optimize as optimize

    def refuse(m, **kwargs):
        raise error("cannot convert: the reason")

    monkeypatch.setattr(optimize, "optimize_for_cpu", refuse)
    monkeypatch.setattr(optimize, "_REFUSALS_SEEN", set())
    image = _rgb(20, 30)
    expected = segment(model, image, scale=(32, 32), fast=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            assert np.array_equal(segment(model, image, scale=(32, 32)), expected)
    said = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert said == (["running the plain model: cannot convert: the reason"] if error is ValueError else [])
    with pytest.raises(error, match="the reason"):  # asked for: refused as the conversion refuses
        segment(model, image, scale=(32, 32), fast=True)


# --- NaN/Inf: one check a call, where the logits enter --------------------------------------------------

@pytest.mark.parametrize("poisoned, kw", [(1, dict(scale=(64, 48))),
                                          (3, dict(scale=(150, 150), slide=True, protocol=SMALL_WINDOWS))],
                         ids=["whole", "third_crop"])
def test_non_finite_logits_are_an_error(model, poisoned, kw):
    calls = []

    def poison(module, args, out):
        calls.append(1)
        if len(calls) == poisoned:
            out = out.clone()
            out[0, 3, 1, 1] = float("nan")
        return out

    hook = model.segmentation_head.conv_seg.register_forward_hook(poison)
    try:
        for run in (segment, predict_probs, functools.partial(predict, return_confidence=True)):
            calls.clear()
            with pytest.raises(FloatingPointError, match=r"^the model produced NaN/Inf logits \(bad weights, or "
                                                         r"overflow in low precision\)$"):
                run(model, _rgb(150, 131), **kw)
            assert len(calls) >= poisoned
    finally:
        hook.remove()
