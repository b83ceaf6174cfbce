"""The full-size Iwin detectors: every official key manifest loads strictly, parameter counts, key map
errors, conventions. Models are built on the meta device (no memory, no weights)."""
from __future__ import annotations

import json

import pytest
import torch
from _detectors import MINI

from iwin_models.io.checkpoint import CheckpointError
from iwin_models.models.detection import (
    COCO_CATEGORY_IDS,
    COCO_CLASSES,
    build_detector,
    convert_mmdet_detector,
    load_mmdet_checkpoint,
    to_mmdet_detector,
)
from iwin_models.models.detection.keymaps import meta_tensors


@pytest.fixture(scope="module")
def manifests(fixtures_dir):
    path = fixtures_dir / "detection" / "manifests"
    if not (path / "index.json").is_file():
        pytest.skip(f"detection manifests not found under {path}")
    return path


def _config(stem: str) -> tuple[str, bool]:
    variant = next(v for v in ("tiny", "small", "base") if f"_iwin_{v}_" in stem)
    return variant, stem.startswith("cascade_")


def _meta_model(variant: str, cascade: bool, **overrides):
    with torch.device("meta"):
        return build_detector(variant, cascade=cascade, **overrides)


def test_every_manifest_loads_strictly(manifests):
    index = json.loads((manifests / "index.json").read_text())["manifests"]
    assert len(index) == 9
    counts = {}
    for entry in index:
        manifest = json.loads((manifests.parent / entry["manifest"]).read_text())
        variant, cascade = _config(manifests.joinpath(entry["manifest"]).stem)
        if (variant, cascade) not in counts:
            model = _meta_model(variant, cascade)
            counts[variant, cascade] = (model.state_dict(), sum(p.numel() for p in model.parameters()))
        state, num_params = counts[variant, cascade]
        converted = convert_mmdet_detector(meta_tensors({k: s for k, (s, _) in manifest["keys"].items()}))
        missing, unexpected = state.keys() - converted.keys(), converted.keys() - state.keys()
        assert not missing and not unexpected, (entry["manifest"], sorted(missing)[:3], sorted(unexpected)[:3])
        shapes = [k for k, v in converted.items() if v.shape != state[k].shape]
        assert not shapes, (entry["manifest"], shapes[:3])
        assert num_params == manifest["num_params"] == entry["num_params"], entry["manifest"]
        assert list(to_mmdet_detector(converted)) == list(manifest["keys"])  # and back, in the same order
        print(f"{manifests.joinpath(entry['manifest']).stem}: {len(converted)} keys fit, {num_params:,} parameters")


@pytest.mark.parametrize("name, cascade, params", [("mini_mask_rcnn", False, 592_816),
                                                     ("mini_cascade_mask_rcnn", True, 1_040_498)])
def test_mini_checkpoints_load_strictly(fixtures_dir, name, cascade, params):
    path = fixtures_dir / "detection" / f"{name}.pth"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    model = load_mmdet_checkpoint(build_detector("tiny", cascade=cascade, **MINI), path)
    assert sum(p.numel() for p in model.parameters()) == params
    wrong = build_detector("tiny", cascade=not cascade, **MINI)
    with pytest.raises(CheckpointError, match="does not fit"):
        load_mmdet_checkpoint(wrong, path)


def test_unknown_keys_are_refused():
    with pytest.raises(CheckpointError, match="unknown"):
        convert_mmdet_detector({"roi_head.semantic_head.conv.weight": torch.zeros(1)})


def test_key_map_names_torchvision_parts():
    converted = convert_mmdet_detector({
        "backbone.layers.0.downsample.norm.weight": 0, "backbone.norm3.bias": 0,
        "neck.lateral_convs.2.conv.weight": 0, "rpn_head.rpn_reg.bias": 0,
        "roi_head.bbox_head.shared_fcs.1.weight": 0, "roi_head.bbox_head.2.shared_convs.3.bn.running_var": 0,
        "roi_head.bbox_head.1.fc_cls.weight": 0, "roi_head.mask_head.convs.3.conv.bias": 0,
        "roi_head.mask_head.2.conv_logits.weight": 0})
    assert set(converted) == {
        "backbone.body.model.layers.1.downsample.norm.weight", "backbone.body.model.stage_norms.3.bias",
        "backbone.fpn.inner_blocks.2.0.weight", "rpn.head.bbox_pred.bias", "roi_heads.box_head.fc7.weight",
        "roi_heads.box_head.2.3.1.running_var", "roi_heads.box_predictor.1.cls_score.weight",
        "roi_heads.mask_head.3.0.bias", "roi_heads.mask_predictor.2.mask_fcn_logits.weight"}


def test_eval_only_for_now():
    model = build_detector("tiny", **MINI)
    with pytest.raises(NotImplementedError, match="training"):
        model([torch.zeros(3, 32, 32)], [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0)}])


def test_float_and_uint8_inputs_agree_and_labels_are_1_based():
    torch.manual_seed(0)
    model = build_detector("tiny", **MINI).eval()
    image = torch.randint(0, 256, (3, 40, 60), dtype=torch.uint8)
    with torch.no_grad():
        a, b = model([image])[0], model([image.float() / 255])[0]
    for key in ("boxes", "labels", "scores", "masks"):
        assert torch.equal(a[key], b[key])
    assert a["masks"].shape[1:] == (1, 40, 60) and a["masks"].dtype == torch.bool
    assert bool((a["labels"] >= 1).all()) and bool((a["labels"] <= 80).all())


def test_coco_classes():
    assert len(COCO_CLASSES) == len(set(COCO_CLASSES)) == len(COCO_CATEGORY_IDS) == 80
    assert COCO_CATEGORY_IDS[0] == 1 and COCO_CATEGORY_IDS[-1] == 90
    assert list(COCO_CATEGORY_IDS) == sorted(COCO_CATEGORY_IDS)


def test_coco_classes_are_the_checkpoints(fixtures_dir):
    path = fixtures_dir / "detection" / "mini_mask_rcnn.pth"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    assert tuple(torch.load(path, weights_only=True)["meta"]["CLASSES"]) == COCO_CLASSES


def test_batched_nms_split_path_keeps_the_same_boxes():
    """Above ``split_thr`` boxes mmcv runs NMS class by class; the kept set is the offset trick's."""
    from iwin_models.models.detection._utils import batched_nms

    torch.manual_seed(0)
    xy = torch.rand(600, 2) * 100
    boxes = torch.cat([xy, xy + torch.rand(600, 2) * 30 + 1], 1)
    scores, classes = torch.rand(600), torch.randint(0, 5, (600,))
    whole, split = batched_nms(boxes, scores, classes, 0.5), batched_nms(boxes, scores, classes, 0.5, split_thr=100)
    assert torch.equal(whole, split)  # same indices, best score first


@pytest.mark.parametrize("cascade", [False, True])
def test_rois_with_y2_zero(cascade):
    """Mask R-CNN zeroes the outputs of RoIs with y2 == 0 (the authors' batch-padding test,
    ``test_mixins.py:116-129``) and gives such detections no mask; the Cascade heads do neither."""
    torch.manual_seed(0)
    heads = build_detector("tiny", cascade=cascade, **MINI).eval().roi_heads
    feats = [torch.randn(1, 32, 64 // s, 64 // s) for s in (4, 8, 16, 32)]
    rois = torch.tensor([[0.0, 1.0, 0.0, 20.0, 0.0], [0.0, 1.0, 1.0, 20.0, 30.0]])
    with torch.no_grad():
        _, cls_score, bbox_pred, _ = heads.box_outputs(feats, rois, (64, 64))
    zeroed = not cascade
    assert bool((cls_score[0] == 0).all()) == zeroed and bool((bbox_pred[0] == 0).all()) == zeroed
    assert bool((cls_score[1] != 0).any())
    assert heads.has_mask(torch.tensor([[1.0, 0.0, 5.0, 0.0], [1.0, 0.0, 5.0, 3.0]])).tolist() == [cascade, True]
