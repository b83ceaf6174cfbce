"""Resizing maps the way the authors' heads and test protocol do."""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["resize_bilinear"]


def resize_bilinear(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear resize of an (N, C, H, W) map to ``size`` with align_corners False (mmseg's ``resize``), in the
    memory format of ``x``."""
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)
