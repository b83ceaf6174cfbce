"""Input checks of the models' forwards: shape and dtype only (no data read, no device sync).

A module that calls :func:`check_image_batch` in a forward also calls ``torch.fx.wrap("check_image_batch")`` at its
top level, so that FX records the check as one call (run on real inputs) instead of tracing into it.
"""
from __future__ import annotations

import torch

__all__ = ["check_image_batch"]


def check_image_batch(x: torch.Tensor, in_chans: int) -> None:
    """Clear errors for what would otherwise fail deep inside a model (or silently give a wrong answer): a
    (B, ``in_chans``, H, W) floating-point batch of any size."""
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"expected an image batch of shape (B, {in_chans}, H, W), got {got}")
    if x.shape[1] != in_chans:
        raise ValueError(
            f"the model was built for {in_chans} input channels, got {x.shape[1]} (input shape "
            f"{tuple(x.shape)}); convert the images or build the model with in_chans={x.shape[1]}")
    if not x.is_floating_point():
        raise TypeError(f"expected a floating-point (normalised) image tensor, got dtype {x.dtype}")
