"""Iwin features (timm, ``features_only``) + torchvision's FPN with P6 by max-pool."""
from __future__ import annotations

from collections import OrderedDict

import timm
from torch import Tensor, nn
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool

__all__ = ["IwinFPN", "iwin_fpn"]


class IwinFPN(nn.Module):
    """Backbone + neck: P2-P5 from the four Iwin stages, P6 = ``max_pool2d(P5, 1, stride=2)``.

    The authors' FPN (``necks/fpn.py:170-206``: lateral 1x1, nearest upsampling to the lower level's
    size, 3x3 output convs, no extra conv for P6) is torchvision's with :class:`LastLevelMaxPool`.
    Outputs ``'0'..'3'`` (strides 4-32) and ``'pool'`` (stride 64).
    """

    def __init__(self, body: nn.Module, in_channels: list[int], out_channels: int):
        super().__init__()
        self.body = body
        self.fpn = FeaturePyramidNetwork(in_channels, out_channels, extra_blocks=LastLevelMaxPool())
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(self.body(x))))


def iwin_fpn(variant: str, out_channels: int, **iwin_kwargs) -> IwinFPN:
    """``variant`` names the timm model (``'iwin_tiny'``...); ``iwin_kwargs`` its widths and depths.

    The detection backbone is the segmentation one: per-stage output norms (the authors' ``norm0..3``)
    and depthwise convs in the stages whose 224-px map exceeds the window (stages 0-2 at window 7).
    """
    body = timm.create_model(variant, features_only=True, out_indices=(0, 1, 2, 3), **iwin_kwargs)
    return IwinFPN(body, list(body.feature_info.channels()), out_channels)
