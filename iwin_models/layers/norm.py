"""BatchNorm building blocks of the segmentation and detection heads.

:class:`PoolSafeBatchNorm2d` normalises a lone value per channel (a 1x1 pooled map at batch 1) with the running
statistics instead of raising; :func:`running_statistics_frozen` keeps the running statistics unchanged while
gradient checkpointing recomputes a forward pass.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["PoolSafeBatchNorm2d", "pool_safe_batchnorms", "running_statistics_frozen", "BATCH_NORMS"]


class PoolSafeBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm that normalises a lone value per channel with the running statistics.

    The PSP branch pools to 1x1 (and a tiny image gives 1x1 maps everywhere); with batch size 1 in
    training a channel then holds one value, which has no variance, and plain BatchNorm raises.
    mmseg avoided it with SyncBN over 8 GPUs.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.numel() // x.shape[1] <= 1:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0., self.eps)
        return super().forward(x)

    def _check_input_dim(self, input: torch.Tensor) -> None:
        _check_feature_map(input)


def _check_feature_map(x: torch.Tensor) -> None:
    if x.dim() != 4:
        raise ValueError(f"expected a 4D input (got {x.dim()}D input)")


# torch.fx records nn.BatchNorm2d as one call, but traces into a subclass: the check then is a recorded call too
torch.fx.wrap("_check_feature_map")


BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


@contextlib.contextmanager
def running_statistics_frozen(module: nn.Module):
    """BatchNorms under ``module`` keep their running statistics (and batch count) unchanged.

    Used while gradient checkpointing recomputes a forward pass, which must not count the batch a
    second time. Momentum 0 keeps the running values exactly while the layers still normalise with
    the batch's statistics and save the same tensors for backward as in the first pass (which
    checkpointing verifies).
    """
    norms = [m for m in module.modules() if isinstance(m, BATCH_NORMS) and m.track_running_stats]
    saved = [(m.momentum, m.num_batches_tracked.clone()) for m in norms]
    for m in norms:
        m.momentum = 0.
    try:
        yield
    finally:
        for m, (momentum, count) in zip(norms, saved):
            m.momentum = momentum
            m.num_batches_tracked.copy_(count)


def pool_safe_batchnorms(module: nn.Module) -> nn.Module:
    """Swap every BatchNorm2d under ``module`` for :class:`PoolSafeBatchNorm2d` (same state)."""
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            safe = PoolSafeBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                       child.track_running_stats, device=child.weight.device)
            safe.load_state_dict(child.state_dict())
            setattr(module, name, safe)
        else:
            pool_safe_batchnorms(child)
    return module

