"""Export of the segmenter: torch.export, ONNX (+ onnxruntime), the ``iwin-seg export`` command, torch.compile.

All on the golden mini UPerNet (embed 32, decoder 64) at the golden odd input size 97x131, which makes
every block pad its map; with no fixtures the same architecture with seeded random weights is used.
"""
from __future__ import annotations

import importlib.util

import pytest
import torch
from conftest import MINI, _fixtures_dir

from iwin_models.cli import main as cli_main
from iwin_models.export import export_program
from iwin_models.segmenter import IwinUPerNet, load_segmenter_weights

H, W = 97, 131


def _mini() -> IwinUPerNet:
    torch.manual_seed(0)
    model = IwinUPerNet("iwin_tiny", encoder_kwargs=dict(MINI), decoder_channels=64, aux_channels=32)
    fixtures = _fixtures_dir()
    if fixtures is not None:
        load_segmenter_weights(model, str(fixtures / "golden" / "mini_upernet.pth"))
    return model.eval()


@pytest.fixture(scope="module")
def mini() -> IwinUPerNet:
    return _mini()


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    fixtures = _fixtures_dir()
    if fixtures is not None:
        from safetensors.torch import load_file
        return load_file(fixtures / "golden" / "mini_upernet_expected.safetensors")["x_odd"]
    return torch.randn(1, 3, H, W, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def cli_onnx(mini, tmp_path_factory):
    """``iwin-seg export --model <save_pretrained folder> --onnx`` run once for the module."""
    pytest.importorskip("onnxscript", reason="ONNX export needs the onnx extra (onnx, onnxscript)")
    root = tmp_path_factory.mktemp("export")
    mini.save_pretrained(root / "model")
    out = root / "sub" / "mini.onnx"
    rc = cli_main(["export", "--model", str(root / "model"), "--onnx", str(out),
                   "--height", str(H), "--width", str(W)])
    return rc, out


def test_torch_export_equals_eager(mini, image):
    program = export_program(mini, H, W)
    with torch.no_grad():
        expected = mini(image)
        got = program.module()(image)
    assert got.shape == (1, 150, H, W)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_cli_export_writes_onnx(cli_onnx):
    rc, out = cli_onnx
    assert rc == 0
    assert out.is_file() and out.stat().st_size > 100_000

    import onnx
    graph = onnx.load(str(out)).graph
    assert [i.name for i in graph.input] == ["image"]
    assert [o.name for o in graph.output] == ["logits"]


def test_onnxruntime_equals_pytorch(cli_onnx, mini, image):
    if importlib.util.find_spec("onnxruntime") is None:
        pytest.skip("onnxruntime is not installed (pip install 'iwin-models[onnx]')")
    import onnxruntime as ort

    _, out = cli_onnx
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (got,) = session.run(["logits"], {"image": image.numpy()})
    with torch.no_grad():
        expected = mini(image)
    torch.testing.assert_close(torch.from_numpy(got), expected, atol=1e-4, rtol=1e-4)


def test_cli_export_needs_an_output(tmp_path, capsys):
    assert cli_main(["export", "--model", "iwin_tiny_upernet_ade20k"]) == 2
    assert "nothing to do" in capsys.readouterr().err


def test_cli_export_unknown_model(tmp_path, capsys):
    assert cli_main(["export", "--model", str(tmp_path / "nope"), "--onnx", str(tmp_path / "x.onnx")]) == 2
    assert "unknown model" in capsys.readouterr().err


@pytest.mark.slow
def test_torch_compile_equals_eager(mini, image):
    compiled = torch.compile(mini)
    with torch.no_grad():
        expected = mini(image)
        got = compiled(image)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
