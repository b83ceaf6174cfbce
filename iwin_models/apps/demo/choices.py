"""The demo page's menus: :class:`ModelChoice` (a segmenter, what :func:`~iwin_models.models.segmenters.load_segmenter`
is given, or a detector, what :func:`~iwin_models.models.detectors.create_detector` is given),
:func:`registered_choices` (the registered segmenters and the released detectors, with random weights where the
torch.hub cache lacks their checkpoint), :func:`default_choices` (the command line's model first), and the
protocols (:data:`PROTOCOLS`)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from ...models.detection.weights import DETECTORS
from ...models.weights import ADE20K_PROTOCOL, SEGMENTERS, EvalProtocol

__all__ = ["KINDS", "PROTOCOLS", "ModelChoice", "registered_choices", "command_line_choice", "default_choices"]

PROTOCOLS = {  # the page's protocol choices -> predict()'s arguments
    "whole": dict(aug=False, slide=False),
    "slide": dict(aug=False, slide=True),
    "multi-scale + flip": dict(aug=True, slide=False),
}
KINDS = ("segmenter", "detector")  # what a choice's model is; each has its registry and its tab


@dataclasses.dataclass(frozen=True)
class ModelChoice:
    """One entry of a model menu: a segmenter (what :func:`iwin_models.models.segmenters.load_segmenter` is
    given) or a detector (a registered name and ``weights`` for :func:`iwin_models.create_detector`)."""

    label: str
    model: str
    weights: str | None = None
    start: str = "official"
    protocol: EvalProtocol = ADE20K_PROTOCOL  # a segmenter's
    note: str = ""  # said next to each result of this model (random weights)
    kind: str = "segmenter"  # one of KINDS


def registered_choices(download: bool = False) -> list[ModelChoice]:
    """The registered segmenters (T/S/B), then the detectors with released weights: each with its official
    weights where the torch.hub cache has them (or ``download``: fetched there on first use), else with random
    weights and a note saying so."""
    segmenters = [_registered(spec, name, "segmenter", download, protocol=spec.protocol)
                  for name, spec in SEGMENTERS.items()]
    detectors = [_registered(spec, name, "detector", download) for name, spec in DETECTORS.items() if spec.released]
    return segmenters + detectors


def _registered(spec, name: str, kind: str, download: bool, **fields) -> ModelChoice:
    """The choice of registered model ``name`` (``spec``: its entry, with ``title``, ``url`` and ``file_name``)."""
    from ...io.checkpoint import cached_path_for_url

    cached = Path(cached_path_for_url(spec.url))
    if download or cached.is_file():
        return ModelChoice(spec.title, name, kind=kind, **fields)
    meaning = "the classes below mean nothing" if kind == "segmenter" else "its detections mean nothing"
    note = (f"{spec.title} has RANDOM weights: its official checkpoint {spec.file_name} is not in the torch.hub "
            f"cache ({cached.parent}), so {meaning}. Download it there, or start `iwin-seg demo --download`.")
    return ModelChoice(f"{spec.title} (random weights)", name, start="random", note=note, kind=kind, **fields)


def command_line_choice(model: str, weights: str | None = None) -> ModelChoice | None:
    """The choice ``--model``/``--weights`` add: a segmenter (a folder, a weights file, a hub repository) or a
    registered detector with ``weights``; None for a registered name alone (it is one of
    :func:`registered_choices`)."""
    if model in DETECTORS:
        spec = DETECTORS[model]
        if weights is None and spec.released:
            return None
        label = spec.title if weights is None else f"{spec.title} + {Path(weights).name}"
        return ModelChoice(label, model, None if weights is None else str(weights), kind="detector")
    if model in SEGMENTERS and weights is None:
        return None
    spec = SEGMENTERS.get(model)
    if weights is not None:
        label = f"{spec.title if spec else Path(model).name} + {Path(weights).name}"
    elif Path(model).exists():
        label = f"{Path(model).resolve().name} (local {'folder' if Path(model).is_dir() else 'file'})"
    else:
        label = f"{model} (hub)"
    return ModelChoice(label, str(model), None if weights is None else str(weights),
                       protocol=spec.protocol if spec else ADE20K_PROTOCOL)


def default_choices(model: str | None = None, weights: str | None = None,
                    download: bool = False) -> tuple[list[ModelChoice], str]:
    """The page's model menus and the command line's entry: the command line's model first (when it adds one),
    then the registered models (:func:`registered_choices`)."""
    registered = registered_choices(download)
    extra = command_line_choice(model, weights) if model else None
    if extra is not None:
        return [extra, *registered], extra.label
    default = next((c.label for c in registered if c.model == model), registered[0].label)
    return registered, default
