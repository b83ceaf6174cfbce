"""The authors' COCO detectors, described as data (as :mod:`iwin_models.models.weights` does for the segmenters).

One :class:`DetectorWeights` per configuration of the authors' ``detection/configs/iwin/``: where its
weights are (``url``; None where the authors released none), how to build it (variant, cascade, the
config's ``drop_path_rate``, the ``test_cfg``), the classes and what the authors report (box / mask mAP
on COCO 2017 val) and the parameter count of the built model. The entrypoint docstrings, the model card
and the README table are written from it.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from ..weights import AUTHORS_TERMS, WeightsTerms
from .coco import COCO_CATEGORY_IDS, COCO_CLASSES
from .model import VARIANTS, DetectorConfig, TestConfig

__all__ = ["DetectorWeights", "DETECTORS", "DOWNLOAD_BASE", "FLOPS_INPUT", "registered_detector", "detector_table"]

DOWNLOAD_BASE = "https://github.com/Cominder/Iwin-Transformer/releases/download/v1.0/"
FLOPS_INPUT = (3, 800, 1333)  # mmdet's convention for the published FLOPs
_TITLES = {"tiny": "Iwin-T", "small": "Iwin-S", "base": "Iwin-B"}


@dataclasses.dataclass(frozen=True)
class DetectorWeights:
    """One configuration of the authors' COCO detectors, with its released checkpoint if there is one.

    ``params`` is the exact parameter count of the built model (the authors' README rounds smaller
    figures); ``flops`` is None: not measured (the detector's count depends on the proposals kept);
    ``box_map`` / ``mask_map`` are the authors' COCO 2017 val figures (None without released weights).
    """

    name: str
    config: str  # the stem of the authors' config file, ``detection/configs/iwin/<config>.py``
    variant: str  # tiny / small / base
    cascade: bool
    schedule: str  # 1x (12 epochs) / 3x (36 epochs)
    drop_path_rate: float  # the config's backbone drop_path_rate (training only)
    params: int
    url: str | None = None
    box_map: float | None = None
    mask_map: float | None = None
    flops: int | None = None
    test_cfg: TestConfig = TestConfig()
    dataset: str = "COCO 2017 (80 classes)"
    class_names: tuple[str, ...] = COCO_CLASSES
    category_ids: tuple[int, ...] = COCO_CATEGORY_IDS
    terms: WeightsTerms = AUTHORS_TERMS

    @property
    def title(self) -> str:
        return f"{_TITLES[self.variant]} {'Cascade Mask R-CNN' if self.cascade else 'Mask R-CNN'} ({self.schedule})"

    @property
    def file_name(self) -> str | None:
        return self.url.rsplit("/", 1)[-1] if self.url else None

    @property
    def released(self) -> bool:
        return self.url is not None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def detector_config(self, **overrides) -> DetectorConfig:
        """The :class:`DetectorConfig` this entry builds; ``overrides`` replace fields (e.g. ``num_classes``)."""
        fields = dict(cascade=self.cascade, drop_path_rate=self.drop_path_rate, test_cfg=self.test_cfg,
                      num_classes=self.num_classes)
        return dataclasses.replace(VARIANTS[self.variant], **{**fields, **overrides})

    def figures(self) -> str:
        maps = (f"{self.box_map} box mAP / {self.mask_map} mask mAP (the authors', COCO 2017 val)"
                if self.released else "no released weights")
        return f"{maps}, {self.params:,} params"

    def docstring(self) -> str:
        """The entrypoint's docstring (what ``torch.hub.help`` prints)."""
        weights = (f"Weights: {self.url}\nTerms of the weights: {self.terms.describe()}." if self.released else
                   "The authors released no checkpoint for this configuration: it builds untrained "
                   "(``pretrained=True`` raises); give ``weights=`` to load your own.")
        return "\n".join([
            f"{self.title} on COCO: {self.figures()}.",
            "",
            f"The authors' config ``detection/configs/iwin/{self.config}.py`` (mmdet 2.11) on torchvision; "
            f"test: {self.describe_test()}.",
            weights,
            "",
            "Args:",
            "    pretrained: load the authors' COCO checkpoint (cached under $TORCH_HOME/hub/checkpoints).",
            "    num_classes: 80 for COCO; another count keeps the body and re-initialises the class-specific "
            "layers.",
            "    weights: an official .pth, a .safetensors file, a save_pretrained folder or a cached file name.",
            "    **kwargs: see ``iwin_models.create_detector``.",
        ])

    def describe_test(self) -> str:
        t = self.test_cfg
        return (f"resized into 1333x800 keeping the aspect ratio, score > {t.score_thr}, per-class NMS IoU "
                f"{t.nms_iou_threshold}, at most {t.max_per_img} detections, masks at {t.mask_thr_binary}")

    def card_section(self) -> str:
        """Markdown describing these weights, for a ``save_pretrained`` model card."""
        source = f"[{self.file_name}]({self.url})" if self.released else "no released checkpoint"
        return "\n".join([
            f"# {self.title}", "",
            f"The authors' COCO detector `{self.name}` ({source}) in the names of `iwin_models`' torchvision port: "
            f"{self.figures()}.", f"Config: `detection/configs/iwin/{self.config}.py`. Test: {self.describe_test()}.",
            "Paper: [arXiv 2507.18405](https://arxiv.org/abs/2507.18405); authors' code: "
            "[Cominder/Iwin-Transformer](https://github.com/Cominder/Iwin-Transformer).",
            "", "## Terms of the weights", "",
            f"{self.terms.summary}, as stated in [{self.terms.source}]({self.terms.url}).", "",
        ])

    def table_row(self) -> str:
        maps = f"{self.box_map} | {self.mask_map}" if self.released else "- | -"
        weights = f"[{self.file_name}]({self.url})" if self.released else "not released"
        return f"| `{self.name}` | {self.params / 1e6:.1f}M | {maps} | {weights} |"


def _entry(variant: str, cascade: bool, schedule: str, drop_path_rate: float, params: int,
           box_map: float | None = None, mask_map: float | None = None) -> DetectorWeights:
    kind = "cascade_mask_rcnn" if cascade else "mask_rcnn"
    name = f"iwin_{variant}_{kind}_coco_{schedule}"
    config = (f"{kind}_iwin_{variant}_patch4_window7_mstrain_480-800_"
              f"{'giou_4conv1f_' if cascade else ''}adamw_{schedule}_coco")
    url = f"{DOWNLOAD_BASE}iwin_{variant}_window7_{kind}_{schedule}_coco.pth" if box_map is not None else None
    return DetectorWeights(name=name, config=config, variant=variant, cascade=cascade, schedule=schedule,
                           drop_path_rate=drop_path_rate, params=params, url=url, box_map=box_map, mask_map=mask_map)


# drop_path_rate: the configs' own (the 1x Cascade configs train without stochastic depth)
DETECTORS: dict[str, DetectorWeights] = {w.name: w for w in (
    _entry("tiny", False, "1x", 0.1, 49_732_752, 42.2, 38.9),
    _entry("tiny", False, "3x", 0.2, 49_732_752, 44.7, 40.9),
    _entry("small", False, "1x", 0.2, 71_072_400, 43.7, 40.0),
    _entry("small", False, "3x", 0.2, 71_072_400, 45.5, 41.0),
    _entry("tiny", True, "1x", 0.0, 87_567_954, 47.2, 40.9),
    _entry("tiny", True, "3x", 0.2, 87_567_954, 49.4, 42.9),
    _entry("small", True, "3x", 0.2, 108_907_602, 49.4, 43.0),
    _entry("small", True, "1x", 0.0, 108_907_602),
    _entry("base", True, "3x", 0.3, 148_450_354),
)}


def registered_detector(name: str) -> DetectorWeights:
    if name not in DETECTORS:
        raise ValueError(f"unknown detector {name!r}; choose one of {', '.join(DETECTORS)}")
    return DETECTORS[name]


def detector_table(entries: Mapping[str, DetectorWeights] = DETECTORS) -> str:
    """The README's table of detectors (markdown), with the terms of their weights."""
    lines = ["| model | params | box mAP | mask mAP | weights |", "|---|---|---|---|---|",
             *(w.table_row() for w in entries.values()), "",
             "mAP: the authors', COCO 2017 val, single scale (1333x800).",
             f"Terms of the weights: {' / '.join(sorted({w.terms.describe() for w in entries.values()}))}."]
    return "\n".join(lines)
