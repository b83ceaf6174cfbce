"""RoIAlign over the FPN levels as mmdet's ``SingleRoIExtractor`` does it."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchvision.ops import MultiScaleRoIAlign, roi_align

from ._utils import rois_from_boxes

__all__ = ["MMDetRoIAlign"]


class MMDetRoIAlign(MultiScaleRoIAlign):
    """torchvision's multi-scale RoIAlign with mmdet's level mapping and sampling.

    Level ``floor(log2(sqrt(w * h) / finest_scale + 1e-6))`` clamped to the levels given
    (``single_level_roi_extractor.py:32-108``; torchvision maps with canonical scale 224 / level 4 and
    another epsilon), ``spatial_scale = 1 / stride``, ``sampling_ratio=0`` and **``aligned=True``**
    (mmcv's default; torchvision's pooler uses ``aligned=False``).
    """

    def __init__(self, output_size: int, strides: Sequence[int] = (4, 8, 16, 32), finest_scale: int = 56,
                 featmap_names: Sequence[str] = ("0", "1", "2", "3")):
        super().__init__(list(featmap_names), output_size, sampling_ratio=0)
        self.strides = tuple(strides)
        self.finest_scale = finest_scale

    def forward(self, x: dict[str, Tensor], boxes: list[Tensor], image_shapes=None) -> Tensor:
        return self.pool_rois([x[k] for k in self.featmap_names], rois_from_boxes(boxes))

    def levels(self, rois: Tensor) -> Tensor:
        scale = torch.sqrt((rois[:, 3] - rois[:, 1]) * (rois[:, 4] - rois[:, 2]))
        levels = torch.floor(torch.log2(scale / self.finest_scale + 1e-6))
        return levels.clamp(min=0, max=len(self.strides) - 1).long()

    def pool_rois(self, features: list[Tensor], rois: Tensor) -> Tensor:
        """``(K, C, s, s)`` features of ``(K, 5)`` RoIs, each from its level."""
        levels = self.levels(rois)
        out = features[0].new_zeros((rois.shape[0], features[0].shape[1], *self.output_size))
        for level, (feature, stride) in enumerate(zip(features, self.strides)):
            inds = (levels == level).nonzero().squeeze(1)
            if inds.numel() > 0:
                out[inds] = roi_align(feature, rois[inds], self.output_size, spatial_scale=1 / stride,
                                      sampling_ratio=0, aligned=True)
        return out
