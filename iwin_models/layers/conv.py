"""Convolution forms for tracers.

:func:`conv2d_as_conv3d` computes a 2-D convolution on a channels-last view as a (1, kh, kw) 3-D convolution: what
the models record when they are converted for a graph that serves every input size (their ``export_form``).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["conv2d_as_conv3d"]


def conv2d_as_conv3d(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)`` for a channels-last (B, C, H, W) view, as what tracers record (``torch.export``, ONNX,
    ``torch.compile``, FX): the same values to float32 round-off, and no guard on a size.

    A tracer infers a 2-D convolution's memory format from the input strides, and for a channels-last
    input that test ends in ``batch > 1`` (a guard: batch 1 would need another graph), even after a
    channels-last clone under ``torch.export(strict=True)``. A (1, kh, kw) conv3d over (B, C, 1, H, W)
    has no such test and reads the same view without a copy, but its output layout is ambiguous where
    the output map is 1x1 (an ``H * W != 1`` guard): one more zero row and column of padding on each
    side keep the output at least 3x3, and a negative pad crops that margin (a copy, not a view: the
    real and fake layouts of a conv3d output differ, so a view's storage offsets would too). Eager
    cost (2 CPU threads, 8x64x64x192): depthwise 51 ms conv2d / 43 ms conv3d, stride-2 downsampler
    127 / 125 ms, plus the crop's copy; an NCHW copy instead would take 5x the depthwise time.
    """
    (sh, sw), (ph, pw) = conv.stride, conv.padding
    y = F.conv3d(x.unsqueeze(2), conv.weight.unsqueeze(2), conv.bias, stride=(1, sh, sw),
                 padding=(0, ph + sh, pw + sw), dilation=(1, conv.dilation[0], conv.dilation[1]), groups=conv.groups)
    return F.pad(y.squeeze(2), (-1, -1, -1, -1))
