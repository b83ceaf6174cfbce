"""The global switches (layers/config.py): which twins a conversion installs, and the export context."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import REPO

from iwin_models.layers import config
from iwin_models.layers.config import dynamic_tracing, enabled_fast_paths, fast_paths, is_dynamic_tracing


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


@pytest.mark.parametrize("env", ["IWIN_FAST_PATH", "IWIN_ONEDNN_LINEAR"])
def test_environment_variables_switch_fast_paths_off(env):
    code = ("from iwin_models.layers import config; "
            "print(config.use_fast_path(), config.use_fast_path('onednn_linear'), config.use_fast_path('chunked'))")
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, env: "0"}, cwd=REPO,
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == (["False", "False", "False"] if env == "IWIN_FAST_PATH" else ["True", "False", "True"])


def test_dynamic_tracing_is_a_context_and_sets_size_oblivious_tracing():
    from torch.fx.experimental import _config as shapes_config

    assert not is_dynamic_tracing() and not shapes_config.backed_size_oblivious
    with dynamic_tracing():
        assert is_dynamic_tracing() and shapes_config.backed_size_oblivious
        with dynamic_tracing(False):  # a no-op: the outer context stays
            assert is_dynamic_tracing()
    assert not is_dynamic_tracing() and not shapes_config.backed_size_oblivious
    with pytest.raises(KeyError), dynamic_tracing():
        raise KeyError("the flag is reset on the way out of an error")
    assert not is_dynamic_tracing()


def test_size_oblivious_tracing_says_where_torch_moved_it(monkeypatch):
    """The one use of torch's private shapes config fails with a clear message when torch renames it."""
    from torch.fx.experimental import _config as shapes_config

    monkeypatch.delattr(shapes_config, "backed_size_oblivious", raising=False)
    with pytest.raises(RuntimeError, match="backed_size_oblivious"):
        config.size_oblivious_tracing()
