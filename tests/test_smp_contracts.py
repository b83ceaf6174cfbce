"""smp 0.6's encoder and model contracts for ``tu-iwin_tiny``, written here as our own tests.

What smp's ``tests/encoders/base.py`` (``BaseEncoderTester``) and ``tests/models/base.py``
(``BaseModelTester``) require of an encoder and of each architecture built on it: forward/backward,
in_channels 1/3/4, encoder depth 3-5, dilated encoders (output stride 16/8), ``torch.compile`` with
``fullgraph=True, dynamic=True``, strict ``torch.export``, TorchScript, any input resolution and
the hub mixin's save/load, for Unet, FPN, DeepLabV3, DeepLabV3+, Segformer and UPerNet. smp's
universal timm encoder declares itself scriptable, exportable and compilable, so for Iwin each of
these must work (smp's tests only expect a failure where the class declares one).

The encoder is a small random Iwin (embed 32, one block per stage, heads 1,2,4,8), passed through
smp's encoder kwargs to ``timm.create_model``: the contracts are about structure and graph capture,
and one block per stage halves the graph that dynamo traces (strict export of the two-block golden
mini model takes ~35 s per architecture on our 2-core CI).
"""
from __future__ import annotations

import tempfile

import pytest
import torch

smp = pytest.importorskip("segmentation_models_pytorch")
# smp's initialiser warns on its zero-channel placeholder for the 1/2-scale level of stride-4-first encoders
pytestmark = pytest.mark.filterwarnings("ignore:Initializing zero-element tensors is a no-op:UserWarning")

import iwin_models  # noqa: E402,F401  (registers the timm models)

ENCODER = "tu-iwin_tiny"
SMALL = dict(embed_dim=32, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8))
ARCHS = ["unet", "fpn", "deeplabv3", "deeplabv3plus", "segformer", "upernet"]
STRIDES = [1, 2, 4, 8, 16, 32]  # smp's feature strides: input, (empty) 1/2 map, then Iwin's four stages
H = W = 64  # smp's test size


def _sample(batch: int = 2, channels: int = 3, height: int = H, width: int = W) -> torch.Tensor:
    return torch.rand(batch, channels, height, width, generator=torch.Generator().manual_seed(0))


def _encoder(**kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    return smp.encoders.get_encoder(ENCODER, weights=None, **SMALL, **kwargs)


def _model(arch: str, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    return smp.create_model(arch, ENCODER, encoder_weights=None, **SMALL, **kwargs)


def _strides(x: torch.Tensor, features) -> list[int]:
    return [x.shape[2] // f.shape[2] for f in features] + [x.shape[3] // f.shape[3] for f in features]


def _assert_features_close(got, expected, **tol):
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, **tol)


@pytest.fixture(scope="module")
def encoder() -> torch.nn.Module:
    return _encoder().eval()


@pytest.fixture(scope="module", params=ARCHS)
def model(request) -> tuple[str, torch.nn.Module]:
    return request.param, _model(request.param).eval()


# --- the encoder (BaseEncoderTester) ----------------------------------------------------------

def test_encoder_forward_backward():
    enc = _encoder().train()
    x = _sample()
    features = enc(x)
    assert len(features) == 6
    assert [f.shape[1] for f in features] == enc.out_channels == [3, 0, 32, 64, 128, 256]
    assert _strides(x, features) == STRIDES * 2
    sum(f.mean() for f in features[2:]).backward()
    missing = [n for n, p in enc.named_parameters() if p.grad is None or not p.grad.isfinite().all()]
    assert not missing, f"no or non-finite gradient for {missing[:5]}"


@pytest.mark.parametrize("in_channels", [1, 3, 4])
def test_encoder_in_channels(in_channels):
    enc = _encoder(in_channels=in_channels).eval()
    assert enc.model.model.patch_embed.proj.in_channels == in_channels
    with torch.inference_mode():
        features = enc(_sample(channels=in_channels))
    assert features[0].shape[1] == enc.out_channels[0] == in_channels
    assert [f.shape[1] for f in features[2:]] == [32, 64, 128, 256]


@pytest.mark.parametrize("depth", [3, 4, 5])
def test_encoder_depth(depth):
    enc = _encoder(depth=depth).eval()
    x = _sample()
    with torch.inference_mode():
        features = enc(x)
    assert len(features) == len(enc.out_channels) == depth + 1
    assert _strides(x, features) == STRIDES[:depth + 1] * 2
    assert enc.output_stride == STRIDES[depth]


@pytest.mark.parametrize("depth", [0, 6])
def test_encoder_invalid_depth(depth):
    with pytest.raises(ValueError, match="depth"):
        smp.encoders.get_encoder(ENCODER, weights=None, depth=depth)


@pytest.mark.parametrize("output_stride", [8, 16])
def test_encoder_dilated(output_stride):
    enc = _encoder(output_stride=output_stride).eval()
    x = _sample()
    with torch.inference_mode():
        features = enc(x)
    assert _strides(x, features) == [min(s, output_stride) for s in STRIDES] * 2
    assert enc.output_stride == output_stride


@pytest.mark.slow
def test_encoder_compile_fullgraph_dynamic(encoder):
    # backend="eager" (as smp's test): the contract is that dynamo captures the whole forward as one
    # graph with symbolic sizes; inductor's code generation is not part of it and would add minutes.
    x = _sample()
    torch.compiler.reset()
    compiled = torch.compile(encoder, fullgraph=True, dynamic=True, backend="eager")
    with torch.inference_mode():
        _assert_features_close(compiled(x), encoder(x))


@pytest.mark.slow
def test_encoder_torch_export_strict(encoder):
    x = _sample()
    program = torch.export.export(encoder, (x,), strict=True)
    with torch.inference_mode():
        _assert_features_close(program.module()(x), encoder(x))


def test_encoder_torchscript(encoder):
    scripted = torch.jit.script(encoder)
    x = _sample()
    with torch.inference_mode():
        _assert_features_close(scripted(x), encoder(x))


# --- the models (BaseModelTester) -------------------------------------------------------------

@pytest.mark.parametrize("arch", ARCHS)
def test_model_forward_backward(arch):
    m = _model(arch).train()
    out = m(_sample())
    assert out.shape == (2, 1, H, W)  # smp's default: one class
    out.mean().backward()
    grad = m.encoder.model.model.patch_embed.proj.weight.grad
    assert grad is not None and grad.isfinite().all() and grad.abs().sum() > 0


def _depth_kwargs(arch: str, depth: int) -> dict:
    return {"decoder_channels": (256, 128, 64, 32, 16)[:depth]} if arch == "unet" else {}


# in_channels 1/3/4 at depth 5 (3 is every other test's), depth 3/4 with one input channel (smp's own
# case is in_channels=1, depth=3, classes=7); FPN below depth 5 is test_fpn_needs_depth_5.
IN_CHANNELS_DEPTH = [(arch, c, d) for arch in ARCHS for c, d in [(1, 5), (4, 5), (1, 4), (1, 3)]
                     if not (arch == "fpn" and d < 5)]


@pytest.mark.parametrize("arch, in_channels, depth", IN_CHANNELS_DEPTH)
def test_model_in_channels_depth_classes(arch, in_channels, depth):
    m = _model(arch, in_channels=in_channels, encoder_depth=depth, classes=7, **_depth_kwargs(arch, depth)).eval()
    with torch.inference_mode():
        out = m(_sample(channels=in_channels))
    assert out.shape == (2, 7, H, W)


@pytest.mark.parametrize("depth", [3, 4])
@pytest.mark.parametrize("encoder_name", [ENCODER, "tu-convnext_atto"])
def test_fpn_needs_depth_5(encoder_name, depth):
    """smp's FPN limit for stride-4-first encoders, not ours: below depth 5 its finest level is smp's
    zero-channel 1/2-scale placeholder. timm's ConvNeXt (also stride 4 first) fails the same way."""
    kwargs = SMALL if encoder_name == ENCODER else {}
    m = smp.create_model("fpn", encoder_name, encoder_weights=None, encoder_depth=depth, **kwargs).eval()
    assert 0 in m.encoder.out_channels[-4:]
    with torch.inference_mode(), pytest.raises(RuntimeError, match=r"size of tensor b \(0\)"):
        m(_sample())


@pytest.mark.parametrize("output_stride", [8, 16])
@pytest.mark.parametrize("arch", ["deeplabv3", "deeplabv3plus"])
def test_model_dilated(arch, output_stride):
    m = _model(arch, encoder_output_stride=output_stride).eval()
    x = _sample()
    with torch.inference_mode():
        features = m.encoder(x)
        out = m(x)
    assert _strides(x, features) == [min(s, output_stride) for s in STRIDES] * 2
    assert out.shape == (2, 1, H, W)


def test_model_any_resolution(model):
    arch, m = model
    x = _sample(height=H + 3, width=W + 7)
    if m.requires_divisible_input_shape:
        with pytest.raises(RuntimeError, match="divisible"):
            m(x)
        return
    with torch.inference_mode():
        assert m(x).shape == (2, 1, H + 3, W + 7)


@pytest.mark.slow
def test_model_compile_fullgraph_dynamic(model):
    # backend="eager", as smp's test does: graph capture with symbolic sizes is the contract
    arch, m = model
    x = _sample()
    torch.compiler.reset()
    compiled = torch.compile(m, fullgraph=True, dynamic=True, backend="eager")
    with torch.inference_mode():
        torch.testing.assert_close(compiled(x), m(x))


@pytest.mark.slow
def test_model_torch_export_strict(model):
    arch, m = model
    x = _sample()
    program = torch.export.export(m, (x,), strict=True)
    eps = 1e-3 if arch == "upernet" else 1e-5  # smp's own tolerance for UPerNet
    with torch.inference_mode():
        torch.testing.assert_close(program.module()(x), m(x), rtol=eps, atol=eps)


def test_model_torchscript(model):
    arch, m = model
    scripted = torch.jit.script(m)
    x = _sample()
    with torch.inference_mode():
        torch.testing.assert_close(scripted(x), m(x), rtol=1e-3, atol=1e-3)


def test_model_hub_mixin_save_load(model):
    arch, m = model
    x = _sample()
    with tempfile.TemporaryDirectory() as tmp:
        m.save_pretrained(tmp, dataset="test_dataset", metrics={"my_metric": 0.99})
        restored = smp.from_pretrained(tmp).eval()
        with open(f"{tmp}/README.md") as f:
            readme = f.read()
    assert type(restored) is type(m)
    assert restored.encoder.model.model.patch_embed.proj.out_channels == SMALL["embed_dim"]
    with torch.inference_mode():
        assert torch.equal(restored(x), m(x))
    assert "test_dataset" in readme and "my_metric" in readme
