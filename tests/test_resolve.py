"""The one model resolver (``iwin_models.models.segmenters.load_segmenter``): the same things in Python and the CLI (a
registered name, a weights file, the bare name of a file in the torch.hub cache, a ``save_pretrained`` folder, a
Hugging Face hub repository through the offline cache), and the direction the weights travel.

The registered Iwin-T is shrunk to the golden mini backbone (``mini_registry``) so that the real factory, the
real files and the real commands run in seconds."""
from __future__ import annotations

import ast
import dataclasses
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import MINI, REPO
from PIL import Image

import iwin_models.models.segmenters as segmenter
from iwin_models.apps import cli
from iwin_models.apps.cli.common import resolve_model
from iwin_models.io.checkpoint import CheckpointError, torch_hub_checkpoints
from iwin_models.io.locate import locate_weights
from iwin_models.models.segmenters import load_segmenter
from iwin_models.models.upernet import IwinUPerNet
from iwin_models.models.weights import SEGMENTERS

TINY, SMALL = "iwin_tiny_upernet_ade20k", "iwin_small_upernet_ade20k"
OFFICIAL = SEGMENTERS[TINY].file_name  # iwin_tiny_patch4_window7_512_ade20k_1k.pth
REPO_ID = "someone/iwin-mini"


@pytest.fixture
def mini_registry(monkeypatch):
    """``iwin_tiny_upernet_ade20k`` built with the mini backbone and a 32-channel decoder (same code path)."""
    monkeypatch.setitem(SEGMENTERS, TINY, dataclasses.replace(SEGMENTERS[TINY], encoder_kwargs=dict(MINI)))
    real = segmenter.create_segmenter
    monkeypatch.setattr(segmenter, "create_segmenter",
                        lambda name, *args, **kwargs: real(name, *args, **{"decoder_channels": 32, **kwargs}))


def _registered_mini(seed: int, classes: int = 150) -> IwinUPerNet:
    torch.manual_seed(seed)
    return segmenter.create_segmenter(TINY, pretrained=False, num_classes=classes).eval()


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture
def cached_official(mini_registry) -> IwinUPerNet:
    """A stand-in for the official Iwin-T file where the first ``iwin-seg predict`` downloads it."""
    model = _registered_mini(1)
    torch_hub_checkpoints().mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": model.state_dict()}, torch_hub_checkpoints() / OFFICIAL)
    return model


@pytest.fixture
def folder(mini_registry, tmp_path) -> tuple[Path, IwinUPerNet]:
    """A save_pretrained folder of the (mini) registered architecture, with its own class names. The tests call
    ``segmenter.create_segmenter``: the factory itself, given the mini decoder width by ``mini_registry``."""
    model = _registered_mini(2, classes=4)
    model.set_class_info(["sky", "tree", "road", "car"], [(1, 1, 1), (2, 2, 2), (3, 3, 3), (4, 4, 4)])
    model.save_pretrained(tmp_path / "converted")
    return tmp_path / "converted", model


def _image(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (24, 40, 3), dtype=np.uint8)).save(path)
    return path


def _one_line(err: str, command: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"iwin-seg {command}: error: "), err
    return lines[0]


# --- point 2: the official file name, where the download lands -----------------------------------------

def test_a_bare_official_file_name_is_taken_from_the_torch_hub_cache(cached_official, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the README's commands, run where the file is not
    assert not Path(OFFICIAL).exists()
    assert locate_weights(OFFICIAL).file == torch_hub_checkpoints() / OFFICIAL
    assert _same(load_segmenter(TINY, OFFICIAL), cached_official)
    assert _same(segmenter.create_segmenter(TINY, weights=OFFICIAL), cached_official)  # Python weights=
    assert _same(load_segmenter(OFFICIAL), cached_official)  # the file name alone: its registered segmenter
    local = _registered_mini(5)
    torch.save(local.state_dict(), OFFICIAL)  # a file of that name here wins over the cache
    assert _same(load_segmenter(TINY, OFFICIAL), local)


def test_predict_with_the_readme_weights_argument(cached_official, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _image(tmp_path / "photo.jpg")
    assert cli.main(["predict", "photo.jpg", "--weights", OFFICIAL, "--scale", "64", "32", "--no-progress"]) == 0
    assert Path("iwin_seg_out/photo_labels.png").is_file() and Path("iwin_seg_out/photo_overlay.png").is_file()


def test_a_missing_file_name_error_names_both_places(mini_registry, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError) as e:
        load_segmenter(TINY, OFFICIAL)
    message = str(e.value)
    assert f"no such checkpoint file: {OFFICIAL}" in message
    assert str(tmp_path) in message and str(torch_hub_checkpoints()) in message
    _image(tmp_path / "photo.jpg")
    assert cli.main(["predict", "photo.jpg", "--weights", OFFICIAL, "--no-progress"]) == 2
    line = _one_line(capsys.readouterr().err, "predict")
    assert "current folder" in line and str(torch_hub_checkpoints()) in line


def test_a_path_with_folders_is_not_looked_for_in_the_cache(cached_official, tmp_path):
    with pytest.raises(CheckpointError, match=f"no such checkpoint file: {tmp_path / OFFICIAL}$"):
        load_segmenter(TINY, tmp_path / OFFICIAL)


def test_the_official_file_of_another_segmenter_is_refused_before_building(mini_registry, tmp_path, monkeypatch):
    small = tmp_path / SEGMENTERS[SMALL].file_name
    torch.save({"state_dict": {}}, small)
    built = []
    monkeypatch.setattr(segmenter, "create_segmenter", lambda *a, **k: built.append(a))
    with pytest.raises(ValueError, match=f"official checkpoint of {SMALL}, not of {TINY}: ask for {SMALL}"):
        load_segmenter(TINY, small)
    assert built == []


# --- point 4: the same things in Python and the CLI --------------------------------------------------------

def test_a_folder_as_weights_in_python_as_in_the_cli(folder, tmp_path, capsys):
    path, saved = folder
    python = segmenter.create_segmenter(TINY, weights=path, num_classes=4)  # was: "is a directory, not a checkpoint"
    assert _same(python, saved) and python.class_names == ["sky", "tree", "road", "car"]
    assert _same(load_segmenter(path), saved) and _same(load_segmenter(TINY, path), saved)
    assert load_segmenter(path).class_names == ["sky", "tree", "road", "car"]
    _image(tmp_path / "x.png")
    out = tmp_path / "out"
    assert cli.main(["predict", str(tmp_path / "x.png"), "--weights", str(path), "--out", str(out),
                     "--scale", "64", "32", "--no-progress"]) == 0
    assert np.asarray(Image.open(out / "x_labels.png")).max() < 4


def _fill_hf_cache(cache: Path, repo: str, folder: Path) -> None:
    """What ``hf_hub_download`` leaves after downloading ``repo`` (refs/main -> a snapshot holding the files)."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    root = cache / f"models--{repo.replace('/', '--')}"
    (root / "snapshots" / commit).mkdir(parents=True)
    for f in folder.iterdir():
        shutil.copy(f, root / "snapshots" / commit / f.name)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(commit)


@pytest.fixture
def hf_cache(tmp_path, monkeypatch) -> Path:
    """An offline Hugging Face cache (huggingface_hub reads HF_HUB_OFFLINE / HF_HUB_CACHE once, at import)."""
    from huggingface_hub import constants

    cache = tmp_path / "hf"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


@pytest.mark.slow
def test_a_hub_repository_from_the_offline_cache_in_python_and_the_cli(folder, hf_cache, tmp_path, capsys):
    path, saved = folder
    _fill_hf_cache(hf_cache, REPO_ID, path)
    assert _same(load_segmenter(REPO_ID), saved) and _same(load_segmenter(f"hf-hub:{REPO_ID}"), saved)
    assert _same(load_segmenter(TINY, REPO_ID), saved)  # as weights: the repository brings its architecture
    assert _same(segmenter.create_segmenter(TINY, weights=REPO_ID, num_classes=4), saved)
    assert _same(IwinUPerNet.from_pretrained(REPO_ID), saved)  # what smp's own loader gives
    _image(tmp_path / "x.png")
    for option in ("--model", "--weights"):  # today --model: "unknown model"
        out = tmp_path / f"out{option}"
        assert cli.main(["predict", str(tmp_path / "x.png"), option, REPO_ID, "--out", str(out), "--scale", "64",
                         "32", "--no-progress"]) == 0
        assert (out / "x_labels.png").is_file()


def test_a_repository_missing_from_the_offline_cache_is_a_clear_error(hf_cache, capsys):
    with pytest.raises(ValueError, match="unknown model 'someone/absent'.*not in the cache .*HF_HUB_OFFLINE is set"):
        load_segmenter("someone/absent")
    assert cli.main(["export", "--model", "someone/absent", "--program", "x.pt2"]) == 2
    assert "HF_HUB_OFFLINE is set" in _one_line(capsys.readouterr().err, "export")


@pytest.mark.slow
def test_the_cli_with_hf_hub_offline_in_a_fresh_interpreter(folder, tmp_path):
    """The environment variable itself (read by huggingface_hub at import), as a user sets it."""
    path, _ = folder
    _fill_hf_cache(tmp_path / "hf", REPO_ID, path)
    _image(tmp_path / "x.png")
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(tmp_path / "hf"), PYTHONPATH=str(REPO),
               OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "iwin_models.apps.cli", "predict", str(tmp_path / "x.png"), "--model",
                           REPO_ID, "--out", str(tmp_path / "out"), "--scale", "64", "32", "--no-progress"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out" / "x_labels.png").is_file()


@pytest.mark.parametrize("config, fragment", [
    ({"architecture": "iwin_tiny", "num_classes": 1000}, "timm backbone (iwin_tiny)"),
    ({"model_type": "upernet"}, "transformers model (upernet)"),
    ({"_model_class": "Unet", "encoder_name": "tu-iwin_tiny"}, "smp Unet"),
])
def test_a_folder_of_something_else_is_named(mini_registry, tmp_path, config, fragment):
    import json

    from safetensors.torch import save_file

    (tmp_path / "f").mkdir()
    (tmp_path / "f" / "config.json").write_text(json.dumps(config))
    save_file({"w": torch.zeros(1)}, tmp_path / "f" / "model.safetensors")
    with pytest.raises(CheckpointError, match=f"is not an IwinUPerNet segmenter: .*{re.escape(fragment)}"):
        load_segmenter(tmp_path / "f")


def test_a_weights_file_alone_does_not_say_which_architecture(tmp_path):
    torch.save({"state_dict": {}}, tmp_path / "mine.pth")
    with pytest.raises(ValueError, match="unknown model .*does not say which architecture"):
        load_segmenter(tmp_path / "mine.pth")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="unknown model .*is a directory"):
        load_segmenter(tmp_path / "empty")


# --- the direction: command -> resolver -> checkpoint / segmenter -----------------------------------------

def test_the_weights_go_from_the_resolver_to_the_checkpoint_reader_not_through_the_factory(
        mini_registry, tmp_path, monkeypatch):
    import iwin_models.models.segmenters as resolve

    model = _registered_mini(3)
    torch.save(model.state_dict(), tmp_path / "tuned.pth")
    factory, read = [], []
    real_create, real_read = segmenter.create_segmenter, resolve.read_weights
    monkeypatch.setattr(segmenter, "create_segmenter", lambda *a, **k: factory.append(k) or real_create(*a, **k))
    monkeypatch.setattr(resolve, "read_weights", lambda source: read.append(source) or real_read(source))
    assert _same(resolve_model(TINY, str(tmp_path / "tuned.pth")), model)  # what --model/--weights do
    assert factory == [dict(pretrained=False)]  # the factory builds the architecture only
    assert [Path(r.file) for r in read] == [tmp_path / "tuned.pth"]


def _calls(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            for node in ast.walk(tree) if isinstance(node, ast.Call)}


def test_the_commands_only_call_the_resolver():
    loaders = {"create_segmenter", "from_pretrained", "load_segmenter_weights", "read_checkpoint", "read_weights",
               "locate_weights", "load_url"}
    for command in ("common", "predict", "eval", "export", "train", "demo"):
        used = _calls(REPO / "iwin_models" / "apps" / "cli" / f"{command}.py") & loaders
        assert not used, f"cli/{command}.py calls {used}: the resolver (iwin_models.models.segmenters) does that"
    assert "load_segmenter" in _calls(REPO / "iwin_models" / "apps" / "cli" / "common.py")


def test_a_bare_backbone_file_name_is_taken_from_the_torch_hub_cache(mini_registry, tmp_path, monkeypatch):
    """``train --pretrained iwin_tiny_patch4_window7_224.pth`` finds it where ``--weights`` would (no folder of it)."""
    import timm

    torch.manual_seed(3)
    backbone = timm.create_model("iwin_tiny", **MINI)
    torch_hub_checkpoints().mkdir(parents=True, exist_ok=True)
    torch.save({"model": backbone.state_dict()}, torch_hub_checkpoints() / "my_in1k.pth")
    monkeypatch.chdir(tmp_path)  # not in the current folder
    model = load_segmenter(TINY, start="imagenet", encoder_pretrained="my_in1k.pth")
    got = {k.removeprefix("model.model."): v for k, v in model.encoder.state_dict().items()}
    shared = [k for k in backbone.state_dict() if k in got]  # the classifier head is not in the encoder
    assert len(shared) > 20 and "patch_embed.proj.weight" in shared
    assert all(torch.equal(got[k], backbone.state_dict()[k]) for k in shared)
    with pytest.raises(CheckpointError, match="nowhere.pth"):
        load_segmenter(TINY, start="imagenet", encoder_pretrained="nowhere.pth")
