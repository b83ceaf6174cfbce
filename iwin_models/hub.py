"""``iwin-seg convert``: turn an official checkpoint into a safetensors folder ready for the Hugging Face hub.

* ADE20K segmenters (mmseg ``.pth``) become an smp ``save_pretrained`` folder (``config.json``,
  ``model.safetensors``, ``README.md`` model card) that ``IwinUPerNet.from_pretrained`` (or
  ``smp.from_pretrained`` after ``import iwin_models``) loads from the folder or a hub repository.
* ImageNet backbones (``{'model': ...}`` ``.pth``) become a timm folder (``config.json`` with the
  architecture and pretrained cfg, ``model.safetensors``) that
  ``timm.create_model('local-dir:<folder>')`` or ``'hf-hub:<org>/<repo>'`` loads.

Upload the folder with ``huggingface-cli upload <org>/<repo> <folder>``.
"""
from __future__ import annotations

from pathlib import Path

__all__ = ["convert_segmenter", "convert_backbone", "add_arguments", "run"]


def convert_segmenter(source: str, name: str, out_dir: str | Path) -> Path:
    """Official ADE20K checkpoint (path or URL) of segmenter ``name`` -> ``save_pretrained`` folder."""
    from .segmenter import create_segmenter, load_segmenter_weights

    model = create_segmenter(name, pretrained=False)
    load_segmenter_weights(model, str(source))
    model.save_pretrained(
        str(out_dir),
        model_card_kwargs=dict(dataset="ADE20K (SceneParsing, 150 classes)"),
    )
    return Path(out_dir)


def convert_backbone(source: str, arch: str, out_dir: str | Path) -> Path:
    """Official ImageNet checkpoint of timm architecture ``arch`` (e.g. ``iwin_tiny``,
    ``iwin_large.in22k``) -> timm hub folder with safetensors weights."""
    import timm
    from timm.models import save_for_hf

    model = timm.create_model(arch, pretrained=True, pretrained_cfg_overlay=dict(file=str(source)))
    save_for_hf(model, str(out_dir), safe_serialization=True)
    return Path(out_dir)


def add_arguments(parser) -> None:
    parser.add_argument("checkpoint", help="official .pth (ADE20K mmseg or ImageNet) file or URL")
    parser.add_argument("--model", required=True,
                        help="segmenter name (iwin_tiny_upernet_ade20k, ...) or timm backbone "
                             "(iwin_tiny, iwin_base.in22k, ...)")
    parser.add_argument("--out", required=True, help="output folder")


def run(args) -> int:
    import timm

    from . import iwin  # noqa: F401  (registers the backbones)
    from .segmenter import SEGMENTERS

    if args.model in SEGMENTERS:
        out = convert_segmenter(args.checkpoint, args.model, args.out)
    elif timm.is_model(args.model.split(".")[0]) and args.model.startswith("iwin"):
        out = convert_backbone(args.checkpoint, args.model, args.out)
    else:
        raise ValueError(f"unknown model {args.model!r}: a segmenter ({', '.join(SEGMENTERS)}) or an iwin_* timm model")
    print(f"wrote {out}: " + ", ".join(sorted(p.name for p in out.iterdir())))
    return 0
