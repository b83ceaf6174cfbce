"""Adaptive average pooling that exports to a size-free graph.

ONNX has no adaptive pooling: torch.onnx writes ``adaptive_avg_pool2d`` to an output other than 1x1
(the PSP branch's 2x2, 3x3 and 6x6) as GatherND with indices computed for the traced input size, so
an exported segmenter gives wrong results or fails ("invalid index") at any other size. Written as
two averaging matrices (``P_h @ x @ P_w^T``), the bins are computed from the input's size inside the
graph. Same bins as PyTorch's kernel (start ``floor(i * H / S)``, end ``ceil((i + 1) * H / S)``);
the sums run in another order, so the values agree to float32 round-off (tested).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["AdaptiveAvgPool2d", "adaptive_avg_pool2d_by_averaging"]


def _averaging_matrix(in_size: int, out_size: int, like: torch.Tensor) -> torch.Tensor:
    """(out_size, in_size): row i averages input positions floor(i * in / out) .. ceil((i + 1) * in / out) - 1."""
    i = torch.arange(out_size, device=like.device)
    start = (i * in_size) // out_size
    end = ((i + 1) * in_size + out_size - 1) // out_size
    pos = torch.arange(in_size, device=like.device)
    inside = (pos[None, :] >= start[:, None]) & (pos[None, :] < end[:, None])
    return inside.to(like.dtype) / (end - start)[:, None].to(like.dtype)


def adaptive_avg_pool2d_by_averaging(x: torch.Tensor, output_size: int | tuple[int, int]) -> torch.Tensor:
    """``F.adaptive_avg_pool2d(x, output_size)`` for (N, C, H, W) with two averaging matrices."""
    oh, ow = (output_size, output_size) if isinstance(output_size, int) else output_size
    rows = _averaging_matrix(x.shape[-2], oh, x)  # (oh, H)
    cols = _averaging_matrix(x.shape[-1], ow, x)  # (ow, W)
    # products and sums, not matmul: matmul's decomposition asks whether a map size is 1 (to fold
    # batch dims), which pins the exported graph to maps of at least 2x2
    x = (x[:, :, None] * rows[:, :, None]).sum(3)  # (N, C, oh, W)
    return (x[:, :, :, None] * cols).sum(-1)  # (N, C, oh, ow)


class AdaptiveAvgPool2d(nn.AdaptiveAvgPool2d):
    """``nn.AdaptiveAvgPool2d`` (no parameters, same state dict) that pools with averaging matrices in its
    ``export_form`` (set on a copy of the model by ``iwin_models.interop.export.export_forms``)."""

    def __init__(self, output_size, export_form: bool = False):
        super().__init__(output_size)
        self.export_form = export_form

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():
            if self.export_form and self.output_size not in (1, (1, 1)):  # a global mean exports as it is
                return adaptive_avg_pool2d_by_averaging(x, self.output_size)
        return F.adaptive_avg_pool2d(x, self.output_size)
