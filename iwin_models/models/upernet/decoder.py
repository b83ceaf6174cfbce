"""The UPerNet decoder and heads of :class:`~iwin_models.models.upernet.IwinUPerNet`.

The decoder is smp's ``UPerNetDecoder`` (PSP + FPN, whose structure is mmseg's ``UPerHead``); the heads are
dropout + 1x1 classifier with the logits resized to the input size (bilinear, align_corners False, as the
checkpoints were trained), and mmseg's auxiliary FCN head.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from segmentation_models_pytorch.base import modules as smp_modules
from segmentation_models_pytorch.decoders.upernet.decoder import UPerNetDecoder

from ...layers import AdaptiveAvgPool2d, resize_bilinear

__all__ = ["IwinUPerNetDecoder", "ResizeToInputHead", "FCNHead", "resize_logits"]


class IwinUPerNetDecoder(UPerNetDecoder):
    """smp's ``UPerNetDecoder`` (same modules, same state dict, same ``forward``) with the PSP pools that export
    size-free in their ``export_form`` (:class:`~iwin_models.layers.AdaptiveAvgPool2d`).

    Its CPU fast twin (channels-last throughout, no stride-4 concatenation at inference) is
    :class:`~iwin_models.fast.upernet_cpu.CpuUPerNetDecoder`, put in place by
    :func:`iwin_models.optimize_for_cpu`.
    """

    def __init__(self, *args, export_form: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.export_form = export_form
        for block in self.psp.blocks:
            block[0] = AdaptiveAvgPool2d(block[0].output_size)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        if self.export_form:
            # NCHW copies of Iwin's channels-last views: a tracer infers a convolution's memory format from
            # the strides, and for a channels-last input that test guards on the batch size (batch 1 would
            # need another graph)
            features = [f.clone(memory_format=torch.contiguous_format) for f in features]
        return super().forward(list(features))


def resize_logits(logits: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    # NCHW out (the decoder's maps are channels-last, as Iwin's features): smp's losses and many users call .view
    return resize_bilinear(logits.contiguous(), size)


class ResizeToInputHead(nn.Module):
    """Dropout, 1x1 classifier, bilinear resize (align_corners False) to the input size."""

    def __init__(self, in_channels: int, num_classes: int, dropout: float = 0.1):
        super().__init__()
        self.dropout = nn.Dropout2d(dropout)  # mmseg's decode heads drop whole channels
        self.conv_seg = nn.Conv2d(in_channels, num_classes, kernel_size=1)

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """Logits at the resolution of ``x``."""
        return self.conv_seg(self.dropout(x))

    def forward(self, x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        return resize_logits(self.classify(x), size)


class FCNHead(ResizeToInputHead):
    """mmseg's auxiliary ``FCNHead``: one 3x3 conv-BN-ReLU, dropout, 1x1 classifier, resize."""

    def __init__(self, in_channels: int, num_classes: int, channels: int = 256, dropout: float = 0.1):
        super().__init__(channels, num_classes, dropout)
        self.convs = nn.Sequential(smp_modules.Conv2dReLU(in_channels, channels, kernel_size=3, padding=1))

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        return super().classify(self.convs(x))
