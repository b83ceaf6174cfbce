"""``iwin-seg convert``: an official checkpoint -> a safetensors folder ready for the Hugging Face hub.

ADE20K segmenters become an smp ``save_pretrained`` folder, ImageNet backbones a timm folder (see
:mod:`iwin_models.hub`). Upload the folder with ``huggingface-cli upload <org>/<repo> <folder>``.
"""
from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("checkpoint", help="official .pth (ADE20K mmseg or ImageNet) file or URL")
    parser.add_argument("--model", required=True,
                        help="segmenter name (iwin_tiny_upernet_ade20k, ...) or timm backbone "
                             "(iwin_tiny, iwin_base.in22k, ...)")
    parser.add_argument("--out", required=True, help="output folder")


def run(args) -> int:
    import timm

    from .. import iwin  # noqa: F401  (registers the backbones with timm)
    from ..hub import convert_backbone, convert_segmenter
    from ..segmenter import SEGMENTERS

    if args.model in SEGMENTERS:
        out = convert_segmenter(args.checkpoint, args.model, args.out)
    elif timm.is_model(args.model.split(".")[0]) and args.model.startswith("iwin"):
        out = convert_backbone(args.checkpoint, args.model, args.out)
    else:
        raise ValueError(f"unknown model {args.model!r}: a segmenter ({', '.join(SEGMENTERS)}) or an iwin_* timm model")
    print(f"wrote {out}: " + ", ".join(sorted(p.name for p in out.iterdir())))
    return 0
