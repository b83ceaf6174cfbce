"""``iwin-seg flops``: parameters and FLOPs of a segmenter or an Iwin backbone, in the mmcv convention."""
from __future__ import annotations

from ...models.weights import FLOPS_INPUT
from .common import resolve_model


def add_arguments(parser) -> None:
    from ...models.weights import SEGMENTERS

    parser.add_argument("--model", default="iwin_tiny_upernet_ade20k",
                        help=f"a segmenter ({', '.join(SEGMENTERS)}) or a timm model name (iwin_tiny, ...)")
    parser.add_argument("--shape", type=int, nargs=3, default=FLOPS_INPUT, metavar=("C", "H", "W"),
                        help="input shape (default: %(default)s, as mmseg's get_flops)")


def _model(name: str):
    import timm
    import torch

    from ...models import iwin  # noqa: F401  (registers the backbones with timm)
    from ...models.weights import SEGMENTERS

    # The counts depend on shapes only: the model is built on the meta device (no weights, no download, no
    # warning) and its forward computes nothing (Iwin-T/S/B at 512x2048: 5 s in all instead of 82 s).
    if name in SEGMENTERS:
        with torch.device("meta"):
            return resolve_model(name, start="random", warn=False, device="meta")
    if timm.is_model(name):
        with torch.device("meta"):
            return timm.create_model(name)
    raise ValueError(f"unknown model {name!r}: choose one of {', '.join(SEGMENTERS)} or an iwin_* timm model")


def run(args) -> int:
    from ...interop.flops import count_parameters, mmcv_flops

    if any(s < 1 for s in args.shape):
        raise ValueError(f"--shape must be positive, got {args.shape}")
    model = _model(args.model)
    macs = mmcv_flops(model, tuple(args.shape))
    print(f"model: {args.model}\ninput shape: {tuple(args.shape)}")
    print(f"params: {count_parameters(model) / 1e6:.1f}M\nflops: {macs / 1e9:.0f}G (mmcv convention: "
          f"module multiply-accumulates; attention matmuls and resizes not counted)")
    return 0
