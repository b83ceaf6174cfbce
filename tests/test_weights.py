"""The weights registry (iwin_models/weights.py): what is said about each released segmenter, as data."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from conftest import REPO

from iwin_models.data import ade20k
from iwin_models.models.weights import (
    ADE20K_PROTOCOL,
    SEGMENTERS,
    EvalProtocol,
    model_card_kwargs,
    registered,
    segmenter_table,
)

_RELEASE = "https://github.com/Cominder/Iwin-Transformer/releases/download/v1.0/"
# ../shared/spec/iwin-reference.md: release files, ADE20K heads, published params / FLOPs / mIoU
PUBLISHED = {
    "iwin_tiny_upernet_ade20k": ("iwin_tiny_patch4_window7_512_ade20k_1k.pth", (3, 6, 12, 24), 61.9, 946, 44.70),
    "iwin_small_upernet_ade20k": ("iwin_small_patch4_window7_512_ade20k_1k.pth", (3, 6, 12, 24), 83.2, 1038, 47.50),
    "iwin_base_upernet_ade20k": ("iwin_base_patch4_window7_512_ade20k_1k.pth", (4, 8, 16, 32), 124.8, 1189, 48.90),
}


def test_registry_holds_the_release_and_the_published_figures():
    import iwin_models.models.weights as weights_module

    source = Path(weights_module.__file__).read_text()
    assert list(SEGMENTERS) == list(PUBLISHED)
    for name, (file, heads, params, flops, miou) in PUBLISHED.items():
        weights = SEGMENTERS[name]
        assert weights.name == name and weights.url == _RELEASE + file
        assert f'url="{weights.url}"' in source  # written out literally, as timm's cfgs are
        assert (weights.heads, weights.params_m, weights.flops_g, weights.miou) == (heads, params, flops, miou)
        assert weights.flops_input == (3, 512, 2048)
        assert weights.file_name == file and weights.num_classes == 150
        assert weights.class_names == ade20k.CLASSES and weights.palette == ade20k.PALETTE
        assert weights.terms.summary == "MIT for research use; commercial use by agreement with the authors"
        assert weights.terms.hub_license == "other"  # not plain MIT


def test_the_registry_has_one_home():
    """The registry lives in models/weights.py only; the factory module uses it without re-exporting it."""
    import iwin_models.models.segmenters as segmenter
    import iwin_models.models.weights as weights

    names = ("EvalProtocol", "WeightsTerms", "SegmenterWeights", "AUTHORS_TERMS", "ADE20K_PROTOCOL",
             "segmenter_table", "model_card_kwargs")
    assert set(names) <= set(weights.__all__)
    assert not any(name in segmenter.__all__ for name in names)


@pytest.mark.parametrize("name", list(SEGMENTERS))
def test_registry_builds_the_published_models(name):
    """Heads and parameter count of the model built from each entry (on the meta device: no memory)."""
    from iwin_models.models.segmenters import create_segmenter

    with torch.device("meta"):
        model = create_segmenter(name, pretrained=False)
    heads = tuple(stage.blocks[0].attn.num_heads for stage in model.backbone.layers)
    assert heads == SEGMENTERS[name].heads  # the ADE20K Iwin-S uses 3,6,12,24, the ImageNet one 3,4,8,16
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 1) == SEGMENTERS[name].params_m
    assert model.class_names == list(ade20k.CLASSES)


def test_the_protocol_is_mmsegs_ade20k_test_pipeline():
    """The values of the authors' mmseg config (spec: "ADE20K data and evaluation protocol")."""
    assert ADE20K_PROTOCOL == EvalProtocol()
    assert ADE20K_PROTOCOL.scale == (2048, 512)
    assert (ADE20K_PROTOCOL.slide_crop, ADE20K_PROTOCOL.slide_stride) == (512, 341)
    assert ADE20K_PROTOCOL.aug_ratios == (0.5, 0.75, 1.0, 1.25, 1.5, 1.75) and ADE20K_PROTOCOL.aug_flip
    assert (ADE20K_PROTOCOL.mean, ADE20K_PROTOCOL.std) == (ade20k.MEAN, ade20k.STD)
    assert all(w.protocol is ADE20K_PROTOCOL for w in SEGMENTERS.values())
    with pytest.raises(dataclasses.FrozenInstanceError):
        ADE20K_PROTOCOL.scale = (1024, 256)
    described = ADE20K_PROTOCOL.describe()
    assert "2048x512" in described and "512 crops at stride 341" in described and "1.75 + flip" in described


def test_registry_protocol_is_the_one_inference_runs():
    """As torchvision's ``Weights.transforms``: inference takes its test protocol from the registry."""
    import inspect

    from iwin_models.engine import inference

    defaults = {name: inspect.signature(fn).parameters["protocol"].default
                for name, fn in vars(inference).items()
                if callable(fn) and not name.startswith("_") and getattr(fn, "__module__", "") == inference.__name__
                and "protocol" in inspect.signature(fn).parameters}
    assert {"segment", "predict_probs"} <= defaults.keys(), sorted(defaults)
    assert all(default is ADE20K_PROTOCOL for default in defaults.values()), defaults


def test_readme_table_is_the_registry_table():
    table = segmenter_table()
    assert table in (REPO / "README.md").read_text(), "README.md: paste segmenter_table() over the old table"
    for weights in SEGMENTERS.values():
        assert weights.table_row() in table
    assert SEGMENTERS["iwin_tiny_upernet_ade20k"].terms.summary in table


def test_docstring_and_card_text_carry_the_figures():
    weights = SEGMENTERS["iwin_base_upernet_ade20k"]
    for text in (weights.docstring(), weights.card_section()):
        for figure in ("48.90 mIoU", "124.8M params", "1189G FLOPs", "4,8,16,32", weights.url, weights.terms.summary):
            assert figure in text, figure
    metrics = weights.card_metrics()["metrics"]
    assert sorted(metrics.values()) == [48.9, 124.8, 1189]


def test_unknown_names_are_refused_with_the_choices():
    with pytest.raises(ValueError, match="unknown segmenter 'iwin_huge_upernet_ade20k'.*iwin_tiny_upernet_ade20k"):
        registered("iwin_huge_upernet_ade20k")
    with pytest.raises(ValueError, match="unknown segmenter"):
        model_card_kwargs("iwin_huge_upernet_ade20k")
    assert model_card_kwargs("iwin_tiny_upernet_ade20k") == {"segmenter": "iwin_tiny_upernet_ade20k"}
