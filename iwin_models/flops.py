"""Parameters and FLOPs as the authors' README reports them (mmcv's ``get_model_complexity_info``).

mmcv counts multiply-accumulates per *module*, with forward hooks: convolutions (kernel x in/groups x
out per output position, plus one per output element for the bias), linear layers (input elements x
out features, plus out features once for the bias), norms (input elements, twice for BatchNorm-style ``affine``),
ReLUs, pools and ``nn.Upsample`` (elements). Functional operations (attention matmuls, softmax,
``F.interpolate``, GELU) are not counted. ``flops`` reproduces that convention so the published
946G / 1038G / 1189G can be checked; ``torch.utils.flop_counter`` (every aten op, 2 FLOPs per MAC)
gives the full count for speed work (see ``benchmarks/``).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from .iwin import InterleavedAttention, PatchEmbed

__all__ = ["mmcv_flops", "count_parameters", "add_arguments", "run"]

_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm, nn.InstanceNorm1d, nn.InstanceNorm2d,
          nn.InstanceNorm3d, nn.LayerNorm)
_ELEMENTWISE = (nn.ReLU, nn.PReLU, nn.ELU, nn.LeakyReLU, nn.ReLU6)
_POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
          nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.AdaptiveAvgPool1d,
          nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)


def _module_macs(module: nn.Module, inputs: tuple, output: torch.Tensor) -> int:
    x = inputs[0]
    if isinstance(module, nn.modules.conv._ConvNd):
        positions = output.shape[0] * math.prod(output.shape[2:])
        per_position = math.prod(module.kernel_size) * module.in_channels * module.out_channels // module.groups
        return per_position * positions + (module.out_channels * positions if module.bias is not None else 0)
    if isinstance(module, nn.Linear):
        return x.numel() * output.shape[-1] + (output.shape[-1] if module.bias is not None else 0)
    if isinstance(module, _NORMS):
        # mmcv doubles for ``module.affine``, an attribute LayerNorm lacks (it has elementwise_affine),
        # so LayerNorms count once: that is what the published figures contain.
        return x.numel() * (2 if getattr(module, "affine", False) else 1)
    if isinstance(module, PatchEmbed):
        # its convolution runs as a matmul on the patches (no Conv2d call to hook): count it as one
        conv = module.proj
        positions = math.prod(output.shape[:3])
        return positions * (math.prod(conv.kernel_size) * conv.in_channels + 1) * conv.out_channels
    if isinstance(module, InterleavedAttention):
        # The authors' qkv and proj also run on the tokens padding the map to window multiples; ours
        # skip some of that work (same outputs), which is added back here to keep the published figures.
        B, H, W, _ = x.shape
        ws = inputs[1]
        padding = B * (math.ceil(H / ws) * math.ceil(W / ws) * ws * ws - H * W)
        skipped = [module.proj] + ([module.qkv] if module.qkv_skips_padding(H, W, ws) else [])
        return padding * sum(linear.in_features * linear.out_features for linear in skipped)
    if isinstance(module, _POOLS):
        return x.numel()
    if isinstance(module, (*_ELEMENTWISE, nn.Upsample)):
        return output.numel()
    return 0


@torch.no_grad()
def mmcv_flops(model: nn.Module, shape=(3, 512, 2048)) -> int:
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


def add_arguments(parser) -> None:
    from .segmenter import SEGMENTERS

    parser.add_argument("--model", default="iwin_tiny_upernet_ade20k",
                        help=f"a segmenter ({', '.join(SEGMENTERS)}) or a timm model name (iwin_tiny, ...)")
    parser.add_argument("--shape", type=int, nargs=3, default=(3, 512, 2048), metavar=("C", "H", "W"),
                        help="input shape (default: %(default)s, as mmseg's get_flops)")


def run(args) -> int:
    import timm

    from .segmenter import SEGMENTERS, create_segmenter

    if any(s < 1 for s in args.shape):
        raise ValueError(f"--shape must be positive, got {args.shape}")
    if args.model in SEGMENTERS:
        model = create_segmenter(args.model, pretrained=False)  # counts do not depend on weights
    elif timm.is_model(args.model):
        model = timm.create_model(args.model)
    else:
        raise ValueError(f"unknown model {args.model!r}: choose one of {', '.join(SEGMENTERS)} or an iwin_* timm model")
    macs = mmcv_flops(model, tuple(args.shape))
    print(f"model: {args.model}\ninput shape: {tuple(args.shape)}")
    print(f"params: {count_parameters(model) / 1e6:.1f}M\nflops: {macs / 1e9:.0f}G (mmcv convention: "
          f"module multiply-accumulates; attention matmuls and resizes not counted)")
    return 0
