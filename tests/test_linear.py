"""The oneDNN linear layer of the CPU twins (layers/linear.py) equals torch's ``F.linear``."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F


def _kernels(fn) -> set[str]:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return {event.key for event in prof.key_averages()}


def _largest(t: torch.Tensor) -> float:
    return t.abs().max().item() if t.numel() else 0.


@pytest.mark.parametrize("shape", [(512, 64), (2, 3, 100, 64), "transposed", (0, 64), (3, 64)])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_equals_torch_linear_with_gradients(shape, bias):
    """Large enough for oneDNN (>= 4M multiply-adds), except the empty and the 3-row input."""
    from iwin_models.fast.linear import linear

    torch.manual_seed(0)
    x = torch.randn(64, 512).t() if shape == "transposed" else torch.randn(shape)  # also a non-contiguous input
    x.requires_grad_()
    w = torch.randn(128, 64, requires_grad=True)
    b = torch.randn(128, requires_grad=True) if bias else None
    out = linear(x, w, b)
    expected = F.linear(x.double(), w.double(), b.double() if bias else None)
    assert out.shape == expected.shape and out.dtype == torch.float32 and out.is_contiguous()
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-6 * _largest(expected))
    seed = torch.randn(out.shape, dtype=torch.float64)
    (out.double() * seed).sum().backward()
    params = [x, w] + ([b] if bias else [])
    got = [p.grad.double() for p in params]
    expected_grads = torch.autograd.grad((expected * seed).sum(), params)
    for g, e in zip(got, expected_grads):  # round-off of sums over up to 600 products
        torch.testing.assert_close(g, e.double(), rtol=1e-5, atol=1e-6 * _largest(e))


def test_linear_takes_onednn_only_for_float32_cpu_outside_autocast(monkeypatch):
    from iwin_models.fast.linear import linear

    x, w, b = torch.randn(512, 64), torch.randn(128, 64), torch.randn(128)
    kernels = _kernels(lambda: linear(x, w, b))
    assert "aten::mkldnn_convolution" in kernels and "aten::addmm" not in kernels

    def assert_torch_linear(fn, expected):
        got = fn()
        assert torch.equal(got, expected), "not torch's F.linear"
        assert "aten::mkldnn_convolution" not in _kernels(fn)

    xd, wd, bd = x.double(), w.double(), b.double()
    assert_torch_linear(lambda: linear(xd, wd, bd), F.linear(xd, wd, bd))
    assert_torch_linear(lambda: linear(x[:8], w, b), F.linear(x[:8], w, b))  # too small to pay
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert_torch_linear(lambda: linear(x, w, b), F.linear(x, w, b))
    with monkeypatch.context() as patch:
        patch.setattr(torch.backends.mkldnn, "enabled", False)
        assert_torch_linear(lambda: linear(x, w, b), F.linear(x, w, b))


def test_linear_rejects_a_wrong_width_like_torch():
    """A map whose width does not match the layer must fail, even where its size would reshape."""
    from iwin_models.fast.linear import linear

    x, w = torch.randn(1, 64, 64, 96), torch.randn(256, 64)  # 64*64*96 rows of 64 would fit
    with pytest.raises(RuntimeError, match="cannot be multiplied"):
        linear(x, w)
    torch.testing.assert_close(linear(x[..., :64], w.t().contiguous().t()), F.linear(x[..., :64], w))


