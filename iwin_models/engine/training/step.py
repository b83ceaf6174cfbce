"""One optimisation step of a segmenter: the authors' loss (CE + 0.4 auxiliary CE, ignore index 255) and
:func:`train_step` (autocast, GradScaler, gradient clipping); :class:`StepResult`, what the Trainer's step returns."""
from __future__ import annotations

import contextlib
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...data.ade20k import IGNORE_INDEX

__all__ = ["segmentation_losses", "segmentation_loss", "train_step", "StepResult"]


class StepResult(NamedTuple):
    """What :meth:`~iwin_models.engine.training.Trainer.step` returns: tensors on the device (reading them
    syncs: only when logging)."""

    loss: torch.Tensor  # the total loss, decode CE + aux_weight * aux CE
    lr: float  # the lr the step used
    aux_loss: torch.Tensor | None  # aux_weight * aux CE, the weighted auxiliary term (None with aux_weight 0)


def segmentation_losses(logits: torch.Tensor, aux_logits: torch.Tensor | None, labels: torch.Tensor,
                        aux_weight: float = 0.4, ignore_index: int = IGNORE_INDEX
                        ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The two terms of :func:`segmentation_loss`: CE(logits), and ``aux_weight`` CE(aux logits) (weighted, as
    mmseg's ``aux.loss_ce``; None with ``aux_weight`` 0), in float32, pixels labelled ``ignore_index`` left out."""
    decode = F.cross_entropy(logits.float(), labels, ignore_index=ignore_index)
    if not aux_weight:
        return decode, None
    return decode, aux_weight * F.cross_entropy(aux_logits.float(), labels, ignore_index=ignore_index)


def segmentation_loss(logits: torch.Tensor, aux_logits: torch.Tensor | None, labels: torch.Tensor,
                      aux_weight: float = 0.4, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """CE(logits) + ``aux_weight`` CE(aux logits), in float32, pixels labelled ``ignore_index`` left out."""
    decode, aux = segmentation_losses(logits, aux_logits, labels, aux_weight, ignore_index)
    return decode if aux is None else decode + aux


def train_step(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, optimizer: torch.optim.Optimizer,
               scaler: torch.amp.GradScaler | None = None, *, aux_weight: float = 0.4,
               clip_grad: float | None = None, amp_dtype: torch.dtype | None = None, return_aux: bool = False
               ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor | None]:
    """One optimiser step of a segmenter (``model(images, return_aux=True)``) on a batch already on its
    device; returns the loss (a tensor: ``.item()`` syncs, so call it only when you log). Step the lr
    scheduler after it. ``scaler``: a GradScaler for fp16 autocast (``amp_dtype``); ``clip_grad``: max norm.
    ``return_aux``: return ``(loss, aux term)``, the weighted auxiliary term of the loss detached (None with
    ``aux_weight`` 0; a tensor too: no sync)."""
    scaler = scaler if scaler is not None else torch.amp.GradScaler(images.device.type, enabled=False)
    autocast = (torch.autocast(device_type=images.device.type, dtype=amp_dtype) if amp_dtype is not None
                else contextlib.nullcontext())
    with autocast:
        logits, aux_logits = model(images, return_aux=True)
    decode, aux = segmentation_losses(logits, aux_logits, labels, aux_weight)
    loss = decode if aux is None else decode + aux
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if clip_grad:
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
    scaler.step(optimizer)
    scaler.update()
    if return_aux:
        return loss, None if aux is None else aux.detach()
    return loss
