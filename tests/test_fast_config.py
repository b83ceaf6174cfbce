"""The global switches (fast/config.py): which twins a conversion installs."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import REPO

from iwin_models.fast import config
from iwin_models.fast.config import enabled_fast_paths, fast_paths


def test_switches_and_their_context():
    assert enabled_fast_paths() == frozenset(config.FAST_PATHS)
    with fast_paths(False, "onednn_linear"):
        assert config.use_fast_path() and not config.use_fast_path("onednn_linear")
        assert enabled_fast_paths() == frozenset(config.FAST_PATHS) - {"onednn_linear"}
    with fast_paths(False):
        assert not config.use_fast_path() and enabled_fast_paths() == frozenset()
    assert config.use_fast_path("onednn_linear")
    assert enabled_fast_paths(exclude=("chunked",)) == frozenset(config.FAST_PATHS) - {"chunked"}
    with pytest.raises(ValueError, match="unknown fast path 'nope'"):
        config.set_fast_path(False, "nope")
    with pytest.raises(ValueError, match="unknown fast path 'nope'"):
        enabled_fast_paths(exclude=("nope",))


@pytest.mark.slow
@pytest.mark.parametrize("env", ["IWIN_FAST_PATH", "IWIN_ONEDNN_LINEAR"])
def test_environment_variables_switch_fast_paths_off(env):
    code = ("from iwin_models.fast import config; "
            "print(config.use_fast_path(), config.use_fast_path('onednn_linear'), config.use_fast_path('chunked'))")
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, env: "0"}, cwd=REPO,
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == (["False", "False", "False"] if env == "IWIN_FAST_PATH" else ["True", "False", "True"])
