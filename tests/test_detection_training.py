"""Detection training: the recipe against the authors' configs, the augmentation, and a few steps of a mini
detector on a tiny synthetic set lowering the loss (with ``curves.png`` through RunLog)."""
from __future__ import annotations

import _detectors
import pytest
import torch

from iwin_models.data.detection import DetectionTrainAugment, synthetic_rectangles
from iwin_models.engine.detection_train import (
    RECIPES,
    TRAIN_SCALES,
    build_detection_optimizer,
    build_detection_scheduler,
    detection_lr_factor,
    detection_param_groups,
    detection_train_step,
    recipe_for,
)
from iwin_models.engine.training.runlog import RunLog, read_history
from iwin_models.models.detection import DETECTORS, build_detector

MINI = dict(_detectors.MINI, num_classes=3)  # the fixtures' mini widths, three classes


def test_recipes_equal_the_authors_configs():
    # configs/iwin/*_adamw_{1x,3x}_coco.py: optimizer, lr_config.step, runner.max_epochs; schedule_1x.py: warm-up
    one, three = RECIPES["1x"], RECIPES["3x"]
    for r in (one, three):
        assert (r.lr, r.betas, r.weight_decay) == (1e-4, (0.9, 0.999), 0.05)
        assert r.no_decay_keys == ("absolute_pos_embed", "relative_position_bias_table", "norm")
        assert (r.warmup_iters, r.warmup_ratio, r.gamma) == (500, 0.001, 0.1)
    assert (one.epochs, one.milestones, three.epochs, three.milestones) == (12, (8, 11), 36, (27, 33))
    assert TRAIN_SCALES[0] == (1333, 480) and TRAIN_SCALES[-1] == (1333, 800) and len(TRAIN_SCALES) == 11


def test_every_registered_detector_has_its_schedule():
    for name, spec in DETECTORS.items():
        assert recipe_for(name).epochs == {"1x": 12, "3x": 36}[spec.schedule]
        assert spec.config.endswith(f"adamw_{spec.schedule}_coco")


def test_lr_factor_is_mmcv_step_with_linear_warmup():
    f = detection_lr_factor
    assert f(0, 1000) == pytest.approx(0.001)
    assert f(250, 1000) == pytest.approx(1 - 0.5 * 0.999)
    assert f(500, 1000) == 1.0 and f(7999, 1000) == 1.0
    assert f(8000, 1000) == pytest.approx(0.1) and f(11000, 1000) == pytest.approx(0.01)
    assert f(26999, 1000, RECIPES["3x"]) == 1.0 and f(33000, 1000, RECIPES["3x"]) == pytest.approx(0.01)
    assert f(100, 50) == pytest.approx(1 - 0.8 * 0.999)  # warm-up continues across epochs


@pytest.mark.parametrize("cascade", [False, True])
def test_param_groups_follow_the_authors_custom_keys(cascade):
    model = build_detector("tiny", cascade=cascade, **MINI)
    decay, free = detection_param_groups(model)
    assert free["weight_decay"] == 0.0 and decay["weight_decay"] == 0.05
    assert len(decay["params"]) + len(free["params"]) == len(list(model.parameters()))
    # Iwin has no position tables: the LayerNorms (patch_embed.norm, norm1/2, downsample.norm, norm0..3) only
    assert all(".norm" in n or "stage_norms." in n for n in free["param_names"])
    assert len(free["param_names"]) == 2 * (1 + 2 * 4 + 3 + 4)
    # the other biases are decayed in the authors' configs (no bias_decay_mult), the Cascade BN ("bn") too
    assert "backbone.body.model.layers.0.blocks.0.attn.qkv.bias" in decay["param_names"]
    assert any(n.startswith("rpn.") and n.endswith(".bias") for n in decay["param_names"])
    assert not any(n.startswith(("rpn.", "roi_heads.", "backbone.fpn.")) for n in free["param_names"])
    optimizer = build_detection_optimizer(model)
    scheduler = build_detection_scheduler(optimizer, iters_per_epoch=10)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-7)
    optimizer.step()
    scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-4 * (1 - (1 - 1 / 500) * 0.999))


def test_synthetic_targets_are_consistent():
    for image, target in synthetic_rectangles(6, seed=3):
        assert image.dtype == torch.uint8 and 64 <= image.shape[1] <= 128 and 64 <= image.shape[2] <= 128
        assert len(target["boxes"]) == len(target["labels"]) == len(target["masks"]) >= 1
        for box, mask in zip(target["boxes"], target["masks"]):
            ys, xs = mask.nonzero().unbind(1)
            assert box.tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


@pytest.mark.parametrize("crop", [False, True])
def test_augment_moves_boxes_and_masks_together(crop):
    torch.manual_seed(7)
    augment = DetectionTrainAugment(flip_ratio=1.0, crop_prob=float(crop), crop_scales=((200, 100),),
                                    crop_range=(60, 90))
    for image, target in synthetic_rectangles(4, seed=1):
        out_image, out = augment(image, target)
        assert out_image.shape[-2:] == out["masks"].shape[-2:]
        assert len(out["boxes"]) == len(out["labels"]) == len(out["masks"])
        if not crop:
            assert torch.equal(out_image, image.flip(-1)) and torch.equal(out["masks"], target["masks"].flip(-1))
        for box, mask in zip(out["boxes"], out["masks"]):
            ys, xs = mask.nonzero().unbind(1)
            if len(xs):  # nearest-resized masks are within a pixel of the resized boxes
                extent = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)
                assert torch.allclose(extent, box, atol=1.01), (extent, box)


@pytest.mark.slow
@pytest.mark.parametrize("cascade", [False, True])
def test_a_few_steps_lower_the_loss(tmp_path, cascade, one_thread):
    torch.manual_seed(0)
    data = synthetic_rectangles(8)
    model = build_detector("tiny", cascade=cascade, **MINI)
    model.transform.train_scales = ((160, 128),)  # small images: CPU
    optimizer = build_detection_optimizer(model)  # lr 1e-4, no warm-up here
    augment = DetectionTrainAugment(crop_prob=0.0)
    losses = []
    with RunLog(tmp_path, note=lambda _: None).open() as log:
        for step in range(20):
            batch = [augment(*data[(2 * step + k) % len(data)]) for k in range(2)]
            out = detection_train_step(model, optimizer, [b[0] for b in batch], [b[1] for b in batch])
            log.add(step + 1, {"train/loss": out["loss"], "train/lr": optimizer.param_groups[0]["lr"]})
            losses.append(out["loss"])
        log.draw()
    assert sum(losses[-5:]) / 5 < 0.8 * losses[0], losses
    assert [row["train/loss"] for row in read_history(tmp_path / "scalars.jsonl")] == pytest.approx(losses)


@pytest.mark.slow
def test_finetune_detector_example_runs(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    from iwin_models import create_detector

    script = Path(__file__).resolve().parents[1] / "examples" / "finetune_detector.py"
    out = tmp_path / "finetuned"
    proc = subprocess.run([sys.executable, str(script), "--tiny", "--no-pretrained", "--steps", "2", "--out",
                           str(out)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    model = create_detector("iwin_tiny_mask_rcnn_coco_3x", weights=out)
    assert model.num_classes == 3
