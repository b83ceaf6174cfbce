"""``iwin-seg convert``: an official checkpoint -> a safetensors folder ready for the Hugging Face hub.

ADE20K segmenters become an smp ``save_pretrained`` folder (``--format smp``, the default) or a transformers
UperNet folder (``--format transformers``), ImageNet backbones a timm folder (see :mod:`iwin_models.interop.hub`). Every
folder has a model card. Upload the folder with ``huggingface-cli upload <org>/<repo> <folder>``.
"""
from __future__ import annotations

from .common import check_dependencies


def add_arguments(parser) -> None:
    parser.add_argument("checkpoint", help="official .pth (ADE20K mmseg or ImageNet) file or URL")
    parser.add_argument("--model", required=True,
                        help="segmenter name (iwin_tiny_upernet_ade20k, ...) or timm backbone "
                             "(iwin_tiny, iwin_base.in22k, ...)")
    parser.add_argument("--format", choices=("smp", "transformers", "timm"), default=None,
                        help="smp (a segmenter's default) or transformers (UperNetForSemanticSegmentation; needs "
                             "iwin-models[transformers]) for a segmenter; timm for a backbone (its only format)")
    parser.add_argument("--out", required=True, help="output folder")


def _format(args, segmenter: bool) -> str:
    """The format, checked against the model (and its extra installed) before any work."""
    fmt = args.format or ("smp" if segmenter else "timm")
    if segmenter and fmt == "timm" or not segmenter and fmt != "timm":
        kind = "a segmenter converts to smp or transformers" if segmenter else "a backbone converts to timm only"
        raise ValueError(f"--format {fmt} does not fit --model {args.model}: {kind}")
    if fmt == "transformers":
        from ...interop.hf_transformers import require_transformers

        check_dependencies(require_transformers)
    return fmt


def run(args) -> int:
    import timm

    from ...interop.hub import convert_backbone, convert_segmenter
    from ...models import iwin  # noqa: F401  (registers the backbones with timm)
    from ...models.weights import SEGMENTERS

    segmenter = args.model in SEGMENTERS
    if not segmenter and not (timm.is_model(args.model.split(".")[0]) and args.model.startswith("iwin")):
        raise ValueError(f"unknown model {args.model!r}: a segmenter ({', '.join(SEGMENTERS)}) or an iwin_* timm model")
    fmt = _format(args, segmenter)
    if segmenter:
        out = convert_segmenter(args.checkpoint, args.model, args.out, format=fmt)
    else:
        out = convert_backbone(args.checkpoint, args.model, args.out)
    print(f"wrote {out}: " + ", ".join(sorted(p.name for p in out.iterdir())))
    return 0
