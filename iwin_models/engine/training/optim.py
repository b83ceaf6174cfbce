"""The authors' optimiser and schedule: AdamW with no weight decay on norms, biases and position tables, linear
warm-up then poly decay, as mmcv's ``PolyLrUpdaterHook``::

    poly(t) = (1 - t / iters) ** power * (1 - min_ratio) + min_ratio
    lr(t)   = base_lr * poly(t) * (1 - (1 - t / warmup) * (1 - warmup_ratio))   for t < warmup
    lr(t)   = base_lr * poly(t)                                                  otherwise
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from ..precision import PRECISIONS

__all__ = ["param_groups", "build_optimizer", "lr_factor", "build_scheduler", "build_optimisation"]


def _no_decay_names(model: nn.Module) -> set[str]:
    """Names a backbone asks to keep free of weight decay (timm's ``no_weight_decay``), in model terms."""
    names = set()
    for prefix, module in model.named_modules():
        fn = getattr(module, "no_weight_decay", None)
        if callable(fn):
            names |= {f"{prefix}.{n}" if prefix else n for n in fn()}
    return names


def param_groups(model: nn.Module, weight_decay: float = 0.01) -> list[dict]:
    """Two AdamW groups: decayed weights, and the rest (norms, biases, any 1-D parameter, position
    tables) with weight decay 0. Frozen parameters are left out. Each group lists its ``param_names``."""
    skip = _no_decay_names(model)
    decay, no_decay = ([], []), ([], [])
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        plain = name.removeprefix("module.")
        free = (p.ndim <= 1 or plain.endswith(".bias") or plain in skip
                or "relative_position_bias_table" in plain or plain.endswith("pos_embed"))
        group = no_decay if free else decay
        group[0].append(p)
        group[1].append(plain)
    return [dict(params=decay[0], param_names=decay[1], weight_decay=weight_decay),
            dict(params=no_decay[0], param_names=no_decay[1], weight_decay=0.0)]


def build_optimizer(model: nn.Module, lr: float = 6e-5, weight_decay: float = 0.01,
                    betas: Sequence[float] = (0.9, 0.999)) -> torch.optim.AdamW:
    """AdamW with :func:`param_groups`."""
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=tuple(betas))


def lr_factor(t: int, iters: int, warmup: int = 1500, warmup_ratio: float = 1e-6, power: float = 1.0,
              min_ratio: float = 0.0) -> float:
    """The multiple of the base lr used at iteration ``t`` (see the module docstring)."""
    poly = (1.0 - min(t, iters) / iters) ** power * (1.0 - min_ratio) + min_ratio
    if t < warmup:
        return poly * (1.0 - (1.0 - t / warmup) * (1.0 - warmup_ratio))
    return poly


def build_scheduler(optimizer, iters: int, warmup: int = 1500, warmup_ratio: float = 1e-6, power: float = 1.0,
                    min_lr: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    """LambdaLR of :func:`lr_factor`; step it once after every optimiser step."""
    if iters < 1:
        raise ValueError(f"iters must be positive, got {iters}")
    base = optimizer.param_groups[0]["lr"]
    min_ratio = min_lr / base if base > 0 else 0.0

    def factor(t: int) -> float:
        return lr_factor(t, iters, warmup, warmup_ratio, power, min_ratio)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def build_optimisation(model: nn.Module, config, device_type: str):
    """(optimiser, scheduler, GradScaler) of ``model`` for a :class:`~.config.TrainConfig` on ``device_type``; the
    scaler is on with fp16 only."""
    c = config
    optimizer = build_optimizer(model, c.lr, c.weight_decay, c.betas)
    scheduler = build_scheduler(optimizer, c.iters, c.warmup_iters, c.warmup_ratio, c.power, c.min_lr)
    scaler = torch.amp.GradScaler(device_type, enabled=PRECISIONS[c.precision] is torch.float16)
    return optimizer, scheduler, scaler
