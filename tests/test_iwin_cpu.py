"""The CPU twins of Iwin's patch embedding and block (layers/iwin_cpu.py) equal the plain modules.

Golden-fixture parity of the converted model is in test_optimize.py; here: each twin against its plain
module on random inputs at odd sizes, each fast path on its own, with gradients, and the windows made
without the padded map (layers/interleave.py) bit for bit.
"""
from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iwin_models.fast import iwin_cpu
from iwin_models.fast.interleave import map_from_windows, windows_from_map
from iwin_models.fast.iwin_cpu import ALL_PATHS, CpuIwinBlock, CpuPatchEmbed
from iwin_models.models import iwin

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _block(dim=32, heads=2, window=7, dwconv=True, seed=0, **kwargs):
    torch.manual_seed(seed)
    block = iwin.IwinBlock(dim, heads, window_size=window, use_dwconv=dwconv, **kwargs).eval()
    with torch.no_grad():  # biases and norms off their init values, so a dropped term shows
        for p in block.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return block


def _twin(block, paths=ALL_PATHS):
    return CpuIwinBlock.from_plain(block, paths)


@pytest.mark.slow
@settings(max_examples=40, **SETTINGS)
@given(h=st.integers(1, 40), w=st.integers(1, 40), ws=st.sampled_from([1, 3, 7, 12]), dwconv=st.booleans(),
       off=st.sampled_from([None, *sorted(ALL_PATHS)]))
def test_block_twin_equals_plain_at_any_size(h, w, ws, dwconv, off):
    """Inference: every fast path on, and each one left out in turn (the others stay on)."""
    block = _block(window=ws, dwconv=dwconv, seed=h * 100 + w)
    x = torch.randn(2, h, w, 32)
    with torch.no_grad():
        plain = block(x)
        fast = _twin(block, ALL_PATHS - {off})(x.clone())
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("size", [(9, 13), (16, 16), (14, 14)])  # large padding share, square, no padding
def test_block_twin_equals_plain_with_gradients(size):
    """Training mode: same outputs and same gradients for inputs and every parameter."""
    block = _block()
    block.train()
    x = torch.randn(2, *size, 32)
    results = {}
    for name, module in (("plain", block), ("twin", _twin(block))):
        block.zero_grad()
        leaf = x.clone().requires_grad_()
        out = module(leaf)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        results[name] = out.detach(), leaf.grad, [p.grad.clone() for p in block.parameters()]
    (out_p, gx_p, gp_p), (out_f, gx_f, gp_f) = results["plain"], results["twin"]
    torch.testing.assert_close(out_f, out_p, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gx_f, gx_p, rtol=1e-4, atol=1e-5)
    for a, b in zip(gp_f, gp_p, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_block_twin_leaves_its_input_alone_under_autocast():
    block = _block()
    x = torch.randn(2, 20, 23, 32)
    before = x.clone()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        fast = _twin(block)(x)
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
        torch.testing.assert_close(_twin(block)(x), block(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("size", [(97, 131), (64, 64), (3, 5)])
@pytest.mark.parametrize("in_chans", [1, 3, 4])
@pytest.mark.parametrize("onednn", [True, False])
def test_patch_embed_twin_equals_plain(size, in_chans, onednn):
    torch.manual_seed(0)
    embed = iwin.PatchEmbed(4, in_chans, 32)
    x = torch.randn(2, in_chans, *size, requires_grad=True)
    twin = CpuPatchEmbed.from_plain(embed, {"patch_matmul"} | ({"onednn_linear"} if onednn else set()))
    plain, fast = embed(x), twin(x)
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-5)
    grads = [torch.autograd.grad(out.sum(), [x, embed.proj.weight]) for out in (plain, fast)]
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_twin_shares_the_plain_state_and_gives_it_back():
    block = _block()
    twin = _twin(block)
    assert twin.state_dict().keys() == block.state_dict().keys()
    assert all(a is b for a, b in zip(twin.parameters(), block.parameters(), strict=True))
    assert "cpu twin of IwinBlock" in repr(twin) and "chunked" in repr(twin)
    plain = twin.to_plain()
    assert type(plain) is iwin.IwinBlock and not hasattr(plain, "fast_paths")
    x = torch.randn(1, 9, 11, 32)
    with torch.no_grad():
        assert torch.equal(plain(x), block(x))


def test_twin_refuses_tracers_with_advice():
    twin = _twin(_block())
    with pytest.raises(RuntimeError, match="restore_plain"):
        torch.fx.symbolic_trace(twin)
    with pytest.raises(RuntimeError, match="restore_plain"):
        torch.jit.script(twin)
    with pytest.raises(RuntimeError, match="restore_plain"):
        torch.jit.trace(twin, torch.randn(1, 7, 7, 32))


# --- windows without the padded map (layers/interleave.py) ---------------------------------------

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
