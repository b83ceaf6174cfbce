"""The COCO detectors by name: :func:`create_detector` and the entrypoints build the registered ones
(:data:`~iwin_models.models.detection.weights.DETECTORS`). Every weights file a detector gets is read here,
through :mod:`iwin_models.io`, before the model is built.

``weights`` may be the authors' mmdet ``.pth`` (``{'meta', 'state_dict'}``, mapped by
:mod:`.detection.keymaps`), a ``.safetensors`` file (the authors' names or this port's), a folder written by
``save_pretrained`` (``config.json`` + ``model.safetensors``: the folder also gives the architecture and the
class names), the bare file name of an official download in the torch.hub cache, or a URL.
"""
from __future__ import annotations

import dataclasses
import os
import re
import warnings

from ..io.checkpoint import CheckpointError, check_state_dict_fits
from ..io.locate import WeightsLocation, locate_weights, read_weights
from .detection.keymaps import convert_mmdet_detector
from .detection.model import DetectorConfig, IwinMaskRCNN, TestConfig, build_detector
from .detection.weights import DETECTORS, DetectorWeights, registered_detector

__all__ = ["create_detector", "load_detector_weights", "describe_detector_checkpoint", "DETECTORS",
           "iwin_tiny_mask_rcnn_coco_1x", "iwin_tiny_mask_rcnn_coco_3x", "iwin_small_mask_rcnn_coco_1x",
           "iwin_small_mask_rcnn_coco_3x", "iwin_tiny_cascade_mask_rcnn_coco_1x", "iwin_tiny_cascade_mask_rcnn_coco_3x",
           "iwin_small_cascade_mask_rcnn_coco_3x", "iwin_small_cascade_mask_rcnn_coco_1x",
           "iwin_base_cascade_mask_rcnn_coco_3x"]

# this port's class-specific layers: re-initialised when the class count changes
_CLASS_SPECIFIC = re.compile(r"^roi_heads\.(box_predictor\.(\d+\.)?(cls_score|bbox_pred)|"
                             r"mask_predictor\.(\d+\.)?mask_fcn_logits)\.")
_OURS = ("backbone.body.", "backbone.fpn.", "rpn.head.", "roi_heads.")
_MMDET = ("neck.", "rpn_head.", "roi_head.")


@dataclasses.dataclass(frozen=True)
class _Weights:
    """A detector checkpoint, read: the state dict in this port's names and what it says about itself."""

    source: str
    state_dict: dict
    class_names: tuple[str, ...] | None = None
    category_ids: tuple[int, ...] | None = None
    architecture: dict = dataclasses.field(default_factory=dict)  # DetectorConfig fields of a folder
    name: str | None = None  # the registered detector a folder was saved from

    @property
    def num_classes(self) -> int | None:
        return _classes_of(self.state_dict)


def _classes_of(state_dict: dict) -> int | None:
    rows = [v.shape[0] for k, v in state_dict.items() if re.match(r"^roi_heads\.box_predictor\.(\d+\.)?cls_score"
                                                                     r"\.weight$", k)]
    return rows[0] - 1 if rows else None


def _variant_of(state_dict: dict, prefix: str) -> str:
    """'Iwin-T' / 'Iwin-S' / 'Iwin-B' (or the widths) from the backbone's tensors under ``prefix``."""
    embed = state_dict.get(f"{prefix}patch_embed.proj.weight")
    blocks = {m[1] for k in state_dict for m in [re.match(rf"^{re.escape(prefix)}layers\.2\.blocks\.(\d+)\.", k)] if m}
    known = {(96, 6): "Iwin-T", (96, 18): "Iwin-S", (128, 18): "Iwin-B"}
    width = None if embed is None else int(embed.shape[0])
    return known.get((width, len(blocks)), f"Iwin (embed_dim {width}, stage-3 depth {len(blocks)})")


def describe_detector_checkpoint(state_dict: dict) -> str:
    """What a state dict holds, in words ('an Iwin-S Cascade Mask R-CNN (mmdet names)', 'an ADE20K UPerNet
    segmenter', ...), for error messages."""
    keys = list(state_dict)
    if any(k.startswith(("decode_head.", "auxiliary_head.", "segmentation_head.")) for k in keys):
        return "an Iwin UPerNet segmenter checkpoint (ADE20K), not a detector"
    if any(k.startswith(_MMDET) for k in keys):
        cascade = any(k.startswith("roi_head.bbox_head.0.") for k in keys)
        kind = "Cascade Mask R-CNN" if cascade else "Mask R-CNN"
        return f"an {_variant_of(state_dict, 'backbone.')} {kind} checkpoint (mmdet names)"
    if any(k.startswith(_OURS[2:]) for k in keys):
        cascade = any(k.startswith("roi_heads.box_head.0.") for k in keys)
        kind = "Cascade Mask R-CNN" if cascade else "Mask R-CNN"
        return f"an {_variant_of(state_dict, 'backbone.body.model.')} {kind} checkpoint (iwin_models names)"
    if any(k.startswith(("head.", "layers.", "patch_embed.")) for k in keys):
        return "an Iwin backbone / ImageNet classifier checkpoint, not a detector"
    return f"not an Iwin detector checkpoint (keys such as {', '.join(keys[:3])})"


def _our_names(checkpoint: dict, source: str) -> dict:
    """The state dict of a read checkpoint in this port's names; CheckpointError for anything else."""
    state_dict = checkpoint.get("state_dict", checkpoint)
    if not isinstance(state_dict, dict):
        raise CheckpointError(f"{source} holds no state_dict")
    state_dict = {k: v for k, v in state_dict.items() if k != "__metadata__"}
    what = describe_detector_checkpoint(state_dict)
    if "mmdet names" in what:
        return convert_mmdet_detector(state_dict)
    if "iwin_models names" in what:
        return state_dict
    raise CheckpointError(f"{source} is {what}")


def _read(weights) -> _Weights:
    """Read what ``weights`` names (a loaded dict, a path, a folder, a cached file name, a URL)."""
    if isinstance(weights, dict):
        return _Weights("the given checkpoint", _our_names(weights, "the given checkpoint"),
                        _names((weights.get("meta") or {}).get("CLASSES")))
    text = weights.source if isinstance(weights, WeightsLocation) else os.fspath(weights)
    where = weights if isinstance(weights, WeightsLocation) else None if "://" in text else locate_weights(text)
    checkpoint = read_weights(where or text)
    source = str(where.file) if where is not None else text
    config = (where.config if where is not None else None) or {}
    meta = checkpoint.get("meta") or {}
    names = config.get("class_names", meta.get("CLASSES"))
    return _Weights(source, _our_names(checkpoint, source), _names(names), _names(config.get("category_ids")),
                    dict(config.get("architecture") or {}), config.get("name"))


def _names(values) -> tuple | None:
    return None if values is None else tuple(values)


def _architecture(fields: dict) -> dict:
    """DetectorConfig fields from a ``config.json`` (lists back to tuples, the test config rebuilt)."""
    out = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
    if isinstance(out.get("test_cfg"), dict):
        out["test_cfg"] = TestConfig(**out["test_cfg"])
    return out


def _folder_architecture(loaded: _Weights | None, name: str) -> dict:
    """The widths a ``save_pretrained`` folder of ``name`` was built with (a folder of another detector gives
    none: the strict fit then says what it holds)."""
    if loaded is None or loaded.name != name:
        return {}
    return _architecture(loaded.architecture)


def load_detector_weights(model: IwinMaskRCNN, weights: _Weights, reinit: bool = False) -> IwinMaskRCNN:
    """Put read weights into ``model`` (strict; ``reinit``: the class-specific layers keep their fresh values)."""
    state_dict = weights.state_dict
    if reinit:
        state_dict = {k: v for k, v in state_dict.items() if not _CLASS_SPECIFIC.match(k)}
    try:
        check_state_dict_fits(state_dict, model.state_dict(), type(model).__name__,
                              skip=("roi_heads.box_predictor", "roi_heads.mask_predictor") if reinit else (),
                              hint="it was probably made for another detector (Mask R-CNN vs Cascade, Iwin-T/S/B)")
    except CheckpointError as e:
        what = describe_detector_checkpoint(state_dict)
        raise CheckpointError(f"{weights.source} is {what}, which does not fit {model.name} "
                              f"({_variant_of(model.state_dict(), 'backbone.body.model.')}):\n{e}") from None
    model.load_state_dict(state_dict, strict=not reinit)
    return model


def _weights_for(spec: DetectorWeights, pretrained: bool, weights):
    if weights is not None:
        return weights
    if not pretrained:
        return None
    if not spec.released:
        raise CheckpointError(f"the authors released no weights for {spec.name} (config {spec.config}): build it "
                              f"with pretrained=False, or give your own weights=")
    return spec.url


def _class_info(spec: DetectorWeights, loaded: _Weights | None, num_classes: int, reinit: bool):
    """(class_names, category_ids) of the built model."""
    if reinit or (loaded is None and num_classes != spec.num_classes):
        return None, None
    names = loaded.class_names if loaded is not None and loaded.class_names else None
    if names is not None and len(names) != num_classes:
        names = None
    if names is None and num_classes == spec.num_classes:
        names = spec.class_names
    ids = loaded.category_ids if loaded is not None and loaded.category_ids else None
    if ids is None and names == spec.class_names:
        ids = spec.category_ids
    return names, ids


def create_detector(name: str, *, pretrained: bool = False, weights=None, num_classes: int | None = None,
                    **kwargs) -> IwinMaskRCNN:
    """Build one of :data:`DETECTORS` (a plain model in eval mode on the CPU).

    Args:
        name: ``iwin_{tiny,small}_{mask_rcnn,cascade_mask_rcnn}_coco_{1x,3x}``, ``iwin_base_cascade_mask_rcnn_coco_3x``.
        pretrained: load the authors' COCO weights (downloaded once into ``$TORCH_HOME/hub/checkpoints``);
            a :class:`~iwin_models.io.checkpoint.CheckpointError` for the configurations without released weights.
        weights: the tensors to use instead (implies ``pretrained``): a loaded checkpoint dict, the authors'
            ``.pth``, a ``.safetensors`` file, a ``save_pretrained`` folder (which also gives the architecture and
            the class names), the bare name of a file in the torch.hub cache, or a URL. Read before the model is
            built; a file of another detector, a segmenter's or a damaged one raises ``CheckpointError`` naming it.
        num_classes: default: the checkpoint's (80 without one). Another count keeps the body and re-initialises
            the class-specific layers (``fc_cls``, ``fc_reg``, mask logits), with a warning; ``class_names`` is
            then None.
        **kwargs: :class:`~iwin_models.models.detection.DetectorConfig` fields replacing the entry's (widths for
            a small test model, ``drop_path_rate``, ``test_cfg``, ...).
    """
    spec = registered_detector(name)
    source = _weights_for(spec, pretrained, weights)
    loaded = _read(source) if source is not None else None
    given = num_classes
    num_classes = num_classes or (loaded.num_classes if loaded else None) or spec.num_classes
    reinit = loaded is not None and loaded.num_classes not in (None, num_classes)
    if reinit:
        warnings.warn(f"{loaded.source} has {loaded.num_classes} classes and the model {given}: the body is loaded and "
                      f"the class-specific layers are re-initialised (train them before use)", stacklevel=2)
    fields = {**_folder_architecture(loaded, name), **kwargs, "num_classes": num_classes}
    cfg: DetectorConfig = spec.detector_config(**fields)
    model = build_detector(cfg, cascade=cfg.cascade)
    model.name, model.card = name, spec.card_section()
    model.class_names, model.category_ids = _class_info(spec, loaded, num_classes, reinit)
    if loaded is not None:
        load_detector_weights(model, loaded, reinit)
    return model.eval()


def _described(fn):
    """The entrypoint's docstring, written from its :data:`DETECTORS` entry."""
    fn.__doc__ = DETECTORS[fn.__name__].docstring()
    return fn


@_described
def iwin_tiny_mask_rcnn_coco_1x(pretrained: bool = True, **kwargs) -> IwinMaskRCNN:
    return create_detector("iwin_tiny_mask_rcnn_coco_1x", pretrained=pretrained, **kwargs)


@_described
def iwin_tiny_mask_rcnn_coco_3x(pretrained: bool = True, **kwargs) -> IwinMaskRCNN:
    return create_detector("iwin_tiny_mask_rcnn_coco_3x", pretrained=pretrained, **kwargs)


@_described
def iwin_small_mask_rcnn_coco_1x(pretrained: bool = True, **kwargs) -> IwinMaskRCNN:
    return create_detector("iwin_small_mask_rcnn_coco_1x", pretrained=pretrained, **kwargs)


@_described
def iwin_small_mask_rcnn_coco_3x(pretrained: bool = True, **kwargs) -> IwinMaskRCNN:
    return create_detector("iwin_small_mask_rcnn_coco_3x", pretrained=pretrained, **kwargs)


@_described
def iwin_tiny_cascade_mask_rcnn_coco_1x(pretrained: bool = True, **kwargs) -> IwinMaskRCNN:
    return create_detector("iwin_tiny_cascade_mask_rcnn_coco_1x", pretrained=pretrained, **kwargs)


@_described
def iwin_tiny_cascade_mask_rcnn_coco_3x(pretrained: bool = True, **kwargs) -> IwinMaskRCNN:
    return create_detector("iwin_tiny_cascade_mask_rcnn_coco_3x", pretrained=pretrained, **kwargs)


@_described
def iwin_small_cascade_mask_rcnn_coco_3x(pretrained: bool = True, **kwargs) -> IwinMaskRCNN:
    return create_detector("iwin_small_cascade_mask_rcnn_coco_3x", pretrained=pretrained, **kwargs)


@_described
def iwin_small_cascade_mask_rcnn_coco_1x(pretrained: bool = False, **kwargs) -> IwinMaskRCNN:
    return create_detector("iwin_small_cascade_mask_rcnn_coco_1x", pretrained=pretrained, **kwargs)


@_described
def iwin_base_cascade_mask_rcnn_coco_3x(pretrained: bool = False, **kwargs) -> IwinMaskRCNN:
    return create_detector("iwin_base_cascade_mask_rcnn_coco_3x", pretrained=pretrained, **kwargs)
