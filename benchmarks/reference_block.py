"""A plain reference Iwin backbone, written the way the authors' code computes it.

Used by ``bench_cpu.py`` as the speed baseline and as an independent check of ``IwinTransformer``.
It follows the steps of the official model (see ``../shared/spec/iwin-reference.md``) without any of
our shortcuts:

* tokens travel as (B, H*W, C) and are viewed as (B, H, W, C) inside each block;
* the interleaved windows are made by a two-step "rearrange" (a reshape/transpose along the rows,
  then along the columns, each followed by a ``.contiguous()`` copy) and then Swin's
  ``window_partition``; after attention Swin's ``window_reverse`` and the inverse rearrange undo it;
* attention is the explicit ``softmax((q * scale) @ k^T) @ v``;
* the depthwise convolution runs on an NCHW copy of the map and is permuted back.

The modules use our parameter names, so ``build_reference(model)`` loads ``model.state_dict()``
strictly and the two compute the same function (``check_reference`` asserts it).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["ReferenceIwin", "build_reference", "check_reference"]


def window_partition(x: torch.Tensor, ws: int) -> torch.Tensor:
    """Swin's partition: (B, H, W, C) -> (B * H/ws * W/ws, ws, ws, C), contiguous blocks."""
    B, H, W, C = x.shape
    x = x.view(B, H // ws, ws, W // ws, ws, C)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, ws, ws, C)


def window_reverse(windows: torch.Tensor, ws: int, H: int, W: int) -> torch.Tensor:
    """Swin's inverse partition: (num_windows * B, ws, ws, C) -> (B, H, W, C)."""
    C = windows.shape[-1]
    x = windows.view(-1, H // ws, W // ws, ws, ws, C)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, H, W, C)


def rearrange_to_blocks(x: torch.Tensor, ws: int) -> torch.Tensor:
    """Move the tokens of each interleaved window into one contiguous ws x ws block.

    Row ``i * Hg + a`` goes to row ``a * ws + i`` (and the same for the columns), so that Swin's
    plain partition of the result gives the interleaved windows.
    """
    B, H, W, C = x.shape
    hg, wg = H // ws, W // ws
    x = x.view(B, ws, hg, W, C).transpose(1, 2).contiguous().view(B, H, W, C)
    x = x.view(B, H, ws, wg, C).transpose(2, 3).contiguous().view(B, H, W, C)
    return x


def rearrange_from_blocks(x: torch.Tensor, ws: int) -> torch.Tensor:
    """Inverse of :func:`rearrange_to_blocks`."""
    B, H, W, C = x.shape
    hg, wg = H // ws, W // ws
    x = x.view(B, H, wg, ws, C).transpose(2, 3).contiguous().view(B, H, W, C)
    x = x.view(B, hg, ws, W, C).transpose(1, 2).contiguous().view(B, H, W, C)
    return x


class RefAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        N, L, C = x.shape
        qkv = self.qkv(x).reshape(N, L, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q * self.scale) @ k.transpose(-2, -1)
        attn = attn.softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(N, L, C)
        return self.proj(x)


class RefDwConv(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.depthwise = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)


class RefMlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class RefBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, window_size: int, use_dwconv: bool, mlp_ratio: float = 4.):
        super().__init__()
        self.window_size = window_size
        self.norm1 = nn.LayerNorm(dim)
        self.attn = RefAttention(dim, num_heads)
        self.dwconv = RefDwConv(dim) if use_dwconv else None
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = RefMlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        B, L, C = x.shape
        ws = self.window_size
        shortcut = x
        x = self.norm1(x).view(B, H, W, C)

        if self.dwconv is not None:
            conv = self.dwconv.depthwise(x.permute(0, 3, 1, 2).contiguous())
            conv = conv.permute(0, 2, 3, 1).contiguous().view(B, H * W, C)

        pad_b, pad_r = (ws - H % ws) % ws, (ws - W % ws) % ws
        y = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
        Hp, Wp = H + pad_b, W + pad_r
        y = rearrange_to_blocks(y, ws)
        windows = window_partition(y, ws).view(-1, ws * ws, C)
        windows = self.attn(windows).view(-1, ws, ws, C)
        y = window_reverse(windows, ws, Hp, Wp)
        y = rearrange_from_blocks(y, ws)
        if pad_b or pad_r:
            y = y[:, :H, :W, :].contiguous()
        y = y.view(B, H * W, C)
        if self.dwconv is not None:
            y = y + conv

        x = shortcut + y
        return x + self.mlp(self.norm2(x))


class RefDownsample(nn.Module):
    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.conv = nn.Conv2d(dim, out_dim, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor, H: int, W: int):
        B, _, C = x.shape
        x = self.norm(x).view(B, H, W, C).permute(0, 3, 1, 2).contiguous()
        if H % 2 or W % 2:
            x = F.pad(x, (0, W % 2, 0, H % 2))
        x = F.pad(x, (0, 1, 0, 1))
        x = self.conv(x)
        H, W = x.shape[-2:]
        return x.flatten(2).transpose(1, 2).contiguous(), H, W


class RefPatchEmbed(nn.Module):
    def __init__(self, in_chans: int, dim: int, patch: int = 4):
        super().__init__()
        self.patch = patch
        self.proj = nn.Conv2d(in_chans, dim, patch, stride=patch)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor):
        H, W = x.shape[-2:]
        p = self.patch
        if H % p or W % p:
            x = F.pad(x, (0, (p - W % p) % p, 0, (p - H % p) % p))
        x = self.proj(x)
        H, W = x.shape[-2:]
        return self.norm(x.flatten(2).transpose(1, 2)), H, W


class RefStage(nn.Module):
    def __init__(self, dim, out_dim, depth, num_heads, window_size, downsample, use_dwconv):
        super().__init__()
        self.downsample = RefDownsample(dim, out_dim) if downsample else None
        self.blocks = nn.ModuleList([RefBlock(out_dim, num_heads, window_size, use_dwconv) for _ in range(depth)])


class ReferenceIwin(nn.Module):
    """Segmentation backbone: four NCHW feature maps after the per-stage norms."""

    def __init__(self, embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window_size=7,
                 dwconv_stages=(True, True, True, False), in_chans=3):
        super().__init__()
        dims = [embed_dim * 2 ** i for i in range(len(depths))]
        self.patch_embed = RefPatchEmbed(in_chans, embed_dim)
        self.layers = nn.ModuleList([
            RefStage(dims[max(i - 1, 0)], dims[i], depths[i], num_heads[i], window_size, i > 0, dwconv_stages[i])
            for i in range(len(depths))])
        self.stage_norms = nn.ModuleList([nn.LayerNorm(d) for d in dims])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x, H, W = self.patch_embed(x)
        outs = []
        for stage, norm in zip(self.layers, self.stage_norms):
            if stage.downsample is not None:
                x, H, W = stage.downsample(x, H, W)
            for block in stage.blocks:
                x = block(x, H, W)
            out = norm(x)
            outs.append(out.view(x.shape[0], H, W, -1).permute(0, 3, 1, 2).contiguous())
        return outs


def build_reference(model: nn.Module) -> ReferenceIwin:
    """A :class:`ReferenceIwin` with the architecture and weights of our ``IwinTransformer``.

    ``model`` must have the per-stage norms (``features_only`` / segmentation backbone).
    """
    stages = list(model.layers)
    ref = ReferenceIwin(
        embed_dim=model.dims[0],
        depths=[len(s.blocks) for s in stages],
        num_heads=[s.blocks[0].attn.num_heads for s in stages],
        window_size=model.window_size,
        dwconv_stages=[s.blocks[0].dwconv is not None for s in stages],
        in_chans=model.in_chans,
    )
    sd = {k: v for k, v in model.state_dict().items() if not k.startswith(("norm.", "head."))}
    ref.load_state_dict(sd, strict=True)
    return ref.to(next(model.parameters()).dtype).eval()


def check_reference(model: nn.Module, ref: ReferenceIwin, x: torch.Tensor, atol: float = 1e-4) -> float:
    """Assert that our backbone's stage features equal the reference's; returns the max difference."""
    with torch.no_grad():
        ours = model.forward_intermediates(x, intermediates_only=True)
        theirs = ref(x)
    worst = 0.0
    for i, (a, b) in enumerate(zip(ours, theirs)):
        assert a.shape == b.shape, f"stage {i}: shape {tuple(a.shape)} != reference {tuple(b.shape)}"
        diff = (a - b).abs().max().item()
        scale = max(b.abs().max().item(), 1.0)
        assert diff <= atol * scale, f"stage {i}: max |ours - reference| = {diff:.3g} (> {atol} x {scale:.3g})"
        worst = max(worst, diff)
    return worst
