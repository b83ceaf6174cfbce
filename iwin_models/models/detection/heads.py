"""RoI heads of the authors' detectors, built from torchvision's head modules.

* Mask R-CNN ``Shared2FCBBoxHead`` (``convfc_bbox_head.py:130-198``): flatten -> fc -> ReLU -> fc -> ReLU
  = torchvision's :class:`TwoMLPHead`.
* Cascade ``ConvFCBBoxHead`` "4conv1fc": 4 x (conv3x3 without bias -> BN -> ReLU) -> flatten -> fc -> ReLU
  = torchvision's :class:`FastRCNNConvFCHead` with ``BatchNorm2d`` (the authors' SyncBN in eval).
* ``FCNMaskHead`` (``fcn_mask_head.py:118-126``): 4 x (conv3x3 + ReLU), deconv 2x2/2 + ReLU, conv1x1
  = torchvision's :class:`MaskRCNNHeads` + :class:`MaskRCNNPredictor`.
* ``fc_cls`` / ``fc_reg``: :class:`BackgroundLastPredictor`.
"""
from __future__ import annotations

from torch import nn
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor

__all__ = ["BackgroundLastPredictor", "shared_2fc_head", "conv4_fc1_head", "fcn_mask_head", "mask_predictor"]


class BackgroundLastPredictor(FastRCNNPredictor):
    """mmdet's classifier and regressor: ``num_classes + 1`` logits with the background **last**
    (column ``num_classes``, torchvision puts it first) and class-specific deltas for the foreground
    classes only (``num_classes * 4``, torchvision has ``(num_classes + 1) * 4``)."""

    def __init__(self, in_channels: int, num_classes: int = 80):
        super().__init__(in_channels, num_classes + 1)
        self.bbox_pred = nn.Linear(in_channels, num_classes * 4)


def shared_2fc_head(in_channels: int, fc_channels: int, roi_size: int = 7) -> TwoMLPHead:
    return TwoMLPHead(in_channels * roi_size * roi_size, fc_channels)


def conv4_fc1_head(in_channels: int, conv_channels: int, fc_channels: int, roi_size: int = 7) -> FastRCNNConvFCHead:
    return FastRCNNConvFCHead((in_channels, roi_size, roi_size), [conv_channels] * 4, [fc_channels],
                              norm_layer=nn.BatchNorm2d)


def fcn_mask_head(in_channels: int, conv_channels: int) -> MaskRCNNHeads:
    return MaskRCNNHeads(in_channels, [conv_channels] * 4, dilation=1)


def mask_predictor(conv_channels: int, num_classes: int = 80) -> MaskRCNNPredictor:
    return MaskRCNNPredictor(conv_channels, conv_channels, num_classes)
