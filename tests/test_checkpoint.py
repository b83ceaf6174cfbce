"""Segmenter checkpoint loading (iwin_models/checkpoint.py): mmseg and our layouts, classes, meta, the model's
key map. Damaged and foreign files are in test_bad_inputs.py; the official full-size layouts in
test_segmenter.py."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import MINI

from iwin_models import CheckpointError
from iwin_models.checkpoint import load_segmenter_weights
from iwin_models.segmenter import IwinUPerNet


def _mini(**kwargs) -> IwinUPerNet:
    kwargs = {"classes": 150, "aux_channels": 32, **kwargs}
    return IwinUPerNet("iwin_tiny", encoder_kwargs=MINI, decoder_channels=64, **kwargs)


@pytest.fixture(scope="module")
def official(golden) -> dict:
    """The golden mini UPerNet in the authors' mmseg layout (meta with classes and palette)."""
    return torch.load(golden["upernet_ckpt"], weights_only=True)


def test_the_old_import_is_the_same_function():
    import iwin_models.segmenter as segmenter

    assert segmenter.load_segmenter_weights is load_segmenter_weights


def test_mmseg_and_our_layouts_load_the_same_tensors(official, tmp_path):
    from safetensors.torch import save_file

    from_mmseg = load_segmenter_weights(_mini(), official)
    assert from_mmseg.class_names == list(official["meta"]["CLASSES"])
    sd = from_mmseg.state_dict()
    fusion = official["state_dict"]["decode_head.fpn_bottleneck.conv.weight"]
    assert torch.equal(sd["decoder.fusion_block.0.weight"], fusion)
    ours = {"state_dict": sd, "meta": {"CLASSES": official["meta"]["CLASSES"]}}
    save_file(sd, tmp_path / "ours.safetensors")
    for source in (ours, sd, str(tmp_path / "ours.safetensors")):
        loaded = load_segmenter_weights(_mini(), source).state_dict()
        assert loaded.keys() == sd.keys()
        assert all(torch.equal(loaded[k], v) for k, v in sd.items())


def test_the_model_maps_the_keys_through_its_checkpoint_filter_fn(official):
    """checkpoint.py knows no model class: the layout conversion is the model's (timm's hook name)."""
    seen = []

    class Recording(IwinUPerNet):
        @staticmethod
        def checkpoint_filter_fn(state_dict):
            seen.append(sorted(state_dict)[0])
            return IwinUPerNet.checkpoint_filter_fn(state_dict)

    load_segmenter_weights(Recording("iwin_tiny", encoder_kwargs=MINI, decoder_channels=64, aux_channels=32),
                           official)
    assert seen == [sorted(official["state_dict"])[0]]
    with pytest.raises(CheckpointError, match="neither mmseg keys"):
        IwinUPerNet.checkpoint_filter_fn({"foo.weight": torch.zeros(1)})


def test_other_classes_keep_the_body_and_drop_the_meta(official):
    with pytest.warns(UserWarning, match="150 classes and the model 7"):
        model = load_segmenter_weights(_mini(classes=7), official)
    assert model.class_names is None and model.segmentation_head.conv_seg.out_channels == 7
    without_aux = load_segmenter_weights(_mini(aux_channels=0), official)
    assert without_aux.auxiliary_head is None
    assert not any(k.startswith("auxiliary_head.") for k in without_aux.state_dict())


def test_key_maps_and_checkpoint_reading_import_no_model_module():
    """checkpoint.py reads files, convert.py maps names; neither imports a model module, so the
    model modules can import both without a cycle (static or at run time: function-level imports count)."""
    import ast

    import iwin_models.checkpoint as checkpoint
    import iwin_models.convert as convert

    def imports(module) -> set[str]:
        tree = ast.parse(Path(module.__file__).read_text())
        return ({"." * n.level + (n.module or "") for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
                | {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names})

    ours = lambda names: {n for n in names if n.startswith((".", "iwin_models"))}
    assert ours(imports(checkpoint)) == set()
    assert ours(imports(convert)) == {".checkpoint"}
