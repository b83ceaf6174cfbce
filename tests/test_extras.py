"""The optional extras: one table, equal to setup.cfg's, and one check with a one-line hint."""
from __future__ import annotations

import configparser
import sys

import pytest
from conftest import REPO

from iwin_models import extras


def _setup_cfg_extras() -> dict[str, set[str]]:
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    out = {}
    for extra, text in cfg["options.extras_require"].items():
        names = [line.strip() for line in text.splitlines() if line.strip()]
        out[extra] = {name.split(">")[0].split("=")[0].split("<")[0].strip() for name in names}
    return out


def test_table_equals_setup_cfg():
    declared = _setup_cfg_extras()
    assert set(extras.EXTRAS) == set(declared) - {"dev"}
    for extra, modules in extras.EXTRAS.items():
        assert set(modules) == declared[extra], extra
        assert set(modules) <= declared["dev"], f"the tests need the {extra} extra: add it to dev"


def test_require_names_what_is_missing_and_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "gradio", None)  # as if not installed
    with pytest.raises(ImportError) as e:
        extras.require("demo", purpose="iwin-seg demo")
    assert str(e.value) == "iwin-seg demo needs gradio (gradio not installed): pip install 'iwin-models[demo]'"
    assert "\n" not in str(e.value)


def test_require_passes_and_imports_nothing_when_installed(monkeypatch):
    monkeypatch.delitem(sys.modules, "matplotlib", raising=False)
    extras.require("report", "matplotlib", purpose="the report")
    assert "matplotlib" not in sys.modules  # looked up, not imported: the check is free


def test_missing_lists_only_the_absent(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxscript", None)
    assert extras.missing("onnx", "onnxscript", "no_such_module_xyz", "no_such.sub") == [
        "onnxscript", "no_such_module_xyz", "no_such.sub"]


def test_unknown_extra_is_refused():
    with pytest.raises(KeyError, match="no extra named 'gui'"):
        extras.install_hint("gui")
