"""The demo page's menus: :class:`ModelChoice` (what :func:`~iwin_models.models.segmenters.load_segmenter` is
given), :func:`registered_choices` (the registered segmenters, with random weights where the torch.hub cache lacks
their checkpoint), :func:`default_choices` (the command line's model first), and the protocols (:data:`PROTOCOLS`)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from ...models.weights import ADE20K_PROTOCOL, SEGMENTERS, EvalProtocol

__all__ = ["PROTOCOLS", "ModelChoice", "registered_choices", "command_line_choice", "default_choices"]

PROTOCOLS = {  # the page's protocol choices -> predict()'s arguments
    "whole": dict(aug=False, slide=False),
    "slide": dict(aug=False, slide=True),
    "multi-scale + flip": dict(aug=True, slide=False),
}


@dataclasses.dataclass(frozen=True)
class ModelChoice:
    """One entry of the page's model menu: what :func:`iwin_models.models.segmenters.load_segmenter` is given."""

    label: str
    model: str
    weights: str | None = None
    start: str = "official"
    protocol: EvalProtocol = ADE20K_PROTOCOL
    note: str = ""  # said next to each result of this model (random weights)


def registered_choices(download: bool = False) -> list[ModelChoice]:
    """The registered segmenters (T/S/B): with their official weights where the torch.hub cache has them (or
    ``download``: fetched there on first use), else with random weights and a note saying so."""
    from ...io.checkpoint import cached_path_for_url

    out = []
    for name, spec in SEGMENTERS.items():
        cached = Path(cached_path_for_url(spec.url))
        if download or cached.is_file():
            out.append(ModelChoice(spec.title, name, protocol=spec.protocol))
            continue
        note = (f"{spec.title} has RANDOM weights: its official checkpoint {spec.file_name} is not in the torch.hub "
                f"cache ({cached.parent}), so the classes below mean nothing. Download it there, or start "
                f"`iwin-seg demo --download`.")
        out.append(ModelChoice(f"{spec.title} (random weights)", name, start="random", protocol=spec.protocol,
                               note=note))
    return out


def command_line_choice(model: str, weights: str | None = None) -> ModelChoice | None:
    """The choice ``--model``/``--weights`` add (a folder, a weights file, a hub repository); None for a
    registered name alone (it is one of :func:`registered_choices`)."""
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
    """The page's model menu and its selected entry: the command line's model first (when it adds one), then
    the registered segmenters (:func:`registered_choices`)."""
    registered = registered_choices(download)
    extra = command_line_choice(model, weights) if model else None
    if extra is not None:
        return [extra, *registered], extra.label
    default = next((c.label for c in registered if c.model == model), registered[0].label)
    return registered, default
