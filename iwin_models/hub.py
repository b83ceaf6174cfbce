"""Turn an official checkpoint into a safetensors folder ready for the Hugging Face hub (``iwin-seg convert``).

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

__all__ = ["convert_segmenter", "convert_backbone"]


def convert_segmenter(source: str, name: str, out_dir: str | Path) -> Path:
    """Official ADE20K checkpoint (path or URL) of segmenter ``name`` -> ``save_pretrained`` folder."""
    from .segmenter import create_segmenter, load_segmenter_weights, model_card_kwargs

    model = create_segmenter(name, pretrained=False)
    load_segmenter_weights(model, str(source))
    model.save_pretrained(str(out_dir), model_card_kwargs=model_card_kwargs(name))  # the registry's card
    return Path(out_dir)


def convert_backbone(source: str, arch: str, out_dir: str | Path) -> Path:
    """Official ImageNet checkpoint of timm architecture ``arch`` (e.g. ``iwin_tiny``,
    ``iwin_large.in22k``) -> timm hub folder with safetensors weights."""
    import timm
    from timm.models import save_for_hf

    model = timm.create_model(arch, pretrained=True, pretrained_cfg_overlay=dict(file=str(source)))
    save_for_hf(model, str(out_dir), safe_serialization=True)
    return Path(out_dir)
