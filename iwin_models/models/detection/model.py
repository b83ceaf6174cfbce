"""The Iwin Mask R-CNN and Cascade Mask R-CNN detectors, wired on torchvision's GeneralizedRCNN.

Calling convention (torchvision's): in training, ``model(images, targets)`` with per image ``boxes`` (xyxy,
original pixels), ``labels`` (1-based) and ``masks`` ``(n, H, W)`` uint8 returns the loss dict (images and
targets are resized together, see :class:`MMDetTrainTransform`); in eval, ``model(images)`` with a list of
``(3, H, W)`` RGB images (float in [0, 1] or uint8) returns per image a dict of ``boxes`` (xyxy, original
pixels), ``labels``, ``scores`` and ``masks`` ``(n, 1, H, W)`` bool, the detections best first.

Labels follow torchvision: ``0`` is the background, the COCO class ``COCO_CLASSES[i]`` is label
``i + 1`` (the authors number the 80 classes from 0 with the background last).

Each image runs alone, as the authors' test does (``samples_per_gpu=1``): padding a batch to a common
size would change the features near the right and bottom borders.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from torch import Tensor
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN

from ...io.files import write_atomic
from ._utils import MMDetBoxCoder
from .anchors import UnroundedAnchorGenerator
from .backbone import iwin_fpn
from .cascade import CascadeRoIHeads
from .heads import BackgroundLastPredictor, conv4_fc1_head, fcn_mask_head, mask_predictor, shared_2fc_head
from .losses import DeltaL1Loss, DeltaSmoothL1Loss
from .poolers import MMDetRoIAlign
from .roi_heads import BackgroundLastRoIHeads
from .rpn import RPNHead, SigmoidLevelNMSRPN
from .transform import MMDetTrainTransform, ScaledImageList

__all__ = ["TestConfig", "DetectorConfig", "VARIANTS", "IwinMaskRCNN", "IwinCascadeMaskRCNN", "build_detector"]


@dataclass(frozen=True)
class TestConfig:
    """The authors' ``test_cfg`` (the same in every Iwin detection config) and mask threshold."""
    rpn_nms_pre: int = 1000  # per level, before the RPN's NMS
    rpn_max_per_img: int = 1000  # proposals kept
    rpn_iou_threshold: float = 0.7
    score_thr: float = 0.05  # detections strictly above
    nms_iou_threshold: float = 0.5  # per class
    max_per_img: int = 100
    mask_thr_binary: float = 0.5  # pasted probabilities >= this are "on"


@dataclass(frozen=True)
class DetectorConfig:
    """What differs between the authors' detection configs (``configs/iwin/*.py``)."""
    backbone: str = "iwin_tiny"
    embed_dim: int = 96
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (3, 6, 12, 24)
    window_size: int = 7
    drop_path_rate: float = 0.2
    fpn_channels: int = 256
    fc_channels: int = 1024
    conv_channels: int = 256  # Cascade box-head convs and the mask head
    cascade: bool = False
    num_classes: int = 80
    test_cfg: TestConfig = TestConfig()


VARIANTS = {
    "tiny": DetectorConfig(),
    "small": DetectorConfig(backbone="iwin_small", depths=(2, 2, 18, 2)),
    "base": DetectorConfig(backbone="iwin_base", embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32),
                           drop_path_rate=0.3),
}


class IwinMaskRCNN(GeneralizedRCNN):
    """Iwin + FPN Mask R-CNN. Parts: ``backbone`` (:class:`IwinFPN`), ``rpn``
    (:class:`SigmoidLevelNMSRPN`), ``roi_heads`` (:class:`BackgroundLastRoIHeads`), ``transform``.

    ``config`` is the :class:`DetectorConfig` it was built from; ``name`` the registered detector (or None),
    ``class_names`` (0-based, background excluded) and ``category_ids`` (COCO ids) describe its classes
    (None where unknown, e.g. re-initialised classifiers); ``card`` is the Markdown of its weights.
    """

    config: DetectorConfig
    name: str | None = None
    class_names: tuple[str, ...] | None = None
    category_ids: tuple[int, ...] | None = None
    card: str = ""

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        """Write ``config.json`` (name, architecture, classes), ``model.safetensors`` (this port's names) and a
        ``README.md`` card to ``folder``; ``iwin_models.create_detector(name, weights=folder)`` reads it back."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        config = dict(name=self.name, num_classes=self.num_classes, class_names=_listed(self.class_names),
                      category_ids=_listed(self.category_ids), architecture=asdict(self.config))
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        write_atomic(folder / "model.safetensors", lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
        write_atomic(folder / "config.json", lambda tmp: Path(tmp).write_text(json.dumps(config, indent=2) + "\n"))
        write_atomic(folder / "README.md", lambda tmp: Path(tmp).write_text(self.card or f"# {self.name}\n"))
        return folder

    def forward(self, images: list[Tensor], targets=None):
        """Training: the loss dict; eval: the detections (``targets`` ignored)."""
        if self.training:
            if targets is None:
                raise ValueError("training needs targets (per image boxes, labels, masks); or call model.eval()")
            return self.losses_prepared(*self.transform.train_batch(images, targets))
        return [self.detect_prepared(self.transform(image))[0] for image in images]

    def losses_prepared(self, images: ScaledImageList, targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        """The losses of a preprocessed batch; ``targets`` at the input's scale (boxes, labels, masks)."""
        features = self.backbone(images.tensors)
        proposals, losses = self.rpn(images, features, targets)
        losses.update(self.roi_heads(features, proposals, images.image_sizes, images.scale_factors, targets))
        return losses

    def detect_prepared(self, images: ScaledImageList) -> list[dict[str, Tensor]]:
        """The detections of an already preprocessed input (the authors' padded tensor + metas)."""
        features = self.backbone(images.tensors)
        proposals, _ = self.rpn(images, features)
        detections = self.roi_heads(features, proposals, images.image_sizes, images.scale_factors)
        return self.transform.postprocess(detections, images)


class IwinCascadeMaskRCNN(IwinMaskRCNN):
    """Iwin + FPN Cascade Mask R-CNN: the same wiring with :class:`CascadeRoIHeads`."""


def _listed(values) -> list | None:
    return None if values is None else list(values)


def _rpn_train_cfg(cascade: bool) -> dict:
    """The RPN's ``train_cfg.rpn`` / ``rpn_proposal`` and loss where the two base configs differ."""
    coder = MMDetBoxCoder()
    if cascade:  # cascade_mask_rcnn_iwin_fpn.py: SmoothL1Loss(beta=1/9), allowed_border=0, 2000 proposals
        return dict(train_nms_pre=2000, train_max_per_img=2000, allowed_border=0, box_loss=DeltaSmoothL1Loss(coder))
    return dict(train_nms_pre=2000, train_max_per_img=1000, allowed_border=-1, box_loss=DeltaL1Loss(coder))


def _roi_heads(cfg: DetectorConfig) -> BackgroundLastRoIHeads:
    c, fc, conv, n = cfg.fpn_channels, cfg.fc_channels, cfg.conv_channels, cfg.num_classes
    pools = MMDetRoIAlign(7), MMDetRoIAlign(14)
    test = dict(score_thresh=cfg.test_cfg.score_thr, nms_thresh=cfg.test_cfg.nms_iou_threshold,
                detections_per_img=cfg.test_cfg.max_per_img)
    if not cfg.cascade:
        return BackgroundLastRoIHeads(pools[0], shared_2fc_head(c, fc), BackgroundLastPredictor(fc, n),
                                      pools[1], fcn_mask_head(c, conv), mask_predictor(conv, n), **test)
    stages = range(3)
    return CascadeRoIHeads(pools[0], [conv4_fc1_head(c, conv, fc) for _ in stages],
                           [BackgroundLastPredictor(fc, n) for _ in stages], pools[1],
                           [fcn_mask_head(c, conv) for _ in stages], [mask_predictor(conv, n) for _ in stages], **test)


def build_detector(variant: str | DetectorConfig = "tiny", cascade: bool = False, **overrides) -> IwinMaskRCNN:
    """An untrained detector: ``variant`` 'tiny' / 'small' / 'base' or a :class:`DetectorConfig`;
    ``overrides`` replace config fields (e.g. the widths of a small test model)."""
    cfg = VARIANTS[variant] if isinstance(variant, str) else variant
    cfg = replace(cfg, cascade=cascade, **overrides)
    backbone = iwin_fpn(cfg.backbone, cfg.fpn_channels, embed_dim=cfg.embed_dim, depths=cfg.depths,
                        num_heads=cfg.num_heads, window_size=cfg.window_size, drop_path_rate=cfg.drop_path_rate)
    anchors = UnroundedAnchorGenerator()
    test = cfg.test_cfg
    rpn = SigmoidLevelNMSRPN(anchors, RPNHead(cfg.fpn_channels, anchors.num_anchors_per_location()[0]),
                             nms_pre=test.rpn_nms_pre, max_per_img=test.rpn_max_per_img,
                             iou_threshold=test.rpn_iou_threshold, **_rpn_train_cfg(cfg.cascade))
    cls = IwinCascadeMaskRCNN if cfg.cascade else IwinMaskRCNN
    model = cls(backbone, rpn, _roi_heads(cfg), MMDetTrainTransform(mask_threshold=test.mask_thr_binary))
    model.config = cfg
    return model
