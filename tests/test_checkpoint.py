"""Segmenter checkpoint loading (iwin_models/checkpoint.py): mmseg and our layouts, classes, meta, the model's
key map. Damaged and foreign files are in test_bad_inputs.py; the official full-size layouts in
test_segmenter.py."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import MINI

from iwin_models import CheckpointError
from iwin_models.io.checkpoint import torch_hub_checkpoints
from iwin_models.io.locate import hub_repo_id, locate_weights, read_weights
from iwin_models.models.segmenters import load_segmenter_weights
from iwin_models.models.upernet import IwinUPerNet


def _mini(**kwargs) -> IwinUPerNet:
    kwargs = {"classes": 150, "aux_channels": 32, **kwargs}
    return IwinUPerNet("iwin_tiny", encoder_kwargs=MINI, decoder_channels=64, **kwargs)


@pytest.fixture(scope="module")
def official(golden) -> dict:
    """The golden mini UPerNet in the authors' mmseg layout (meta with classes and palette)."""
    return torch.load(golden["upernet_ckpt"], weights_only=True)


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

    import iwin_models.io.checkpoint as checkpoint
    import iwin_models.models.keymaps as convert

    def imports(module) -> set[str]:
        tree = ast.parse(Path(module.__file__).read_text())
        return ({"." * n.level + (n.module or "") for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
                | {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names})

    ours = lambda names: {n for n in names if n.startswith((".", "iwin_models"))}
    assert ours(imports(checkpoint)) == set()
    assert ours(imports(convert)) == {"..io.checkpoint"}


# --- what a user names as weights -> the file (locate_weights, read_weights) -----------------------------

@pytest.mark.parametrize("text, repo", [
    ("owner/name", "owner/name"), ("hf-hub:owner/iwin-t.v2", "owner/iwin-t.v2"), ("owner/x.pth", None),
    ("owner/x.safetensors", None), ("a/b/c", None), ("name", None), ("/abs/x", None), ("owner/..", None),
    ("owner/a--b", None),
])
def test_what_reads_as_a_hub_repository(text, repo):
    assert hub_repo_id(text) == repo


def test_locate_weights_looks_here_then_in_the_torch_hub_cache(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cache = torch_hub_checkpoints()
    cache.mkdir(parents=True)
    torch.save({"a": torch.zeros(1)}, cache / "w.pth")
    assert locate_weights("w.pth").file == cache / "w.pth"  # a bare name: the cache's file
    torch.save({"a": torch.ones(1)}, tmp_path / "w.pth")
    assert locate_weights("w.pth").file == Path("w.pth")  # one here wins
    assert torch.equal(read_weights("w.pth")["a"], torch.ones(1))
    assert locate_weights(f"file://{tmp_path / 'w.pth'}").file == tmp_path / "w.pth"
    with pytest.raises(CheckpointError, match=r"no such checkpoint file: sub/w.pth$"):  # a path: that place only
        locate_weights("sub/w.pth")
    with pytest.raises(CheckpointError) as e:
        locate_weights("other.pth")
    assert f"looked in the current folder, {tmp_path}, and in the torch.hub cache, {cache}" in str(e.value)


def test_a_save_pretrained_folder_reads_with_its_class_names(tmp_path):
    saved = _mini(classes=3, class_names=["sky", "tree", "road"])
    saved.save_pretrained(tmp_path / "f")
    checkpoint = read_weights(tmp_path / "f")
    assert checkpoint["meta"] == {"CLASSES": ["sky", "tree", "road"]}
    assert checkpoint["state_dict"].keys() == saved.state_dict().keys()
    loaded = load_segmenter_weights(_mini(classes=3), tmp_path / "f")  # a Path, as a str
    assert loaded.class_names == ["sky", "tree", "road"]
    assert all(torch.equal(v, saved.state_dict()[k]) for k, v in loaded.state_dict().items())
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="is a directory, not a checkpoint file nor a folder written by"):
        read_weights(tmp_path / "empty")
