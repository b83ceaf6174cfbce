"""Fast CPU twins of Iwin's patch embedding and block (eager CPU; see ``layers.config``).

Each is a :class:`~iwin_models.fast.twin.CpuTwin`: ``iwin_models.optimize_for_cpu`` puts it in place of the
plain module, sharing its parameters, and it computes what the model file's definitional ``forward``
computes, with the fast paths that were switched on at conversion (``layers.config``):

* ``onednn_linear``: every linear layer through :func:`layers.linear.linear`;
* ``patch_matmul``: the stride-p p x p patch convolution as one matmul on the flattened patches (with
  3 input channels it runs ~3x faster than the convolution kernel);
* ``skip_padding``: windows made without the padded map; where the padding is a large share of the map
  (+72% tokens for a 16 x 16 map and window 7) ``qkv`` runs on the real tokens only and the padding is
  filled with its bias (a zero token's q, k, v are just the bias); ``proj`` runs after the padding is
  dropped again;
* ``chunked`` (inference only): attention and MLP a few windows / tokens at a time, ``_CHUNK_BYTES``
  each, so no big intermediate is freshly allocated (this VM page-faults fresh large buffers at
  ~0.2 ms/MB; the stage-0 MLP hidden map at 1024x1024 is 100 MB, q/k/v 77 MB);
* ``inplace``: exact GELU in place without autograd, residual adds written into fresh temporaries.

tests/test_layers.py holds fast == plain on the golden fixtures and on random inputs at odd sizes.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .interleave import map_from_windows, padding_share, windows_from_map
from .linear import linear
from .twin import CpuTwin, bypassed_problems, eager_only, refuse_tracing

__all__ = ["CpuPatchEmbed", "CpuIwinBlock", "patch_embed_forward", "block_forward"]

ALL_PATHS = frozenset(("onednn_linear", "patch_matmul", "skip_padding", "chunked", "inplace"))

# Chunk size of CPU inference. Quiet, on 2 EPYC cores, 4-32 MB were alike within noise (Iwin-T backbone at
# 1024^2: 0.55x the plain model's time with 8 MB, 0.56x with 32 MB) and 1 MB was 20% slower. Each chunk is a few
# operations, and on a busy machine each operation waits for the busiest core: with another 2-thread PyTorch
# job running, 8 MB took 0.69-0.90x the plain model's time and 32 MB 0.62-0.77x (two runs), so 32 MB.
_CHUNK_BYTES = 32 << 20
# qkv on the real tokens only where padded FLOPs per token (share * 3C^2) outweigh the extra 2C
# channels copied per token; the threshold is where it started to pay on a 2-core AVX-512 CPU
_SKIP_PADDING_MIN = 32


def _records_grad(x: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and x.requires_grad


def _rows_per_chunk(bytes_per_row: int) -> int:
    return max(_CHUNK_BYTES // bytes_per_row, 1)


def _linear(module: nn.Linear, x: torch.Tensor, paths: frozenset) -> torch.Tensor:
    """The linear layer ``module`` on ``x``: through oneDNN with ``onednn_linear``, else ``F.linear``."""
    if "onednn_linear" in paths:
        return linear(x, module.weight, module.bias)
    return F.linear(x, module.weight, module.bias)


def _add_to_temporary(temporary: torch.Tensor, other: torch.Tensor, paths: frozenset) -> torch.Tensor:
    """``temporary + other``, written into ``temporary`` (a fresh result no backward needs: a linear's,
    a convolution's, a DropPath's output) when the sum keeps its dtype (autocast's bf16 branches promote)."""
    if "inplace" not in paths or torch.promote_types(temporary.dtype, other.dtype) != temporary.dtype:
        return temporary + other
    return temporary.add_(other)


def patch_embed_forward(embed: nn.Module, x: torch.Tensor, paths: frozenset = ALL_PATHS) -> torch.Tensor:
    """``PatchEmbed.forward``: pad right/bottom to a patch multiple, patches @ weights, norm."""
    H, W = x.shape[-2:]
    p = embed.patch_size
    if H % p or W % p:
        x = F.pad(x, (0, -W % p, 0, -H % p))
    patches = x.unflatten(2, (-1, p)).unflatten(4, (-1, p)).permute(0, 2, 4, 1, 3, 5).flatten(3)
    weight = embed.proj.weight.flatten(1)
    if "onednn_linear" in paths:
        return embed.norm(linear(patches, weight, embed.proj.bias))
    return embed.norm(F.linear(patches, weight, embed.proj.bias))


def _attend_in_chunks(attn: nn.Module, windows: torch.Tensor, paths: frozenset) -> torch.Tensor:
    """``attn.attend(qkv(windows))`` a few windows at a time: a chunk's q, k, v stay in cache."""
    _, L, C = windows.shape
    per_chunk = max(_rows_per_chunk(3 * C * windows.element_size()) // L, 1)
    out = torch.empty_like(windows)
    for src, dst in zip(windows.split(per_chunk), out.split(per_chunk)):
        dst.copy_(attn.attend(_linear(attn.qkv, src, paths)))
    return out


def _padded_attention(attn: nn.Module, y: torch.Tensor, window_size: int, paths: frozenset) -> torch.Tensor:
    """The official order: pad, ``qkv`` and ``proj`` on every token, crop (``skip_padding`` off)."""
    _, H, W, _ = y.shape
    Hp, Wp = -(-H // window_size) * window_size, -(-W // window_size) * window_size
    windows = windows_from_map(F.pad(y, (0, 0, 0, Wp - W, 0, Hp - H)), window_size)
    if "chunked" in paths and not _records_grad(y):
        out = _attend_in_chunks(attn, windows, paths)
    else:
        out = attn.attend(_linear(attn.qkv, windows, paths))
    out = attn.proj_drop(_linear(attn.proj, out, paths))
    return map_from_windows(out, window_size, Hp, Wp)[:, :H, :W]


def _attention(attn: nn.Module, y: torch.Tensor, window_size: int, paths: frozenset) -> torch.Tensor:
    """``InterleavedAttention.forward(y, window_size)``."""
    if "skip_padding" not in paths:
        return _padded_attention(attn, y, window_size, paths)
    _, H, W, C = y.shape
    if padding_share(H, W, window_size) * C >= _SKIP_PADDING_MIN:
        qkv = _linear(attn.qkv, y, paths)
        out = attn.attend(windows_from_map(qkv, window_size, pad_value=attn.qkv.bias))
    elif "chunked" in paths and not _records_grad(y):
        out = _attend_in_chunks(attn, windows_from_map(y, window_size), paths)
    else:
        out = attn.attend(_linear(attn.qkv, windows_from_map(y, window_size), paths))
    return attn.proj_drop(_linear(attn.proj, map_from_windows(out, window_size, H, W), paths))


def _gelu(act: nn.Module, x: torch.Tensor, paths: frozenset) -> torch.Tensor:
    if "inplace" in paths and type(act) is nn.GELU and act.approximate == "none" and not _records_grad(x):
        return torch.ops.aten.gelu_(x)  # x is fc1's fresh output: no second 4C-channel map
    return act(x)


def _mlp(mlp: nn.Module, x: torch.Tensor, paths: frozenset) -> torch.Tensor:
    """timm's ``Mlp.forward``."""
    x = mlp.drop1(_gelu(mlp.act, _linear(mlp.fc1, x, paths), paths))
    return mlp.drop2(_linear(mlp.fc2, mlp.norm(x), paths))


def block_forward(block: nn.Module, x: torch.Tensor, paths: frozenset = ALL_PATHS) -> torch.Tensor:
    """``IwinBlock.forward``."""
    y = block.norm1(x)
    mixed = _attention(block.attn, y, block.window_size, paths)
    if block.dwconv is not None:
        mixed = _add_to_temporary(mixed, block.dwconv(y), paths)
    x = _add_to_temporary(block.drop_path1(mixed), x, paths)
    if block.training or _records_grad(x) or "chunked" not in paths or not x.is_contiguous():
        return _add_to_temporary(block.drop_path2(_mlp(block.mlp, block.norm2(x), paths)), x, paths)
    # x is the fresh sum above, so the MLP branch is added into it chunk by chunk: the 4C-channel hidden
    # map never exists at once
    rows = x.view(-1, x.shape[-1])
    for chunk in rows.split(_rows_per_chunk(block.mlp.fc1.out_features * x.element_size())):
        chunk.add_(_mlp(block.mlp, block.norm2(chunk), paths))
    return x


class CpuPatchEmbed(CpuTwin):
    """The twin of ``PatchEmbed`` (fast path ``patch_matmul``): the patch convolution as one matmul."""

    @classmethod
    def problems(cls, module: nn.Module, owner: str) -> list[str]:
        return bypassed_problems(owner, {"proj": module.proj}, nn.Conv2d)

    @eager_only
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        refuse_tracing(x)
        return patch_embed_forward(self, x, self.fast_paths)


class CpuIwinBlock(CpuTwin):
    """The twin of ``IwinBlock``: ``skip_padding``, ``chunked``, ``inplace`` and ``onednn_linear``."""

    @classmethod
    def problems(cls, module: nn.Module, owner: str) -> list[str]:
        linears = {"attn.qkv": module.attn.qkv, "attn.proj": module.attn.proj,
                   "mlp.fc1": module.mlp.fc1, "mlp.fc2": module.mlp.fc2}
        called_inside = {"attn": module.attn, "mlp": module.mlp}  # the twin runs their parts itself
        return bypassed_problems(owner, linears, nn.Linear) + bypassed_problems(owner, called_inside)

    @eager_only
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        refuse_tracing(x)
        return block_forward(self, x, self.fast_paths)
