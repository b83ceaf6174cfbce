"""``iwin-seg convert``'s folders: each has a model card with the terms of the weights, whose code runs as written
(in the folder, as the cards say) in a fresh interpreter, offline."""
from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import time

import pytest
import torch
from _official import official_upernet_checkpoint, random_state_dict_from_manifest

from iwin_models.apps.cli import main as cli
from iwin_models.models.weights import AUTHORS_TERMS, SEGMENTERS

KINDS = ("smp", "transformers", "timm")
SNIPPET_TIMEOUT = 600


def python_blocks(card: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", card, flags=re.S)


@pytest.fixture(scope="module")
def converted(fixtures_dir, tmp_path_factory) -> dict:
    """The folders ``convert`` writes from official-layout checkpoints (random tensors from the key manifests)."""
    root = tmp_path_factory.mktemp("converted")
    torch.save(official_upernet_checkpoint(fixtures_dir / "keys" / "iwin_tiny_upernet_ade20k.json"), root / "ade.pth")
    imagenet = root / "iwin_tiny_patch4_window7_224.pth"
    torch.save({"model": random_state_dict_from_manifest(fixtures_dir / "keys" / "iwin_tiny_224.json")}, imagenet)
    ade = [str(root / "ade.pth"), "--model", "iwin_tiny_upernet_ade20k"]
    commands = {"smp": ade, "transformers": [*ade, "--format", "transformers"],
                "timm": [str(imagenet), "--model", "iwin_tiny"]}
    if importlib.util.find_spec("transformers") is None:
        del commands["transformers"]
    for kind, args in commands.items():
        assert cli(["convert", *args, "--out", str(root / kind)]) == 0, kind
    return {kind: root / kind for kind in commands}


def folder(converted: dict, kind: str):
    if kind not in converted:
        pytest.skip(f"{kind} is not installed (pip install 'iwin-models[{kind}]')")
    return converted[kind]


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_every_converted_folder_has_a_card_with_the_terms(converted, kind):
    card = (folder(converted, kind) / "README.md").read_text()
    front = card.split("---")[1]
    assert "license: other" in front and f"license_name: {AUTHORS_TERMS.hub_license_name}" in front
    assert f"license_link: {AUTHORS_TERMS.url}" in front
    assert f"{AUTHORS_TERMS.summary}, as stated in [{AUTHORS_TERMS.source}]({AUTHORS_TERMS.url})" in card
    if kind != "timm":
        assert SEGMENTERS["iwin_tiny_upernet_ade20k"].figures() in card
    blocks = python_blocks(card)
    loading = [b for b in blocks if "from_pretrained(" in b or "create_model(" in b or "pipeline(" in b]
    assert loading and all("import iwin_models" in b for b in loading), blocks
    assert "<save-directory-or-this-repo>" not in card  # smp's template placeholder, which could not run


@pytest.mark.slow
def test_transformers_card_says_how_the_processor_differs(converted):
    card = (folder(converted, "transformers") / "README.md").read_text()
    for words in ["short side to 512", "long side at most 2048", "antialiases", "truncated", "no sliding window",
                  "do_reduce_labels", "Its logits equal `IwinUPerNet`'s to"]:
        assert words in card, words
    error = float(re.search(r"Its logits equal `IwinUPerNet`'s to ([0-9.e+-]+) ", card)[1])
    assert 0 < error <= 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_card_snippets_run_as_written(converted, kind, tmp_path):
    """Each python block alone in a fresh interpreter, in the folder (as the card says), offline."""
    where = folder(converted, kind)
    blocks = python_blocks((where / "README.md").read_text())
    assert len(blocks) >= (1 if kind == "timm" else 2)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TORCH_HOME=str(tmp_path / "torch"), HF_HOME=str(tmp_path / "hf"))
    for i, code in enumerate(blocks):
        start = time.perf_counter()
        run = subprocess.run([sys.executable, "-c", code], cwd=where, env=env, capture_output=True, text=True,
                             timeout=SNIPPET_TIMEOUT)
        print(f"\n{kind} card, block {i}: exit {run.returncode} in {time.perf_counter() - start:.1f} s")
        assert run.returncode == 0, f"block {i}:\n{code}\n{run.stderr[-3000:]}"
        if "from_pretrained(" in code or "create_model(" in code or "pipeline(" in code:
            assert run.stdout.strip(), f"block {i} printed nothing"


@pytest.mark.slow
def test_a_direct_save_pretrained_card_runs_as_written(tmp_path):
    """Not only ``convert``'s folders: a model a user fine-tuned and saved has a card whose snippet runs."""
    from conftest import MINI

    from iwin_models.models.upernet import IwinUPerNet

    where = tmp_path / "mine"
    model = IwinUPerNet("iwin_tiny", encoder_kwargs=MINI, decoder_channels=16, aux_channels=0, classes=150)
    model.save_pretrained(where)
    blocks = python_blocks((where / "README.md").read_text())
    assert blocks and all("import iwin_models" in code for code in blocks if "from_pretrained" in code), blocks
    env = dict(os.environ, HF_HUB_OFFLINE="1", TORCH_HOME=str(tmp_path / "torch"), HF_HOME=str(tmp_path / "hf"))
    for code in blocks:
        run = subprocess.run([sys.executable, "-c", code], cwd=where, env=env, capture_output=True, text=True,
                             timeout=SNIPPET_TIMEOUT)
        assert run.returncode == 0, run.stderr[-3000:]
        assert run.stdout.strip() or "from_pretrained" not in code, "the loading block printed nothing"
