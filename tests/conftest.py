"""Shared test fixtures.

The golden data made from the authors' code lives outside the repository: ``$IWIN_FIXTURES`` or
``../shared/fixtures`` next to the checkout (CI has it there). Tests that need it skip with a reason
where it is absent (a user's clone); ``.ci/run`` refuses to run without it, so parity always runs in CI.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import iwin_models  # noqa: F401  (registers the timm models)

REPO = Path(__file__).resolve().parents[1]
MINI = dict(embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8))  # the golden models' backbone


def _fixtures_dir() -> Path | None:
    candidates = [os.environ.get("IWIN_FIXTURES"), REPO.parent / "shared" / "fixtures"]
    for c in candidates:
        if c and (Path(c) / "golden").is_dir():
            return Path(c)
    return None


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    path = _fixtures_dir()
    if path is None:
        pytest.skip("golden fixtures not found: set IWIN_FIXTURES or place them at ../shared/fixtures")
    return path


@pytest.fixture(scope="session")
def golden(fixtures_dir):
    """Paths and loaded expectations of the golden mini models."""
    from safetensors.torch import load_file

    g = fixtures_dir / "golden"
    return dict(
        classifier_ckpt=g / "mini_classifier.pth",
        classifier=load_file(g / "mini_classifier_expected.safetensors"),
        upernet_ckpt=g / "mini_upernet.pth",
        upernet=load_file(g / "mini_upernet_expected.safetensors"),
    )


@pytest.fixture(autouse=True)
def _isolated_torch_home(tmp_path_factory, monkeypatch):
    """Every test gets an empty torch.hub cache and no network fallbacks to hubs."""
    home = tmp_path_factory.mktemp("torch_home")
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(torch.hub, "_hub_dir", None, raising=False)
    yield


@pytest.fixture
def one_thread():
    """One intra-op thread for the test: many small ops run faster than with several on a shared CPU, and float32
    reductions do not depend on what else shares the thread pool."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
