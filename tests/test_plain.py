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
from iwin_models.layers.iwin_cpu import CpuIwinBlock, CpuPatchEmbed


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
    """No NaN check, no .item(), no host synchronisation: a data-dependent step would raise here."""
    mode, model, x = _fake_cuda(lambda: IwinUPerNet("iwin_tiny", encoder_kwargs=MINI, classes=5))
    model.train(train)
    with mode:
        logits, aux = model(x, return_aux=True)
        if train:
            (logits.sum() + aux.sum()).backward()
    assert logits.shape == aux.shape == (2, 5, 97, 131) and logits.device.type == "cuda"


def test_forward_hooks_on_any_submodule_fire():
    model = IwinUPerNet("iwin_tiny", encoder_kwargs=MINI, classes=5).eval()
    seen = []
    names = [n for n, m in model.named_modules() if n and not list(m.children())]  # every leaf
    for name in names:
        model.get_submodule(name).register_forward_hook(lambda m, i, o, name=name: seen.append(name))
    with torch.no_grad():
        model(torch.randn(1, 3, 97, 131))
    unseen = set(names) - set(seen)
    # dropouts and identities are called too; the auxiliary head only with return_aux
    assert unseen == {n for n in names if n.startswith("auxiliary_head.")}, sorted(unseen)[:5]


def test_no_twin_is_built_and_no_onednn_kernel_runs_by_default():
    from torch.utils.flop_counter import FlopCounterMode

    model = timm.create_model("iwin_tiny", **MINI).eval()
    assert not any(isinstance(m, (CpuIwinBlock, CpuPatchEmbed)) for m in model.modules())
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.randn(1, 3, 97, 131))
    ops = {str(op) for module in counter.get_flop_counts().values() for op in module}
    assert "aten.mkldnn_convolution" not in ops and {"aten.addmm", "aten.mm"} & ops, ops
