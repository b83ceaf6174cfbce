"""torch.hub entry points: ``torch.hub.load('<owner>/iwin', 'iwin_base_upernet_ade20k', trust_repo=True)``.

Segmenters return an ``IwinUPerNet`` (smp model) with the authors' ADE20K weights; their docstrings
(``torch.hub.help``) are written from the weights registry ``iwin_models.models.weights.SEGMENTERS``: figures,
weights URL, test protocol and the terms the authors set for the weights. Detectors (the seven released
COCO Mask R-CNN / Cascade Mask R-CNN) return an ``IwinMaskRCNN`` with the authors' COCO weights (docstrings
from ``iwin_models.models.detection.weights.DETECTORS``); ``iwin_models.detect(model, image)`` runs one.
Backbones return timm models (``features_only=True`` for the strides 4/8/16/32 feature maps). Every model is
plain (the definition, on any device); ``iwin_models.optimize_for_cpu(model)`` puts its CPU fast twins in place.
"""
dependencies = ["torch", "torchvision", "timm", "segmentation_models_pytorch"]

import timm as _timm  # noqa: E402

from iwin_models import (  # noqa: E402,F401  (importing iwin_models registers the backbones with timm)
    iwin_base_upernet_ade20k,
    iwin_small_cascade_mask_rcnn_coco_3x,
    iwin_small_mask_rcnn_coco_1x,
    iwin_small_mask_rcnn_coco_3x,
    iwin_small_upernet_ade20k,
    iwin_tiny_cascade_mask_rcnn_coco_1x,
    iwin_tiny_cascade_mask_rcnn_coco_3x,
    iwin_tiny_mask_rcnn_coco_1x,
    iwin_tiny_mask_rcnn_coco_3x,
    iwin_tiny_upernet_ade20k,
)


def _backbone(name: str, pretrained: bool, **kwargs):
    return _timm.create_model(name, pretrained=pretrained, **kwargs)


def iwin_tiny(pretrained: bool = True, **kwargs):
    """Iwin-T ImageNet-1K backbone (timm). kwargs go to ``timm.create_model`` (e.g. features_only=True)."""
    return _backbone("iwin_tiny", pretrained, **kwargs)


def iwin_small(pretrained: bool = True, **kwargs):
    """Iwin-S ImageNet-1K backbone (timm). kwargs go to ``timm.create_model`` (e.g. features_only=True)."""
    return _backbone("iwin_small", pretrained, **kwargs)


def iwin_base(pretrained: bool = True, **kwargs):
    """Iwin-B backbone (timm; default tag ImageNet-22K -> 1K). kwargs go to ``timm.create_model``."""
    return _backbone("iwin_base", pretrained, **kwargs)


def iwin_large(pretrained: bool = True, **kwargs):
    """Iwin-L backbone (timm; ImageNet-22K -> 1K). kwargs go to ``timm.create_model``."""
    return _backbone("iwin_large", pretrained, **kwargs)
