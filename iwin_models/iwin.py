"""Iwin Transformer for timm.

Iwin: Hierarchical Vision Transformer using Interleaved Windows (https://arxiv.org/abs/2507.18405).
A Swin-like hierarchy without any position embedding: each block adds attention inside
*interleaved* windows (tokens sampled with a stride over the whole map, so every window sees
the whole image) to a 3x3 depthwise convolution (which sees the neighbourhood).

Our own implementation of the authors' model (github.com/Cominder/Iwin-Transformer, MIT). It loads
their ImageNet checkpoints and the backbones of their mmsegmentation checkpoints unchanged, and
reproduces their outputs to float32 round-off. Layout differences from the official code:

* tokens stay NHWC from the patch embedding to the last stage;
* the stride-2 downsampler sits at the *start* of the next stage (timm's Swin layout), so that
  stage ``i`` outputs the stride ``4 * 2**i`` map: ``layers.{i}.downsample`` in an official
  checkpoint is ``layers.{i+1}.downsample`` here;
* the classifier is timm's ``ClassifierHead`` (``head.fc``);
* the segmentation backbone's per-output norms ``norm0..3`` are ``stage_norms.{0..3}``, built when
  ``stage_norms=True`` (the default with ``features_only=True``).
"""
from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import ClassifierHead, DropPath, Mlp, trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from timm.models._manipulate import checkpoint_seq
from torch.utils.flop_counter import conv_flop_count, register_flop_formula

from .checkpoint import CheckpointError, check_state_dict_fits, unwrap_state_dict

__all__ = [
    "IwinTransformer", "checkpoint_filter_fn", "interleave_windows", "deinterleave_windows", "linear",
    "use_onednn_linears",
]

_ONEDNN_LINEARS = True


def use_onednn_linears(enabled: bool = True) -> bool:
    """Run float32 CPU linear layers through oneDNN (the default) or torch's ``F.linear``; returns the old setting.

    See :func:`linear`. Both compute the same function; only the float32 round-off differs.
    """
    global _ONEDNN_LINEARS
    previous, _ONEDNN_LINEARS = _ONEDNN_LINEARS, bool(enabled)
    return previous


def _is_traced() -> bool:
    """Whether a compiler or exporter is recording the graph (it then chooses its own kernels)."""
    return torch.jit.is_scripting() or torch.jit.is_tracing() or torch.compiler.is_compiling()


def _records_grad(x: torch.Tensor) -> bool:
    """Whether autograd records the operations on ``x``."""
    return torch.is_grad_enabled() and x.requires_grad


def _runs_in_chunks(x: torch.Tensor) -> bool:
    """Eager CPU inference (no autograd graph through ``x``): big maps then go through in chunks."""
    return x.device.type == 'cpu' and not _records_grad(x) and not _is_traced()


# CPU inference runs big maps through the attention and the MLP in chunks of about this many bytes, so
# that intermediates stay in cache and no big buffer is freshly allocated and page-faulted in (on 2 EPYC
# cores 4-16 MB were alike within noise, 1 MB was 20% slower). GPUs have a caching allocator and prefer
# fewer, larger kernels.
_CHUNK_BYTES = 8 << 20


def _rows_per_chunk(bytes_per_row: int) -> int:
    """Rows of an inference chunk: its widest intermediate takes about ``_CHUNK_BYTES``."""
    return max(_CHUNK_BYTES // bytes_per_row, 1)


# oneDNN's call overhead (~25 us) outweighs its faster product below about this much work
_ONEDNN_MIN_MACS = 1 << 22


def _onednn_takes(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (x.device.type == 'cpu' and x.dtype == weight.dtype == torch.float32
            and x.shape[-1] == weight.shape[1]  # otherwise F.linear raises its shape error
            and x.numel() * weight.shape[0] >= _ONEDNN_MIN_MACS
            and not torch.is_autocast_enabled('cpu')  # torch's bfloat16 linear already runs on oneDNN
            and torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear``, computed by oneDNN for float32 CPU tensors.

    On CPU, torch sends ``F.linear`` to MKL's sgemm. On the AMD EPYC machines we benchmark on it reaches
    ~220 GFLOP/s on Iwin's shapes, while oneDNN's convolution kernels reach ~500 GFLOP/s on the same
    products (benchmarks/RESULTS.md). A linear layer on rows is a 1x1 convolution over the rows seen as a
    channels-last (1, K, rows, 1) image, a view: nothing is copied, and the output comes back as
    contiguous rows. ``torch.mkldnn_convolution`` is called directly because ``F.conv2d`` picks its
    native kernel for small inputs. Small products, CUDA, other dtypes, autocast, compilers and
    exporters get ``F.linear`` unchanged. Autograd works through both.
    """
    if not _ONEDNN_LINEARS or _is_traced() or not _onednn_takes(x, weight):
        return F.linear(x, weight, bias)
    out_features, in_features = weight.shape
    rows = x.reshape(-1, in_features).contiguous()
    image = rows.view(1, rows.shape[0], 1, in_features).permute(0, 3, 1, 2)
    out = torch.mkldnn_convolution(
        image, weight.reshape(out_features, in_features, 1, 1), bias, (0, 0), (1, 1), (1, 1), 1)
    return out.permute(0, 2, 3, 1).reshape(*x.shape[:-1], out_features)


def _onednn_convolution_flops(x_shape, w_shape, *args, out_shape=None, **kwargs) -> int:
    return conv_flop_count(x_shape, w_shape, out_shape)


# torch's FlopCounterMode counts convolutions through their generic ops only: without a formula for
# the op that :func:`linear` calls, it would see no work in our linear layers (a torch that counts
# the op itself keeps its own formula)
with contextlib.suppress(RuntimeError):
    register_flop_formula(torch.ops.aten.mkldnn_convolution)(_onednn_convolution_flops)


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters) computed by :func:`linear`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


def _grid_blocks(n: int, groups: int) -> list[tuple[slice, slice, slice]]:
    """The first ``n`` rows of a map padded to ``ws * groups`` rows, as rectangles of its grid.

    Row ``i * groups + a`` of the padded map is cell (i, a) of a (ws, groups) grid, so rows 0..n-1
    are the cells with ``i < n // groups`` plus the first ``n % groups`` cells of the next ``i``.
    Each rectangle is (its rows in the map, its range of i, its range of a).
    """
    full, rest = divmod(n, groups)
    blocks = [(slice(0, full * groups), slice(0, full), slice(0, groups))] if full else []
    if rest:
        blocks.append((slice(full * groups, n), slice(full, full + 1), slice(0, rest)))
    return blocks


def _padding_blocks(n: int, groups: int) -> list[tuple[slice, slice]]:
    """The grid cells of the padding rows (``n`` onwards), as (range of i, range of a) rectangles."""
    full, rest = divmod(n, groups)
    return [(slice(full, full + 1), slice(rest, groups)), (slice(full + 1, None), slice(None))]


def _as_grid(windows: torch.Tensor, window_size: int, Hg: int, Wg: int) -> torch.Tensor:
    """(B * Hg * Wg, ws * ws, C) windows as a (B, ws, Hg, ws, Wg, C) view of the padded map."""
    ws = window_size
    return windows.view(-1, Hg, Wg, ws, ws, windows.shape[-1]).permute(0, 3, 1, 4, 2, 5)


def _map_blocks(x: torch.Tensor, Hg: int, Wg: int):
    """Pairs (block of the (B, H, W, C) map ``x`` as a 6-d tensor, its index into the grid)."""
    _, H, W, _ = x.shape
    for rows, i, a in _grid_blocks(H, Hg):
        for cols, j, b in _grid_blocks(W, Wg):
            block = x[:, rows, cols].unflatten(1, (-1, a.stop - a.start)).unflatten(3, (-1, b.stop - b.start))
            yield block, (slice(None), i, a, j, b)


def interleave_windows(x: torch.Tensor, window_size: int, pad_value: torch.Tensor | None = None) -> torch.Tensor:
    """Split a (B, H, W, C) map into interleaved windows, (B * Hg * Wg, ws * ws, C).

    The map is padded bottom/right to ``ws * Hg`` x ``ws * Wg`` (Hg = ceil(H / ws)) with zeros, or with
    ``pad_value`` (shape (C,)). Window (a, b) holds the tokens at rows a, a + Hg, a + 2Hg, ... and
    columns b, b + Wg, ... Row ``i * Hg + a`` is entry (i, a) of a (ws, Hg) view, so one reshape and
    one permute put the window index (a, b) in front. With padding, the tokens are copied through
    that same view straight into the windows (at most four rectangles) and only the padding is
    filled: the padded map is never built.
    """
    B, H, W, C = x.shape
    ws = window_size
    Hg, Wg = -(-H // ws), -(-W // ws)
    if H == ws * Hg and W == ws * Wg:
        return x.reshape(B, ws, Hg, ws, Wg, C).permute(0, 2, 4, 1, 3, 5).reshape(-1, ws * ws, C)
    windows = x.new_empty(B * Hg * Wg, ws * ws, C)
    grid = _as_grid(windows, ws, Hg, Wg)
    pad = x.new_zeros(C) if pad_value is None else pad_value
    padding = [(slice(None), i, a) for i, a in _padding_blocks(H, Hg)] + \
              [(slice(None), slice(None), slice(None), j, b) for j, b in _padding_blocks(W, Wg)]
    for index in padding:
        block = grid[index]
        block.copy_(pad.expand_as(block))  # an explicit expand: ONNX export mishandles a broadcasting copy_
    for block, index in _map_blocks(x, Hg, Wg):
        grid[index].copy_(block)
    return windows


def deinterleave_windows(windows: torch.Tensor, window_size: int, H: int, W: int) -> torch.Tensor:
    """Inverse of :func:`interleave_windows`: the (B, H, W, C) map, padding dropped on the way."""
    ws = window_size
    Hg, Wg = -(-H // ws), -(-W // ws)
    grid = _as_grid(windows, ws, Hg, Wg)
    if H == ws * Hg and W == ws * Wg:
        return grid.reshape(-1, H, W, windows.shape[-1])
    x = windows.new_empty(grid.shape[0], H, W, windows.shape[-1])
    for block, index in _map_blocks(x, Hg, Wg):
        block.copy_(grid[index])
    return x


def _padding_share(H: int, W: int, window_size: int) -> float:
    """Padded tokens per real token when an H x W map is padded to window multiples."""
    return (-(-H // window_size) * -(-W // window_size) * window_size ** 2) / (H * W) - 1


class InterleavedAttention(nn.Module):
    """Multi-head self-attention inside interleaved windows; no position bias, no mask.

    Like the official model, the map is padded to window multiples after ``norm1`` and the padded
    tokens take part in attention. A zero token's q, k, v are just the ``qkv`` bias, so where the
    padding is a large share of the map (+72% tokens for a 16 x 16 map and window 7), ``qkv`` runs
    on the real tokens only and the padding is filled with its bias. Where it is small, the C-channel
    input is interleaved instead of the 3C-channel q, k, v: less memory traffic than the FLOPs saved.
    ``proj`` always runs after the padding is dropped again. Same numbers either way.
    """

    def __init__(
            self,
            dim: int,
            num_heads: int,
            qkv_bias: bool = True,
            attn_drop: float = 0.,
            proj_drop: float = 0.,
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def qkv_skips_padding(self, H: int, W: int, window_size: int) -> bool:
        """Whether ``qkv`` runs on the real tokens only for an H x W map."""
        # padded qkv FLOPs per token (share * 3C^2) vs the extra 2C channels copied per token;
        # the threshold is where skipping them started to pay on a 2-core AVX-512 CPU
        return _padding_share(H, W, window_size) * self.qkv.in_features >= 32

    def forward(self, x: torch.Tensor, window_size: int) -> torch.Tensor:
        _, H, W, C = x.shape
        if self.qkv_skips_padding(H, W, window_size):
            x = self._attend(interleave_windows(self.qkv(x), window_size, pad_value=self.qkv.bias))
        elif _runs_in_chunks(x):
            x = self._attend_in_chunks(interleave_windows(x, window_size))
        else:
            x = self._attend(self.qkv(interleave_windows(x, window_size)))
        x = deinterleave_windows(x, window_size, H, W)
        return self.proj_drop(self.proj(x))

    def _attend(self, qkv: torch.Tensor) -> torch.Tensor:
        """(N, L, 3C) q, k, v of N windows -> (N, L, C) attention output."""
        N, L, _ = qkv.shape
        q, k, v = qkv.view(N, L, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        # SDPA's default scale is head_dim ** -0.5, the official one
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.)
        return x.transpose(1, 2).reshape(N, L, -1)

    def _attend_in_chunks(self, windows: torch.Tensor) -> torch.Tensor:
        """``_attend(qkv(windows))`` a few windows at a time (CPU inference).

        Windows are independent, and a chunk's q, k, v stay in cache from ``qkv`` to attention instead
        of making one 3C-channel map in fresh memory (77 MB in the first stage at 1024x1024).
        """
        _, L, C = windows.shape
        per_chunk = max(_rows_per_chunk(3 * C * windows.element_size()) // L, 1)
        out = torch.empty_like(windows)
        for src, dst in zip(windows.split(per_chunk), out.split(per_chunk)):
            dst.copy_(self._attend(self.qkv(src)))
        return out


class GELU(nn.GELU):
    """Exact GELU that overwrites its input when no gradient is being recorded.

    Meant for a fresh input (here the MLP's ``fc1`` output): inference then never allocates a second
    copy of the block's largest map (4C channels; at 1024x1024 a fresh 100 MB buffer per stage-0 block).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _records_grad(x) or self.approximate != "none":
            return super().forward(x)
        return torch.ops.aten.gelu_(x)


class IwinMlp(Mlp):
    """timm's ``Mlp`` with :class:`Linear` layers (same parameters)."""

    def __init__(self, dim: int, hidden_dim: int, act_layer: Callable = GELU, drop: float = 0.):
        super().__init__(dim, hidden_dim, act_layer=act_layer, drop=drop)
        self.fc1, self.fc2 = Linear(dim, hidden_dim), Linear(hidden_dim, dim)


class DepthwiseConv(nn.Module):
    """3x3 depthwise convolution on an NHWC map (``dwconv.depthwise`` in the checkpoints)."""

    def __init__(self, dim: int, kernel_size: int = 3):
        super().__init__()
        self.depthwise = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.depthwise(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


def _add_to_temporary(temporary: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """``temporary + other``, written into ``temporary`` when the sum keeps its dtype.

    ``temporary`` must be a fresh result that no backward needs (a linear layer's, a convolution's, a
    DropPath's output): adding in place then saves allocating and filling a new map, which is what the
    residual adds cost. Under autocast a bf16 branch added to the fp32 stream still promotes.
    """
    if torch.promote_types(temporary.dtype, other.dtype) != temporary.dtype:
        return temporary + other
    return temporary.add_(other)


class IwinBlock(nn.Module):
    """Interleaved-window attention plus depthwise convolution, then an MLP, both residual."""

    def __init__(
            self,
            dim: int,
            num_heads: int,
            window_size: int = 7,
            use_dwconv: bool = True,
            mlp_ratio: float = 4.,
            qkv_bias: bool = True,
            proj_drop: float = 0.,
            attn_drop: float = 0.,
            drop_path: float = 0.,
            act_layer: Callable = GELU,
            norm_layer: Callable = nn.LayerNorm,
    ):
        super().__init__()
        self.window_size = window_size
        self.norm1 = norm_layer(dim)
        self.attn = InterleavedAttention(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop)
        self.dwconv = DepthwiseConv(dim) if use_dwconv else None
        self.drop_path1 = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = IwinMlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=proj_drop)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm1(x)
        mixed = self.attn(y, self.window_size)
        if self.dwconv is not None:
            mixed = _add_to_temporary(mixed, self.dwconv(y))  # the convolution sees the unpadded map
        x = _add_to_temporary(self.drop_path1(mixed), x)
        if self.training or not _runs_in_chunks(x) or not x.is_contiguous():
            return _add_to_temporary(self.drop_path2(self.mlp(self.norm2(x))), x)
        # x is the fresh sum above, so the MLP branch can be added into it chunk by chunk: the 4C-channel
        # hidden map (100 MB in the first stage at 1024x1024) then never exists at once
        rows = x.view(-1, x.shape[-1])
        for chunk in rows.split(_rows_per_chunk(self.mlp.fc1.out_features * x.element_size())):
            chunk.add_(self.mlp(self.norm2(chunk)))
        return x


class Downsample(nn.Module):
    """LayerNorm, then a 3x3 stride-2 convolution to twice the channels; output ceil(H/2) x ceil(W/2).

    The official layer pads odd sizes to even, then pads one more row and column (bottom/right)
    before an unpadded convolution; both pads are folded into one here.
    """

    def __init__(self, dim: int, out_dim: int | None = None, norm_layer: Callable = nn.LayerNorm, stride: int = 2):
        super().__init__()
        self.norm = norm_layer(dim)
        # stride 1 (output_stride < 32, for DeepLab-style decoders) keeps the size with a centred 3x3
        self.conv = nn.Conv2d(dim, out_dim or 2 * dim, kernel_size=3, stride=stride, padding=0 if stride == 2 else 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, H, W, _ = x.shape
        x = self.norm(x).permute(0, 3, 1, 2)
        if self.conv.stride[0] == 2:
            x = F.pad(x, (0, 1 + W % 2, 0, 1 + H % 2))
        return self.conv(x).permute(0, 2, 3, 1)


class PatchEmbed(nn.Module):
    """Non-overlapping patch projection; the image is zero-padded right/bottom to a patch multiple."""

    def __init__(self, patch_size: int = 4, in_chans: int = 3, embed_dim: int = 96, norm_layer=nn.LayerNorm):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = norm_layer(embed_dim) if norm_layer else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        H, W = x.shape[-2:]
        p = self.patch_size
        if H % p or W % p:
            x = F.pad(x, (0, -W % p, 0, -H % p))
        # A stride-p p x p convolution is a linear layer on the flattened patches; as one matmul it
        # runs ~3x faster than the convolution kernel does with 3 input channels.
        patches = x.unflatten(2, (-1, p)).unflatten(4, (-1, p)).permute(0, 2, 4, 1, 3, 5).flatten(3)
        return self.norm(linear(patches, self.proj.weight.flatten(1), self.proj.bias))


class IwinStage(nn.Module):
    """Optional stride-2 downsampler followed by ``depth`` Iwin blocks; NHWC in and out."""

    def __init__(
            self,
            dim: int,
            out_dim: int,
            depth: int,
            num_heads: int,
            window_size: int,
            downsample: bool,
            use_dwconv: bool,
            drop_path: Sequence[float],
            downsample_stride: int = 2,
            norm_layer: Callable = nn.LayerNorm,
            **block_kwargs,
    ):
        super().__init__()
        self.grad_checkpointing = False
        self.downsample = (Downsample(dim, out_dim, norm_layer=norm_layer, stride=downsample_stride)
                           if downsample else nn.Identity())
        self.blocks = nn.Sequential(*[
            IwinBlock(
                out_dim, num_heads, window_size=window_size, use_dwconv=use_dwconv,
                drop_path=drop_path[i], norm_layer=norm_layer, **block_kwargs)
            for i in range(depth)
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)


def default_dwconv_stages(img_size: int | Sequence[int], window_size: int, patch_size: int = 4, num_stages: int = 4):
    """Which stages have a depthwise conv, as the official classifier decides it.

    A classification block has one only when its map at the training resolution is larger than
    the window (stage 3 has none at 224/window 7, but has one at 1024/window 16). The decision
    belongs to the architecture (the weights), not to the window the model runs with.
    """
    grid = max(img_size) if isinstance(img_size, (tuple, list)) else img_size
    grid //= patch_size
    return tuple(grid // 2 ** i > window_size for i in range(num_stages))


class IwinTransformer(nn.Module):
    """Iwin Transformer: patch embedding, four stages of Iwin blocks, norm, pooled linear head.

    Any input size works: the image is padded to a multiple of the patch size, every block pads to
    a multiple of the window, every downsampler pads odd sizes, exactly as the authors' segmentation
    backbone does.

    Args:
        img_size: training resolution; only used to decide ``dwconv_stages`` when not given.
        patch_size: patch embedding stride.
        in_chans: input channels.
        num_classes: classifier outputs (0 for no head).
        global_pool: 'avg' or '' (timm's ClassifierHead).
        embed_dim: stage-0 channels; stage ``i`` has ``embed_dim * 2**i``.
        depths: blocks per stage.
        num_heads: attention heads per stage (not part of the weights: Iwin-S uses 3,4,8,16 in the
            ImageNet models and 3,6,12,24 in the ADE20K models).
        window_size: interleaved-window size; any value runs with the same weights.
        output_stride: 32, or 16 / 8 for dense heads (DeepLab): the last one or two downsamplers keep
            the resolution (stride 1, same weights).
        dwconv_stages: per stage, whether blocks have the depthwise conv (see
            :func:`default_dwconv_stages`).
        stage_norms: add one LayerNorm per stage output (the segmentation backbone's ``norm0..3``),
            applied by ``forward_intermediates``.
        mlp_ratio, qkv_bias, drop_rate, proj_drop_rate, attn_drop_rate, drop_path_rate: as in timm's Swin.
        norm_layer, act_layer: LayerNorm (eps 1e-5) and exact GELU by default, as trained.
    """

    def __init__(
            self,
            img_size: int = 224,
            patch_size: int = 4,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'avg',
            embed_dim: int = 96,
            depths: Sequence[int] = (2, 2, 6, 2),
            num_heads: Sequence[int] = (3, 6, 12, 24),
            window_size: int = 7,
            output_stride: int = 32,
            dwconv_stages: Sequence[bool] | None = None,
            stage_norms: bool = False,
            mlp_ratio: float = 4.,
            qkv_bias: bool = True,
            drop_rate: float = 0.,
            proj_drop_rate: float = 0.,
            attn_drop_rate: float = 0.,
            drop_path_rate: float = 0.1,
            norm_layer: Callable = nn.LayerNorm,
            act_layer: Callable = GELU,
            weight_init: str = '',
    ):
        super().__init__()
        num_stages = len(depths)
        if len(num_heads) != num_stages:
            raise ValueError(f"depths {tuple(depths)} and num_heads {tuple(num_heads)} differ in length")
        if not isinstance(window_size, int) or window_size < 1:
            raise ValueError(f"window_size must be a positive int, got {window_size!r}")
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
        if dwconv_stages is None:
            dwconv_stages = default_dwconv_stages(img_size, window_size, patch_size, num_stages)
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.window_size = window_size
        self.dims = [embed_dim * 2 ** i for i in range(num_stages)]
        self.num_features = self.head_hidden_size = self.dims[-1]

        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim, norm_layer=norm_layer)
        # stochastic depth grows linearly over all blocks (plain Python: the model must build on 'meta')
        n = sum(depths)
        dpr = [drop_path_rate * i / max(n - 1, 1) for i in range(n)]
        stages = []
        self.feature_info = []
        reduction = patch_size
        for i in range(num_stages):
            first = sum(depths[:i])
            stride = 2 if i > 0 and reduction < output_stride else 1
            reduction *= stride if i > 0 else 1
            stages.append(IwinStage(
                dim=self.dims[max(i - 1, 0)],
                out_dim=self.dims[i],
                depth=depths[i],
                num_heads=num_heads[i],
                window_size=window_size,
                downsample=i > 0,
                downsample_stride=stride,
                use_dwconv=bool(dwconv_stages[i]),
                drop_path=dpr[first:first + depths[i]],
                norm_layer=norm_layer,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                proj_drop=proj_drop_rate,
                attn_drop=attn_drop_rate,
                act_layer=act_layer,
            ))
            self.feature_info.append(dict(num_chs=self.dims[i], reduction=reduction, module=f'layers.{i}'))
        self.layers = nn.Sequential(*stages)
        self.stage_norms = nn.ModuleList([norm_layer(d) for d in self.dims]) if stage_norms else None

        self.norm = norm_layer(self.num_features)
        self.head = ClassifierHead(
            self.num_features, num_classes, pool_type=global_pool, drop_rate=drop_rate, input_fmt='NHWC')
        if weight_init != 'skip':
            self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module):
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            trunc_normal_(m.weight, std=.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return set()  # no position tables; timm's optimizer factory already skips norms and biases

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(
            stem=r'^patch_embed',
            blocks=r'^layers\.(\d+)' if coarse else [
                (r'^layers\.(\d+)\.downsample', (0,)),
                (r'^layers\.(\d+)\.\w+\.(\d+)', None),
                (r'^stage_norms\.(\d+)', (99998,)),
                (r'^norm', (99999,)),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True):
        for stage in self.layers:
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None):
        self.num_classes = num_classes
        self.head.reset(num_classes, pool_type=global_pool)

    def set_window_size(self, window_size: int):
        """Run with another interleaved-window size (the weights do not depend on it)."""
        self.window_size = window_size
        for module in self.modules():
            if isinstance(module, IwinBlock):
                module.window_size = window_size

    def check_input(self, x: torch.Tensor):
        if not isinstance(x, torch.Tensor) or x.ndim != 4:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"Iwin expects an image batch of shape (B, {self.in_chans}, H, W), got {got}")
        if x.shape[1] != self.in_chans:
            raise ValueError(
                f"Iwin was built for {self.in_chans} input channels, got {x.shape[1]} (input shape "
                f"{tuple(x.shape)}); convert the images or build the model with in_chans={x.shape[1]}")
        if not x.is_floating_point():
            raise TypeError(f"Iwin expects a floating-point (normalised) image tensor, got dtype {x.dtype}")

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: int | list[int] | None = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ):
        """Stage outputs at strides 4, 8, 16, 32 (``indices`` picks them, timm's convention).

        With ``stage_norms`` each one goes through its own LayerNorm (the segmentation backbone's
        outputs); otherwise ``norm=True`` applies the final norm to the last stage.
        """
        if output_fmt not in ('NCHW', 'NHWC'):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NHWC', got {output_fmt!r}")
        self.check_input(x)
        take_indices, max_index = feature_take_indices(len(self.layers), indices)
        last = len(self.layers) - 1
        stages = self.layers[:max_index + 1] if stop_early else self.layers

        intermediates = []
        x = self.patch_embed(x)
        for i, stage in enumerate(stages):
            x = stage(x)
            if i not in take_indices:
                continue
            if self.stage_norms is not None:
                feat = self.stage_norms[i](x)
            elif norm and i == last:
                feat = self.norm(x)
            else:
                feat = x
            intermediates.append(feat.permute(0, 3, 1, 2) if output_fmt == 'NCHW' else feat)

        if intermediates_only:
            return intermediates
        if len(stages) == len(self.layers):
            x = self.norm(x)
        return x, intermediates

    def prune_intermediate_layers(
            self,
            indices: int | list[int] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> list[int]:
        take_indices, max_index = feature_take_indices(len(self.layers), indices)
        self.layers = self.layers[:max_index + 1]
        if self.stage_norms is not None:
            self.stage_norms = self.stage_norms[:max_index + 1]
        if prune_norm or max_index < len(self.feature_info) - 1:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, '')
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        x = self.layers(self.patch_embed(x))
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=True) if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


_OFFICIAL_DOWNSAMPLE = re.compile(r'^layers\.(\d+)\.downsample\.')
_OFFICIAL_STAGE_NORM = re.compile(r'^norm(\d+)\.')


def remap_official_keys(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official key names (classification or mmseg backbone, ``backbone.`` stripped) -> ours.

    Keys already in our layout pass through: an official checkpoint is recognised by its
    ``layers.0.downsample`` (we have none) or ``head.weight`` / ``norm{i}`` names.
    """
    official = any(k.startswith('layers.0.downsample.') for k in state_dict)
    out = {}
    for k, v in state_dict.items():
        if official:
            k = _OFFICIAL_DOWNSAMPLE.sub(lambda m: f'layers.{int(m[1]) + 1}.downsample.', k)
        k = _OFFICIAL_STAGE_NORM.sub(r'stage_norms.\1.', k)
        if k.startswith('head.') and not k.startswith('head.fc.'):
            k = 'head.fc.' + k[len('head.'):]
        out[k] = v
    return out


def checkpoint_filter_fn(state_dict: dict, model: IwinTransformer) -> dict[str, torch.Tensor]:
    """Accept every official layout and check it against ``model`` with strict-load semantics.

    Takes an official classification checkpoint (``{'model': ...}``), an mmseg segmentation
    checkpoint (``{'state_dict': {'backbone.*', 'decode_head.*', ...}}``: the backbone is used),
    a bare state dict, or one of ours. Raises :class:`CheckpointError` naming what does not fit.
    """
    state_dict = unwrap_state_dict(state_dict)
    if any(k.startswith('backbone.') for k in state_dict):
        state_dict = {k[len('backbone.'):]: v for k, v in state_dict.items() if k.startswith('backbone.')}
    state_dict = remap_official_keys(state_dict)
    model_sd = model.state_dict()

    # Modules the source never had, by design, keep their initial values (as mmseg does when it
    # loads an ImageNet backbone): the per-stage output norms for an ImageNet checkpoint, the
    # final norm and classifier for a headless (segmentation) backbone. Anything else must match.
    headless = 'head.fc.weight' not in state_dict
    for k, v in model_sd.items():
        new_by_design = k.startswith('stage_norms.') or (headless and k.startswith(('norm.', 'head.')))
        if k not in state_dict and new_by_design:
            state_dict[k] = v
    if model.stage_norms is None:
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith('stage_norms.')}

    # timm drops the classifier itself when num_classes differs from the pretrained cfg's.
    pretrained_classes = (getattr(model, 'pretrained_cfg', None) or {}).get('num_classes', model.num_classes)
    skip_head = model.num_classes != pretrained_classes or model.num_classes == 0
    if model.num_classes == 0:
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith('head.fc.')}

    skip = ['head.fc.'] if skip_head else []
    if 'patch_embed.proj.weight' in state_dict and state_dict['patch_embed.proj.weight'].shape[1] != model.in_chans:
        skip.append('patch_embed.proj.weight')  # timm adapts the input conv to in_chans after this filter
    name = (getattr(model, 'pretrained_cfg', None) or {}).get('architecture', type(model).__name__)
    check_state_dict_fits(state_dict, model_sd, name, skip=skip, hint=(
        "it was probably made for another variant (embed_dim, depths, classes, or a 1024/window-16 model "
        "whose stage 3 has depthwise convs)"))
    return state_dict


def _create_iwin(variant: str, pretrained: bool = False, **kwargs) -> IwinTransformer:
    out_indices = kwargs.pop('out_indices', (0, 1, 2, 3))
    device, dtype = kwargs.pop('device', None), kwargs.pop('dtype', None)
    if kwargs.get('features_only'):
        # features are the segmentation backbone's: each stage output through its own norm
        kwargs.setdefault('stage_norms', True)
    try:
        with torch.device(device) if device is not None else contextlib.nullcontext():
            model = build_model_with_cfg(
                IwinTransformer, variant, pretrained,
                pretrained_filter_fn=checkpoint_filter_fn,
                feature_cfg=dict(feature_cls='getter', out_indices=out_indices),
                **kwargs)
        return model.to(dtype) if dtype is not None else model
    except CheckpointError:
        raise
    except Exception as e:
        if not pretrained or isinstance(e, (TypeError, ValueError)) and 'checkpoint' not in str(e).lower():
            raise
        raise CheckpointError(_explain_load_failure(variant, kwargs, e)) from e


def _explain_load_failure(variant: str, kwargs: dict, error: Exception) -> str:
    """Say which file failed to load and what to do about it (timm's own errors do not)."""
    from timm.models._builder import _resolve_pretrained_source
    from timm.models._registry import get_pretrained_cfg

    from .checkpoint import cached_path_for_url

    cfg = get_pretrained_cfg(variant)
    cfg = cfg.to_dict() if cfg is not None else {}
    cfg.update(kwargs.get('pretrained_cfg_overlay') or {})
    source, location = _resolve_pretrained_source(cfg)
    reason = f"{type(error).__name__}: {error}"
    if source == 'url':
        cached = cached_path_for_url(location)
        if os.path.exists(cached):
            return (f"pretrained weights for {variant}: the cached file {cached} could not be read ({reason}). "
                    f"It is probably a truncated or corrupt download: delete it and try again.")
        return (f"pretrained weights for {variant} are not cached and could not be downloaded from {location} "
                f"({reason}). Without network access, put the file at {cached} or pass "
                f"pretrained_cfg_overlay=dict(file='/path/to/{os.path.basename(location)}').")
    if source == 'file':
        if not os.path.isfile(location):
            return f"pretrained weights for {variant}: no such file {location}"
        return (f"pretrained weights for {variant}: {location} is not a readable checkpoint ({reason}); "
                f"expected a PyTorch .pth/.pt or a .safetensors file, possibly truncated")
    return f"pretrained weights for {variant} could not be loaded from {source or 'anywhere'} {location}: {reason}"


_RELEASE = 'https://github.com/Cominder/Iwin-Transformer/releases/download/v1.0'


def _cfg(file: str, resolution: int = 224, **kwargs) -> dict:
    return {
        'url': f'{_RELEASE}/{file}',
        'num_classes': 1000,
        'input_size': (3, resolution, resolution),
        'pool_size': (resolution // 32, resolution // 32),
        # the authors' evaluation: resize 256/224 then centre-crop at 224, a plain resize above
        'crop_pct': 0.875 if resolution == 224 else 1.0,
        'interpolation': 'bicubic',
        'fixed_input_size': False,
        'mean': IMAGENET_DEFAULT_MEAN,
        'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'patch_embed.proj',
        'classifier': 'head.fc',
        'license': 'mit',
        'paper_ids': 'arXiv:2507.18405',
        'paper_name': 'Iwin Transformer: Hierarchical Vision Transformer using Interleaved Windows',
        'origin_url': 'https://github.com/Cominder/Iwin-Transformer',
        **kwargs,
    }


def _in22k_family(name: str, resolution: int) -> dict:
    stem = f'{name}_patch4_window{ {224: 7, 384: 12}.get(resolution, 16) }_{resolution}'
    return {
        'in22k_ft_in1k': _cfg(f'{stem}_22kto1k.pth', resolution),
        'in22k': _cfg(f'{stem}_22k.pth', resolution, num_classes=21841),
    }


default_cfgs = generate_default_cfgs({
    'iwin_tiny.in1k': _cfg('iwin_tiny_patch4_window7_224.pth'),
    'iwin_small.in1k': _cfg('iwin_small_patch4_window7_224.pth'),
    'iwin_small_patch4_window12_384.in1k': _cfg('iwin_small_patch4_window12_384.pth', 384),
    'iwin_small_patch4_window16_512.in1k': _cfg('iwin_small_patch4_window16_512.pth', 512),
    'iwin_small_patch4_window16_1024.in1k': _cfg('iwin_small_patch4_window16_1024.pth', 1024),
    **{f'iwin_base.{tag}': c for tag, c in _in22k_family('iwin_base', 224).items()},
    'iwin_base.in1k': _cfg('iwin_base_patch4_window7_224.pth'),
    **{f'iwin_base_patch4_window12_384.{tag}': c for tag, c in _in22k_family('iwin_base', 384).items()},
    'iwin_base_patch4_window12_384.in1k': _cfg('iwin_base_patch4_window12_384.pth', 384),
    **{f'iwin_base_patch4_window16_512.{tag}': c for tag, c in _in22k_family('iwin_base', 512).items()},
    'iwin_base_patch4_window16_512.in1k': _cfg('iwin_base_patch4_window16_512.pth', 512),
    **{f'iwin_base_patch4_window16_1024.{tag}': c for tag, c in _in22k_family('iwin_base', 1024).items()},
    'iwin_base_patch4_window16_1024.in1k': _cfg('iwin_base_patch4_window16_1024.pth', 1024),
    **{f'iwin_large.{tag}': c for tag, c in _in22k_family('iwin_large', 224).items()},
    **{f'iwin_large_patch4_window12_384.{tag}': c for tag, c in _in22k_family('iwin_large', 384).items()},
})

# embed_dim, depths, ImageNet heads (per the official classification configs)
_ARCHS = {
    'tiny': dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24)),
    'small': dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 4, 8, 16)),
    'base': dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32)),
    'large': dict(embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48)),
}


def _build(size: str, variant: str, pretrained: bool, arch_res: tuple[int, int] = (224, 7), **kwargs):
    """Build ``variant`` of size ``size`` registered at (resolution, window) ``arch_res``.

    Which stages have a depthwise conv is fixed by the registered resolution and window (it is part
    of the weights); ``img_size`` or ``window_size`` passed by the user only change how it runs.
    """
    img_size, window_size = arch_res
    args = dict(_ARCHS[size], img_size=img_size, window_size=window_size,
                dwconv_stages=default_dwconv_stages(img_size, window_size))
    return _create_iwin(variant, pretrained, **dict(args, **kwargs))


@register_model
def iwin_tiny(pretrained: bool = False, **kwargs) -> IwinTransformer:
    """Iwin-T, 224, window 7 (30.2M params)."""
    return _build('tiny', 'iwin_tiny', pretrained, **kwargs)


@register_model
def iwin_small(pretrained: bool = False, **kwargs) -> IwinTransformer:
    """Iwin-S, 224, window 7 (51.6M params; ImageNet heads 3,4,8,16)."""
    return _build('small', 'iwin_small', pretrained, **kwargs)


@register_model
def iwin_small_patch4_window12_384(pretrained: bool = False, **kwargs) -> IwinTransformer:
    """Iwin-S fine-tuned at 384, window 12."""
    return _build('small', 'iwin_small_patch4_window12_384', pretrained, (384, 12), **kwargs)


@register_model
def iwin_small_patch4_window16_512(pretrained: bool = False, **kwargs) -> IwinTransformer:
    """Iwin-S fine-tuned at 512, window 16."""
    return _build('small', 'iwin_small_patch4_window16_512', pretrained, (512, 16), **kwargs)


@register_model
def iwin_small_patch4_window16_1024(pretrained: bool = False, **kwargs) -> IwinTransformer:
    """Iwin-S fine-tuned at 1024, window 16 (stage 3 has a depthwise conv)."""
    return _build('small', 'iwin_small_patch4_window16_1024', pretrained, (1024, 16), **kwargs)


@register_model
def iwin_base(pretrained: bool = False, **kwargs) -> IwinTransformer:
    """Iwin-B, 224, window 7 (91.2M params)."""
    return _build('base', 'iwin_base', pretrained, **kwargs)


@register_model
def iwin_base_patch4_window12_384(pretrained: bool = False, **kwargs) -> IwinTransformer:
    """Iwin-B at 384, window 12."""
    return _build('base', 'iwin_base_patch4_window12_384', pretrained, (384, 12), **kwargs)


@register_model
def iwin_base_patch4_window16_512(pretrained: bool = False, **kwargs) -> IwinTransformer:
    """Iwin-B at 512, window 16."""
    return _build('base', 'iwin_base_patch4_window16_512', pretrained, (512, 16), **kwargs)


@register_model
def iwin_base_patch4_window16_1024(pretrained: bool = False, **kwargs) -> IwinTransformer:
    """Iwin-B at 1024, window 16 (stage 3 has a depthwise conv)."""
    return _build('base', 'iwin_base_patch4_window16_1024', pretrained, (1024, 16), **kwargs)


@register_model
def iwin_large(pretrained: bool = False, **kwargs) -> IwinTransformer:
    """Iwin-L, 224, window 7 (204.3M params), ImageNet-22K pretrained."""
    return _build('large', 'iwin_large', pretrained, **kwargs)


@register_model
def iwin_large_patch4_window12_384(pretrained: bool = False, **kwargs) -> IwinTransformer:
    """Iwin-L at 384, window 12, ImageNet-22K pretrained."""
    return _build('large', 'iwin_large_patch4_window12_384', pretrained, (384, 12), **kwargs)
