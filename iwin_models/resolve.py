"""The one model resolver: what a user names -> a segmenter, the same in Python and in every ``iwin-seg`` command.

:func:`load_segmenter` takes ``model`` and ``weights`` as a user writes them:

* ``model``: a registered name (``iwin_tiny_upernet_ade20k``, ...); a folder written by ``save_pretrained``
  or ``iwin-seg convert``, or a Hugging Face hub repository ``owner/name`` (their ``config.json`` gives the
  architecture, ``model.safetensors`` the tensors); or the file name of an official checkpoint
  (``iwin_tiny_patch4_window7_512_ade20k_1k.pth``: its segmenter with that file).
* ``weights``: the tensors to use instead: a ``.pth``/``.safetensors`` file, the bare name of a file in the
  torch.hub cache (where the official downloads land), a URL, a folder or a hub repository (which then
  also gives the architecture). Everything :func:`iwin_models.checkpoint.locate_weights` finds.

Direction: the commands call this (``cli/common.py:resolve_model``) and it calls down, once each:
:mod:`~iwin_models.checkpoint` finds and reads the weights (``locate_weights``, ``read_weights``),
:mod:`~iwin_models.segmenter` builds the architecture (``create_segmenter(pretrained=False)`` or
``IwinUPerNet(**config)``), ``checkpoint.load_segmenter_weights`` puts the tensors in (strict, with readable
errors). Nothing below calls back up, and the weights never pass through the segmenter factory.
"""
from __future__ import annotations

import os
import warnings

import torch

from . import segmenter
from .checkpoint import CheckpointError, WeightsLocation, load_segmenter_weights, locate_weights, read_weights
from .weights import SEGMENTERS

__all__ = ["STARTS", "load_segmenter", "official_segmenter_of", "starts_random", "parse_device"]

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


def _fit_classes(model: segmenter.IwinUPerNet, num_classes: int | None, source: str) -> segmenter.IwinUPerNet:
    if num_classes is not None and model.num_classes != num_classes:
        warnings.warn(f"{source} has {model.num_classes} classes and the data {num_classes}: "
                      f"the classifiers are re-initialised", stacklevel=3)
        model.reset_classes(num_classes)
    return model


def _architecture(where: WeightsLocation) -> segmenter.IwinUPerNet:
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
        return segmenter.IwinUPerNet(**{k: v for k, v in config.items() if not k.startswith("_")})
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{where.source}: its config.json does not build an IwinUPerNet ({e})") from e


def _from_folder(where: WeightsLocation, weights, num_classes: int | None) -> segmenter.IwinUPerNet:
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
        model = segmenter.create_segmenter(name, pretrained=False, **create_kwargs)
        load_segmenter_weights(model, read_weights(SEGMENTERS[name].url))  # through the torch.hub cache
        return model
    if start == "imagenet":  # encoder_pretrained: True (timm's in1k weights), a path, or False (random backbone)
        backbone = create_kwargs.get("encoder_pretrained")
        if backbone is None:
            create_kwargs["encoder_pretrained"] = True
        elif isinstance(backbone, (str, os.PathLike)):  # found as --weights are (a bare name: the torch.hub cache)
            create_kwargs["encoder_pretrained"] = str(locate_weights(backbone).file)
        return segmenter.create_segmenter(name, pretrained=False, **create_kwargs)
    if warn:
        warnings.warn(f"no weights given: {name} has RANDOM weights (pass the official checkpoint as weights for a "
                      f"useful model)", stacklevel=3)
    create_kwargs.pop("encoder_pretrained", None)
    return segmenter.create_segmenter(name, pretrained=False, **create_kwargs)


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
    return load_segmenter_weights(segmenter.create_segmenter(name, pretrained=False, **create_kwargs), checkpoint)


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
                   warn: bool = True, **create_kwargs) -> segmenter.IwinUPerNet:
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
        **create_kwargs: more :func:`~iwin_models.segmenter.create_segmenter` arguments for a registered name
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
