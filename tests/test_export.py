"""Export of the segmenter: torch.export, ONNX (+ onnxruntime), the ``iwin-seg export`` command, torch.compile.

All on the golden mini UPerNet (embed 32, decoder 64) at the golden odd input size 97x131, which makes
every block pad its map; with no fixtures the same architecture with seeded random weights is used.
The dynamic exports (``dynamic=True``) are traced once at that size and then must serve every size
of DYNAMIC_SIZES with the same graph: ADE20K's 512x512 test crop, two odd sizes of the kind the
ADE20K protocol (short side 512, long side <= 2048) produces, and a batch of two at the odd size.
"""
from __future__ import annotations

import importlib.util

import pytest
import torch
from conftest import MINI, REPO, _fixtures_dir

from iwin_models.apps.cli import main as cli_main
from iwin_models.interop.export import dynamic_tracing, export_forms, export_onnx, export_program
from iwin_models.models.segmenters import load_segmenter_weights
from iwin_models.models.upernet import IwinUPerNet

H, W = 97, 131
DYNAMIC_SIZES = [(1, 512, 512), (1, 500, 683), (1, 333, 1024), (2, H, W)]  # (batch, height, width)


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


@pytest.mark.slow
def test_cli_export_writes_onnx(cli_onnx):
    rc, out = cli_onnx
    assert rc == 0
    assert out.is_file() and out.stat().st_size > 100_000

    import onnx
    graph = onnx.load(str(out)).graph
    assert [i.name for i in graph.input] == ["image"]
    assert [o.name for o in graph.output] == ["logits"]


@pytest.mark.slow
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


@pytest.mark.parametrize("missing", ["onnxscript", "onnx"])
def test_cli_export_checks_the_onnx_extra_before_loading_the_model(tmp_path, capsys, monkeypatch, missing):
    """Without the onnx extra: one line with the install hint, exit 2, no traceback, and no model built (the
    official Iwin-T took 28 s to load before the old message came)."""
    import sys

    import iwin_models.apps.cli.common as common
    import iwin_models.models.segmenters as segmenter

    monkeypatch.setitem(sys.modules, missing, None)  # what `import <missing>` meets when it is not installed
    built = []
    monkeypatch.setattr(common, "load_segmenter", lambda *a, **k: built.append(a) or pytest.fail("model loaded"))
    monkeypatch.setattr(segmenter, "create_segmenter", lambda *a, **k: built.append(a) or pytest.fail("built"))
    argv = ["export", "--model", "iwin_tiny_upernet_ade20k", "--weights", "iwin_tiny_patch4_window7_512_ade20k_1k.pth",
            "--onnx", str(tmp_path / "x.onnx")]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("iwin-seg export: error: ONNX export needs onnx and onnxscript")
    assert f"({missing} not installed)" in err and err.rstrip().endswith("pip install 'iwin-models[onnx]'")
    assert built == [] and not (tmp_path / "x.onnx").exists()


def test_cli_export_program_does_not_need_the_onnx_extra(tmp_path, capsys, monkeypatch):
    import sys

    import iwin_models.apps.cli.common as common

    monkeypatch.setitem(sys.modules, "onnxscript", None)
    calls = []

    def resolver(*args, **kwargs):  # the check passed: the command goes on to the model
        calls.append(args)
        raise ValueError("stop here")

    monkeypatch.setattr(common, "load_segmenter", resolver)
    assert cli_main(["export", "--model", "iwin_tiny_upernet_ade20k", "--program", str(tmp_path / "x.pt2")]) == 2
    assert calls == [("iwin_tiny_upernet_ade20k", None)] and "stop here" in capsys.readouterr().err


def test_export_onnx_in_python_names_the_extra(mini, tmp_path, monkeypatch):
    import sys

    from iwin_models.interop.export import require_onnx

    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(ImportError, match=r"\(onnx not installed\): pip install 'iwin-models\[onnx\]'"):
        require_onnx()
    with pytest.raises(ImportError, match="iwin-models\\[onnx\\]"):
        export_onnx(mini, tmp_path / "x.onnx")


@pytest.mark.slow
def test_torch_compile_equals_eager(mini, image):
    compiled = torch.compile(mini)
    with torch.no_grad():
        expected = mini(image)
        got = compiled(image)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


# --- one graph for every size (dynamic=True) ---------------------------------------------------

def _relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    """max |got - expected| / max |expected|: the logits' scale is the model's, not 1."""
    return ((got.double() - expected.double()).abs().max() / expected.double().abs().max()).item()


def _input(batch: int, height: int, width: int) -> torch.Tensor:
    return torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(height * width + batch))


@pytest.fixture(scope="module")
def dynamic_onnx(mini, tmp_path_factory):
    pytest.importorskip("onnxscript", reason="ONNX export needs the onnx extra (onnx, onnxscript)")
    path = tmp_path_factory.mktemp("dynamic") / "mini_dynamic.onnx"
    return export_onnx(mini, path, H, W, dynamic=True)


@pytest.fixture(scope="module")
def dynamic_session(dynamic_onnx):
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install 'iwin-models[onnx]')")
    return ort.InferenceSession(str(dynamic_onnx), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def dynamic_program(mini):
    return export_program(mini, H, W, dynamic=True)


@pytest.mark.slow
def test_dynamic_onnx_has_free_batch_height_width(dynamic_onnx):
    import onnx

    graph = onnx.load(str(dynamic_onnx)).graph
    (image,), (logits,) = graph.input, graph.output
    dims = [[d.dim_param or d.dim_value for d in t.type.tensor_type.shape.dim] for t in (image, logits)]
    assert (image.name, logits.name) == ("image", "logits")
    assert dims == [["batch", 3, "height", "width"], ["batch", 150, "height", "width"]]


@pytest.mark.slow
@pytest.mark.parametrize("batch, height, width", DYNAMIC_SIZES, ids=[f"{b}x{h}x{w}" for b, h, w in DYNAMIC_SIZES])
def test_dynamic_onnx_equals_pytorch(dynamic_session, mini, batch, height, width):
    x = _input(batch, height, width)
    (got,) = dynamic_session.run(["logits"], {"image": x.numpy()})
    with torch.no_grad():
        expected = mini(x)
    assert got.shape == (batch, 150, height, width)
    assert _relative_error(torch.from_numpy(got), expected) <= 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("batch, height, width", DYNAMIC_SIZES, ids=[f"{b}x{h}x{w}" for b, h, w in DYNAMIC_SIZES])
def test_dynamic_program_equals_eager(dynamic_program, mini, batch, height, width):
    x = _input(batch, height, width)
    with torch.no_grad():
        got = dynamic_program.module()(x)
        expected = mini(x)
    assert got.shape == (batch, 150, height, width)
    assert _relative_error(got, expected) <= 1e-4


TINY_SIZES = [(1, 20, 9), (3, 1, 1)]  # every window grid 1x1 and every map smaller than a window


@pytest.mark.slow
@pytest.mark.parametrize("batch, height, width", TINY_SIZES, ids=[f"{b}x{h}x{w}" for b, h, w in TINY_SIZES])
def test_dynamic_graphs_serve_maps_smaller_than_a_window(dynamic_program, dynamic_session, mini, batch, height,
                                                         width):
    """The graphs traced at 97x131 have no lower bound on the size (no guard, free dims from 1)."""
    x = _input(batch, height, width)
    (onnx_logits,) = dynamic_session.run(["logits"], {"image": x.numpy()})
    with torch.no_grad():
        got, expected = dynamic_program.module()(x), mini(x)
    assert dynamic_program._guards_code == []
    assert _relative_error(got, expected) <= 1e-4
    assert _relative_error(torch.from_numpy(onnx_logits), expected) <= 1e-4


@pytest.mark.slow
def test_torch_compile_dynamic_three_sizes_one_compilation(mini):
    """Three sizes, one compilation: dynamo hands the backend a graph only when it (re)compiles.

    The counting backend runs the captured graph as is: recompiles are decided by dynamo's guards,
    before any backend, and inductor's code generation would add minutes on CPU.
    """
    graphs = []

    def counting_backend(gm: torch.fx.GraphModule, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch.compiler.reset()
    compiled = torch.compile(export_forms(mini), dynamic=True, backend=counting_backend)
    counts = []
    for height, width in [(H, W), (128, 96), (75, 150)]:  # batch 1: dynamo specialises sizes 0 and 1
        x = _input(1, height, width)
        with torch.no_grad(), dynamic_tracing():  # the window grids of 97x131 are 1 at stride 32
            torch.testing.assert_close(compiled(x), mini(x), atol=1e-5, rtol=1e-5)
        counts.append(len(graphs))
    assert counts == [1, 1, 1], f"graphs compiled after each size: {counts} (more than 1: a graph break or recompile)"


@pytest.mark.slow
def test_onnx_example_gives_the_labels_of_segment(dynamic_onnx, mini, tmp_path):
    """examples/onnx_inference.py (onnxruntime, numpy, PIL: run with torch made unimportable) on the
    sample image labels >= 99.9% of its pixels as ``segment()`` does."""
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install 'iwin-models[onnx]')")
    import subprocess
    import sys

    import numpy as np
    from PIL import Image

    from iwin_models.data import SAMPLE_IMAGE
    from iwin_models.engine.inference import segment

    example, out = REPO / "examples" / "onnx_inference.py", tmp_path / "labels.png"
    no_torch = ("import runpy, sys; sys.modules['torch'] = None; "  # any `import torch` raises ImportError
                f"sys.argv = [{str(example)!r}, {str(dynamic_onnx)!r}, {str(SAMPLE_IMAGE)!r}, '--out', {str(out)!r}]; "
                f"runpy.run_path({str(example)!r}, run_name='__main__')")
    run = subprocess.run([sys.executable, "-c", no_torch], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    got = np.asarray(Image.open(out))
    expected = segment(mini, SAMPLE_IMAGE)
    assert got.shape == expected.shape == (427, 640)
    agreement = (got == expected).mean()
    assert agreement >= 0.999, f"labels agree on {agreement:.4%} of the pixels"


class _PinsTheWidth(torch.nn.Module):
    """A model whose forward branches on the input width: no graph can serve every width."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) * 2 if x.shape[-1] == W else self.conv(x)


def test_dynamic_export_refuses_a_model_that_pins_a_size(tmp_path):
    """Raises instead of writing a graph that is wrong at other sizes (torch.onnx.export given the module
    itself writes one: it relaxes the named dims and bakes the width in)."""
    pytest.importorskip("onnxscript", reason="ONNX export needs the onnx extra (onnx, onnxscript)")
    path = tmp_path / "pinned.onnx"
    with pytest.raises(Exception, match=r"(?i)constraints violated|specializ"):
        export_onnx(_PinsTheWidth(), path, H, W, dynamic=True)
    assert not path.exists()
    with pytest.raises(Exception, match=r"(?i)constraints violated|specializ"):
        export_program(_PinsTheWidth(), H, W, dynamic=True)


@pytest.mark.slow
def test_program_guards_reads_the_guards_and_says_where_torch_moved_them(mini):
    """The one use of the program's private guards: real programs have them; a program without them is an
    error that names the function, never a dynamic graph taken on trust."""
    from iwin_models.interop.export import program_guards

    program = export_program(mini, 64, 96, dynamic=True)
    assert program_guards(program) == []
    fixed = torch.export.export(torch.nn.Conv2d(3, 3, 3), (torch.randn(1, 3, 8, 8),),
                                dynamic_shapes=({2: torch.export.Dim("h", min=4)},))
    assert isinstance(program_guards(fixed), list)

    class Moved:  # what a torch that renamed the field would hand us
        pass

    with pytest.raises(RuntimeError, match="program_guards"):
        program_guards(Moved())


def test_dynamic_tracing_sets_size_oblivious_tracing_only():
    """The context of dynamic export is torch's size-oblivious mode, and nothing a forward reads."""
    from torch.fx.experimental import _config as shapes_config

    assert not shapes_config.backed_size_oblivious
    with dynamic_tracing():
        assert shapes_config.backed_size_oblivious
        with dynamic_tracing(False):  # a no-op: the outer context stays
            assert shapes_config.backed_size_oblivious
    assert not shapes_config.backed_size_oblivious
    with pytest.raises(KeyError), dynamic_tracing():
        raise KeyError("the flag is reset on the way out of an error")
    assert not shapes_config.backed_size_oblivious


def test_size_oblivious_tracing_says_where_torch_moved_it(monkeypatch):
    """The one use of torch's private shapes config fails with a clear message when torch renames it."""
    from torch.fx.experimental import _config as shapes_config

    from iwin_models.interop.export import size_oblivious_tracing

    monkeypatch.delattr(shapes_config, "backed_size_oblivious", raising=False)
    with pytest.raises(RuntimeError, match="backed_size_oblivious"):
        size_oblivious_tracing()


def test_export_forms_are_set_on_a_copy_sharing_the_weights(mini, image):
    """``export_forms`` converts a copy: the model keeps its plain forms, the copy computes the same logits."""
    exported = export_forms(mini)
    flagged = [name for name, m in mini.named_modules() if getattr(m, "export_form", False)]
    assert flagged == [], flagged
    forms = [m for m in exported.modules() if hasattr(m, "export_form")]
    assert forms and all(m.export_form for m in forms)
    assert {p.data_ptr() for p in exported.parameters()} == {p.data_ptr() for p in mini.parameters()}
    with torch.no_grad():
        torch.testing.assert_close(exported(image), mini(image), atol=1e-5, rtol=1e-5)


def test_a_thread_exporting_leaves_another_threads_forwards_bitwise_unchanged(mini, one_thread):
    """No global is read in a forward: a dynamic export in one thread (its forms, its size-oblivious tracing) does
    not change what forwards compute in another thread at the same time (the export forms differ from the plain
    ones by ~3e-6, which a flag read in a forward would let through). Two things of torch's own are held fixed, so
    that what is measured is the package: one intra-op thread (with more, two threads sharing the pool make float32
    reductions differ by ~3e-6 whatever the model reads), and oneDNN off throughout (torch.export turns oneDNN and
    cuDNN off process-wide while it traces, seen on torch 2.14, which moves every thread's convolutions to the
    native kernels for that time)."""
    import threading

    with torch.backends.mkldnn.flags(enabled=False):
        x = _input(1, 75, 101)
        with torch.no_grad():
            expected = mini(x)
        errors, outputs = [], []

        def export_once():
            try:
                export_program(mini, 97, 131, dynamic=True)
            except Exception as e:  # surfaced below
                errors.append(e)

        exporter = threading.Thread(target=export_once)
        exporter.start()
        with torch.no_grad():
            while exporter.is_alive() or not outputs:  # forwards for the whole time of the export
                outputs.append(mini(x))
        exporter.join()
    assert not errors, errors
    assert len(outputs) > 1 and all(torch.equal(out, expected) for out in outputs)
