"""The detectors by name: the registry against the fixtures' manifests, ``create_detector`` (every kind of weights,
the errors), ``detect`` against the authors' outputs and on every kind of image, ``save_pretrained`` round trips.

The mini detectors of ``<fixtures>/detection`` are built through ``create_detector`` with their widths as keyword
arguments; full-size models are built on the meta device, or once (``slow``).
"""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from _detectors import MINI, MINIS, mini_detector
from PIL import Image

import iwin_models
from iwin_models import DETECTORS, CheckpointError, Detections, create_detector, detect
from iwin_models.io.checkpoint import torch_hub_checkpoints
from iwin_models.models.detection import to_mmdet_detector
from iwin_models.models.detection.weights import DOWNLOAD_BASE, detector_table

RELEASED = ("iwin_tiny_mask_rcnn_coco_1x", "iwin_tiny_mask_rcnn_coco_3x", "iwin_small_mask_rcnn_coco_1x",
            "iwin_small_mask_rcnn_coco_3x", "iwin_tiny_cascade_mask_rcnn_coco_1x",
            "iwin_tiny_cascade_mask_rcnn_coco_3x", "iwin_small_cascade_mask_rcnn_coco_3x")
UNRELEASED = ("iwin_small_cascade_mask_rcnn_coco_1x", "iwin_base_cascade_mask_rcnn_coco_3x")


@pytest.fixture(scope="module")
def fx(fixtures_dir):
    path = fixtures_dir / "detection"
    if not (path / "manifests" / "index.json").is_file():
        pytest.skip(f"detection fixtures not found under {path}")
    return path


_MODELS: dict = {}


def _mini(fx, name: str = "mini_mask_rcnn"):
    if name not in _MODELS:
        _MODELS[name] = mini_detector(fx, name)
    return _MODELS[name]


# --- the registry ------------------------------------------------------------------------------------

def test_registry_matches_the_manifests(fx):
    index = json.loads((fx / "manifests" / "index.json").read_text())
    by_config = {e["manifest"].rsplit("/", 1)[-1][:-len(".json")]: e for e in index["manifests"]}
    assert set(DETECTORS) == set(RELEASED) | set(UNRELEASED)
    assert {w.config for w in DETECTORS.values()} == set(by_config)
    assert index["download_base"] == DOWNLOAD_BASE
    for spec in DETECTORS.values():
        entry = by_config[spec.config]
        assert (spec.file_name, spec.box_map, spec.mask_map) == (
            entry["released_checkpoint"], entry["box_mAP"], entry["mask_mAP"]), spec.name
        assert spec.params == entry["num_params"], spec.name
        assert spec.released == (spec.name in RELEASED)
        assert spec.url is None or spec.url == DOWNLOAD_BASE + spec.file_name
        assert (spec.variant in spec.config, spec.cascade == spec.config.startswith("cascade"),
                f"_{spec.schedule}_" in spec.config) == (True, True, True)
        assert len(spec.class_names) == len(spec.category_ids) == 80
    assert DETECTORS["iwin_tiny_cascade_mask_rcnn_coco_1x"].drop_path_rate == 0.0
    assert DETECTORS["iwin_tiny_mask_rcnn_coco_1x"].drop_path_rate == 0.1
    assert "not released" in detector_table() and "iwin_small_window7_cascade_mask_rcnn_3x_coco.pth" in detector_table()


def test_entrypoints_are_documented_and_exported():
    for name, spec in DETECTORS.items():
        fn = getattr(iwin_models, name)
        assert fn.__doc__ == spec.docstring() and spec.title in fn.__doc__
        assert name in iwin_models.__all__
        assert ("Weights: " + spec.url in fn.__doc__) if spec.released else "released no checkpoint" in fn.__doc__
    hubconf = (iwin_models.__path__[0] + "/../hubconf.py")
    text = open(hubconf).read()
    assert all(name in text for name in RELEASED) and not any(name in text for name in UNRELEASED)


@pytest.mark.parametrize("name", ["iwin_small_mask_rcnn_coco_3x", "iwin_base_cascade_mask_rcnn_coco_3x"])
def test_full_size_builds_with_the_registered_count(name):
    with torch.device("meta"):
        model = create_detector(name)
    assert sum(p.numel() for p in model.parameters()) == DETECTORS[name].params
    assert model.config.drop_path_rate == DETECTORS[name].drop_path_rate
    assert model.roi_heads.score_thresh == 0.05 and model.roi_heads.detections_per_img == 100
    assert model.class_names == DETECTORS[name].class_names and model.name == name


# --- create_detector: weights and errors --------------------------------------------------------------

def test_unreleased_pretrained_raises():
    with pytest.raises(CheckpointError, match="released no weights for iwin_base_cascade_mask_rcnn_coco_3x"):
        create_detector("iwin_base_cascade_mask_rcnn_coco_3x", pretrained=True)
    with pytest.raises(ValueError, match="unknown detector"):
        create_detector("iwin_huge_mask_rcnn")


def test_pretrained_looks_in_the_torch_hub_cache(fx, monkeypatch):
    spec = DETECTORS["iwin_tiny_mask_rcnn_coco_3x"]

    def offline(url, dst, *args, **kwargs):
        raise OSError("offline")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(CheckpointError, match=spec.file_name):
        create_detector(spec.name, pretrained=True, **MINI)
    cached = torch_hub_checkpoints() / spec.file_name
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_bytes((fx / "mini_mask_rcnn.pth").read_bytes())  # the mini weights under the official name
    model = create_detector(spec.name, pretrained=True, **MINI)
    by_name = create_detector(spec.name, weights=spec.file_name, **MINI)  # the bare cached file name
    expected = _mini(fx).state_dict()
    for m in (model, by_name):
        assert all(torch.equal(v, expected[k]) for k, v in m.state_dict().items())


def test_wrong_checkpoints_name_the_file_and_what_it_is(fx, fixtures_dir, tmp_path):
    cascade = fx / "mini_cascade_mask_rcnn.pth"
    with pytest.raises(CheckpointError, match=r"mini_cascade_mask_rcnn\.pth is an Iwin .* Cascade Mask R-CNN"):
        create_detector("iwin_tiny_mask_rcnn_coco_3x", weights=cascade, **MINI)
    with pytest.raises(CheckpointError, match=r"mini_mask_rcnn\.pth is .*which does not fit"):
        create_detector("iwin_tiny_mask_rcnn_coco_3x", weights=fx / "mini_mask_rcnn.pth")  # full widths
    with pytest.raises(CheckpointError, match=r"mini_upernet\.pth is an Iwin UPerNet segmenter"):
        create_detector("iwin_tiny_mask_rcnn_coco_3x", weights=fixtures_dir / "golden" / "mini_upernet.pth", **MINI)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes((fx / "mini_mask_rcnn.pth").read_bytes()[:100_000])
    with pytest.raises(CheckpointError, match=r"truncated\.pth .*truncated or corrupt"):
        create_detector("iwin_tiny_mask_rcnn_coco_3x", weights=truncated, **MINI)


def test_other_class_counts_reinitialise_the_class_specific_layers(fx):
    with pytest.warns(UserWarning, match="80 classes and the model 3"):
        model = create_detector("iwin_tiny_cascade_mask_rcnn_coco_3x", weights=fx / "mini_cascade_mask_rcnn.pth",
                                num_classes=3, **MINI)
    assert model.class_names is None and model.category_ids is None and model.num_classes == 3
    assert model.roi_heads.box_predictor[2].cls_score.out_features == 4
    assert model.roi_heads.box_predictor[0].bbox_pred.out_features == 12
    assert model.roi_heads.mask_predictor[1].mask_fcn_logits.out_channels == 3
    body = _mini(fx, "mini_cascade_mask_rcnn").state_dict()
    assert torch.equal(model.state_dict()["rpn.head.cls_logits.weight"], body["rpn.head.cls_logits.weight"])


def test_save_pretrained_round_trip(fx, tmp_path):
    model = _mini(fx)
    folder = model.save_pretrained(tmp_path / "saved")
    config = json.loads((folder / "config.json").read_text())
    assert config["name"] == "iwin_tiny_mask_rcnn_coco_3x" and config["num_classes"] == 80
    assert config["class_names"][0] == "person" and config["category_ids"][-1] == 90
    assert "commercial use by agreement" in (folder / "README.md").read_text()
    back = create_detector("iwin_tiny_mask_rcnn_coco_3x", weights=folder)  # the folder gives the widths
    assert back.config == model.config and back.class_names == model.class_names
    assert all(torch.equal(v, back.state_dict()[k]) for k, v in model.state_dict().items())
    # three classes with names of their own survive the round trip; and a .safetensors file in mmdet names loads
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        three = create_detector("iwin_tiny_mask_rcnn_coco_3x", weights=folder, num_classes=3)
    three.class_names, three.category_ids = ("a", "b", "c"), None
    again = create_detector("iwin_tiny_mask_rcnn_coco_3x", weights=three.save_pretrained(tmp_path / "three"))
    assert again.num_classes == 3 and again.class_names == ("a", "b", "c") and again.category_ids is None
    with pytest.raises(CheckpointError, match=r"Mask R-CNN checkpoint \(iwin_models names\), which does not fit"):
        create_detector("iwin_tiny_cascade_mask_rcnn_coco_3x", weights=folder, **MINI)  # a folder of another detector
    from safetensors.torch import save_file
    save_file(to_mmdet_detector(model.state_dict()), tmp_path / "mmdet.safetensors")
    named = create_detector("iwin_tiny_mask_rcnn_coco_3x", weights=tmp_path / "mmdet.safetensors", **MINI)
    assert all(torch.equal(v, named.state_dict()[k]) for k, v in model.state_dict().items())


@pytest.mark.slow
def test_full_size_official_layout_loads(tmp_path):
    """A randomly initialised Iwin-T Mask R-CNN saved in the authors' layout loads back strictly (~200 MB)."""
    torch.manual_seed(0)
    model = create_detector("iwin_tiny_mask_rcnn_coco_3x")
    path = tmp_path / "iwin_tiny_window7_mask_rcnn_3x_coco.pth"
    torch.save({"meta": {"CLASSES": list(model.class_names)}, "state_dict": to_mmdet_detector(model.state_dict())},
               path)
    back = create_detector("iwin_tiny_mask_rcnn_coco_3x", weights=path)
    assert all(torch.equal(v, back.state_dict()[k]) for k, v in model.state_dict().items())


# --- detect --------------------------------------------------------------------------------------------

def _fixture_masks(z) -> np.ndarray:
    shape = tuple(z["masks_shape"])
    return np.unpackbits(z["masks_packed"])[: np.prod(shape)].reshape(shape).astype(bool)


@pytest.mark.parametrize("name", list(MINIS))
def test_detect_equals_the_authors_results(fx, name):
    found = detect(_mini(fx, name), fx / "images" / "img_a.png")
    z = np.load(fx / f"{name}.img_a.npz")
    assert isinstance(found, Detections) and len(found) == len(z["det_bboxes"])
    assert found.boxes.dtype == found.scores.dtype == np.float32 and found.labels.dtype == np.int64
    np.testing.assert_array_equal(found.labels, z["det_labels"])  # 0-based, no background
    box_error = np.abs(found.boxes - z["det_bboxes"][:, :4]).max()
    score_error = np.abs(found.scores - z["det_bboxes"][:, 4]).max()
    order = np.argsort(found.labels, kind="stable")  # the authors' results are per class, in detection order
    np.testing.assert_array_equal(found.labels[order], z["labels"])
    flipped = (found.masks[order] != _fixture_masks(z)).sum()
    print(f"{name} img_a: boxes {box_error:.3g} px, scores {score_error:.3g}, {flipped} mask pixels of "
          f"{z['masks_shape'].tolist()} differ")
    assert box_error <= 1e-3 and score_error <= 1e-5 and flipped <= 1e-4 * _fixture_masks(z).sum()
    assert found.class_names[found.labels[0]] == found.names[0] and found.category_ids[0] == 1
    kept = detect(_mini(fx, name), fx / "images" / "img_a.png", score_threshold=0.5)
    assert len(kept) == (found.scores >= 0.5).sum() and kept.masks.shape[0] == len(kept)


def _same(a: Detections, b: Detections) -> bool:
    return all(np.array_equal(getattr(a, k), getattr(b, k)) for k in ("boxes", "scores", "labels", "masks"))


def test_detect_decodes_every_kind_of_image(fx, tmp_path):
    model = _mini(fx)
    rgb = np.asarray(Image.open(fx / "images" / "img_a.png").convert("RGB"))[:120, :150]
    grey = rgb.mean(-1).round().astype(np.uint8)
    base = detect(model, np.repeat(grey[..., None], 3, -1), fast=False)
    assert len(base) > 0 and base.masks.shape == (len(base), 120, 150)
    assert _same(base, detect(model, grey, fast=False))  # grey array
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "grey16.png")  # 16-bit PNG
    assert _same(base, detect(model, tmp_path / "grey16.png", fast=False))
    rgba = np.concatenate([np.repeat(grey[..., None], 3, -1), np.full_like(grey[..., None], 7)], -1)
    assert _same(base, detect(model, Image.fromarray(rgba, "RGBA"), fast=False))  # alpha dropped
    assert _same(base, detect(model, torch.from_numpy(np.repeat(grey[..., None], 3, -1)), fast=False))
    # a JPEG stored sideways (150 x 120) with EXIF orientation 6: detections in the upright picture (120 x 150)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.ascontiguousarray(np.rot90(rgb))).save(tmp_path / "side.jpg", exif=exif, quality=95)
    upright = detect(model, tmp_path / "side.jpg", fast=False)
    assert upright.masks.shape[1:] == (120, 150)
    assert _same(upright, detect(model, iwin_models.io.images.load_image(tmp_path / "side.jpg"), fast=False))


def test_reinitialised_classes_are_named_by_index(fx):
    with pytest.warns(UserWarning):
        model = create_detector("iwin_tiny_mask_rcnn_coco_3x", weights=fx / "mini_mask_rcnn.pth", num_classes=2, **MINI)
    found = detect(model, np.zeros((40, 50, 3), np.uint8), fast=False)
    assert found.class_names == ["class 0", "class 1"] and found.category_ids is None
    assert set(found.labels.tolist()) <= {0, 1}


# --- CPU twins and export --------------------------------------------------------------------------------

def test_optimize_for_cpu_converts_the_backbone_and_restores(fx):
    from iwin_models.fast.twin import CpuTwin

    model = _mini(fx)
    fast = iwin_models.optimize_for_cpu(model, inplace=False)
    twins = [name for name, m in fast.named_modules() if isinstance(m, CpuTwin)]
    assert twins and all(name.startswith("backbone.body.") for name in twins)
    assert not any(isinstance(m, CpuTwin) for m in model.modules())  # the model itself stays plain
    x = torch.randn(1, 3, 97, 131, generator=torch.Generator().manual_seed(0))  # an odd size
    with torch.no_grad():
        plain, converted = model.backbone(x), fast.backbone(x)
    error = max((plain[k] - converted[k]).abs().max().item() for k in plain)
    print(f"optimize_for_cpu: pyramid max abs diff {error:.3g} at 97x131")
    assert error <= 1e-4
    image = fx / "images" / "img_b.png"
    found, fast_found = detect(model, image, fast=False), detect(fast, image)
    assert np.array_equal(found.labels, fast_found.labels)
    box_error, score_error = (np.abs(found.boxes - fast_found.boxes).max(),
                              np.abs(found.scores - fast_found.scores).max())
    print(f"optimize_for_cpu: img_b detections: boxes {box_error:.3g} px, scores {score_error:.3g}")
    assert box_error <= 1e-3 and score_error <= 1e-4
    restored = iwin_models.restore_plain(fast)
    assert not any(isinstance(m, CpuTwin) for m in restored.modules())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in restored.state_dict().items())


def test_backbone_and_fpn_export_for_any_size(fx):
    from iwin_models.interop.export import export_detector_backbone

    model = _mini(fx, "mini_cascade_mask_rcnn")
    program = export_detector_backbone(model, 97, 131)
    for size in ((64, 1344), (224, 320)):  # the debug image's padded input, and another
        x = torch.randn(1, 3, *size)
        with torch.no_grad():
            ours, exported = model.backbone(x), program.module()(x)
        assert [tuple(t.shape) for t in exported] == [tuple(t.shape) for t in ours.values()]
        assert max((a - b).abs().max().item() for a, b in zip(exported, ours.values())) <= 1e-4


def test_readme_table_is_the_registry():
    from conftest import REPO

    assert detector_table() in (REPO / "README.md").read_text(), "README.md: paste detector_table() over the old table"
