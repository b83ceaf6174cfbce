"""Iwin UPerNet: the authors' ADE20K segmenters as a segmentation-models-pytorch model.

Encoder: the timm Iwin backbone (``features_only``, with the segmentation backbone's per-stage norms). Decoder:
smp's ``UPerNetDecoder`` (:mod:`.decoder`). Head: dropout + 1x1 classifier, logits resized to the input size.
Optional auxiliary FCN head on stage 2.

Where smp's defaults differ from what the checkpoints were trained with, we follow the checkpoints:

* smp's decoder normalises the encoder features itself (LayerNorm eps 1e-6); here the backbone
  already did (``norm0..3``, eps 1e-5), so the decoder's norms are identities;
* smp's ``SegmentationHead`` upsamples by a fixed x4 with align_corners True; ours resizes to the
  exact input size with align_corners False;
* smp requires inputs divisible by 32; Iwin pads internally, so any size is accepted.

Every forward here is the definition, on any device and under any tracer. The CPU fast twin of the decoder is
in :mod:`iwin_models.fast`; the registry of released weights is :mod:`iwin_models.models.weights`; building
and loading by name is :mod:`iwin_models.models.segmenters`.
"""
from __future__ import annotations

import contextlib
from collections.abc import Sequence

import segmentation_models_pytorch as smp
import torch
import torch.nn as nn
from segmentation_models_pytorch.base import SegmentationModel
from segmentation_models_pytorch.base.hub_mixin import supports_config_loading
from segmentation_models_pytorch.encoders import get_encoder
from torch.utils.checkpoint import checkpoint

from ...io.checkpoint import CheckpointError
from ...layers import check_image_batch, pool_safe_batchnorms, running_statistics_frozen
from .. import iwin as _iwin  # noqa: F401  (registers the timm models used as encoders)
from ..keymaps import convert_mmseg_upernet
from ..weights import registered
from .card import runnable_usage
from .decoder import FCNHead, IwinUPerNetDecoder, ResizeToInputHead, resize_logits

__all__ = ["IwinUPerNet", "register_with_smp", "AUX_CHANNELS"]

AUX_CHANNELS = 256  # the auxiliary FCN head's width (the authors' recipe)

# FX records the check as one call (run by the traced module on real inputs) instead of tracing into it
torch.fx.wrap("check_image_batch")


class IwinUPerNet(SegmentationModel):
    """UPerNet on an Iwin backbone (an smp ``SegmentationModel``: ``save_pretrained``,
    ``from_pretrained``, ``predict``, ``freeze_encoder`` all work).

    Args:
        encoder_name: timm Iwin model, optionally with a pretrained tag (``iwin_tiny.in1k``).
        encoder_weights: None for random init, True for the tag's ImageNet weights.
        encoder_kwargs: passed to ``timm.create_model`` (``window_size``, ``num_heads``,
            ``drop_path_rate``, ``pretrained_cfg_overlay=dict(file=...)``, ...).
        in_channels: image channels.
        classes: number of classes.
        decoder_channels: UPerNet width (512 in the official models).
        aux_channels: width of the auxiliary FCN head on stage 2 (:data:`AUX_CHANNELS`); 0 for none.
        dropout: dropout before both classifiers (0.1).
        class_names, palette: kept with the model (and in ``config.json`` when saved).

    ``forward(x)`` returns logits of shape (B, classes, H, W) for any H, W.
    ``forward(x, return_aux=True)`` returns ``(logits, aux_logits)``, for the training loss.
    """

    requires_divisible_input_shape = False

    @supports_config_loading
    def __init__(
            self,
            encoder_name: str = "iwin_tiny",
            encoder_weights: bool | None = None,
            encoder_kwargs: dict | None = None,
            in_channels: int = 3,
            classes: int = 150,
            decoder_channels: int = 512,
            aux_channels: int = AUX_CHANNELS,
            dropout: float = 0.1,
            class_names: Sequence[str] | None = None,
            palette: Sequence[Sequence[int]] | None = None,
    ):
        super().__init__()
        if classes < 1:
            raise ValueError(f"classes must be positive, got {classes}")
        if class_names is not None and len(class_names) != classes:
            raise ValueError(f"{len(class_names)} class names for {classes} classes")
        self.in_channels = in_channels
        self.encoder = get_encoder(
            f"tu-{encoder_name}", in_channels=in_channels, depth=5,
            weights=True if encoder_weights else None, **(encoder_kwargs or {}))
        stage_channels = self.encoder.out_channels[2:]
        self.decoder = IwinUPerNetDecoder(
            self.encoder.out_channels, encoder_depth=5, decoder_channels=decoder_channels)
        # The backbone's own norm0..3 already normalised the features (see the module docstring).
        self.decoder.feature_norms = nn.ModuleList([nn.Identity() for _ in stage_channels])
        self.segmentation_head = ResizeToInputHead(decoder_channels, classes, dropout)
        self.auxiliary_head = FCNHead(stage_channels[2], classes, aux_channels, dropout) if aux_channels else None
        pool_safe_batchnorms(self)
        self.classification_head = None
        self.num_classes = classes
        self.grad_checkpointing = False
        self.set_class_info(class_names, palette)
        self.name = f"upernet-{encoder_name}"
        self.initialize()
        if self.auxiliary_head is not None:
            smp.base.initialization.initialize_decoder(self.auxiliary_head)

    def check_input_shape(self, x):
        """Any size is fine (Iwin pads); shape and dtype are checked, values are not (NaN/Inf inputs are refused
        where data enters: ``segment()``, the training loss)."""
        check_image_batch(x, self.in_channels)

    def forward(self, x: torch.Tensor, return_aux: bool = False):
        """Logits at the input size: :meth:`low_res_logits` resized (and the auxiliary head's with ``return_aux``)."""
        if not return_aux:
            return resize_logits(self.low_res_logits(x), x.shape[-2:])
        if self.auxiliary_head is None:
            raise ValueError("this model has no auxiliary head (aux_channels=0)")
        self.check_input_shape(x)
        features = self.encoder(x)
        size = x.shape[-2:]
        logits = resize_logits(self._recomputed(self.decode, features), size)
        return logits, self.auxiliary_head(features[4], size)  # stage 2 (stride 16)

    def low_res_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The decode head's logits at stride 4, (B, classes, ceil(H / 4), ceil(W / 4)): what ``forward(x)``
        resizes to the input size last (bilinear, align_corners False). Inference that resizes or crops the
        logits itself (``iwin_models.engine.inference``) starts from these: 16x fewer values than ``forward``'s."""
        self.check_input_shape(x)
        return self._recomputed(self.decode, self.encoder(x))

    def decode(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Stride-4 logits from the encoder's features (mmseg's decode head)."""
        return self.segmentation_head.classify(self.decoder(features))

    @staticmethod
    def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A state dict in this model's names (timm's hook name): the authors' mmseg layout is converted,
        ours passes through (``iwin_models.models.segmenters.load_segmenter_weights`` calls it)."""
        if any(k.startswith("decode_head.") for k in state_dict):
            return convert_mmseg_upernet(state_dict)
        if not any(k.startswith("encoder.") for k in state_dict):
            raise CheckpointError(
                "not an Iwin UPerNet checkpoint: it has neither mmseg keys (backbone./decode_head.) nor ours "
                f"(encoder./decoder.), e.g. {sorted(state_dict)[:3]}")
        return state_dict

    def _recomputed(self, fn, *args):
        """``fn(*args)``, under gradient checkpointing when it is on and gradients are being recorded."""
        if not (self.grad_checkpointing and self.training and torch.is_grad_enabled()):
            return fn(*args)
        return checkpoint(fn, *args, use_reentrant=False,
                          context_fn=lambda: (contextlib.nullcontext(), running_statistics_frozen(self)))

    def set_grad_checkpointing(self, enable: bool = True):
        """Recompute activations during the backward pass instead of keeping them: every backbone
        stage and the whole decoder (the stride-4 maps of the 512-channel FPN dominate at 512x512).

        BatchNorm running statistics are updated once per step, as without checkpointing.
        """
        self.backbone.set_grad_checkpointing(enable)
        self.grad_checkpointing = enable

    @property
    def backbone(self) -> nn.Module:
        """The timm Iwin model inside the encoder."""
        return self.encoder.model.model

    def reset_classes(self, classes: int, class_names: Sequence[str] | None = None):
        """New classifiers (main and auxiliary) for ``classes`` classes; everything else is kept."""
        device = self.segmentation_head.conv_seg.weight.device
        heads = [self.segmentation_head] + ([self.auxiliary_head] if self.auxiliary_head is not None else [])
        for head in heads:
            head.conv_seg = nn.Conv2d(head.conv_seg.in_channels, classes, kernel_size=1, device=device)
            smp.base.initialization.initialize_head(head.conv_seg)
        self.num_classes = classes
        self._hub_mixin_config["classes"] = classes
        self.set_class_info(class_names, None)

    def set_class_info(self, class_names: Sequence[str] | None, palette: Sequence[Sequence[int]] | None):
        """Class names and colours kept with the model (and in ``config.json`` by ``save_pretrained``)."""
        self.class_names = list(class_names) if class_names is not None else None
        self.palette = [list(map(int, c)) for c in palette] if palette is not None else None
        config = getattr(self, "_hub_mixin_config", None)
        if config is not None:
            config.update(class_names=self.class_names, palette=self.palette)

    def generate_model_card(self, *args, segmenter: str | None = None, **kwargs):
        """smp's model card (``save_pretrained`` writes it as ``README.md``), with a loading snippet that runs
        (smp's lacks ``import iwin_models``). With ``segmenter=<registered name>``
        (``model_card_kwargs=model_card_kwargs(name)``) it also describes those weights from
        :data:`SEGMENTERS`: figures, source, test protocol and the terms the authors set for them."""
        if segmenter is None:
            return runnable_usage(super().generate_model_card(*args, **kwargs))
        weights = registered(segmenter)
        card = runnable_usage(super().generate_model_card(*args, **{**weights.card_metrics(), **kwargs}))
        card.data.license = weights.terms.hub_license
        card.data.license_name = weights.terms.hub_license_name
        card.data.license_link = weights.terms.url
        card.text += weights.card_section()
        return card


def register_with_smp() -> None:
    """Put :class:`IwinUPerNet` in smp's namespace (``smp.IwinUPerNet``).

    smp's ``from_pretrained(<folder or hub repo>)`` builds the class named in ``config.json`` by looking it
    up as an attribute of the ``segmentation_models_pytorch`` module, so a class smp does not define has to
    be placed there. Called once, below, when this module is imported; nothing else in the package touches
    smp's namespace.
    """
    smp.IwinUPerNet = IwinUPerNet


register_with_smp()
