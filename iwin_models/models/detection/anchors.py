"""mmdet's anchors on torchvision's :class:`AnchorGenerator`."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList

__all__ = ["UnroundedAnchorGenerator"]


class UnroundedAnchorGenerator(AnchorGenerator):
    """Anchors as mmdet's ``AnchorGenerator`` makes them (``anchor_generator.py:142-185, 233-267``).

    Base size = the level's stride, one octave scale, ``ratios`` in that order, centred on
    ``(x * stride, y * stride)`` and **not rounded** (torchvision rounds). The strides are fixed per
    level instead of inferred from ``image size // grid size`` (wrong for P6 of an 800-high image).
    The flat order ``(y * W + x) * A + a`` is torchvision's and mmdet's.
    """

    def __init__(self, strides: Sequence[int] = (4, 8, 16, 32, 64), octave_scale: float = 8.0,
                 ratios: Sequence[float] = (0.5, 1.0, 2.0)):
        super().__init__(sizes=tuple((s * octave_scale,) for s in strides),
                         aspect_ratios=(tuple(ratios),) * len(strides))
        self.strides = tuple(strides)
        self.cell_anchors = [self.base_anchors(s, octave_scale, ratios) for s in strides]

    @staticmethod
    def base_anchors(base_size: int, octave_scale: float, ratios: Sequence[float]) -> Tensor:
        ratios, scales = torch.tensor(ratios), torch.tensor([octave_scale])
        h_ratios = torch.sqrt(ratios)
        w_ratios = 1 / h_ratios
        # mmdet's op order: (base * ratio) * scale, half-sizes by 0.5 * w around a 0 centre
        ws = (base_size * w_ratios[:, None] * scales[None, :]).view(-1)
        hs = (base_size * h_ratios[:, None] * scales[None, :]).view(-1)
        return torch.stack([0.0 - 0.5 * ws, 0.0 - 0.5 * hs, 0.0 + 0.5 * ws, 0.0 + 0.5 * hs], dim=-1)

    def forward(self, image_list: ImageList, feature_maps: list[Tensor]) -> list[Tensor]:
        dtype, device = feature_maps[0].dtype, feature_maps[0].device
        grid_sizes = [f.shape[-2:] for f in feature_maps]
        strides = [[torch.tensor(s, dtype=torch.int64, device=device)] * 2 for s in self.strides]
        self.set_cell_anchors(dtype, device)
        anchors = torch.cat(self.grid_anchors(grid_sizes, strides))
        return [anchors for _ in image_list.image_sizes]
