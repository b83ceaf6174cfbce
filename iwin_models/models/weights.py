"""The authors' ADE20K segmenters, described as data (as torchvision's ``Weights`` enums).

Everything said about a released checkpoint lives here: where its weights are, how to build its encoder,
its classes, the test protocol (:class:`EvalProtocol`, which :mod:`iwin_models.engine.inference` reads), its
parameter count, FLOPs, mIoU and the terms of the weights. The entrypoint docstrings (what
``torch.hub.help`` shows), the model card and the README table are written from it.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from ..data import ade20k

__all__ = ["EvalProtocol", "WeightsTerms", "SegmenterWeights", "SEGMENTERS", "AUTHORS_TERMS", "ADE20K_PROTOCOL",
           "FLOPS_INPUT", "registered", "segmenter_table", "model_card_kwargs"]


@dataclasses.dataclass(frozen=True)
class EvalProtocol:
    """How the authors tested (mmseg's ADE20K test pipeline); :mod:`iwin_models.engine.inference` runs it."""

    scale: tuple[int, int] = ade20k.TEST_SCALE  # (long, short): the image is fitted in, aspect ratio kept
    slide_crop: int = 512  # ``slide=True``: crops of this size ...
    slide_stride: int = 341  # ... at this stride, overlapping logits averaged
    aug_ratios: tuple[float, ...] = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)  # ``aug=True``: ratios of ``scale``
    aug_flip: bool = True  # ``aug=True`` also adds the horizontal flip of every scale
    mean: tuple[float, ...] = ade20k.MEAN  # RGB, 0-255
    std: tuple[float, ...] = ade20k.STD

    def describe(self) -> str:
        long, short = self.scale
        ratios = ", ".join(str(r) for r in self.aug_ratios)
        return (f"fitted into {long}x{short} keeping the aspect ratio, whole image (slide: {self.slide_crop} "
                f"crops at stride {self.slide_stride}; aug: ratios {ratios}{' + flip' if self.aug_flip else ''})")


@dataclasses.dataclass(frozen=True)
class WeightsTerms:
    """The terms under which the authors release weights, as they state them."""

    summary: str
    source: str
    url: str
    hub_license: str  # the Hugging Face card's ``license`` field
    hub_license_name: str

    def describe(self) -> str:
        return f"{self.summary} ({self.source}, {self.url})"


AUTHORS_TERMS = WeightsTerms(
    summary="MIT for research use; commercial use by agreement with the authors",
    source="the authors' model card",
    url="https://huggingface.co/cominder/Iwin-Transformer",
    hub_license="other",  # not plain MIT: commercial use needs the authors' agreement
    hub_license_name="iwin-transformer-weights",
)

ADE20K_PROTOCOL = EvalProtocol()
FLOPS_INPUT = (3, 512, 2048)  # mmseg's convention for the published FLOPs


@dataclasses.dataclass(frozen=True)
class SegmenterWeights:
    """One released segmenter: where its weights are, how to build it, and what the authors report.

    ``params_m`` counts the whole model with the auxiliary head (as mmseg does); ``flops_g`` is
    mmcv's count (multiply-accumulates) at ``flops_input``; ``miou`` is ADE20K val, single scale.
    """

    name: str
    title: str
    url: str
    encoder: str
    encoder_kwargs: Mapping[str, Any]
    params_m: float
    flops_g: int
    miou: float
    flops_input: tuple[int, int, int] = FLOPS_INPUT
    dataset: str = "ADE20K (SceneParsing, 150 classes)"
    class_names: tuple[str, ...] = ade20k.CLASSES
    palette: tuple[tuple[int, int, int], ...] = ade20k.PALETTE
    protocol: EvalProtocol = ADE20K_PROTOCOL
    terms: WeightsTerms = AUTHORS_TERMS

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def heads(self) -> tuple[int, ...]:
        return tuple(self.encoder_kwargs["num_heads"])

    @property
    def file_name(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    def figures(self) -> str:
        c, h, w = self.flops_input
        return (f"{self.miou:.2f} mIoU (the authors', ADE20K val, single scale), {self.params_m}M params "
                f"(with the auxiliary head), {self.flops_g}G FLOPs at {c}x{h}x{w} (mmcv)")

    def docstring(self) -> str:
        """The entrypoint's docstring (what ``torch.hub.help`` prints)."""
        return "\n".join([
            f"{self.title} with the authors' ADE20K weights: {self.figures()}.",
            "",
            f"Encoder ``{self.encoder}``, heads {_commas(self.heads)}; classes: {self.dataset}.",
            f"Test protocol: {self.protocol.describe()}.",
            f"Weights: {self.url}",
            f"Terms of the weights: {self.terms.describe()}.",
            "",
            "Args:",
            "    pretrained: load the authors' ADE20K checkpoint (cached under $TORCH_HOME/hub/checkpoints).",
            "    num_classes: 150 for ADE20K; another count keeps the body and re-initialises the classifiers.",
            "    weights: local path, URL or loaded checkpoint to use instead of the official file.",
            "    **kwargs: see ``iwin_models.create_segmenter``.",
        ])

    def card_metrics(self) -> dict:
        """``dataset`` and ``metrics`` for smp's model card template."""
        c, h, w = self.flops_input
        return dict(dataset=self.dataset, metrics={
            "mIoU (ADE20K val, single scale, the authors')": self.miou,
            "params (M, with the auxiliary head)": self.params_m,
            f"FLOPs (G, mmcv, {c}x{h}x{w})": self.flops_g,
        })

    def card_section(self) -> str:
        """Markdown describing these weights, appended to the model card."""
        return "\n".join([
            "", f"## Weights: {self.title} on ADE20K", "",
            f"The authors' checkpoint [{self.file_name}]({self.url}) in `IwinUPerNet` names: {self.figures()}.",
            f"Encoder `{self.encoder}`, heads {_commas(self.heads)}; {self.num_classes} classes, names and palette "
            f"in `config.json`. Test protocol: {self.protocol.describe()}.",
            "Paper: [arXiv 2507.18405](https://arxiv.org/abs/2507.18405); authors' code: "
            "[Cominder/Iwin-Transformer](https://github.com/Cominder/Iwin-Transformer).",
            "", "## Terms of the weights", "",
            f"{self.terms.summary}, as stated in [{self.terms.source}]({self.terms.url}).", "",
        ])

    def table_row(self) -> str:
        return (f"| `{self.name}` | {_commas(self.heads)} | {self.params_m}M | {self.flops_g}G | {self.miou:.2f} "
                f"| [{self.file_name}]({self.url}) |")


def _commas(values: Sequence) -> str:
    return ",".join(str(v) for v in values)


# The ADE20K Iwin-S uses heads 3,6,12,24 (the ImageNet Iwin-S 3,4,8,16). Head counts are not part of any
# weight shape, so a wrong count would load silently and give wrong outputs: every entry states its heads.
SEGMENTERS: dict[str, SegmenterWeights] = {w.name: w for w in (
    SegmenterWeights(
        name="iwin_tiny_upernet_ade20k", title="Iwin-T UPerNet",
        url="https://github.com/Cominder/Iwin-Transformer/releases/download/v1.0/iwin_tiny_patch4_window7_512_ade20k_1k.pth",
        encoder="iwin_tiny", encoder_kwargs=dict(num_heads=(3, 6, 12, 24)),
        params_m=61.9, flops_g=946, miou=44.70),
    SegmenterWeights(
        name="iwin_small_upernet_ade20k", title="Iwin-S UPerNet",
        url="https://github.com/Cominder/Iwin-Transformer/releases/download/v1.0/iwin_small_patch4_window7_512_ade20k_1k.pth",
        encoder="iwin_small", encoder_kwargs=dict(num_heads=(3, 6, 12, 24)),
        params_m=83.2, flops_g=1038, miou=47.50),
    SegmenterWeights(
        name="iwin_base_upernet_ade20k", title="Iwin-B UPerNet",
        url="https://github.com/Cominder/Iwin-Transformer/releases/download/v1.0/iwin_base_patch4_window7_512_ade20k_1k.pth",
        encoder="iwin_base", encoder_kwargs=dict(num_heads=(4, 8, 16, 32)),
        params_m=124.8, flops_g=1189, miou=48.90),
)}


def registered(name: str) -> SegmenterWeights:
    if name not in SEGMENTERS:
        raise ValueError(f"unknown segmenter {name!r}; choose one of {', '.join(SEGMENTERS)}")
    return SEGMENTERS[name]


def segmenter_table() -> str:
    """The README's table of segmenters (markdown), with the terms of their weights."""
    weights = list(SEGMENTERS.values())
    c, h, w = FLOPS_INPUT
    lines = [f"| model | heads | params (with aux head) | FLOPs {c}x{h}x{w} (mmcv) | mIoU (authors) | weights |",
             "|---|---|---|---|---|---|", *(entry.table_row() for entry in weights), ""]
    protocols = sorted({entry.protocol.describe() for entry in weights})
    terms = sorted({entry.terms.describe() for entry in weights})
    lines += [f"mIoU: ADE20K val, single scale, test images {' / '.join(protocols)}.",
              f"Terms of the weights: {' / '.join(terms)}."]
    return "\n".join(lines)


def model_card_kwargs(name: str) -> dict:
    """``save_pretrained(folder, model_card_kwargs=model_card_kwargs(name))``: the card then
    describes the registered weights ``name`` (figures, source, protocol, terms)."""
    registered(name)
    return dict(segmenter=name)
