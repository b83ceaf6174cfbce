"""The authors' mmdet 2.11 state dict -> our module names, and checkpoint loading.

Checkpoints are read through :mod:`iwin_models.io`; the backbone's keys are mapped as the segmentation
backbone's (:func:`iwin_models.models.keymaps.remap_official_keys`).
"""
from __future__ import annotations

import os
import re

import torch
from torch import nn

from ...io.checkpoint import CheckpointError, check_state_dict_fits, read_checkpoint
from ..keymaps import remap_official_keys

__all__ = ["convert_mmdet_detector", "to_mmdet_detector", "load_mmdet_checkpoint", "CheckpointError"]

# mmdet name (after the backbone) -> ours; an unmatched optional group becomes '' in the replacement
_RULES = tuple((re.compile(p), r) for p, r in (
    (r"^neck\.lateral_convs\.(\d+)\.conv\.", r"backbone.fpn.inner_blocks.\1.0."),
    (r"^neck\.fpn_convs\.(\d+)\.conv\.", r"backbone.fpn.layer_blocks.\1.0."),
    (r"^rpn_head\.rpn_conv\.", "rpn.head.conv.0.0."),
    (r"^rpn_head\.rpn_cls\.", "rpn.head.cls_logits."),
    (r"^rpn_head\.rpn_reg\.", "rpn.head.bbox_pred."),
    # Mask R-CNN Shared2FCBBoxHead -> TwoMLPHead
    (r"^roi_head\.bbox_head\.shared_fcs\.0\.", "roi_heads.box_head.fc6."),
    (r"^roi_head\.bbox_head\.shared_fcs\.1\.", "roi_heads.box_head.fc7."),
    # Cascade 4conv1fc -> FastRCNNConvFCHead: convs at 0-3 (conv .0, BN .1), Flatten at 4, the fc at 5
    (r"^roi_head\.bbox_head\.(\d+)\.shared_convs\.(\d+)\.conv\.", r"roi_heads.box_head.\1.\2.0."),
    (r"^roi_head\.bbox_head\.(\d+)\.shared_convs\.(\d+)\.bn\.", r"roi_heads.box_head.\1.\2.1."),
    (r"^roi_head\.bbox_head\.(\d+)\.shared_fcs\.0\.", r"roi_heads.box_head.\1.5."),
    (r"^roi_head\.bbox_head\.(\d+\.)?fc_cls\.", r"roi_heads.box_predictor.\1cls_score."),
    (r"^roi_head\.bbox_head\.(\d+\.)?fc_reg\.", r"roi_heads.box_predictor.\1bbox_pred."),
    # FCNMaskHead -> MaskRCNNHeads + MaskRCNNPredictor
    (r"^roi_head\.mask_head\.(\d+\.)?convs\.(\d+)\.conv\.", r"roi_heads.mask_head.\1\2.0."),
    (r"^roi_head\.mask_head\.(\d+\.)?upsample\.", r"roi_heads.mask_predictor.\1conv5_mask."),
    (r"^roi_head\.mask_head\.(\d+\.)?conv_logits\.", r"roi_heads.mask_predictor.\1mask_fcn_logits."),
))


def _head_key(key: str) -> str | None:
    for pattern, replacement in _RULES:
        if pattern.match(key):
            return pattern.sub(replacement, key)
    return None


def convert_mmdet_detector(state_dict: dict) -> dict:
    """mmdet Mask R-CNN / Cascade Mask R-CNN keys (``backbone.*``, ``neck.*``, ``rpn_head.*``,
    ``roi_head.*``) -> :class:`~iwin_models.detection.IwinMaskRCNN` keys. Values pass through untouched.
    Raises :class:`CheckpointError` on a key it does not know, so nothing is dropped silently."""
    backbone = {k[len("backbone."):]: v for k, v in state_dict.items() if k.startswith("backbone.")}
    out = {f"backbone.body.model.{k}": v for k, v in remap_official_keys(backbone).items()}
    unknown = []
    for key, value in state_dict.items():
        if key.startswith("backbone."):
            continue
        ours = _head_key(key)
        if ours is None:
            unknown.append(key)
        else:
            out[ours] = value
    if unknown:
        raise CheckpointError(f"not an Iwin (Cascade) Mask R-CNN checkpoint: {len(unknown)} keys are unknown, "
                              f"e.g. {unknown[:3]}")
    return out


# ours -> mmdet: the same table read backwards (each of our names comes from exactly one rule)
_INVERSE = tuple((re.compile(p), r) for p, r in (
    (r"^backbone\.fpn\.inner_blocks\.(\d+)\.0\.", r"neck.lateral_convs.\1.conv."),
    (r"^backbone\.fpn\.layer_blocks\.(\d+)\.0\.", r"neck.fpn_convs.\1.conv."),
    (r"^rpn\.head\.conv\.0\.0\.", "rpn_head.rpn_conv."),
    (r"^rpn\.head\.cls_logits\.", "rpn_head.rpn_cls."),
    (r"^rpn\.head\.bbox_pred\.", "rpn_head.rpn_reg."),
    (r"^roi_heads\.box_head\.fc6\.", "roi_head.bbox_head.shared_fcs.0."),
    (r"^roi_heads\.box_head\.fc7\.", "roi_head.bbox_head.shared_fcs.1."),
    (r"^roi_heads\.box_head\.(\d+)\.([0-3])\.0\.", r"roi_head.bbox_head.\1.shared_convs.\2.conv."),
    (r"^roi_heads\.box_head\.(\d+)\.([0-3])\.1\.", r"roi_head.bbox_head.\1.shared_convs.\2.bn."),
    (r"^roi_heads\.box_head\.(\d+)\.5\.", r"roi_head.bbox_head.\1.shared_fcs.0."),
    (r"^roi_heads\.box_predictor\.(\d+\.)?cls_score\.", r"roi_head.bbox_head.\1fc_cls."),
    (r"^roi_heads\.box_predictor\.(\d+\.)?bbox_pred\.", r"roi_head.bbox_head.\1fc_reg."),
    (r"^roi_heads\.mask_head\.(\d+\.)?(\d+)\.0\.", r"roi_head.mask_head.\1convs.\2.conv."),
    (r"^roi_heads\.mask_predictor\.(\d+\.)?conv5_mask\.", r"roi_head.mask_head.\1upsample."),
    (r"^roi_heads\.mask_predictor\.(\d+\.)?mask_fcn_logits\.", r"roi_head.mask_head.\1conv_logits."),
))
_OURS_DOWNSAMPLE = re.compile(r"^layers\.(\d+)\.downsample\.")
_OURS_STAGE_NORM = re.compile(r"^stage_norms\.(\d+)\.")


def _backbone_to_mmdet(key: str) -> str:
    # our stage i downsamples at its start, the authors' stage i - 1 at its end
    key = _OURS_DOWNSAMPLE.sub(lambda m: f"layers.{int(m[1]) - 1}.downsample.", key)
    return "backbone." + _OURS_STAGE_NORM.sub(r"norm\1.", key)


def to_mmdet_detector(state_dict: dict) -> dict:
    """The inverse of :func:`convert_mmdet_detector`: our detector's state dict in the authors' names."""
    out = {}
    for key, value in state_dict.items():
        if key.startswith("backbone.body.model."):
            out[_backbone_to_mmdet(key[len("backbone.body.model."):])] = value
            continue
        rule = next((p for p in _INVERSE if p[0].match(key)), None)
        if rule is None:
            raise CheckpointError(f"{key} is not a parameter of an Iwin (Cascade) Mask R-CNN")
        out[rule[0].sub(rule[1], key)] = value
    return out


def load_mmdet_checkpoint(model: nn.Module, checkpoint: dict | str | os.PathLike) -> nn.Module:
    """Load the authors' checkpoint (path, or the loaded ``{'meta', 'state_dict'}``) with strict semantics."""
    if not isinstance(checkpoint, dict):
        checkpoint = read_checkpoint(checkpoint)
    state_dict = checkpoint.get("state_dict", checkpoint)
    converted = convert_mmdet_detector(state_dict)
    check_state_dict_fits(converted, model.state_dict(), type(model).__name__, hint=(
        "it was probably made for another variant (Mask R-CNN vs Cascade, Iwin-T/S/B widths)"))
    model.load_state_dict(converted, strict=True)
    return model


def meta_tensors(shapes: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    """Shape-only tensors for checking a key manifest against a model without any weights."""
    return {k: torch.empty(s, device="meta") for k, s in shapes.items()}
