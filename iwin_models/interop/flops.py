"""Parameters and FLOPs as the authors' README reports them (mmcv's ``get_model_complexity_info``).

mmcv counts multiply-accumulates per *module*, with forward hooks: convolutions (kernel x in/groups x
out per output position, plus one per output element for the bias), linear layers (input elements x
out features, plus out features once for the bias), norms (input elements, twice for BatchNorm-style ``affine``),
ReLUs, pools and ``nn.Upsample`` (elements). Functional operations (attention matmuls, softmax,
``F.interpolate``, GELU) are not counted. ``flops`` reproduces that convention so the published
946G / 1038G / 1189G can be checked. The hooks see the definitional path (with hooks on its
modules, the model does not take its CPU fast paths; see ``iwin_models.fast.config``), so no
module needs a special case. ``torch.utils.flop_counter`` (every aten op, 2 FLOPs per MAC)
gives the full count for speed work (see ``benchmarks/``).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from ..models.weights import FLOPS_INPUT

__all__ = ["mmcv_flops", "count_parameters"]

_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm, nn.InstanceNorm1d, nn.InstanceNorm2d,
          nn.InstanceNorm3d, nn.LayerNorm)
_ELEMENTWISE = (nn.ReLU, nn.PReLU, nn.ELU, nn.LeakyReLU, nn.ReLU6)
_POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
          nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.AdaptiveAvgPool1d,
          nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)


_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def _module_macs(module: nn.Module, inputs: tuple, output: torch.Tensor) -> int:
    x = inputs[0]
    if isinstance(module, _CONVS):
        positions = output.shape[0] * math.prod(output.shape[2:])
        per_position = math.prod(module.kernel_size) * module.in_channels * module.out_channels // module.groups
        return per_position * positions + (module.out_channels * positions if module.bias is not None else 0)
    if isinstance(module, nn.Linear):
        return x.numel() * output.shape[-1] + (output.shape[-1] if module.bias is not None else 0)
    if isinstance(module, _NORMS):
        # mmcv doubles for ``module.affine``, an attribute LayerNorm lacks (it has elementwise_affine),
        # so LayerNorms count once: that is what the published figures contain.
        return x.numel() * (2 if getattr(module, "affine", False) else 1)
    if isinstance(module, _POOLS):
        return x.numel()
    if isinstance(module, (*_ELEMENTWISE, nn.Upsample)):
        return output.numel()
    return 0


@torch.no_grad()
def mmcv_flops(model: nn.Module, shape=FLOPS_INPUT) -> int:
    """Multiply-accumulates of one forward pass of a (1, *shape) input, mmcv's way."""
    total = 0

    def hook(module, inputs, output):
        nonlocal total
        total += _module_macs(module, inputs, output)

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    was_training = model.training
    try:
        model.eval()
        param = next(model.parameters())
        model(torch.zeros((1, *shape), device=param.device, dtype=param.dtype))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return total


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
