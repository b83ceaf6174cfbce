"""The torchvision port of the Iwin (Cascade) Mask R-CNN against the authors' mmdet 2.11 outputs.

Golden data: ``<fixtures>/detection`` (its README lists every replicated behaviour and the suggested
tolerances, which are used here). Both mini detectors on all three images: the preprocessed input,
proposals (as a set), detections, mask probabilities and pasted masks; on the debug image also every
intermediate tensor, each stage fed the authors' own input. Run with ``-s`` to see the measured errors.
"""
from __future__ import annotations

import hashlib
import json
from functools import cache
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from _detectors import MINI

from iwin_models.models.detection import ScaledImageList, build_detector, load_mmdet_checkpoint

MODELS = ("mini_mask_rcnn", "mini_cascade_mask_rcnn")
IMAGES = ("img_a", "img_b", "img_strip")


@pytest.fixture(scope="module")
def fx(fixtures_dir) -> Path:
    path = fixtures_dir / "detection"
    if not (path / "fixtures.json").is_file():
        pytest.skip(f"detection fixtures not found under {path}")
    return path


@cache
def _meta(fx: Path) -> dict:
    return json.loads((fx / "fixtures.json").read_text())


@cache
def _model(fx: Path, name: str):
    model = build_detector("tiny", cascade="cascade" in name, **MINI).eval()
    return load_mmdet_checkpoint(model, fx / f"{name}.pth")


@cache
def _npz(path: Path) -> dict:
    return dict(np.load(path))


def _rgb(fx: Path, image: str) -> np.ndarray:
    return np.ascontiguousarray(cv2.imread(str(fx / "images" / f"{image}.png"))[..., ::-1])


@cache
def _run(fx: Path, name: str, image: str) -> dict:
    """Everything one image gives through the lower-level entry points."""
    model = _model(fx, name)
    rgb = _rgb(fx, image)
    batch = model.transform.from_resized(model.transform.resize(rgb), rgb.shape[:2])
    with torch.no_grad():
        features = model.backbone(batch.tensors)
        boxes, scores = model.rpn.propose(batch, list(features.values()))
        det = model.roi_heads(features, boxes, batch.image_sizes, batch.scale_factors)[0]
        out = model.transform.postprocess([det], batch)[0]
    return dict(batch=batch, features=features, proposals=torch.cat([boxes[0], scores[0][:, None]], 1), det=det,
                out=out)


def _err(a, b) -> float:
    a, b = torch.as_tensor(a).double(), torch.as_tensor(b).double()
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item() if a.numel() else 0.0


def _check(what: str, ours, theirs, atol: float):
    error = _err(ours, theirs)
    print(f"{what}: max abs error {error:.3g} (atol {atol:g})")
    assert error <= atol, f"{what}: {error} > {atol}"


def _masks(z: dict) -> torch.Tensor:
    shape = tuple(z["masks_shape"])
    return torch.from_numpy(np.unpackbits(z["masks_packed"])[: np.prod(shape)].reshape(shape).astype(bool))


# --- preprocessing ------------------------------------------------------------------------------------

@pytest.mark.parametrize("image", IMAGES)
def test_preprocessing_is_the_authors(fx, image):
    meta = _meta(fx)["images"][image]
    model = _model(fx, MODELS[0])
    rgb = _rgb(fx, image)
    resized = model.transform.resize(rgb)
    assert np.array_equal(resized[..., ::-1], np.load(fx / "inputs.npz")[f"{image}.resized"])  # cv2 on uint8
    batch = model.transform.from_resized(resized, rgb.shape[:2])
    x = batch.tensors
    assert list(x.shape) == meta["img_tensor_shape"]
    assert hashlib.sha256(x.numpy().tobytes()).hexdigest() == meta["img_tensor_sha256"]
    assert x.double().sum().item() == meta["img_tensor_sum_f64"]
    if image == "img_strip":
        assert torch.equal(x, torch.from_numpy(np.load(fx / "inputs.npz")["img_strip.img"]))
    assert batch.image_sizes == [tuple(meta["img_shape"][:2])]
    assert batch.original_image_sizes == [tuple(meta["ori_shape"][:2])]
    assert torch.equal(batch.scale_factors[0], torch.tensor(meta["scale_factor"], dtype=torch.float32))


@pytest.mark.parametrize("name", MODELS)
def test_public_call_and_lower_level_entries_agree(fx, name):
    """``model([uint8 RGB image])`` and ``detect_prepared`` on the authors' resized BGR image or on their
    exact input tensor + metas give the same results (the parity tests below use the lower level)."""
    meta, model = _meta(fx)["images"]["img_strip"], _model(fx, name)
    inputs = np.load(fx / "inputs.npz")
    from_resized = model.transform.from_resized(inputs["img_strip.resized"][..., ::-1], meta["ori_shape"][:2])
    exact = ScaledImageList(torch.from_numpy(inputs["img_strip.img"]), [tuple(meta["img_shape"][:2])],
                            [torch.tensor(meta["scale_factor"], dtype=torch.float32)], [tuple(meta["ori_shape"][:2])])
    expected = _run(fx, name, "img_strip")["out"]
    with torch.no_grad():
        outputs = [model([torch.from_numpy(_rgb(fx, "img_strip")).permute(2, 0, 1)])[0],
                   model.detect_prepared(from_resized)[0], model.detect_prepared(exact)[0]]
    for out in outputs:
        assert all(torch.equal(out[k], expected[k]) for k in ("boxes", "labels", "scores", "masks"))


# --- the debug image, stage by stage ------------------------------------------------------------------

@pytest.mark.parametrize("name", MODELS)
def test_strip_backbone_fpn_rpn(fx, name):
    z = _npz(fx / f"{name}.img_strip.npz")
    model, run = _model(fx, name), _run(fx, name, "img_strip")
    with torch.no_grad():
        body = model.backbone.body(run["batch"].tensors)
        cls, reg = model.rpn.head(list(run["features"].values()))
    for i, f in enumerate(body):
        _check(f"{name} backbone.{i}", f, z[f"backbone.{i}"], 1e-4)
    for i, f in enumerate(run["features"].values()):
        _check(f"{name} fpn.{i}", f, z[f"fpn.{i}"], 1e-4)
    for i in range(5):
        _check(f"{name} rpn_cls.{i}", cls[i], z[f"rpn_cls.{i}"], 1e-4)
        _check(f"{name} rpn_reg.{i}", reg[i], z[f"rpn_reg.{i}"], 1e-4)


@pytest.mark.parametrize("name", MODELS)
def test_strip_proposals_from_the_authors_rpn_outputs(fx, name):
    """The proposal selection fed the stored RPN logits/deltas: the same proposals in the same order
    (measured: equal but for a 1-ulp difference of a few decoded coordinates, from ``exp``)."""
    z = _npz(fx / f"{name}.img_strip.npz")
    model, batch = _model(fx, name), _run(fx, name, "img_strip")["batch"]
    level = lambda key: [torch.from_numpy(z[f"{key}.{i}"]) for i in range(5)]
    with torch.no_grad():
        boxes, scores = model.rpn.select(batch, level("fpn"), level("rpn_cls"), level("rpn_reg"))
    assert torch.equal(scores[0], torch.from_numpy(z["proposals"][:, 4]))
    _check(f"{name} proposals from stored RPN outputs (ordered)", boxes[0], z["proposals"][:, :4], 1e-3)


@pytest.mark.parametrize("name", MODELS)
def test_strip_roi_stages(fx, name):
    """Each RoI stage on the authors' own RoIs: logits, deltas, the refined RoIs of the next stage, mask logits."""
    z = _npz(fx / f"{name}.img_strip.npz")
    model, run = _model(fx, name), _run(fx, name, "img_strip")
    feats = [run["features"][k] for k in "0123"]
    heads = model.roi_heads
    stages = heads.num_stages if hasattr(heads, "num_stages") else 1
    image_shape = run["batch"].image_sizes[0]
    labels = torch.from_numpy(z["det_labels"])
    with torch.no_grad():
        for s in range(stages):
            rois = torch.from_numpy(z[f"stage{s}.rois"])
            cls_score, bbox_pred = heads.box_forward(feats, rois, s)
            _check(f"{name} stage{s}.cls_score", cls_score[:200], z[f"stage{s}.cls_score"], 5e-4)
            _check(f"{name} stage{s}.bbox_pred", bbox_pred[:200], z[f"stage{s}.bbox_pred"], 1e-4)
            if s + 1 < stages:
                refined = heads.refine(rois, cls_score, bbox_pred, heads.stage_coders[s], image_shape)
                _check(f"{name} stage{s + 1}.rois (refined)", refined, z[f"stage{s + 1}.rois"], 1e-3)
            logits = heads.mask_forward(feats, torch.from_numpy(z[f"mask_stage{s}.mask_rois"]), s)
            _check(f"{name} mask_stage{s}.mask_logits", logits[torch.arange(len(labels)), labels],
                   z[f"mask_stage{s}.mask_logits"], 1e-4)


# --- every image, end to end --------------------------------------------------------------------------

@pytest.mark.parametrize("image", IMAGES)
@pytest.mark.parametrize("name", MODELS)
def test_proposals_as_a_set(fx, name, image):
    ours = _run(fx, name, image)["proposals"]
    theirs = torch.from_numpy(_npz(fx / f"{name}.{image}.npz")["proposals"])
    assert ours.shape == theirs.shape
    distance = (ours[:, None, :4] - theirs[None, :, :4]).abs().amax(-1)  # (ours, theirs)
    worst = max(distance.amin(0).max().item(), distance.amin(1).max().item())
    match = distance.argmin(0)
    score_error = _err(ours[match, 4], theirs[:, 4])
    print(f"{name} {image} proposals: set distance {worst:.3g} px, objectness {score_error:.3g}, "
          f"{(match != torch.arange(len(match))).sum().item()} at other ranks")
    assert worst <= 1e-3 and score_error <= 1e-5
    assert len(set(match.tolist())) == len(match)


@pytest.mark.parametrize("image", IMAGES)
@pytest.mark.parametrize("name", MODELS)
def test_detections_and_mask_probabilities(fx, name, image):
    z = _npz(fx / f"{name}.{image}.npz")
    det = _run(fx, name, image)["det"]
    assert len(det["boxes"]) == len(z["det_bboxes"]) == _meta(fx)["models"][name]["per_image"][image]["detections"]
    assert torch.equal(det["labels"], torch.from_numpy(z["det_labels"]))
    _check(f"{name} {image} det boxes", det["boxes"], z["det_bboxes"][:, :4], 1e-3)
    _check(f"{name} {image} det scores", det["scores"], z["det_bboxes"][:, 4], 1e-5)
    _check(f"{name} {image} mask boxes", det["mask_boxes"], z["mask_boxes"], 1e-3)
    _check(f"{name} {image} mask probs", det["mask_probs"], z["mask_probs"], 1e-5)


@pytest.mark.parametrize("image", IMAGES)
@pytest.mark.parametrize("name", MODELS)
def test_final_results_and_pasted_masks(fx, name, image):
    """Results as ``inference_detector`` gives them once sorted stably by label (as its per-class lists
    are); labels 1-based (torchvision's convention)."""
    z = _npz(fx / f"{name}.{image}.npz")
    out = _run(fx, name, image)["out"]
    order = torch.sort(out["labels"], stable=True)[1]
    assert torch.equal(out["labels"][order] - 1, torch.from_numpy(z["labels"]))
    _check(f"{name} {image} boxes", out["boxes"][order], z["boxes"], 1e-3)
    _check(f"{name} {image} scores", out["scores"][order], z["scores"], 1e-5)
    ours, theirs = out["masks"][order, 0], _masks(z)
    assert ours.shape == theirs.shape and ours.dtype == torch.bool
    flipped = (ours ^ theirs).sum().item()
    print(f"{name} {image} masks: {flipped} of {theirs.sum().item()} on pixels differ")
    assert flipped <= max(1, 1e-4 * theirs.sum().item())
