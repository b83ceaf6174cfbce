"""Checkpoints in the authors' exact layouts, built from the key manifests with random tensors.

The official files cannot be downloaded here; these stand in for them in the loading tests.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch


def random_state_dict_from_manifest(manifest: Path, seed: int = 0) -> dict[str, torch.Tensor]:
    keys = json.loads(Path(manifest).read_text())["keys"]
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name, (shape, dtype) in keys.items():
        if dtype == "int64":
            sd[name] = torch.tensor(160000, dtype=torch.int64).reshape(shape)
        elif name.endswith("running_var"):
            sd[name] = torch.rand(shape, generator=g) + 0.5
        elif name.endswith(("bn.weight", "norm.weight")) or ".norm" in name and name.endswith("weight"):
            sd[name] = 1 + 0.1 * torch.randn(shape, generator=g)
        else:
            fan_in = max(1, int(torch.tensor(shape[1:]).prod())) if len(shape) > 1 else 1
            sd[name] = torch.randn(shape, generator=g) * (0.1 if len(shape) == 1 else fan_in ** -0.5)
    return sd


def official_upernet_checkpoint(manifest: Path, seed: int = 0, classes=None, palette=None) -> dict:
    """mmseg 0.x layout: ``{'meta': {...}, 'state_dict': ...}``."""
    from iwin_models.data import ade20k

    meta = dict(CLASSES=tuple(classes or ade20k.CLASSES), PALETTE=[list(c) for c in (palette or ade20k.PALETTE)],
                mmseg_version="0.11.0", iter=160000)
    return dict(meta=meta, state_dict=random_state_dict_from_manifest(manifest, seed))
