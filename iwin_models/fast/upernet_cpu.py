"""The CPU fast twin of the UPerNet decoder (``iwin_models.models.upernet.IwinUPerNetDecoder``, smp's structure).

Two differences from the definition, each exact up to float32 round-off (tests/test_upernet_cpu.py):

* channels-last throughout: Iwin's features are channels-last views of NHWC maps; the PSP branch (1x1
  pooled maps) returns NCHW, which would turn every later map NCHW too. One small conversion of the PSP
  output keeps the whole decoder channels-last, the layout oneDNN's convolutions and the bilinear kernels
  run fastest;
* at inference (no gradients recorded), no stride-4 concatenation: the fusion conv over the four
  concatenated maps equals the sum of its four channel groups' convs over each map, so each map is resized,
  convolved and released in turn. At the 1.75x scale of ``--aug`` on a 4:3 photo (896x1195) the four
  resized 512-channel maps and their concatenation held ~1.1 GB of the decoder's ~1.3 GB.

Measured on the decoder of Iwin-T features at 512x683 (512 channels, eval, no gradients; CPU seconds per
call with 1 thread on a 2-core VM, alternating in one process): plain 3.33, this twin 3.01-3.05. oneDNN's
convolutions are 84% of the twin's time (near its 2048^2 matmul rate), bilinear resizes 4%, BatchNorm 4%.
Tried and not kept, for want of a clear margin: the BatchNorm folded into the convolution weights (and the
lateral sums in place), 3.00-3.05 against 3.10-3.13 (~3%, twice the run-to-run spread of ~1.5%); Winograd
F(2x2, 3x3) for the 3x3 convolutions in eager PyTorch, 3x slower than oneDNN's direct convolution (the tile
transforms are passes over memory).

This module sees the decoder only through smp's attribute names (``feature_norms``, ``psp``,
``fpn_lateral_blocks``, ``fpn_conv_blocks``, ``fusion_block``); it imports no model module.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..layers import resize_bilinear
from .twin import CpuTwin, bypassed_problems, eager_only, refuse_tracing

__all__ = ["CpuUPerNetDecoder"]


class CpuUPerNetDecoder(CpuTwin):
    """Fast twin of smp's ``UPerNetDecoder`` forward (same modules, same state dict)."""

    @classmethod
    def problems(cls, module: nn.Module, owner: str) -> list[str]:
        """The channel-group fusion computes with the fusion conv's weights, never calling the fusion block or
        its conv: they must be smp's plain ``Conv2d`` (ungrouped, zero padding) in a hook-free block."""
        block = module.fusion_block
        where = f"{owner}.fusion_block" if owner else "fusion_block"
        if not (isinstance(block, nn.Sequential) and len(block) == 3):
            return [f"{where} is not smp's conv-norm-activation Sequential"]
        problems = bypassed_problems(owner, {"fusion_block": block}) + bypassed_problems(
            owner, {"fusion_block.0": block[0]}, nn.Conv2d)
        conv = block[0]
        if not problems and (conv.groups != 1 or conv.padding_mode != "zeros"):
            problems.append(f"{where}.0 is a grouped or non-zero-padded convolution")
        return problems

    @eager_only
    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        refuse_tracing(features[-1])
        features = [norm(f) for norm, f in zip(self.feature_norms, features[2:])]
        maps = [self.psp(features[-1]).contiguous(memory_format=torch.channels_last)]  # stride 32
        for block, lateral in zip(self.fpn_lateral_blocks, features[-2::-1]):  # strides 16, 8, 4
            maps.append(block(maps[-1], lateral))
        maps = maps[:1] + [conv(m) for conv, m in zip(self.fpn_conv_blocks, maps[1:])]
        if not torch.is_grad_enabled():
            return self._fuse_by_channel_groups(maps[::-1])
        size = maps[-1].shape[2:]
        # smp also resizes the stride-4 map to its own size: an exact copy, skipped here
        resized = [m if m.shape[2:] == size else resize_bilinear(m, size) for m in maps[::-1]]
        return self.fusion_block(torch.cat(resized, dim=1))

    def _fuse_by_channel_groups(self, maps: list[torch.Tensor]) -> torch.Tensor:
        """``fusion_block(cat(resized maps))`` as ``act(norm(sum of group conv(resized map)))``, a map at a time."""
        conv, norm, act = self.fusion_block
        size = maps[0].shape[2:]
        out, first = None, 0
        for m in maps:
            weight = conv.weight[:, first:first + m.shape[1]]
            first += m.shape[1]
            if m.shape[2:] != size:
                m = resize_bilinear(m, size)
            y = F.conv2d(m, weight, None, conv.stride, conv.padding, conv.dilation)
            out = y if out is None else out.add_(y)
        if conv.bias is not None:
            out = out + conv.bias.view(1, -1, 1, 1)
        return act(norm(out))
