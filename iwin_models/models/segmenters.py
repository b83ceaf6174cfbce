"""The segmenters by name: :func:`create_segmenter` and the entrypoints build the registered ones
(:data:`~iwin_models.models.weights.SEGMENTERS`), :func:`load_segmenter` resolves what a user names, the same in
Python and in every ``iwin-seg`` command, and :func:`load_segmenter_weights` puts a checkpoint in (strict, with
readable errors). Every weights file a segmenter gets is read here, through :mod:`iwin_models.io`.

:func:`load_segmenter` takes ``model`` and ``weights`` as a user writes them:

* ``model``: a registered name (``iwin_tiny_upernet_ade20k``, ...); a folder written by ``save_pretrained``
  or ``iwin-seg convert``, or a Hugging Face hub repository ``owner/name`` (their ``config.json`` gives the
  architecture, ``model.safetensors`` the tensors); or the file name of an official checkpoint
  (``iwin_tiny_patch4_window7_512_ade20k_1k.pth``: its segmenter with that file).
* ``weights``: the tensors to use instead: a ``.pth``/``.safetensors`` file, the bare name of a file in the
  torch.hub cache (where the official downloads land), a URL, a folder or a hub repository (which then
  also gives the architecture). Everything :func:`iwin_models.io.locate.locate_weights` finds.
"""
from __future__ import annotations

import os
import warnings

import torch
import torch.nn as nn

from ..io.checkpoint import CheckpointError, check_state_dict_fits
from ..io.locate import WeightsLocation, locate_weights, read_weights
from .upernet import IwinUPerNet
from .weights import SEGMENTERS, registered

__all__ = ["create_segmenter", "load_segmenter", "load_segmenter_weights", "official_segmenter_of", "starts_random",
           "parse_device", "STARTS", "iwin_tiny_upernet_ade20k", "iwin_small_upernet_ade20k",
           "iwin_base_upernet_ade20k", "DROP_PATH_RATE"]

DROP_PATH_RATE = 0.3  # the backbone's stochastic depth in the authors' training recipe


# --- building the registered segmenters -------------------------------------------------------------

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
            checkpoint, or what :func:`iwin_models.io.locate.read_weights` reads: a path (.pth, .safetensors),
            the bare file name of a download in ``$TORCH_HOME/hub/checkpoints`` (the official files land there),
            a URL, a folder written by ``save_pretrained`` / ``iwin-seg convert`` or a Hugging Face hub
            repository ``owner/name``. They are read before the model is built and must fit ``name``'s
            architecture (to take the architecture from a folder, use :func:`load_segmenter`).
        encoder_pretrained: start the backbone from ImageNet weights instead (for training): True for
            the variant's official ``.in1k`` timm weights, or a path to a classification checkpoint.
        aux_head: build the auxiliary FCN head (used for the training loss only).
        **kwargs: ``window_size``, ``drop_path_rate`` (:data:`DROP_PATH_RATE` by default, the training recipe),
            ``dropout``.
    """
    spec = registered(name)
    checkpoint = weights if weights is not None else spec.url if pretrained else None
    if checkpoint is not None and not isinstance(checkpoint, dict):
        checkpoint = read_weights(checkpoint)  # first: a missing or damaged file fails before the model is built
    encoder_kwargs = dict(spec.encoder_kwargs, drop_path_rate=kwargs.pop("drop_path_rate", DROP_PATH_RATE))
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
        **({} if aux_head else {"aux_channels": 0}),  # the model's default width (AUX_CHANNELS) otherwise
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


# --- loading weights into a segmenter ----------------------------------------------------------------

_CLASSIFIERS = ("segmentation_head.conv_seg.", "auxiliary_head.conv_seg.")


def _segmenter_state_dict(checkpoint: dict, filter_fn=None) -> tuple[dict, dict]:
    """(state dict, meta) from an mmseg checkpoint, one of ours, or a bare dict; ``filter_fn`` maps the state
    dict to the model's names (``IwinUPerNet.checkpoint_filter_fn``)."""
    checkpoint = dict(checkpoint)
    meta = checkpoint.pop("meta", None) or {}
    metadata = checkpoint.pop("__metadata__", None)  # safetensors
    sd = checkpoint.get("state_dict", checkpoint)
    if not isinstance(sd, dict) or not sd:
        raise CheckpointError("not a segmenter checkpoint: no state_dict")
    if filter_fn is not None:
        sd = filter_fn(sd)
    if metadata:
        meta = {**meta, **metadata}
    return sd, meta


def load_segmenter_weights(model: nn.Module, checkpoint: dict | str) -> nn.Module:
    """Load an official mmseg checkpoint (or one of ours) into an ``IwinUPerNet`` with strict semantics.

    ``checkpoint`` is a loaded dict or anything :func:`~iwin_models.io.locate.read_weights` reads (a path, .pth or
    .safetensors, the bare name of a file in the torch.hub cache, a URL, a ``save_pretrained`` folder, a hub repository
    ``owner/name``). The keys are mapped by the model's own ``checkpoint_filter_fn``. Every tensor must be
    used and every model tensor provided, except the classifiers when the class count differs
    (they are then re-initialised, with a warning) and the auxiliary head when the model has none.
    The checkpoint's class names and palette (``meta``) are kept on the model.
    """
    if isinstance(checkpoint, (str, os.PathLike, WeightsLocation)):
        checkpoint = read_weights(checkpoint)
    sd, meta = _segmenter_state_dict(checkpoint, model.checkpoint_filter_fn)
    if model.auxiliary_head is None:
        sd = {k: v for k, v in sd.items() if not k.startswith("auxiliary_head.")}
    classifier = sd.get("segmentation_head.conv_seg.weight")
    ckpt_classes = classifier.shape[0] if classifier is not None else None
    reinit = ckpt_classes != model.num_classes
    if ckpt_classes is not None and reinit:
        warnings.warn(
            f"the checkpoint has {ckpt_classes} classes and the model {model.num_classes}: its body is loaded and "
            f"the classifiers are re-initialised (train them before use)", stacklevel=2)
        sd = {k: v for k, v in sd.items() if not k.startswith(_CLASSIFIERS)}
        meta = {}
    check_state_dict_fits(sd, model.state_dict(), model.name, skip=_CLASSIFIERS if reinit else (),
                          hint="it was probably made for another Iwin variant (tiny/small/base) or decoder width")
    model.load_state_dict(sd, strict=not reinit)

    names = meta.get("CLASSES")
    if names is not None and len(names) == model.num_classes:
        palette = meta.get("PALETTE")
        model.set_class_info(names, palette if palette is not None else model.palette)
    return model


# --- the resolver ---------------------------------------------------------------------------------------

STARTS = ("official", "random", "imagenet")  # what a registered name without weights starts from


def parse_device(device: str | torch.device | None) -> torch.device:
    """``torch.device(device)`` (default: the CPU); a ValueError naming a bad device."""
    try:
        return torch.device(device if device is not None else "cpu")
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"bad device {device!r}: {e}") from None


def official_segmenter_of(source: str | os.PathLike) -> str | None:
    """The registered segmenter whose official checkpoint file ``source`` names (by its file name), or None."""
    name = os.path.basename(os.fspath(source))
    return next((key for key, spec in SEGMENTERS.items() if spec.file_name == name), None)


def starts_random(model: str, weights, start: str) -> bool:
    """Whether :func:`load_segmenter` gives random weights: a registered name, no weights, ``start="random"``."""
    return start == "random" and weights is None and model in SEGMENTERS


def _fit_classes(model: IwinUPerNet, num_classes: int | None, source: str) -> IwinUPerNet:
    if num_classes is not None and model.num_classes != num_classes:
        warnings.warn(f"{source} has {model.num_classes} classes and the data {num_classes}: "
                      f"the classifiers are re-initialised", stacklevel=3)
        model.reset_classes(num_classes)
    return model


def _architecture(where: WeightsLocation) -> IwinUPerNet:
    """The segmenter a ``save_pretrained`` folder's (or hub repository's) ``config.json`` describes."""
    if where.config is None:
        raise CheckpointError(f"{where.source} has no config.json: the folder does not say which architecture its "
                              f"weights are for; give a registered name with it as weights")
    config = where.config
    kind = config.get("_model_class")
    if kind != "IwinUPerNet":
        what = (f"a timm backbone ({config['architecture']}): load it with timm.create_model('local-dir:...')"
                if "architecture" in config else
                f"a transformers model ({config['model_type']}): load it with transformers' from_pretrained"
                if "model_type" in config else
                f"an smp {kind}" if kind else "no _model_class")
        raise CheckpointError(f"{where.source} is not an IwinUPerNet segmenter: its config.json describes {what}")
    try:
        return IwinUPerNet(**{k: v for k, v in config.items() if not k.startswith("_")})
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{where.source}: its config.json does not build an IwinUPerNet ({e})") from e


def _from_folder(where: WeightsLocation, weights, num_classes: int | None) -> IwinUPerNet:
    """A folder or hub repository: its architecture, and its tensors or those of ``weights``."""
    model = _architecture(where)
    load_segmenter_weights(model, read_weights(where if weights is None else weights))
    return _fit_classes(model, num_classes, where.source)


def _from_registry(name: str, start: str, num_classes: int | None, warn: bool, create_kwargs: dict):
    """A registered name without weights: the official ADE20K weights, the ImageNet backbone, or random."""
    if num_classes is not None:
        create_kwargs["num_classes"] = num_classes
    if start == "official":
        create_kwargs.pop("encoder_pretrained", None)
        model = create_segmenter(name, pretrained=False, **create_kwargs)
        return load_segmenter_weights(model, read_weights(SEGMENTERS[name].url))  # through the torch.hub cache
    if start == "imagenet":  # encoder_pretrained: True (timm's in1k weights), a path, or False (random backbone)
        backbone = create_kwargs.get("encoder_pretrained")
        if backbone is None:
            create_kwargs["encoder_pretrained"] = True
        elif isinstance(backbone, (str, os.PathLike)):  # found as --weights are (a bare name: the torch.hub cache)
            create_kwargs["encoder_pretrained"] = str(locate_weights(backbone).file)
        return create_segmenter(name, pretrained=False, **create_kwargs)
    if warn:
        warnings.warn(f"no weights given: {name} has RANDOM weights (pass the official checkpoint as weights for a "
                      f"useful model)", stacklevel=3)
    create_kwargs.pop("encoder_pretrained", None)
    return create_segmenter(name, pretrained=False, **create_kwargs)


def _registered_with_weights(name: str, where: WeightsLocation, num_classes: int | None, create_kwargs: dict):
    """A registered name and a weights file: that architecture, those tensors (strict fit)."""
    owner = official_segmenter_of(where.file)
    if owner is not None and owner != name:
        raise ValueError(f"{where.source} is the official checkpoint of {owner}, not of {name}: "
                         f"ask for {owner} (iwin-seg: --model {owner})")
    checkpoint = read_weights(where)  # read before building: a bad file fails fast
    create_kwargs.pop("encoder_pretrained", None)  # the segmenter checkpoint holds the backbone too
    if num_classes is not None:
        create_kwargs["num_classes"] = num_classes
    return load_segmenter_weights(create_segmenter(name, pretrained=False, **create_kwargs), checkpoint)


def _unknown(model: str, reason: str = "") -> ValueError:
    return ValueError(f"unknown model {model!r}: choose one of {', '.join(SEGMENTERS)}, a save_pretrained folder or "
                      f"a Hugging Face hub repository (owner/name){f' ({reason})' if reason else ''}")


def _named(model: str) -> WeightsLocation:
    """What a ``model`` that is not a registered name points to (a folder, a hub repository, a file)."""
    try:
        return locate_weights(model)
    except CheckpointError as e:  # not found anywhere: the list of choices says it; anything else: its reason too
        raise _unknown(model, "" if str(e).startswith("no such checkpoint file") else str(e)) from None


def load_segmenter(model: str | os.PathLike, weights: str | os.PathLike | None = None, *,
                   device: str | torch.device | None = None, start: str = "official", num_classes: int | None = None,
                   warn: bool = True, **create_kwargs) -> IwinUPerNet:
    """The segmenter ``model`` names (+ ``weights``), on ``device`` (default: the CPU), in eval mode.

    Args:
        model: a registered name, a ``save_pretrained`` / ``iwin-seg convert`` folder, a Hugging Face hub
            repository ``owner/name`` (through the Hugging Face cache: offline once downloaded, or with
            ``HF_HUB_OFFLINE=1``), or an official checkpoint's file name (its segmenter, with it).
        weights: the tensors to use instead (see the module docstring). With a registered ``model``, a file
            must fit that architecture (an official file of another segmenter is refused up front); a folder
            or repository brings its own architecture. With a folder ``model``, the folder gives the
            architecture and ``weights`` the tensors.
        device: where the model goes (a ValueError names a bad device, before anything is built).
        start: what a registered name without ``weights`` starts from: ``"official"`` (the authors' ADE20K
            weights, downloaded once into the torch.hub cache), ``"random"`` (random weights, with a warning
            unless ``warn`` is False) or ``"imagenet"`` (training: the ImageNet backbone; ``encoder_pretrained``
            in ``create_kwargs`` may be a classification checkpoint path, or False for a random backbone).
        num_classes: classes of the model; other than the weights' count, the classifiers are re-initialised
            (with a warning).
        **create_kwargs: more :func:`~iwin_models.create_segmenter` arguments for a registered name
            (``drop_path_rate``, ``aux_head``, ``encoder_pretrained``, ...).
    """
    if start not in STARTS:
        raise ValueError(f"unknown start {start!r}: choose one of {', '.join(STARTS)}")
    device = parse_device(device)
    name = os.fspath(model)
    if name not in SEGMENTERS:
        where = _named(name)
        if where.folder is not None:
            return _from_folder(where, weights, num_classes).to(device).eval()
        owner = official_segmenter_of(where.file)
        if owner is None:
            raise _unknown(name, "a weights file alone does not say which architecture: give a registered name "
                                 "with it as weights")
        if weights is not None:
            raise ValueError(f"two sets of weights: {name} (as the model) and {weights}; give one")
        name, weights = owner, where
    if weights is None:
        built = _from_registry(name, start, num_classes, warn, dict(create_kwargs))
    else:
        where = weights if isinstance(weights, WeightsLocation) else locate_weights(weights)
        if where.folder is not None and where.config is not None:  # it brings its architecture
            built = _from_folder(where, None, num_classes)
        else:
            built = _registered_with_weights(name, where, num_classes, dict(create_kwargs))
    return built.to(device).eval()
