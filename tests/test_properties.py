"""Property-based tests (hypothesis): any input size and window size, and the interleaved-window reordering."""
from __future__ import annotations

import functools
import math

import pytest
import timm
import torch
from conftest import MINI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iwin_models.fast import iwin_cpu
from iwin_models.models.iwin import deinterleave_windows, interleave_windows
from iwin_models.models.upernet import IwinUPerNet

# the autouse TORCH_HOME fixture is function-scoped; it does not matter between examples here
DEFAULT_CHUNK_BYTES = iwin_cpu._CHUNK_BYTES
SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@functools.cache
def _features(window_size: int):
    torch.manual_seed(0)
    return timm.create_model("iwin_tiny", features_only=True, window_size=window_size, **MINI).eval()


@functools.cache
def _segmenter(classes: int):
    torch.manual_seed(0)
    return IwinUPerNet("iwin_tiny", encoder_kwargs=MINI, decoder_channels=64, aux_channels=32, classes=classes).eval()


@pytest.mark.slow
@settings(max_examples=40, **SETTINGS)
@given(h=st.integers(1, 160), w=st.integers(1, 160), window=st.sampled_from([1, 2, 3, 5, 7, 12]))
def test_backbone_any_size_any_window(h, w, window):
    model = _features(window)
    with torch.no_grad():
        feats = model(torch.randn(1, 3, h, w))
    assert len(feats) == 4
    fh, fw = math.ceil(h / 4), math.ceil(w / 4)
    for f, c in zip(feats, (32, 64, 128, 256), strict=True):
        assert tuple(f.shape) == (1, c, fh, fw)
        assert torch.isfinite(f).all()
        fh, fw = math.ceil(fh / 2), math.ceil(fw / 2)


@pytest.mark.slow
@settings(max_examples=25, **SETTINGS)
@given(h=st.integers(1, 96), w=st.integers(1, 96), classes=st.sampled_from([1, 2, 5, 150]))
def test_segmenter_any_size(h, w, classes):
    model = _segmenter(classes)
    with torch.no_grad():
        logits = model(torch.randn(1, 3, h, w))
    assert tuple(logits.shape) == (1, classes, h, w)
    assert torch.isfinite(logits).all()


def reference_interleave(x: torch.Tensor, ws: int) -> torch.Tensor:
    """Explicit loops over the definition: window (a, b) holds rows a, a+Hg, ... and columns b, b+Wg, ...

    Windows are ordered (batch, a, b); tokens inside a window row-major over (i, j)."""
    B, Hp, Wp, C = x.shape
    Hg, Wg = Hp // ws, Wp // ws
    windows = []
    for n in range(B):
        for a in range(Hg):
            for b in range(Wg):
                tokens = [x[n, a + i * Hg, b + j * Wg] for i in range(ws) for j in range(ws)]
                windows.append(torch.stack(tokens))
    return torch.stack(windows)


def official_style_interleave(x: torch.Tensor, ws: int) -> torch.Tensor:
    """The authors' construction: rearrange so that every interleaved window becomes contiguous, then a
    Swin window partition (ws x ws blocks, row-major over the grid of windows)."""
    B, Hp, Wp, C = x.shape
    Hg, Wg = Hp // ws, Wp // ws
    # rearrange 'b (i a) (j c) ch -> b (a i) (c j) ch' with i=ws, a=Hg (j=ws, c=Wg)
    y = x.reshape(B, ws, Hg, ws, Wg, C).permute(0, 2, 1, 4, 3, 5).reshape(B, Hp, Wp, C)
    # Swin window_partition
    y = y.reshape(B, Hg, ws, Wg, ws, C).permute(0, 1, 3, 2, 4, 5)
    return y.reshape(-1, ws * ws, C)


@settings(max_examples=100, **SETTINGS)
@given(b=st.integers(1, 3), c=st.integers(1, 5), ws=st.integers(1, 8), hg=st.integers(1, 6), wg=st.integers(1, 6),
       seed=st.integers(0, 2 ** 16))
def test_interleave_matches_definition_and_round_trips(b, c, ws, hg, wg, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, ws * hg, ws * wg, c, generator=g)
    windows = interleave_windows(x, ws)
    assert windows.shape == (b * hg * wg, ws * ws, c)
    assert torch.equal(windows, reference_interleave(x, ws))
    assert torch.equal(windows, official_style_interleave(x, ws))
    assert torch.equal(deinterleave_windows(windows, ws, ws * hg, ws * wg), x)


@settings(max_examples=30, **SETTINGS)
@given(b=st.integers(1, 2), ws=st.integers(1, 8), hg=st.integers(1, 6), wg=st.integers(1, 6))
def test_deinterleave_inverts_on_arbitrary_windows(b, ws, hg, wg):
    """deinterleave(w) puts token k of window (a, b) back at row a + (k // ws) * Hg, column b + (k % ws) * Wg."""
    windows = torch.arange(b * hg * wg * ws * ws, dtype=torch.float64).reshape(b * hg * wg, ws * ws, 1)
    x = deinterleave_windows(windows, ws, ws * hg, ws * wg)
    assert torch.equal(interleave_windows(x, ws), windows)
    n, a, bb, k = b - 1, hg - 1, wg - 1, ws * ws - 1  # the last token of the last window
    idx = ((n * hg + a) * wg + bb)
    assert x[n, a + (k // ws) * hg, bb + (k % ws) * wg, 0] == windows[idx, k, 0]


@pytest.mark.parametrize("ws", [1, 7])
def test_interleave_single_window_is_identity_grid(ws):
    """With Hg = Wg = 1 there is one window holding the whole map in row-major order."""
    x = torch.randn(2, ws, ws, 3)
    assert torch.equal(interleave_windows(x, ws), x.reshape(2, ws * ws, 3))


def padded(x: torch.Tensor, ws: int, value: torch.Tensor | None = None) -> torch.Tensor:
    """The map padded bottom/right to window multiples, built the obvious way."""
    B, H, W, C = x.shape
    out = torch.zeros(B, -(-H // ws) * ws, -(-W // ws) * ws, C, dtype=x.dtype) if value is None else \
        value.expand(B, -(-H // ws) * ws, -(-W // ws) * ws, C).clone()
    out[:, :H, :W] = x
    return out


@settings(max_examples=40, **SETTINGS)
@given(h=st.integers(1, 20), w=st.integers(1, 20), ws=st.integers(1, 8), heads=st.sampled_from([1, 2, 4]),
       small_chunks=st.booleans())
def test_attention_equals_padding_first(h, w, ws, heads, small_chunks, monkeypatch):
    """Our attention, plain and fast (qkv before padding, proj after cropping, windows attended a few at
    a time in inference), equals the official order: pad the normalised map with zeros, qkv/attention/proj on
    every token, crop."""
    from iwin_models.models.iwin import InterleavedAttention

    # (hypothesis examples share the monkeypatch: set it either way) 1000 bytes: one window per chunk
    monkeypatch.setattr(iwin_cpu, "_CHUNK_BYTES", 1000 if small_chunks else DEFAULT_CHUNK_BYTES)

    torch.manual_seed(h * 1000 + w * 10 + ws)
    attn = InterleavedAttention(8, heads).double().eval()
    x = torch.randn(2, h, w, 8, dtype=torch.float64)
    with torch.no_grad():
        windows = interleave_windows(padded(x, ws), ws)
        q, k, v = attn.qkv(windows).unflatten(-1, (3, heads, 8 // heads)).permute(2, 0, 3, 1, 4)
        weights = (q @ k.transpose(-2, -1) / math.sqrt(8 // heads)).softmax(-1)
        out = attn.proj((weights @ v).transpose(1, 2).flatten(2))
        expected = deinterleave_windows(out, ws, h, w)
        torch.testing.assert_close(attn(x, ws), expected, rtol=1e-12, atol=1e-12)
        fast = iwin_cpu._attention(attn, x, ws, iwin_cpu.ALL_PATHS)
        torch.testing.assert_close(fast, expected, rtol=1e-12, atol=1e-12)
