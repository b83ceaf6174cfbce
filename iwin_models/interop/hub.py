"""Turn an official checkpoint into a safetensors folder ready for the Hugging Face hub (``iwin-seg convert``).

* ADE20K segmenters (mmseg ``.pth``) become an smp ``save_pretrained`` folder (``config.json``,
  ``model.safetensors``, ``README.md`` model card) that ``IwinUPerNet.from_pretrained`` (or
  ``smp.from_pretrained`` after ``import iwin_models``) loads from the folder or a hub repository; or, with
  ``format="transformers"``, a transformers UperNet folder (:mod:`iwin_models.interop.hf_transformers`).
* ImageNet backbones (``{'model': ...}`` ``.pth``) become a timm folder (``config.json`` with the
  architecture and pretrained cfg, ``model.safetensors``, ``README.md``) that
  ``timm.create_model('local-dir:<folder>')`` or ``'hf-hub:<org>/<repo>'`` loads.

Every folder has a model card whose code runs as written in the folder, and says the terms of the weights.
Upload the folder with ``huggingface-cli upload <org>/<repo> <folder>``.
"""
from __future__ import annotations

import os
from pathlib import Path

from huggingface_hub import ModelCardData

from ..io.files import write_atomic
from ..models.upernet.card import CARD_RUN_HERE
from ..models.weights import AUTHORS_TERMS, WeightsTerms

__all__ = ["FORMATS", "convert_segmenter", "convert_backbone"]

FORMATS = ("smp", "transformers")  # what a segmenter converts to (a backbone: timm)

def convert_segmenter(source: str | os.PathLike | dict, name: str, out_dir: str | Path, format: str = "smp") -> Path:
    """Official ADE20K checkpoint (path, URL or loaded) of segmenter ``name`` -> a ``save_pretrained`` folder
    (``format="smp"``) or a transformers UperNet folder (``format="transformers"``)."""
    if format not in FORMATS:
        raise ValueError(f"unknown format {format!r}: one of {', '.join(FORMATS)}")
    if format == "transformers":
        from .hf_transformers import require_transformers, save_transformers

        require_transformers()  # before reading the checkpoint
    from ..models.segmenters import create_segmenter
    from ..models.weights import model_card_kwargs

    loaded = isinstance(source, dict)
    model = create_segmenter(name, pretrained=False, weights=source if loaded else str(source))
    if format == "transformers":
        return save_transformers(model.eval(), out_dir, segmenter=name, source=None if loaded else str(source))
    model.save_pretrained(str(out_dir), model_card_kwargs=model_card_kwargs(name))  # the registry's card
    return Path(out_dir)


def convert_backbone(source: str, arch: str, out_dir: str | Path) -> Path:
    """Official ImageNet checkpoint of timm architecture ``arch`` (e.g. ``iwin_tiny``,
    ``iwin_large.in22k``) -> timm hub folder with safetensors weights and a model card."""
    import timm
    from timm.models import save_for_hf

    from ..io.locate import locate_weights

    file = locate_weights(source).file  # a path, URL, or the bare name of a download in the torch.hub cache
    model = timm.create_model(arch, pretrained=True, pretrained_cfg_overlay=dict(file=str(file)))
    save_for_hf(model, str(out_dir), safe_serialization=True)
    card = _backbone_card(arch, model.pretrained_cfg, Path(source).name, AUTHORS_TERMS)
    write_atomic(Path(out_dir) / "README.md", lambda tmp: Path(tmp).write_text(card))
    return Path(out_dir)


def _backbone_card(arch: str, cfg: dict, source: str, terms: WeightsTerms) -> str:
    """The timm folder's README.md: usage, source and the terms of the weights."""
    data = ModelCardData(library_name="timm", pipeline_tag="image-classification", tags=["iwin", "timm"],
                         license=terms.hub_license, license_name=terms.hub_license_name, license_link=terms.url)
    c, h, w = cfg["input_size"]
    official = f" ([official file]({cfg['url']}))" if cfg.get("url") else ""
    return f"""---
{data.to_yaml()}
---
# {arch} for timm

The authors' ImageNet weights `{source}`{official} in timm's names: {cfg["num_classes"]} classes, input {c}x{h}x{w}.
Paper: [arXiv 2507.18405](https://arxiv.org/abs/2507.18405); authors' code:
[Cominder/Iwin-Transformer](https://github.com/Cominder/Iwin-Transformer).

## Usage

{CARD_RUN_HERE}

```python
import timm
import torch
from PIL import Image
from timm.data import create_transform, resolve_data_config

import iwin_models  # noqa: F401  (registers the Iwin architectures with timm)
from iwin_models.data import SAMPLE_IMAGE

model = timm.create_model("local-dir:.", pretrained=True).eval()  # from the hub: "hf-hub:<org>/<repo>"
transform = create_transform(**resolve_data_config(model=model))
with torch.no_grad():
    probs = model(transform(Image.open(SAMPLE_IMAGE).convert("RGB")).unsqueeze(0)).softmax(-1)
print(probs.topk(5))
```

## Terms of the weights

{terms.summary}, as stated in [{terms.source}]({terms.url}).
"""
