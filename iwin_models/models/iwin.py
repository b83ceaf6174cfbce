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
  checkpoint is ``layers.{i+1}.downsample`` here (``iwin_models.models.keymaps`` maps the keys);
* the classifier is timm's ``ClassifierHead`` (``head.fc``);
* the segmentation backbone's per-output norms ``norm0..3`` are ``stage_norms.{0..3}``, built when
  ``stage_norms=True`` (the default with ``features_only=True``).

Every forward here is the definition (the official order of operations, padding included), whatever
the device, tracer, hooks or dispatch mode: it is what TorchScript, FX, ``torch.compile``,
``torch.export`` and ONNX record. The CPU speed-ups are one explicit conversion,
``iwin_models.optimize_for_cpu(model)``, which puts the fast twins of ``iwin_models.fast.iwin_cpu`` in
place of the patch embedding and the blocks (same outputs to float32 round-off).
"""

import contextlib
import warnings
from collections.abc import Callable, Sequence
from functools import partial
from typing import List, Optional, Tuple, Union  # noqa: UP035  (TorchScript reads these annotations)

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import ClassifierHead, DropPath, Mlp, trunc_normal_, use_fused_attn
from timm.models import (
    build_model_with_cfg,
    checkpoint_seq,
    generate_default_cfgs,
    register_model,
    resolve_pretrained_cfg,
)
from timm.models._features import FeatureGetterNet, feature_take_indices
from timm.models._input import get_model_traits, update_model_input_size

from ..io.checkpoint import CheckpointError, check_state_dict_fits, explain_load_failure, unwrap_state_dict
from ..layers import check_image_batch, conv2d_as_conv3d
from .keymaps import convert_official_backbone

__all__ = ["IwinTransformer", "checkpoint_filter_fn", "interleave_windows", "deinterleave_windows"]


def interleave_windows(x: torch.Tensor, window_size: int) -> torch.Tensor:
    """Split a (B, H, W, C) map into interleaved windows, (B * Hg * Wg, ws * ws, C).

    The map is zero-padded bottom/right to ``ws * Hg`` x ``ws * Wg`` (Hg = ceil(H / ws)). Window (a, b)
    holds the tokens at rows a, a + Hg, a + 2Hg, ... and columns b, b + Wg, ... Row ``i * Hg + a`` is
    entry (i, a) of a (ws, Hg) view, so one reshape and one permute put the window index (a, b) in
    front (the official code's "rearrange" + Swin window partition).
    """
    B, H, W, C = x.shape[0], x.shape[1], x.shape[2], x.shape[3]
    ws = window_size
    Hg, Wg = (H + ws - 1) // ws, (W + ws - 1) // ws
    x = F.pad(x, (0, 0, 0, Wg * ws - W, 0, Hg * ws - H))
    x = x.reshape(B, ws, Hg, ws, Wg, C).permute(0, 2, 4, 1, 3, 5)
    return x.clone(memory_format=torch.contiguous_format).view(B * Hg * Wg, ws * ws, C)


def deinterleave_windows(windows: torch.Tensor, window_size: int, H: int, W: int) -> torch.Tensor:
    """Inverse of :func:`interleave_windows`: the (B, H, W, C) map, padding cropped."""
    ws = window_size
    C = windows.shape[-1]
    Hg, Wg = (H + ws - 1) // ws, (W + ws - 1) // ws
    B = windows.shape[0] // (Hg * Wg)
    # One gather does the permute and the crop: map pixel (i * Hg + a, j * Wg + b) is token (i, j) of
    # window (a, b). A permute + reshape would make symbolic-shape tracers decide whether the reshape
    # can be a view, which depends on Hg == 1 / Wg == 1 (a guard: one graph per such case), and a crop
    # slice has the size min(H, ws * Hg) that they cannot simplify. The gather is also one copy instead
    # of three (one CPU thread: 2x128x128x96 map 11.2 -> 3.0 ms, 1x32x32x768 1.3 -> 0.14 ms).
    # The index is built from (ws, Hg) and (ws, Wg) grids, then cropped to H and W: no tensor divided
    # by a symbolic size (tracers turn that into a data-dependent value).
    dev = windows.device
    rows = (torch.arange(Hg, device=dev) * (Wg * ws * ws))[None, :] + (torch.arange(ws, device=dev) * ws)[:, None]
    cols = (torch.arange(Wg, device=dev) * (ws * ws))[None, :] + torch.arange(ws, device=dev)[:, None]
    rows = rows.flatten().index_select(0, torch.arange(H, device=dev))
    cols = cols.flatten().index_select(0, torch.arange(W, device=dev))
    index = (rows[:, None] + cols[None, :]).flatten()
    x = windows.reshape(B, Hg * Wg * ws * ws, C).index_select(1, index)
    return x.view(B, H, W, C)


class InterleavedAttention(nn.Module):
    """Multi-head self-attention inside interleaved windows; no position bias, no mask.

    As in the official model, the map is zero-padded to window multiples after ``norm1`` and the
    padded tokens take part in attention.
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
        self.scale = self.head_dim ** -0.5
        self.fused_attn = use_fused_attn()
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def attend(self, qkv: torch.Tensor) -> torch.Tensor:
        """(N, L, 3C) q, k, v of N windows -> (N, L, C) attention output."""
        N, L = qkv.shape[0], qkv.shape[1]
        q, k, v = qkv.reshape(N, L, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        if self.fused_attn:
            x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop.p if self.training else 0.)
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1)
            x = self.attn_drop(attn.softmax(dim=-1)) @ v
        return x.transpose(1, 2).reshape(N, L, self.num_heads * self.head_dim)

    def forward(self, x: torch.Tensor, window_size: int) -> torch.Tensor:
        H, W = x.shape[1], x.shape[2]
        x = self.attend(self.qkv(interleave_windows(x, window_size)))
        x = self.proj_drop(self.proj(x))
        return deinterleave_windows(x, window_size, H, W)


class DepthwiseConv(nn.Module):
    """3x3 depthwise convolution on an NHWC map (``dwconv.depthwise`` in the checkpoints)."""

    def __init__(self, dim: int, kernel_size: int = 3, export_form: bool = False):
        super().__init__()
        self.export_form = export_form  # the conv3d form: no batch guard in a traced graph (layers.conv)
        self.depthwise = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 3, 1, 2)  # a channels-last view: the convolution reads it without a copy
        if not torch.jit.is_scripting():
            if self.export_form:
                return conv2d_as_conv3d(self.depthwise, x).permute(0, 2, 3, 1)
        return self.depthwise(x).permute(0, 2, 3, 1)


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
            act_layer: Callable = nn.GELU,
            norm_layer: Callable = nn.LayerNorm,
    ):
        super().__init__()
        self.window_size = window_size
        self.norm1 = norm_layer(dim)
        self.attn = InterleavedAttention(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop)
        self.dwconv = DepthwiseConv(dim) if use_dwconv else None
        self.drop_path1 = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=proj_drop)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm1(x)
        mixed = self.attn(y, self.window_size)
        if self.dwconv is not None:
            mixed = mixed + self.dwconv(y)  # the convolution sees the unpadded map
        x = x + self.drop_path1(mixed)
        return x + self.drop_path2(self.mlp(self.norm2(x)))


class Downsample(nn.Module):
    """LayerNorm, then a 3x3 stride-2 convolution to twice the channels; output ceil(H/2) x ceil(W/2).

    The official layer pads odd sizes to even, then pads one more row and column (bottom/right)
    before an unpadded convolution. Two zero rows and columns give the same output at every size (for
    an even size no output reaches the second one), and a size that is not a remainder of a division:
    symbolic-shape tracers then keep one plain expression per stage.
    """

    def __init__(self, dim: int, out_dim: int | None = None, norm_layer: Callable = nn.LayerNorm, stride: int = 2,
                 export_form: bool = False):
        super().__init__()
        self.stride = stride
        self.export_form = export_form  # the conv3d form: no batch guard in a traced graph (layers.conv)
        self.norm = norm_layer(dim)
        # stride 1 (output_stride < 32, for DeepLab-style decoders) keeps the size with a centred 3x3
        self.conv = nn.Conv2d(dim, out_dim or 2 * dim, kernel_size=3, stride=stride, padding=0 if stride == 2 else 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x).permute(0, 3, 1, 2)
        if self.stride == 2:
            x = F.pad(x, (0, 2, 0, 2))
        if not torch.jit.is_scripting():
            if self.export_form:
                return conv2d_as_conv3d(self.conv, x).permute(0, 2, 3, 1)
        return self.conv(x).permute(0, 2, 3, 1)


class PatchEmbed(nn.Module):
    """Non-overlapping patch projection; the image is zero-padded right/bottom to a patch multiple."""

    def __init__(self, patch_size: int = 4, in_chans: int = 3, embed_dim: int = 96, norm_layer=nn.LayerNorm):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = norm_layer(embed_dim) if norm_layer else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.patch_size
        # p - 1 zero rows and columns: the last patch reaches into them wherever the size is not a
        # multiple of p, and the output size is ceil(H / p) without a remainder for shape tracers
        x = F.pad(x, (0, p - 1, 0, p - 1))
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


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


# FX records the check as one call (run by the traced module on real inputs) instead of tracing into it
torch.fx.wrap("check_image_batch")


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else tuple(size)


def _one_window(window_size: int | Sequence) -> int:
    """The one window size of every stage from timm's forms: an int, (w, w), or per-stage values all equal."""
    flat = [window_size] if isinstance(window_size, int) else [w for v in window_size for w in _pair(v)]
    if len(set(flat)) != 1 or not isinstance(flat[0], int):
        raise ValueError(f"Iwin uses one square window for every stage, got window_size={window_size!r}")
    return flat[0]


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
            act_layer: Callable = nn.GELU,
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
        self.output_fmt = 'NHWC'
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
        # timm's head builds the new layer on the default device and dtype; it belongs with the model's
        reference = self.patch_embed.proj.weight
        self.head.to(device=reference.device, dtype=reference.dtype)

    def set_window_size(self, window_size: int):
        """Run with another interleaved-window size (the weights do not depend on it)."""
        if not isinstance(window_size, int) or window_size < 1:
            raise ValueError(f"window_size must be a positive int, got {window_size!r}")
        self.window_size = window_size
        for stage in self.layers:
            for block in stage.blocks:  # an IwinBlock, or its CPU twin
                block.window_size = window_size

    @torch.jit.ignore
    def set_input_size(
            self,
            img_size: int | Sequence[int] | None = None,
            patch_size: int | Sequence[int] | None = None,
            window_size: int | Sequence[int] | None = None,
            window_ratio: int | None = None,
            always_partition: bool | None = None,
    ):
        """timm's resize API (as its Swin's). Iwin runs any input size, so ``img_size`` changes no module: it is
        the nominal size that timm's data config and hub round trips read. ``window_size`` changes the
        interleaved window as the constructor argument does (one size for every stage: an int, ``(w, w)`` or
        equal per-stage values); ``window_ratio`` sets it to the patch grid of the image size divided by the
        ratio. ``patch_size`` is part of the weights, and Iwin always partitions (``always_partition``): only
        the current values are accepted."""
        p = self.patch_embed.patch_size
        if patch_size is not None and tuple(_pair(patch_size)) != (p, p):
            raise ValueError(f"patch_size is part of Iwin's weights: it stays {p}, got {patch_size}")
        if always_partition is False:
            raise ValueError("Iwin always partitions the map into windows (padding it): always_partition=False "
                             "has no meaning here")
        size = _pair(img_size) if img_size is not None else get_model_traits(self).get("img_size")
        if window_size is None and window_ratio is not None:
            if size is None:
                raise ValueError("window_ratio needs an image size: pass img_size")
            window_size = max(min(size) // p // window_ratio, 1)
        if window_size is not None:
            window_size = _one_window(window_size)
            self.set_window_size(window_size)
        update_model_input_size(self, size, window_size=window_size)

    @torch.jit.ignore
    def check_input(self, x: torch.Tensor):
        check_image_batch(x, self.in_chans)

    def _check(self, x: torch.Tensor):
        if not torch.jit.is_scripting():  # shape and dtype only: no data read, no device sync
            self.check_input(x)

    def _stage_output(self, i: int, x: torch.Tensor, norm: bool) -> torch.Tensor:
        """Stage ``i``'s output feature: through its own norm (segmentation backbone), or the final norm."""
        feat = x
        if self.stage_norms is not None:
            for j, stage_norm in enumerate(self.stage_norms):  # TorchScript indexes a ModuleList by constants only
                if j == i:
                    feat = stage_norm(x)
        elif norm and i == len(self.layers) - 1:
            feat = self.norm(x)
        return feat

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,  # noqa: UP006, UP007, UP045
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:  # noqa: UP006, UP007
        """Stage outputs at strides 4, 8, 16, 32 (``indices`` picks them, timm's convention).

        With ``stage_norms`` each one goes through its own LayerNorm (the segmentation backbone's
        outputs); otherwise ``norm=True`` applies the final norm to the last stage.
        """
        if output_fmt not in ('NCHW', 'NHWC'):
            raise ValueError("output_fmt must be 'NCHW' or 'NHWC', got " + output_fmt)  # (TorchScript: no f-string)
        self._check(x)
        take_indices, max_index = feature_take_indices(len(self.layers), indices)
        intermediates = []
        x = self.patch_embed(x)
        if torch.jit.is_scripting() or not stop_early:  # TorchScript cannot slice the stages
            stages = self.layers
        else:
            stages = self.layers[:max_index + 1]
        last = 0
        for i, stage in enumerate(stages):
            x = stage(x)
            last = i
            if i in take_indices:
                feat = self._stage_output(i, x, norm)
                intermediates.append(feat.permute(0, 3, 1, 2) if output_fmt == 'NCHW' else feat)
        if intermediates_only:
            return intermediates
        if last == len(self.layers) - 1:
            x = self.norm(x)
        return x, intermediates

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,  # noqa: UP006, UP007
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:  # noqa: UP006
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
        self._check(x)
        x = self.layers(self.patch_embed(x))
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=True) if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def checkpoint_filter_fn(state_dict: dict, model: IwinTransformer, head_used: bool = True) -> dict[str, torch.Tensor]:
    """Accept every official layout and check it against ``model`` with strict-load semantics.

    Takes an official classification checkpoint (``{'model': ...}``), an mmseg segmentation
    checkpoint (``{'state_dict': {'backbone.*', 'decode_head.*', ...}}``: the backbone is used),
    a bare state dict, or one of ours. Raises :class:`CheckpointError` naming what does not fit. A file without
    a classifier loaded into a model that uses one (``head_used``; a ``features_only`` model does not) warns that
    the head keeps random weights.
    """
    state_dict = convert_official_backbone(unwrap_state_dict(state_dict))
    model_sd = model.state_dict()

    # Modules the source never had, by design, keep their initial values (as mmseg does when it
    # loads an ImageNet backbone): the per-stage output norms for an ImageNet checkpoint, the
    # final norm and classifier for a headless (segmentation) backbone. Anything else must match.
    headless = 'head.fc.weight' not in state_dict
    if headless and head_used and model.num_classes:
        warnings.warn(
            f"the checkpoint has no classifier: the model's head.fc ({model.num_classes} classes) and final norm keep "
            f"RANDOM weights; build it with num_classes=0 for a headless backbone (features_only=True for the "
            f"feature maps)", UserWarning, stacklevel=2)
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




class IwinFeatures(FeatureGetterNet):
    """timm's ``features_only`` getter with its forward typed ``List[Tensor]``: the base class returns
    ``forward_intermediates``' Union, which TorchScript will not let smp's encoder iterate."""

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:  # noqa: UP006
        features = self.model.forward_intermediates(
            x, indices=self.out_indices, norm=self.norm, output_fmt=self.output_fmt, intermediates_only=True)
        assert isinstance(features, list)  # (intermediates_only=True; TorchScript narrows the Union by it)
        return features


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
                # a features_only model drops its classifier (timm's feature getter): a headless file is complete
                pretrained_filter_fn=partial(checkpoint_filter_fn, head_used=not kwargs.get('features_only')),
                feature_cfg=dict(feature_cls=IwinFeatures, out_indices=out_indices),
                **kwargs)
        return model.to(dtype) if dtype is not None else model
    except CheckpointError:
        raise
    except Exception as e:
        if not pretrained or isinstance(e, (TypeError, ValueError)) and 'checkpoint' not in str(e).lower():
            raise
        # the tag's cfg (timm passes a tag such as 'in1k' as pretrained_cfg), with the user's overlay
        cfg = resolve_pretrained_cfg(variant, pretrained_cfg=kwargs.get('pretrained_cfg'),
                                     pretrained_cfg_overlay=kwargs.get('pretrained_cfg_overlay'))
        name = f"{variant}.{cfg.tag}" if cfg.tag else variant
        raise CheckpointError(explain_load_failure(name, e, file=cfg.file, url=cfg.url, hub=cfg.hf_hub_id)) from e


def _cfg(url: str, resolution: int = 224, **kwargs) -> dict:
    return {
        'url': url,
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
        # the authors' model card: MIT for research use, commercial use by agreement with them
        'license': 'other',
        'paper_ids': 'arXiv:2507.18405',
        'paper_name': 'Iwin Transformer: Hierarchical Vision Transformer using Interleaved Windows',
        'origin_url': 'https://github.com/Cominder/Iwin-Transformer',
        **kwargs,
    }


# the first tag of an architecture is its default (iwin_base: ImageNet-22K -> 1K)
default_cfgs = generate_default_cfgs({
    'iwin_tiny.in1k': _cfg(
        url='https://github.com/Cominder/Iwin-Transformer/releases/download/v1.0/iwin_tiny_patch4_window7_224.pth'),  # noqa: E501
    'iwin_small.in1k': _cfg(
        url='https://github.com/Cominder/Iwin-Transformer/releases/download/v1.0/iwin_small_patch4_window7_224.pth'),  # noqa: E501
    # the ADE20K segmenter's Iwin-S (heads 3,6,12,24) starts from the ImageNet Iwin-S weights, as the authors' did
    'iwin_small_ade20k.in1k': _cfg(
        url='https://github.com/Cominder/Iwin-Transformer/releases/download/v1.0/iwin_small_patch4_window7_224.pth'),  # noqa: E501
    'iwin_small_patch4_window12_384.in1k': _cfg(
        resolution=384, url='https://github.com/Cominder/Iwin-Transformer/releases/download/v1.0/iwin_small_patch4_window12_384.pth'),  # noqa: E501
    'iwin_small_patch4_window16_512.in1k': _cfg(
        resolution=512, url='https://github.com/Cominder/Iwin-Transformer/releases/download/v1.0/iwin_small_patch4_window16_512.pth'),  # noqa: E501
    'iwin_small_patch4_window16_1024.in1k': _cfg(
        resolution=1024, url='https://github.com/Cominder/Iwin-Transformer/releases/download/v1.0/iwin_small_patch4_window16_1024.pth'),  # noqa: E501
    'iwin_base.in22k_ft_in1k': _cfg(
        url='https://github.com/Cominder/Iwin-Transformer/releases/download/v1.0/iwin_base_patch4_window7_224_22kto1k.pth'),  # noqa: E501
    'iwin_base.in22k': _cfg(
        num_classes=21841, url='https://github.com/Cominder/Iwin-Transformer/releases/download/v1.0/iwin_base_patch4_window7_224_22k.pth'),  # noqa: E501
    'iwin_base.in1k': _cfg(
        url='https://github.com/Cominder/Iwin-Transformer/releases/download/v1.0/iwin_base_patch4_window7_224.pth'),  # noqa: E501
    'iwin_base_patch4_window12_384.in22k_ft_in1k': _cfg(
        resolution=384, url='https://github.com/Cominder/Iwin-Transformer/releases/download/v1.0/iwin_base_patch4_window12_384_22kto1k.pth'),  # noqa: E501
    'iwin_base_patch4_window12_384.in22k': _cfg(
        resolution=384, num_classes=21841, url='https://github.com/Cominder/Iwin-Transformer/releases/download/v1.0/iwin_base_patch4_window12_384_22k.pth'),  # noqa: E501
    'iwin_base_patch4_window12_384.in1k': _cfg(
        resolution=384, url='https://github.com/Cominder/Iwin-Transformer/releases/download/v1.0/iwin_base_patch4_window12_384.pth'),  # noqa: E501
    'iwin_base_patch4_window16_512.in22k_ft_in1k': _cfg(
        resolution=512, url='https://github.com/Cominder/Iwin-Transformer/releases/download/v1.0/iwin_base_patch4_window16_512_22kto1k.pth'),  # noqa: E501
    'iwin_base_patch4_window16_512.in22k': _cfg(
        resolution=512, num_classes=21841, url='https://github.com/Cominder/Iwin-Transformer/releases/download/v1.0/iwin_base_patch4_window16_512_22k.pth'),  # noqa: E501
    'iwin_base_patch4_window16_512.in1k': _cfg(
        resolution=512, url='https://github.com/Cominder/Iwin-Transformer/releases/download/v1.0/iwin_base_patch4_window16_512.pth'),  # noqa: E501
    'iwin_base_patch4_window16_1024.in22k_ft_in1k': _cfg(
        resolution=1024, url='https://github.com/Cominder/Iwin-Transformer/releases/download/v1.0/iwin_base_patch4_window16_1024_22kto1k.pth'),  # noqa: E501
    'iwin_base_patch4_window16_1024.in22k': _cfg(
        resolution=1024, num_classes=21841, url='https://github.com/Cominder/Iwin-Transformer/releases/download/v1.0/iwin_base_patch4_window16_1024_22k.pth'),  # noqa: E501
    'iwin_base_patch4_window16_1024.in1k': _cfg(
        resolution=1024, url='https://github.com/Cominder/Iwin-Transformer/releases/download/v1.0/iwin_base_patch4_window16_1024.pth'),  # noqa: E501
    'iwin_large.in22k_ft_in1k': _cfg(
        url='https://github.com/Cominder/Iwin-Transformer/releases/download/v1.0/iwin_large_patch4_window7_224_22kto1k.pth'),  # noqa: E501
    'iwin_large.in22k': _cfg(
        num_classes=21841, url='https://github.com/Cominder/Iwin-Transformer/releases/download/v1.0/iwin_large_patch4_window7_224_22k.pth'),  # noqa: E501
    'iwin_large_patch4_window12_384.in22k_ft_in1k': _cfg(
        resolution=384, url='https://github.com/Cominder/Iwin-Transformer/releases/download/v1.0/iwin_large_patch4_window12_384_22kto1k.pth'),  # noqa: E501
    'iwin_large_patch4_window12_384.in22k': _cfg(
        resolution=384, num_classes=21841, url='https://github.com/Cominder/Iwin-Transformer/releases/download/v1.0/iwin_large_patch4_window12_384_22k.pth'),  # noqa: E501
})


# Each entrypoint states its architecture (timm's layout). ``img_size`` and ``window_size`` are the registered
# resolution and window; ``dwconv_stages`` (which stages have the depthwise conv) follows from them in the official
# classifier (see default_dwconv_stages) and is part of the weights, so it is written out: an ``img_size`` or
# ``window_size`` a user passes changes how the model runs, not which layers it has.


@register_model
def iwin_tiny(pretrained: bool = False, **kwargs) -> IwinTransformer:
    """Iwin-T, 224, window 7 (30.2M params)."""
    model_args = dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), img_size=224, window_size=7,
                      dwconv_stages=(True, True, True, False))
    return _create_iwin('iwin_tiny', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def iwin_small(pretrained: bool = False, **kwargs) -> IwinTransformer:
    """Iwin-S, 224, window 7 (51.6M params; ImageNet heads 3,4,8,16)."""
    model_args = dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 4, 8, 16), img_size=224, window_size=7,
                      dwconv_stages=(True, True, True, False))
    return _create_iwin('iwin_small', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def iwin_small_patch4_window12_384(pretrained: bool = False, **kwargs) -> IwinTransformer:
    """Iwin-S fine-tuned at 384, window 12."""
    model_args = dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 4, 8, 16), img_size=384, window_size=12,
                      dwconv_stages=(True, True, True, False))
    return _create_iwin('iwin_small_patch4_window12_384', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def iwin_small_patch4_window16_512(pretrained: bool = False, **kwargs) -> IwinTransformer:
    """Iwin-S fine-tuned at 512, window 16."""
    model_args = dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 4, 8, 16), img_size=512, window_size=16,
                      dwconv_stages=(True, True, True, False))
    return _create_iwin('iwin_small_patch4_window16_512', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def iwin_small_patch4_window16_1024(pretrained: bool = False, **kwargs) -> IwinTransformer:
    """Iwin-S fine-tuned at 1024, window 16 (stage 3 has a depthwise conv)."""
    model_args = dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 4, 8, 16), img_size=1024, window_size=16,
                      dwconv_stages=(True, True, True, True))
    return _create_iwin('iwin_small_patch4_window16_1024', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def iwin_base(pretrained: bool = False, **kwargs) -> IwinTransformer:
    """Iwin-B, 224, window 7 (91.2M params)."""
    model_args = dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), img_size=224, window_size=7,
                      dwconv_stages=(True, True, True, False))
    return _create_iwin('iwin_base', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def iwin_base_patch4_window12_384(pretrained: bool = False, **kwargs) -> IwinTransformer:
    """Iwin-B at 384, window 12."""
    model_args = dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), img_size=384, window_size=12,
                      dwconv_stages=(True, True, True, False))
    return _create_iwin('iwin_base_patch4_window12_384', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def iwin_base_patch4_window16_512(pretrained: bool = False, **kwargs) -> IwinTransformer:
    """Iwin-B at 512, window 16."""
    model_args = dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), img_size=512, window_size=16,
                      dwconv_stages=(True, True, True, False))
    return _create_iwin('iwin_base_patch4_window16_512', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def iwin_base_patch4_window16_1024(pretrained: bool = False, **kwargs) -> IwinTransformer:
    """Iwin-B at 1024, window 16 (stage 3 has a depthwise conv)."""
    model_args = dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), img_size=1024, window_size=16,
                      dwconv_stages=(True, True, True, True))
    return _create_iwin('iwin_base_patch4_window16_1024', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def iwin_large(pretrained: bool = False, **kwargs) -> IwinTransformer:
    """Iwin-L, 224, window 7 (204.3M params), ImageNet-22K pretrained."""
    model_args = dict(embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48), img_size=224, window_size=7,
                      dwconv_stages=(True, True, True, False))
    return _create_iwin('iwin_large', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def iwin_large_patch4_window12_384(pretrained: bool = False, **kwargs) -> IwinTransformer:
    """Iwin-L at 384, window 12, ImageNet-22K pretrained."""
    model_args = dict(embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48), img_size=384, window_size=12,
                      dwconv_stages=(True, True, True, False))
    return _create_iwin('iwin_large_patch4_window12_384', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def iwin_small_ade20k(pretrained: bool = False, **kwargs) -> IwinTransformer:
    """The Iwin-S backbone of the ADE20K segmenter ``iwin_small_upernet_ade20k``: heads 3,6,12,24
    (``iwin_small``, the ImageNet model, has 3,4,8,16; head counts are in no weight shape). transformers builds
    the backbone of a converted folder by this name. ``pretrained`` loads the ImageNet Iwin-S weights."""
    model_args = dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24), img_size=224, window_size=7,
                      dwconv_stages=(True, True, True, False))
    return _create_iwin('iwin_small_ade20k', pretrained=pretrained, **dict(model_args, **kwargs))
