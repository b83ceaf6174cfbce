"""Every key map from the authors' checkpoint layouts to ours, in one place.

* ImageNet classification (``{'model': ...}``) and mmseg backbone (``backbone.*``) names -> the timm
  :class:`~iwin_models.models.iwin.IwinTransformer` names: :func:`remap_official_keys`,
  :func:`convert_official_backbone`.
* mmseg 0.x UPerNet (``backbone.*``, ``decode_head.*``, ``auxiliary_head.*``) -> the
  :class:`~iwin_models.models.upernet.IwinUPerNet` names: :func:`convert_mmseg_upernet`.

Pure functions on state dicts: nothing here builds a model or reads a file, so the model modules
import this one and it imports none of them.
"""
from __future__ import annotations

import re

import torch

from ..io.checkpoint import CheckpointError

__all__ = ["remap_official_keys", "convert_official_backbone", "convert_mmseg_upernet"]

# --- ImageNet / mmseg backbone -> timm IwinTransformer -------------------------------------------

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
            # the authors downsample at the end of a stage, we at the start of the next one
            k = _OFFICIAL_DOWNSAMPLE.sub(lambda m: f'layers.{int(m[1]) + 1}.downsample.', k)
        k = _OFFICIAL_STAGE_NORM.sub(r'stage_norms.\1.', k)
        if k.startswith('head.') and not k.startswith('head.fc.'):
            k = 'head.fc.' + k[len('head.'):]
        out[k] = v
    return out


def convert_official_backbone(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A classification state dict, or an mmseg one (only its ``backbone.*`` part is kept), in timm names."""
    if any(k.startswith('backbone.') for k in state_dict):
        state_dict = {k[len('backbone.'):]: v for k, v in state_dict.items() if k.startswith('backbone.')}
    return remap_official_keys(state_dict)


# --- mmseg UPerNet -> IwinUPerNet ----------------------------------------------------------------

_CONV_MODULE = (("conv.weight", "0.weight"), ("bn.", "1."))


def _conv_module(key: str) -> str:
    """mmcv ConvModule (``conv``, ``bn``) -> smp Conv2dReLU (``0``, ``1``)."""
    for old, new in _CONV_MODULE:
        if key.startswith(old):
            return new + key[len(old):]
    raise KeyError(key)


def _decode_head_key(rest: str) -> str:
    parts = rest.split(".")
    if parts[0] == "psp_modules":  # psp_modules.{k}.1.conv.weight -> psp.blocks.{k}.1.0.weight
        return f"decoder.psp.blocks.{parts[1]}.1.{_conv_module('.'.join(parts[3:]))}"
    if parts[0] == "bottleneck":
        return f"decoder.psp.out_conv.{_conv_module('.'.join(parts[1:]))}"
    if parts[0] == "lateral_convs":  # mmseg counts fine->coarse, smp coarse->fine (stage 2 first)
        return f"decoder.fpn_lateral_blocks.{2 - int(parts[1])}.conv_norm_relu.{_conv_module('.'.join(parts[2:]))}"
    if parts[0] == "fpn_convs":
        return f"decoder.fpn_conv_blocks.{2 - int(parts[1])}.{_conv_module('.'.join(parts[2:]))}"
    if parts[0] == "fpn_bottleneck":
        return f"decoder.fusion_block.{_conv_module('.'.join(parts[1:]))}"
    if parts[0] == "conv_seg":
        return f"segmentation_head.conv_seg.{parts[1]}"
    raise KeyError(rest)


def _auxiliary_head_key(rest: str) -> str:
    parts = rest.split(".")
    if parts[0] == "convs":
        return f"auxiliary_head.convs.{parts[1]}.{_conv_module('.'.join(parts[2:]))}"
    if parts[0] == "conv_seg":
        return f"auxiliary_head.conv_seg.{parts[1]}"
    raise KeyError(rest)


def convert_mmseg_upernet(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The authors' mmseg UPerNet state dict in :class:`~iwin_models.models.upernet.IwinUPerNet` names.

    ``backbone.*`` -> ``encoder.model.model.*`` (timm names, see :func:`remap_official_keys`),
    ``decode_head.*`` -> smp's ``decoder.*`` and our ``segmentation_head.conv_seg``,
    ``auxiliary_head.*`` -> ``auxiliary_head.*``. Raises :class:`~iwin_models.CheckpointError` on a
    key it does not know, so nothing is dropped silently.
    """
    backbone = {k[len("backbone."):]: v for k, v in state_dict.items() if k.startswith("backbone.")}
    out = {f"encoder.model.model.{k}": v for k, v in remap_official_keys(backbone).items()}
    unknown = []
    for k, v in state_dict.items():
        head, _, rest = k.partition(".")
        try:
            if head == "decode_head":
                out[_decode_head_key(rest)] = v
            elif head == "auxiliary_head":
                out[_auxiliary_head_key(rest)] = v
            elif head != "backbone":
                unknown.append(k)
        except (KeyError, IndexError, ValueError):
            unknown.append(k)
    if unknown:
        raise CheckpointError(
            f"not an Iwin UPerNet checkpoint: {len(unknown)} keys are not backbone/decode_head/auxiliary_head "
            f"entries we know, e.g. {unknown[:3]}")
    return out
