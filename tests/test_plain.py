"""Plain by default: every model the package builds runs its definition, whatever watches it.

No dispatch on device, tracer, hooks or dispatch modes, no data-dependent step: the forwards run under
``FakeTensorMode`` on a fake CUDA device (no GPU needed), forward hooks on any submodule fire, and torch's
FLOP counter sees the same operations as the plain model's definition, with no oneDNN kernel in it.
"""
from __future__ import annotations

import pytest
import timm
import torch
from conftest import MINI
from torch._subclasses.fake_tensor import FakeTensorMode

from iwin_models import IwinUPerNet
from iwin_models.fast.iwin_cpu import CpuIwinBlock, CpuPatchEmbed


def _fake_cuda(build):
    """(model, input) made under a FakeTensorMode on a fake CUDA device, and the mode."""
    mode = FakeTensorMode(allow_non_fake_inputs=False)
    with mode, torch.device("cuda"):
        model = build().eval()
        x = torch.randn(2, 3, 97, 131)
    return mode, model, x


def test_backbone_runs_under_fake_tensors_on_a_fake_gpu():
    mode, model, x = _fake_cuda(lambda: timm.create_model("iwin_tiny", **MINI, features_only=True))
    with mode, torch.no_grad():
        feats = model(x)
    assert [tuple(f.shape) for f in feats] == [(2, 32, 25, 33), (2, 64, 13, 17), (2, 128, 7, 9), (2, 256, 4, 5)]
    assert all(f.device.type == "cuda" for f in feats)


@pytest.mark.parametrize("train", [False, True])
def test_segmenter_runs_under_fake_tensors_on_a_fake_gpu(train):
    """No NaN check, no .item(), no host synchronisation: a data-dependent step would raise here. (Training
    mode runs the forward only: autograd's engine wants a real CUDA device for the backward.)"""
    mode, model, x = _fake_cuda(lambda: IwinUPerNet("iwin_tiny", encoder_kwargs=MINI, classes=5))
    model.train(train)
    with mode, torch.set_grad_enabled(train):
        logits, aux = model(x, return_aux=True)
    assert logits.shape == aux.shape == (2, 5, 97, 131) and logits.device.type == "cuda"


def test_forward_hooks_on_any_submodule_fire():
    """A hook on any layer with weights fires (the plain forward never computes from a layer's weights
    behind its back); the auxiliary head runs with ``return_aux`` only, and a features-only backbone does
    not use its final norm and classifier."""
    model = IwinUPerNet("iwin_tiny", encoder_kwargs=MINI, classes=5).eval()
    seen = []
    names = [n for n, m in model.named_modules() if not list(m.children()) and list(m.parameters())]
    for name in names:
        model.get_submodule(name).register_forward_hook(lambda m, i, o, name=name: seen.append(name))
    with torch.no_grad():
        model(torch.randn(1, 3, 97, 131))
    unused = ("auxiliary_head.", "encoder.model.model.norm", "encoder.model.model.head.")
    assert "encoder.model.model.layers.0.blocks.0.attn.qkv" in seen and "decoder.fusion_block.0" in seen
    assert set(names) - set(seen) == {n for n in names if n.startswith(unused)}, sorted(set(names) - set(seen))[:5]


def test_no_twin_is_built_and_no_onednn_kernel_runs_by_default():
    from torch.utils.flop_counter import FlopCounterMode

    model = timm.create_model("iwin_tiny", **MINI).eval()
    assert not any(isinstance(m, (CpuIwinBlock, CpuPatchEmbed)) for m in model.modules())
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.randn(1, 3, 97, 131))
    ops = {str(op) for module in counter.get_flop_counts().values() for op in module}
    assert "aten.mkldnn_convolution" not in ops and {"aten.addmm", "aten.mm"} & ops, ops
