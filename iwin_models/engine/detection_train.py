"""The authors' detection training recipe (``configs/iwin/*_adamw_{1x,3x}_coco.py`` + ``schedules/schedule_1x.py``)
as data, with the optimiser, the schedule and one training step for :func:`iwin_models.create_detector` models.

* AdamW lr 1e-4, betas (0.9, 0.999), weight decay 0.05, ``paramwise_cfg.custom_keys``: decay multiplier 0 for
  every parameter whose **mmdet name** contains ``absolute_pos_embed``, ``relative_position_bias_table`` or
  ``norm`` (mmcv's ``DefaultOptimizerConstructor``). Unlike :func:`~iwin_models.engine.training.optim.param_groups`
  (the segmenter's rule) the other biases and the Cascade heads' BatchNorm (mmdet name ``...bn``) **are** decayed.
* mmcv's ``StepLrUpdaterHook`` by epoch: x0.1 from epoch 8 and 11 of 12 (1x), 27 and 33 of 36 (3x), and a
  linear warm-up over the first 500 iterations from 0.001 of that lr.
* The authors train with apex mixed precision (``use_fp16=True``), 16 images a step (8 GPUs x 2), no gradient
  clipping; multi-scale short side 480-800 step 32, long side 1333 (the model's ``transform.train_scales``).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..models.detection.keymaps import to_mmdet_detector
from ..models.detection.weights import registered_detector

__all__ = ["DetectionRecipe", "RECIPES", "TRAIN_SCALES", "detection_param_groups", "build_detection_optimizer",
           "detection_lr_factor", "build_detection_scheduler", "detection_train_step", "recipe_for"]

# Resize(img_scale=[(480, 1333), ..., (800, 1333)], multiscale_mode='value'), as the model's (long, short) scales
TRAIN_SCALES = tuple((1333, short) for short in range(480, 801, 32))


@dataclass(frozen=True)
class DetectionRecipe:
    """One schedule of the authors' detection configs (defaults: 1x)."""
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.05
    no_decay_keys: tuple[str, ...] = ("absolute_pos_embed", "relative_position_bias_table", "norm")
    epochs: int = 12
    milestones: tuple[int, ...] = (8, 11)  # epochs (0-based count done) from which lr is multiplied by gamma
    gamma: float = 0.1
    warmup_iters: int = 500
    warmup_ratio: float = 0.001
    images_per_step: int = 16  # samples_per_gpu 2 x 8 GPUs
    train_scales: tuple[tuple[int, int], ...] = TRAIN_SCALES
    flip_ratio: float = 0.5


RECIPES = {"1x": DetectionRecipe(), "3x": DetectionRecipe(epochs=36, milestones=(27, 33))}


def recipe_for(name: str) -> DetectionRecipe:
    """The recipe of a registered detector (``iwin_tiny_mask_rcnn_coco_3x`` -> ``RECIPES['3x']``)."""
    return RECIPES[registered_detector(name).schedule]


def detection_param_groups(model: nn.Module, recipe: DetectionRecipe = RECIPES["1x"]) -> list[dict]:
    """Decayed and not-decayed AdamW groups by the authors' ``custom_keys`` on the mmdet names; each group
    lists its ``param_names`` (this port's names). Frozen parameters are left out."""
    ours = {name: p for name, p in model.named_parameters() if p.requires_grad}
    mmdet_names = {v: k for k, v in to_mmdet_detector({name: name for name in ours}).items()}
    groups = (dict(params=[], param_names=[], weight_decay=recipe.weight_decay),
              dict(params=[], param_names=[], weight_decay=0.0))
    for name, p in ours.items():
        group = groups[any(key in mmdet_names[name] for key in recipe.no_decay_keys)]
        group["params"].append(p)
        group["param_names"].append(name)
    return list(groups)


def build_detection_optimizer(model: nn.Module, recipe: DetectionRecipe = RECIPES["1x"]) -> torch.optim.AdamW:
    return torch.optim.AdamW(detection_param_groups(model, recipe), lr=recipe.lr, betas=recipe.betas)


def detection_lr_factor(iteration: int, iters_per_epoch: int, recipe: DetectionRecipe = RECIPES["1x"]) -> float:
    """The multiple of the base lr at 0-based ``iteration`` (mmcv: step by epoch, then linear warm-up by iter)."""
    epoch = iteration // iters_per_epoch
    regular = recipe.gamma ** sum(epoch >= m for m in recipe.milestones)
    if iteration >= recipe.warmup_iters:
        return regular
    return regular * (1 - (1 - iteration / recipe.warmup_iters) * (1 - recipe.warmup_ratio))


def build_detection_scheduler(optimizer: torch.optim.Optimizer, iters_per_epoch: int,
                              recipe: DetectionRecipe = RECIPES["1x"]) -> torch.optim.lr_scheduler.LambdaLR:
    """LambdaLR of :func:`detection_lr_factor`; step it once after every optimiser step."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: detection_lr_factor(t, iters_per_epoch, recipe))


def detection_train_step(model: nn.Module, optimizer: torch.optim.Optimizer, images: Sequence[Tensor],
                         targets: Sequence[dict[str, Tensor]]) -> dict[str, float]:
    """One optimiser step on the sum of the model's losses; the losses as floats, ``loss`` their sum."""
    model.train()
    losses = model(list(images), list(targets))
    total = sum(losses.values())
    if not torch.isfinite(total):
        raise FloatingPointError(f"non-finite detection loss: { {k: float(v) for k, v in losses.items()} }")
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    optimizer.step()
    return dict({k: float(v.detach()) for k, v in losses.items()}, loss=float(total.detach()))
