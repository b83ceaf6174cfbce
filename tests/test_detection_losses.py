"""The detectors' training targets and losses, each against an independent hand computation (numpy loops,
torchvision's own GIoU), and the training settings against the authors' ``train_cfg`` in the fixtures."""
from __future__ import annotations

import json
import math

import _detectors
import numpy as np
import pytest
import torch
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler
from torchvision.ops import generalized_box_iou

from iwin_models.models.detection import build_detector
from iwin_models.models.detection._utils import MMDetBoxCoder
from iwin_models.models.detection.anchors import UnroundedAnchorGenerator
from iwin_models.models.detection.losses import (
    DecodedGIoULoss,
    DeltaL1Loss,
    DeltaSmoothL1Loss,
    MaxIoUMatcher,
    aligned_giou,
    mask_loss,
    mask_targets,
)
from iwin_models.models.detection.rpn import RPNHead, SigmoidLevelNMSRPN
from iwin_models.models.detection.sampling import SampledRoIs, box_head_losses
from iwin_models.models.detection.transform import MMDetTrainTransform

MINI = dict(_detectors.MINI, num_classes=3)  # the fixtures' mini widths, three classes


def _iou(a, b) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _encode(gt, box, stds) -> list[float]:
    pw, ph, gw, gh = box[2] - box[0], box[3] - box[1], gt[2] - gt[0], gt[3] - gt[1]
    dx = ((gt[0] + gt[2]) / 2 - (box[0] + box[2]) / 2) / pw
    dy = ((gt[1] + gt[3]) / 2 - (box[1] + box[3]) / 2) / ph
    return [d / s for d, s in zip([dx, dy, math.log(gw / pw), math.log(gh / ph)], stds)]


def _bce(x: float, y: float) -> float:
    return -(y * math.log(1 / (1 + math.exp(-x))) + (1 - y) * math.log(1 - 1 / (1 + math.exp(-x))))


def test_matcher_is_mmdet_max_iou_assigner():
    iou = torch.tensor([[0.60, 0.10, 0.00, 0.80, 0.35],
                        [0.55, 0.20, 0.00, 0.10, 0.35],
                        [0.00, 0.25, 0.00, 0.00, 0.00]])
    # box 0: between (-2) but gt 1's best -> 1 (later gt wins; torchvision's Matcher would give 0);
    # box 3: >= 0.7 -> 0; box 4: between, gts 0 and 1 do not reach it as their best -> -2;
    # gt 2's best (0.25) is under min_pos_iou 0.3: box 1 stays negative
    got = MaxIoUMatcher(0.7, 0.3, min_pos_iou=0.3, match_low_quality=True)(iou)
    assert got.tolist() == [1, -1, -1, 0, -2]
    plain = MaxIoUMatcher(0.5, 0.5, min_pos_iou=0.5, match_low_quality=False)(iou)
    assert plain.tolist() == [0, -1, -1, 0, -1]
    assert MaxIoUMatcher(0.7, 0.3, 0.3, True)(torch.zeros((0, 4))).tolist() == [-1] * 4


def test_rpn_losses_equal_hand_bce_and_l1():
    rpn = SigmoidLevelNMSRPN(UnroundedAnchorGenerator(), RPNHead(8, 3))
    rpn.fg_bg_sampler = BalancedPositiveNegativeSampler(10**6, 0.5)  # take every labelled anchor
    anchors = torch.tensor([[0, 0, 20, 20], [2, 2, 22, 22], [4, 4, 24, 24], [40, 40, 60, 60],
                            [0, 0, 60, 60], [5, 0, 25, 20]], dtype=torch.float32)
    valid = torch.tensor([True, True, True, True, True, False])
    gt = torch.tensor([[1, 1, 21, 21], [38, 41, 58, 62]], dtype=torch.float32)
    gen = torch.Generator().manual_seed(0)
    logits, deltas = torch.randn(1, 6, generator=gen), torch.randn(1, 6, 4, generator=gen) * 0.1
    losses = rpn.losses(logits, deltas, [anchors], [valid], [gt])
    bce, l1, count = 0.0, 0.0, 0
    for a in range(5):  # anchor 5 is not usable
        ious = [_iou(anchors[a].tolist(), g.tolist()) for g in gt]
        best = max(range(2), key=lambda g: ious[g])
        low_quality = [g for g in range(2)
                       if ious[g] == max(_iou(x.tolist(), gt[g].tolist()) for x in anchors[:5]) and ious[g] >= 0.3]
        if ious[best] >= 0.7 or low_quality:
            best = low_quality[-1] if low_quality else best
            target = _encode(gt[best].tolist(), anchors[a].tolist(), (1, 1, 1, 1))
            l1 += sum(abs(d - t) for d, t in zip(deltas[0, a].tolist(), target))
            bce, count = bce + _bce(float(logits[0, a]), 1.0), count + 1
        elif ious[best] < 0.3:
            bce, count = bce + _bce(float(logits[0, a]), 0.0), count + 1
    assert count == 4  # anchor 2 (IoU 0.57) is ignored, anchor 5 unusable
    assert float(losses["loss_objectness"]) == pytest.approx(bce / count, rel=1e-6)
    assert float(losses["loss_rpn_box_reg"]) == pytest.approx(l1 / count, rel=1e-6)


def test_usable_anchors_follow_valid_flags_and_allowed_border():
    from iwin_models.models.detection.transform import ScaledImageList
    rpn = SigmoidLevelNMSRPN(UnroundedAnchorGenerator(strides=(4, 8)), RPNHead(8, 3))
    features = [torch.zeros(1, 8, 16, 16), torch.zeros(1, 8, 8, 8)]  # a 64x64 batch
    images = ScaledImageList(torch.zeros(1, 3, 64, 64), [(30, 50)], [torch.ones(4)], [(30, 50)], [(32, 64)])
    anchors = rpn.anchor_generator(images, features)[0]
    valid = rpn.usable_anchors(anchors, features, images, 0)
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    assert torch.equal(valid, centres[:, 1] < 32)  # grid rows inside the image's own 32-px pad, any column
    rpn.allowed_border = 0
    inside = rpn.usable_anchors(anchors, features, images, 0)
    assert torch.equal(inside, valid & (anchors[:, 0] >= 0) & (anchors[:, 1] >= 0) & (anchors[:, 2] < 50)
                       & (anchors[:, 3] < 30))


def test_roi_box_losses_equal_hand_ce_and_l1():
    gen = torch.Generator().manual_seed(1)
    stds = (0.1, 0.1, 0.2, 0.2)
    boxes = torch.tensor([[10, 10, 50, 50], [12, 8, 48, 52], [0, 0, 30, 30], [60, 60, 90, 80]], dtype=torch.float32)
    gt = torch.tensor([[11, 9, 49, 51], [58, 62, 91, 79]], dtype=torch.float32)
    samples = [SampledRoIs(boxes[:3], torch.tensor([2, 0, 3]), torch.tensor([0, 0]), torch.tensor([True, False])),
               SampledRoIs(boxes[3:], torch.tensor([1]), torch.tensor([1]), torch.tensor([False]))]
    gts = [gt, gt]
    cls_score, bbox_pred = torch.randn(4, 4, generator=gen), torch.randn(4, 12, generator=gen) * 0.1
    losses = box_head_losses(cls_score, bbox_pred, samples, gts, DeltaL1Loss(MMDetBoxCoder(stds)))
    labels = [2, 0, 3, 1]
    ce = np.mean([-(s[lab] - np.log(np.exp(s).sum())) for s, lab in zip(cls_score.double().numpy(), labels)])
    l1 = 0.0
    for row, g in ((0, 0), (1, 0), (3, 1)):
        target = _encode(gt[g].tolist(), boxes[row].tolist(), stds)
        l1 += sum(abs(d - t) for d, t in zip(bbox_pred[row, 4 * labels[row]: 4 * labels[row] + 4].tolist(), target))
    assert float(losses["loss_classifier"]) == pytest.approx(ce, rel=1e-6)
    assert float(losses["loss_box_reg"]) == pytest.approx(l1 / 4, rel=1e-5)


def test_giou_loss_equals_torchvision_giou_on_decoded_boxes():
    gen = torch.Generator().manual_seed(2)
    boxes = torch.tensor([[10, 10, 50, 50], [0, 0, 30, 20], [5, 5, 6, 9]], dtype=torch.float32)
    gts = torch.tensor([[12, 8, 48, 52], [40, 40, 60, 70], [5, 5, 6, 9]], dtype=torch.float32)
    deltas = torch.randn(3, 4, generator=gen) * 0.3
    coder = MMDetBoxCoder((0.05, 0.05, 0.1, 0.1))
    decoded = coder.decode_single(deltas, boxes)
    reference = torch.diag(generalized_box_iou(decoded.double(), gts.double()))
    assert torch.allclose(aligned_giou(decoded, gts).double(), reference, atol=1e-6)
    loss = DecodedGIoULoss(coder, 10.0)(deltas, boxes, gts, num_samples=7)
    assert float(loss) == pytest.approx(float(10 * (1 - reference).sum() / 7), rel=1e-5)
    assert float(DeltaSmoothL1Loss(coder, beta=0.5).elementwise(torch.tensor([0.2, 2.0]), torch.zeros(2))[0]) == \
        pytest.approx(0.5 * 0.04 / 0.5) and float(DeltaSmoothL1Loss(coder, 0.5).elementwise(torch.tensor([2.0]),
                                                                                               torch.zeros(1))) == 1.75


def test_mask_targets_are_crops_and_2x2_majorities():
    rng = np.random.default_rng(3)
    masks = torch.from_numpy((rng.random((2, 64, 64)) < 0.5).astype(np.uint8))
    boxes = torch.tensor([[8, 8, 36, 36], [0, 0, 56, 56]], dtype=torch.float32)
    got = mask_targets(masks, torch.tensor([1, 0]), boxes, 28)
    assert torch.equal(got[0], masks[1, 8:36, 8:36].float())  # 1-px bins sample the pixel centres
    blocks = masks[0, :56, :56].double().reshape(28, 2, 28, 2).mean(dim=(1, 3))
    assert torch.equal(got[1], (blocks >= 0.5).float())  # 2-px bins: mean of 2x2 samples, then >= 0.5
    assert mask_targets(masks, torch.zeros(0, dtype=torch.int64), torch.zeros(0, 4), 28).shape == (0, 28, 28)


def test_mask_loss_is_bce_of_the_own_class_channel():
    gen = torch.Generator().manual_seed(4)
    logits, labels = torch.randn(2, 3, 4, 4, generator=gen), torch.tensor([2, 0])
    targets = (torch.rand(2, 4, 4, generator=gen) > 0.5).float()
    hand = np.mean([_bce(float(logits[i, labels[i], y, x]), float(targets[i, y, x]))
                    for i in range(2) for y in range(4) for x in range(4)])
    assert float(mask_loss(logits, labels, targets)) == pytest.approx(hand, rel=1e-6)


def test_train_transform_resizes_images_boxes_and_masks_together():
    transform = MMDetTrainTransform(train_scales=((200, 100),))
    image = torch.zeros(3, 50, 80, dtype=torch.uint8)
    masks = torch.zeros(1, 50, 80, dtype=torch.uint8)
    masks[0, 10:30, 20:60] = 1
    batch, (target,) = transform.train_batch([image], [dict(boxes=torch.tensor([[20., 10, 60, 30]]),
                                                            labels=torch.tensor([1]), masks=masks)])
    assert batch.image_sizes == [(100, 160)] and batch.tensors.shape[-2:] == (128, 160)
    assert target["boxes"].tolist() == [[40.0, 20.0, 120.0, 60.0]]
    ys, xs = target["masks"][0].nonzero().unbind(1)
    assert [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1] == [40, 20, 120, 60]


def _config_dict(fixtures_dir, name):
    path = fixtures_dir / "detection" / "fixtures.json"
    if not path.is_file():
        pytest.skip("detection fixtures absent")
    return json.loads(path.read_text())["models"][name]["model"]


def _matcher_cfg(m: MaxIoUMatcher) -> dict:
    return dict(pos_iou_thr=m.high_threshold, neg_iou_thr=m.low_threshold, min_pos_iou=m.min_pos_iou,
                match_low_quality=m.allow_low_quality_matches)


@pytest.mark.parametrize("name,cascade", [("mini_mask_rcnn", False), ("mini_cascade_mask_rcnn", True)])
def test_training_settings_equal_the_authors_train_cfg(fixtures_dir, name, cascade):
    cfg = _config_dict(fixtures_dir, name)
    model = build_detector("tiny", cascade=cascade, **MINI)
    rpn, heads, train = model.rpn, model.roi_heads, cfg["train_cfg"]
    assigner = {k: train["rpn"]["assigner"][k] for k in ("pos_iou_thr", "neg_iou_thr", "min_pos_iou",
                                                         "match_low_quality")}
    assert _matcher_cfg(rpn.proposal_matcher) == assigner
    assert (rpn.fg_bg_sampler.batch_size_per_image, rpn.fg_bg_sampler.positive_fraction) == (256, 0.5)
    assert rpn.allowed_border == train["rpn"]["allowed_border"]
    assert rpn._pre_nms_top_n["training"] == train["rpn_proposal"]["nms_pre"]
    assert rpn._post_nms_top_n["training"] == train["rpn_proposal"]["max_per_img"]
    loss = cfg["rpn_head"]["loss_bbox"]
    assert isinstance(rpn.box_loss, DeltaSmoothL1Loss) == (loss["type"] == "SmoothL1Loss")
    assert getattr(rpn.box_loss, "beta", None) == loss.get("beta")
    rcnn = train["rcnn"] if cascade else [train["rcnn"]]
    matchers = heads.stage_matchers if cascade else [heads.proposal_matcher]
    for stage_cfg, matcher in zip(rcnn, matchers):
        assert _matcher_cfg(matcher) == {k: stage_cfg["assigner"][k] for k in assigner}
        assert (heads.fg_bg_sampler.batch_size_per_image, heads.fg_bg_sampler.positive_fraction) == (
            stage_cfg["sampler"]["num"], stage_cfg["sampler"]["pos_fraction"])
    if cascade:
        assert list(heads.stage_loss_weights) == cfg["roi_head"]["stage_loss_weights"]
        for head_cfg, box_loss in zip(cfg["roi_head"]["bbox_head"], heads.stage_box_losses):
            assert head_cfg["loss_bbox"] == dict(type="GIoULoss", loss_weight=box_loss.weight)
            assert list(box_loss.coder.stds) == head_cfg["bbox_coder"]["target_stds"]


def _toy_batch():
    images = [torch.full((3, 64, 80), 0.3), torch.full((3, 56, 64), 0.6)]
    masks = [torch.zeros(2, 64, 80, dtype=torch.uint8), torch.zeros(1, 56, 64, dtype=torch.uint8)]
    masks[0][0, 8:40, 10:50] = 1
    masks[0][1, 30:60, 40:78] = 1
    masks[1][0, 4:30, 6:40] = 1
    boxes = [torch.tensor([[10., 8, 50, 40], [40, 30, 78, 60]]), torch.tensor([[6., 4, 40, 30]])]
    labels = [torch.tensor([1, 3]), torch.tensor([2])]
    return images, [dict(boxes=b, labels=lab, masks=m) for b, lab, m in zip(boxes, labels, masks)]


@pytest.mark.slow
def test_cascade_stage_weights_are_applied(one_thread):
    model = build_detector("tiny", cascade=True, **MINI)
    model.transform.train_scales = ((96, 64),)
    model.train()
    images, targets = _toy_batch()
    torch.manual_seed(5)
    weighted = model(images, targets)
    model.roi_heads.stage_loss_weights = (1.0, 1.0, 1.0)
    torch.manual_seed(5)
    plain = model(images, targets)
    assert {k for k in weighted if k.startswith("s")} == {f"s{i}.{n}" for i in range(3) for n in (
        "loss_classifier", "loss_box_reg", "loss_mask")}
    for key, value in weighted.items():
        stage_weight = (1.0, 0.5, 0.25)[int(key[1])] if key.startswith("s") else 1.0
        assert float(value.detach()) == pytest.approx(stage_weight * float(plain[key].detach()), rel=1e-6), key
