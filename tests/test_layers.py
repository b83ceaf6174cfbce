"""The CPU fast paths (iwin_models.layers) equal the model file's definitional forwards.

Golden-fixture parity of both paths is in test_iwin_timm.py (``test_features_only_parity``); here: each
fast twin against its plain module on random inputs at odd sizes, each switch on its own, and when the
fast paths must not run (tracers, the FLOP counter, hooks, replaced layers, GPUs, the switches).
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import MINI, REPO
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iwin_models import iwin
from iwin_models.layers import config, fast_paths, iwin_cpu
from iwin_models.layers.interleave import map_from_windows, windows_from_map

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _block(dim=32, heads=2, window=7, dwconv=True, seed=0, **kwargs):
    torch.manual_seed(seed)
    block = iwin.IwinBlock(dim, heads, window_size=window, use_dwconv=dwconv, **kwargs).eval()
    with torch.no_grad():  # biases and norms off their init values, so a dropped term shows
        for p in block.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return block


def _kernels(fn) -> set[str]:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return {event.key for event in prof.key_averages()}


def _takes_fast_path(block: nn.Module, x: torch.Tensor, backward: bool = False) -> bool:
    """Whether ``block(x)`` hands the call to ``iwin_cpu.block_forward``."""
    calls = []
    original = iwin_cpu.block_forward

    def recording(*args):
        calls.append(1)
        return original(*args)

    iwin_cpu.block_forward = recording
    try:
        with torch.set_grad_enabled(backward):
            out = block(x.clone().requires_grad_(backward))
            if backward:
                out.sum().backward()
    finally:
        iwin_cpu.block_forward = original
    return bool(calls)


# --- fast == plain -------------------------------------------------------------------------------

@settings(max_examples=40, **SETTINGS)
@given(h=st.integers(1, 40), w=st.integers(1, 40), ws=st.sampled_from([1, 3, 7, 12]), dwconv=st.booleans(),
       off=st.sampled_from([None, *config.FAST_PATHS]))
def test_block_fast_equals_plain_at_any_size(h, w, ws, dwconv, off):
    """Inference: every fast path on, and each one switched off in turn (the others stay on)."""
    block = _block(window=ws, dwconv=dwconv, seed=h * 100 + w)
    x = torch.randn(2, h, w, 32)
    with torch.no_grad():
        with fast_paths(False):
            plain = block(x)
        with fast_paths(False, off) if off else fast_paths(True):
            fast = iwin_cpu.block_forward(block, x.clone())
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("size", [(9, 13), (16, 16), (14, 14)])  # large padding share, square, no padding
def test_block_fast_equals_plain_with_gradients(size):
    """Training mode: same outputs and same gradients for inputs and every parameter."""
    block = _block()
    block.train()
    x = torch.randn(2, *size, 32)
    results = {}
    for fast in (False, True):
        block.zero_grad()
        leaf = x.clone().requires_grad_()
        with fast_paths(fast):
            out = block(leaf)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        results[fast] = out.detach(), leaf.grad, [p.grad.clone() for p in block.parameters()]
    (out_p, gx_p, gp_p), (out_f, gx_f, gp_f) = results[False], results[True]
    torch.testing.assert_close(out_f, out_p, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gx_f, gx_p, rtol=1e-4, atol=1e-5)
    for a, b in zip(gp_f, gp_p, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_block_fast_path_leaves_its_input_alone_under_autocast():
    block = _block()
    x = torch.randn(2, 20, 23, 32)
    before = x.clone()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        fast = iwin_cpu.block_forward(block, x)
        with fast_paths(False):
            plain = block(x)
    assert torch.equal(x, before)
    assert fast.dtype == plain.dtype == torch.float32
    torch.testing.assert_close(fast, plain, rtol=2e-2, atol=2e-2)


def test_block_chunks_of_one_window_equal_plain(monkeypatch):
    """Chunks of 4 tokens (MLP) and one window (attention), hundreds per block."""
    monkeypatch.setattr(iwin_cpu, "_CHUNK_BYTES", 2048)
    block = _block()
    x = torch.randn(1, 31, 45, 32)
    with torch.no_grad():
        with fast_paths(False):
            plain = block(x)
        fast = iwin_cpu.block_forward(block, x)
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("size", [(97, 131), (64, 64), (3, 5)])
@pytest.mark.parametrize("in_chans", [1, 3, 4])
def test_patch_embed_fast_equals_plain(size, in_chans):
    torch.manual_seed(0)
    embed = iwin.PatchEmbed(4, in_chans, 32)
    x = torch.randn(2, in_chans, *size)
    with fast_paths(False):
        plain = embed(x)
    torch.testing.assert_close(iwin_cpu.patch_embed_forward(embed, x), plain, rtol=1e-5, atol=1e-5)


def _padded(x: torch.Tensor, ws: int, value: torch.Tensor | None) -> torch.Tensor:
    B, H, W, C = x.shape
    out = torch.zeros(B, -(-H // ws) * ws, -(-W // ws) * ws, C, dtype=x.dtype)
    if value is not None:
        out[:] = value
    out[:, :H, :W] = x
    return out


@settings(max_examples=150, **SETTINGS)
@given(b=st.integers(1, 2), h=st.integers(1, 30), w=st.integers(1, 30), ws=st.integers(1, 8),
       fill=st.booleans(), seed=st.integers(0, 2 ** 16))
def test_windows_without_the_padded_map_equal_the_plain_interleave(b, h, w, ws, fill, seed):
    """Bit for bit: the windows are the plain interleave of the padded map, and back."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, h, w, 3, generator=g)
    value = torch.randn(3, generator=g) if fill else None
    windows = windows_from_map(x, ws, pad_value=value)
    expected = iwin.interleave_windows(_padded(x, ws, value), ws)
    assert torch.equal(windows, expected)
    if not fill:
        assert torch.equal(windows, iwin.interleave_windows(x, ws))
    back = map_from_windows(windows, ws, h, w)
    assert back.is_contiguous() and torch.equal(back, x)
    assert torch.equal(back, iwin.deinterleave_windows(windows, ws, h, w))


# --- when the fast paths run ---------------------------------------------------------------------

def test_fast_path_runs_in_eager_cpu_inference_and_training():
    block = _block()
    x = torch.randn(1, 14, 14, 32)
    assert _takes_fast_path(block, x)
    assert _takes_fast_path(block.train(), x, backward=True)  # oneDNN linears train too (1.28 vs 1.83 s a step)


def test_fast_path_switches(monkeypatch):
    block = _block()
    x = torch.randn(1, 14, 14, 32)
    with fast_paths(False):
        assert not _takes_fast_path(block, x)
    with fast_paths(False, "onednn_linear"):
        assert _takes_fast_path(block, x)  # the block's other fast paths, with torch's linear
        assert config.use_fast_path() and not config.use_fast_path("onednn_linear")
    with torch.no_grad():
        x = torch.randn(2, 64, 64, 32)
        assert "aten::linear" not in _kernels(lambda: block(x))
        with fast_paths(False, "onednn_linear"):
            assert "aten::linear" in _kernels(lambda: block(x))
    assert config.use_fast_path("onednn_linear")
    with pytest.raises(ValueError, match="unknown fast path 'nope'"):
        config.set_fast_path(False, "nope")


@pytest.mark.parametrize("env", ["IWIN_FAST_PATH", "IWIN_ONEDNN_LINEAR"])
def test_environment_variables_switch_fast_paths_off(env):
    code = ("from iwin_models.layers import config; "
            "print(config.use_fast_path(), config.use_fast_path('onednn_linear'), config.use_fast_path('chunked'))")
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, env: "0"}, cwd=REPO,
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == (["False", "False", "False"] if env == "IWIN_FAST_PATH" else ["True", "False", "True"])


def test_hooks_and_replaced_layers_get_the_plain_path():
    block = _block()
    x = torch.randn(1, 14, 14, 32)
    handle = block.attn.qkv.register_forward_hook(lambda *args: None)
    assert not _takes_fast_path(block, x)
    handle.remove()
    assert _takes_fast_path(block, x)

    class MyLinear(nn.Module):  # e.g. a LoRA adapter: the fast twin must not bypass it
        def __init__(self, linear):
            super().__init__()
            self.linear = linear
            self.weight, self.bias = linear.weight, linear.bias

        def forward(self, x):
            return self.linear(x) * 2

    expected = None
    with torch.no_grad():
        block.mlp.fc2 = MyLinear(block.mlp.fc2)
        with fast_paths(False):
            expected = block(x)
        torch.testing.assert_close(block(x), expected)
    assert not _takes_fast_path(block, x)


def test_flop_counter_counts_the_plain_path():
    """torch's FlopCounterMode sees the definitional ops (padding included) whatever the switches say."""
    from torch.utils.flop_counter import FlopCounterMode

    model = timm.create_model("iwin_tiny", **MINI).eval()
    x = torch.randn(1, 3, 97, 131)
    counts = []
    for fast in (True, False):
        with torch.no_grad(), fast_paths(fast), FlopCounterMode(display=False) as counter:
            model(x)
        counts.append(counter.get_total_flops())
    assert counts[0] == counts[1] > 0


def test_tracers_record_the_plain_path():
    """FX and TorchScript graphs hold the model file's ops only (no oneDNN linears)."""
    model = timm.create_model("iwin_tiny", **MINI).eval()
    x = torch.randn(1, 3, 61, 75)
    with torch.no_grad():
        expected = model(x)
        graph = torch.fx.symbolic_trace(model)
        targets = {str(n.target) for n in graph.graph.nodes}
        assert not any("mkldnn" in t for t in targets)
        torch.testing.assert_close(graph(x), expected, rtol=1e-5, atol=1e-5)
        scripted = torch.jit.script(model)
        assert "mkldnn" not in scripted.code
        torch.testing.assert_close(scripted(x), expected, rtol=1e-5, atol=1e-5)


def test_linear_is_plain_linear_off_the_fast_path():
    from iwin_models.layers.linear import linear

    x, w, b = torch.randn(512, 64), torch.randn(128, 64), torch.randn(128)
    assert "aten::mkldnn_convolution" in _kernels(lambda: linear(x, w, b))
    with fast_paths(False, "onednn_linear"):
        assert torch.equal(linear(x, w, b), F.linear(x, w, b))


# --- the oneDNN linear -----------------------------------------------------------------------

def _largest(t: torch.Tensor) -> float:
    return t.abs().max().item() if t.numel() else 0.


@pytest.mark.parametrize("shape", [(512, 64), (2, 3, 100, 64), "transposed", (0, 64), (3, 64)])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_equals_torch_linear_with_gradients(shape, bias):
    """Large enough for oneDNN (>= 4M multiply-adds), except the empty and the 3-row input."""
    from iwin_models.layers.linear import linear

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
    from iwin_models.layers.linear import linear, use_onednn_linears

    x, w, b = torch.randn(512, 64), torch.randn(128, 64), torch.randn(128)
    kernels = _kernels(lambda: linear(x, w, b))
    assert "aten::mkldnn_convolution" in kernels and "aten::addmm" not in kernels

    def assert_torch_linear(fn, expected):
        got = fn()
        assert torch.equal(got, expected), "not torch's F.linear"
        assert "aten::mkldnn_convolution" not in _kernels(fn)

    assert_torch_linear(lambda: linear(x.double(), w.double(), b.double()), F.linear(x.double(), w.double(), b.double()))
    assert_torch_linear(lambda: linear(x[:8], w, b), F.linear(x[:8], w, b))  # too small to pay
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert_torch_linear(lambda: linear(x, w, b), F.linear(x, w, b))
    with monkeypatch.context() as patch:
        patch.setattr(torch.backends.mkldnn, "enabled", False)
        assert_torch_linear(lambda: linear(x, w, b), F.linear(x, w, b))
    previous = use_onednn_linears(False)
    try:
        assert previous is True
        assert_torch_linear(lambda: linear(x, w, b), F.linear(x, w, b))
    finally:
        use_onednn_linears(previous)


def test_linear_rejects_a_wrong_width_like_torch():
    """A map whose width does not match the layer must fail, even where its size would reshape."""
    from iwin_models.layers.linear import linear

    x, w = torch.randn(1, 64, 64, 96), torch.randn(256, 64)  # 64*64*96 rows of 64 would fit
    with pytest.raises(RuntimeError, match="cannot be multiplied"):
        linear(x, w)
    torch.testing.assert_close(linear(x[..., :64], w.t().contiguous().t()), F.linear(x[..., :64], w))


# --- the pooling that exports size-free (layers/pool.py) ----------------------------------------------

@pytest.mark.parametrize("output_size", [2, 3, 6, (2, 5)])
@pytest.mark.parametrize("hw", [(1, 1), (5, 7), (16, 16), (13, 29)])
def test_pool_with_averaging_matrices_equals_adaptive_avg_pool(output_size, hw):
    from iwin_models.layers.pool import adaptive_avg_pool2d_by_averaging

    x = torch.randn(2, 4, *hw, generator=torch.Generator().manual_seed(hw[0] * hw[1]))
    x = x.contiguous(memory_format=torch.channels_last)  # Iwin's features are channels-last views
    torch.testing.assert_close(adaptive_avg_pool2d_by_averaging(x, output_size), F.adaptive_avg_pool2d(x, output_size),
                               rtol=1e-6, atol=1e-6)


def test_pool_is_recorded_without_adaptive_pooling_by_tracers():
    """Eager: PyTorch's kernel; torch.export: the averaging matrices (ONNX would fix GatherND indices)."""
    from iwin_models.layers.pool import AdaptiveAvgPool2d

    pool, x = AdaptiveAvgPool2d(3), torch.randn(2, 4, 10, 11)
    assert torch.equal(pool(x), F.adaptive_avg_pool2d(x, 3))
    program = torch.export.export(pool, (x,))
    targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert not any("adaptive" in t for t in targets), targets
    torch.testing.assert_close(program.module()(x), pool(x))
