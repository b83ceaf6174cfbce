"""Iwin UPerNet: the authors' ADE20K segmenters as a segmentation-models-pytorch model.

Encoder: the timm Iwin backbone (``features_only``, with the segmentation backbone's per-stage
norms). Decoder: smp's ``UPerNetDecoder`` (PSP + FPN, 512 channels), whose structure is mmseg's
``UPerHead``. Head: dropout + 1x1 classifier, logits resized to the input size (bilinear,
align_corners False, as the checkpoints were trained). Optional auxiliary FCN head on stage 2.

Where smp's defaults differ from what the checkpoints were trained with, we follow the checkpoints:

* smp's decoder normalises the encoder features itself (LayerNorm eps 1e-6); here the backbone
  already did (``norm0..3``, eps 1e-5), so the decoder's norms are identities;
* smp's ``SegmentationHead`` upsamples by a fixed x4 with align_corners True; ours resizes to the
  exact input size with align_corners False;
* smp requires inputs divisible by 32; Iwin pads internally, so any size is accepted.

Every forward here is the definition, on any device and under any tracer. The CPU fast twin of the
decoder is in :mod:`iwin_models.layers.upernet_cpu` (``iwin_models.optimize_for_cpu`` puts it in place);
the weights registry is :mod:`iwin_models.weights`, checkpoint loading :mod:`iwin_models.checkpoint`.
"""
from __future__ import annotations

import contextlib
import os
import re
import warnings
from collections.abc import Sequence

import segmentation_models_pytorch as smp
import torch
import torch.nn as nn
import torch.nn.functional as F
from segmentation_models_pytorch.base import SegmentationModel
from segmentation_models_pytorch.base import modules as smp_modules
from segmentation_models_pytorch.base.hub_mixin import supports_config_loading
from segmentation_models_pytorch.decoders.upernet.decoder import UPerNetDecoder
from segmentation_models_pytorch.encoders import get_encoder
from torch.utils.checkpoint import checkpoint

from . import iwin as _iwin  # noqa: F401  (registers the timm models used as encoders)
from .checkpoint import (
    CheckpointError,
    load_segmenter_weights,  # noqa: F401  (re-exported: its home before 0.2)
    read_weights,
)
from .convert import convert_mmseg_upernet
from .layers.config import is_dynamic_tracing
from .layers.pool import AdaptiveAvgPool2d
from .weights import (  # noqa: F401  (re-exported: their home before 0.2)
    ADE20K_PROTOCOL,
    AUTHORS_TERMS,
    SEGMENTERS,
    EvalProtocol,
    SegmenterWeights,
    WeightsTerms,
    model_card_kwargs,
    registered,
    segmenter_table,
)

__all__ = [
    "IwinUPerNet", "IwinUPerNetDecoder", "create_segmenter", "load_segmenter_weights", "register_with_smp",
    "SEGMENTERS", "SegmenterWeights", "EvalProtocol", "WeightsTerms", "segmenter_table", "model_card_kwargs",
    "iwin_tiny_upernet_ade20k", "iwin_small_upernet_ade20k", "iwin_base_upernet_ade20k",
]

CARD_RUN_HERE = ('Run the code in this folder, or replace `"."` by the folder\'s path or, once uploaded '
                 '(`huggingface-cli upload <org>/<repo> .`), by the repository id.')
# the loading snippet of smp's card template, which lacks ``import iwin_models`` (smp.from_pretrained then fails:
# "module 'segmentation_models_pytorch' has no attribute 'IwinUPerNet'")
_SMP_CARD_LOAD = re.compile(
    r"```python\nimport segmentation_models_pytorch as smp\n\nmodel = smp\.from_pretrained\([^)]*\)\n```")
_SMP_CARD_USAGE = f"""{CARD_RUN_HERE}

```python
import segmentation_models_pytorch as smp

import iwin_models  # noqa: F401  (puts IwinUPerNet in smp's namespace, where smp.from_pretrained looks it up)
from iwin_models.inference import SAMPLE_IMAGE

model = smp.from_pretrained(".").eval()  # from the hub: smp.from_pretrained("<org>/<repo>")
labels = iwin_models.segment(model, SAMPLE_IMAGE)  # (H, W) class indices, the authors' test protocol
names = model.class_names or [f"class {{i}}" for i in range(model.num_classes)]
print(labels.shape, [names[i] for i in sorted(set(labels.flat))[:5]])
```"""


# --- BatchNorm helpers ---------------------------------------------------------------------------

class PoolSafeBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm that normalises a lone value per channel with the running statistics.

    The PSP branch pools to 1x1 (and a tiny image gives 1x1 maps everywhere); with batch size 1 in
    training a channel then holds one value, which has no variance, and plain BatchNorm raises.
    mmseg avoided it with SyncBN over 8 GPUs.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.numel() // x.shape[1] <= 1:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0., self.eps)
        return super().forward(x)

    def _check_input_dim(self, input: torch.Tensor) -> None:
        _check_feature_map(input)


def _check_feature_map(x: torch.Tensor) -> None:
    if x.dim() != 4:
        raise ValueError(f"expected a 4D input (got {x.dim()}D input)")


# torch.fx records nn.BatchNorm2d as one call, but traces into a subclass: the check then is a recorded call too
torch.fx.wrap("_check_feature_map")


_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


@contextlib.contextmanager
def _running_statistics_frozen(module: nn.Module):
    """BatchNorms under ``module`` keep their running statistics (and batch count) unchanged.

    Used while gradient checkpointing recomputes a forward pass, which must not count the batch a
    second time. Momentum 0 keeps the running values exactly while the layers still normalise with
    the batch's statistics and save the same tensors for backward as in the first pass (which
    checkpointing verifies).
    """
    norms = [m for m in module.modules() if isinstance(m, _BATCH_NORMS) and m.track_running_stats]
    saved = [(m.momentum, m.num_batches_tracked.clone()) for m in norms]
    for m in norms:
        m.momentum = 0.
    try:
        yield
    finally:
        for m, (momentum, count) in zip(norms, saved):
            m.momentum = momentum
            m.num_batches_tracked.copy_(count)


def _pool_safe_batchnorms(module: nn.Module) -> nn.Module:
    """Swap every BatchNorm2d under ``module`` for :class:`PoolSafeBatchNorm2d` (same state)."""
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            safe = PoolSafeBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                       child.track_running_stats, device=child.weight.device)
            safe.load_state_dict(child.state_dict())
            setattr(module, name, safe)
        else:
            _pool_safe_batchnorms(child)
    return module


# --- the decoder and the heads -------------------------------------------------------------------

class IwinUPerNetDecoder(UPerNetDecoder):
    """smp's ``UPerNetDecoder`` (same modules, same state dict, same ``forward``) with the PSP pools that export
    size-free (:class:`~iwin_models.layers.pool.AdaptiveAvgPool2d`).

    Its CPU fast twin (channels-last throughout, no stride-4 concatenation at inference) is
    :class:`~iwin_models.layers.upernet_cpu.CpuUPerNetDecoder`, put in place by
    :func:`iwin_models.optimize_for_cpu`.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for block in self.psp.blocks:
            block[0] = AdaptiveAvgPool2d(block[0].output_size)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        if is_dynamic_tracing():
            # NCHW copies of Iwin's channels-last views: a tracer infers a convolution's memory format from
            # the strides, and for a channels-last input that test guards on the batch size (batch 1 would
            # need another graph)
            features = [f.clone(memory_format=torch.contiguous_format) for f in features]
        return super().forward(list(features))


def __getattr__(name: str):
    if name == "UPerNetDecoderChannelsLast":  # its name before 0.2, when it also held the CPU fast path
        warnings.warn("iwin_models.segmenter.UPerNetDecoderChannelsLast is now IwinUPerNetDecoder (the plain "
                      "decoder); its CPU fast twin is iwin_models.layers.upernet_cpu.CpuUPerNetDecoder, put in "
                      "place by iwin_models.optimize_for_cpu", DeprecationWarning, stacklevel=2)
        return IwinUPerNetDecoder
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _resize(logits: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    # NCHW out (the decoder's maps are channels-last, as Iwin's features): smp's losses and many users call .view
    return F.interpolate(logits.contiguous(), size=size, mode="bilinear", align_corners=False)


class ResizeToInputHead(nn.Module):
    """Dropout, 1x1 classifier, bilinear resize (align_corners False) to the input size."""

    def __init__(self, in_channels: int, num_classes: int, dropout: float = 0.1):
        super().__init__()
        self.dropout = nn.Dropout2d(dropout)  # mmseg's decode heads drop whole channels
        self.conv_seg = nn.Conv2d(in_channels, num_classes, kernel_size=1)

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """Logits at the resolution of ``x``."""
        return self.conv_seg(self.dropout(x))

    def forward(self, x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        return _resize(self.classify(x), size)


class FCNHead(ResizeToInputHead):
    """mmseg's auxiliary ``FCNHead``: one 3x3 conv-BN-ReLU, dropout, 1x1 classifier, resize."""

    def __init__(self, in_channels: int, num_classes: int, channels: int = 256, dropout: float = 0.1):
        super().__init__(channels, num_classes, dropout)
        self.convs = nn.Sequential(smp_modules.Conv2dReLU(in_channels, channels, kernel_size=3, padding=1))

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        return super().classify(self.convs(x))


# --- the model -------------------------------------------------------------------------------------

def _check_image_batch(x: torch.Tensor) -> None:
    """Any size is fine (Iwin pads); reject what would give a silent wrong answer. Shape and dtype only:
    reading the values (a NaN check) would synchronise a GPU on every call and fail under fake tensors."""
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        raise ValueError(f"expected an image batch (B, C, H, W), got {getattr(x, 'shape', type(x).__name__)}")
    if not x.is_floating_point():
        raise TypeError(f"expected a float (normalised) image tensor, got dtype {x.dtype}")


# FX records the check as one call (run by the traced module on real inputs) instead of tracing into it
torch.fx.wrap("_check_image_batch")


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
        aux_channels: width of the auxiliary FCN head on stage 2 (256); 0 for none.
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
            aux_channels: int = 256,
            dropout: float = 0.1,
            class_names: Sequence[str] | None = None,
            palette: Sequence[Sequence[int]] | None = None,
    ):
        super().__init__()
        if classes < 1:
            raise ValueError(f"classes must be positive, got {classes}")
        if class_names is not None and len(class_names) != classes:
            raise ValueError(f"{len(class_names)} class names for {classes} classes")
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
        _pool_safe_batchnorms(self)
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
        _check_image_batch(x)

    def forward(self, x: torch.Tensor, return_aux: bool = False):
        """Logits at the input size: :meth:`low_res_logits` resized (and the auxiliary head's with ``return_aux``)."""
        if not return_aux:
            return _resize(self.low_res_logits(x), x.shape[-2:])
        if self.auxiliary_head is None:
            raise ValueError("this model has no auxiliary head (aux_channels=0)")
        self.check_input_shape(x)
        features = self.encoder(x)
        size = x.shape[-2:]
        logits = _resize(self._recomputed(self.decode, features), size)
        return logits, self.auxiliary_head(features[4], size)  # stage 2 (stride 16)

    def low_res_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The decode head's logits at stride 4, (B, classes, ceil(H / 4), ceil(W / 4)): what ``forward(x)``
        resizes to the input size last (bilinear, align_corners False). Inference that resizes or crops the
        logits itself (``iwin_models.inference``) starts from these: 16x fewer values than ``forward``'s."""
        self.check_input_shape(x)
        return self._recomputed(self.decode, self.encoder(x))

    def decode(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Stride-4 logits from the encoder's features (mmseg's decode head)."""
        return self.segmentation_head.classify(self.decoder(features))

    @staticmethod
    def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A state dict in this model's names (timm's hook name): the authors' mmseg layout is converted,
        ours passes through (``iwin_models.checkpoint.load_segmenter_weights`` calls it)."""
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
                          context_fn=lambda: (contextlib.nullcontext(), _running_statistics_frozen(self)))

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
            return _runnable_usage(super().generate_model_card(*args, **kwargs))
        weights = registered(segmenter)
        card = _runnable_usage(super().generate_model_card(*args, **{**weights.card_metrics(), **kwargs}))
        card.data.license = weights.terms.hub_license
        card.data.license_name = weights.terms.hub_license_name
        card.data.license_link = weights.terms.url
        card.text += weights.card_section()
        return card


def _runnable_usage(card):
    """``card`` with smp's loading snippet replaced by one that runs (added when smp changed its template)."""
    card.text, count = _SMP_CARD_LOAD.subn(lambda _: _SMP_CARD_USAGE, card.text, count=1)
    if not count:
        card.text += f"\n## Usage\n\n{_SMP_CARD_USAGE}\n"
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


# --- the factory and the entrypoints -------------------------------------------------------------------

def create_segmenter(
        name: str,
        pretrained: bool = True,
        num_classes: int = 150,
        weights: str | os.PathLike | dict | None = None,
        encoder_pretrained: bool | str = False,
        aux_head: bool = True,
        **kwargs,
) -> IwinUPerNet:
    """Build one of :data:`SEGMENTERS`.

    Args:
        name: ``iwin_{tiny,small,base}_upernet_ade20k``.
        pretrained: load the authors' ADE20K weights (from the torch.hub cache, downloaded once).
        num_classes: classes of the model; a count other than the checkpoint's keeps the
            pretrained body and re-initialises the classifiers (with a warning).
        weights: the tensors to use instead of the official file (implies ``pretrained``): a loaded
            checkpoint, or what :func:`iwin_models.checkpoint.read_weights` reads: a path (.pth, .safetensors),
            the bare file name of a download in ``$TORCH_HOME/hub/checkpoints`` (the official files land there),
            a URL, a folder written by ``save_pretrained`` / ``iwin-seg convert`` or a Hugging Face hub
            repository ``owner/name``. They are read before the model is built and must fit ``name``'s
            architecture (to take the architecture from a folder, use :func:`iwin_models.resolve.load_segmenter`).
        encoder_pretrained: start the backbone from ImageNet weights instead (for training): True for
            the variant's official ``.in1k`` timm weights, or a path to a classification checkpoint.
        aux_head: build the auxiliary FCN head (used for the training loss only).
        **kwargs: ``window_size``, ``drop_path_rate`` (0.3 by default, the training recipe), ``dropout``.
    """
    spec = registered(name)
    checkpoint = weights if weights is not None else spec.url if pretrained else None
    if checkpoint is not None and not isinstance(checkpoint, dict):
        checkpoint = read_weights(checkpoint)  # first: a missing or damaged file fails before the model is built
    encoder_kwargs = dict(spec.encoder_kwargs, drop_path_rate=kwargs.pop("drop_path_rate", 0.3))
    if "window_size" in kwargs:
        encoder_kwargs["window_size"] = kwargs.pop("window_size")
    encoder_name = spec.encoder
    if encoder_pretrained:
        encoder_name += ".in1k"
        if isinstance(encoder_pretrained, str):
            encoder_kwargs["pretrained_cfg_overlay"] = dict(file=encoder_pretrained)
    same_classes = num_classes == spec.num_classes
    model = IwinUPerNet(
        encoder_name=encoder_name,
        encoder_weights=bool(encoder_pretrained) or None,
        encoder_kwargs=encoder_kwargs,
        classes=num_classes,
        aux_channels=256 if aux_head else 0,
        class_names=spec.class_names if same_classes else None,
        palette=spec.palette if same_classes else None,
        **kwargs,
    )
    if checkpoint is not None:
        load_segmenter_weights(model, checkpoint)
    return model


def _described(fn):
    """The entrypoint's docstring, written from its :data:`SEGMENTERS` entry."""
    fn.__doc__ = SEGMENTERS[fn.__name__].docstring()
    return fn


@_described
def iwin_tiny_upernet_ade20k(pretrained: bool = True, num_classes: int = 150, **kwargs) -> IwinUPerNet:
    return create_segmenter("iwin_tiny_upernet_ade20k", pretrained, num_classes, **kwargs)


@_described
def iwin_small_upernet_ade20k(pretrained: bool = True, num_classes: int = 150, **kwargs) -> IwinUPerNet:
    return create_segmenter("iwin_small_upernet_ade20k", pretrained, num_classes, **kwargs)


@_described
def iwin_base_upernet_ade20k(pretrained: bool = True, num_classes: int = 150, **kwargs) -> IwinUPerNet:
    return create_segmenter("iwin_base_upernet_ade20k", pretrained, num_classes, **kwargs)
