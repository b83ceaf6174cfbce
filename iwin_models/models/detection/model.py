"""The Iwin Mask R-CNN and Cascade Mask R-CNN detectors, wired on torchvision's GeneralizedRCNN.

Calling convention (torchvision's): in eval, ``model(images)`` with a list of ``(3, H, W)`` RGB
images (float in [0, 1] or uint8) returns per image a dict of ``boxes`` (xyxy, original pixels),
``labels``, ``scores`` and ``masks`` ``(n, 1, H, W)`` bool, the detections best first.

Labels follow torchvision: ``0`` is the background, the COCO class ``COCO_CLASSES[i]`` is label
``i + 1`` (the authors number the 80 classes from 0 with the background last).

Each image runs alone, as the authors' test does (``samples_per_gpu=1``): padding a batch to a common
size would change the features near the right and bottom borders.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from torch import Tensor
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN

from .anchors import UnroundedAnchorGenerator
from .backbone import iwin_fpn
from .cascade import CascadeRoIHeads
from .heads import BackgroundLastPredictor, conv4_fc1_head, fcn_mask_head, mask_predictor, shared_2fc_head
from .poolers import MMDetRoIAlign
from .roi_heads import BackgroundLastRoIHeads
from .rpn import RPNHead, SigmoidLevelNMSRPN
from .transform import MMDetTestTransform, ScaledImageList

__all__ = ["DetectorConfig", "VARIANTS", "IwinMaskRCNN", "IwinCascadeMaskRCNN", "build_detector"]


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


VARIANTS = {
    "tiny": DetectorConfig(),
    "small": DetectorConfig(backbone="iwin_small", depths=(2, 2, 18, 2)),
    "base": DetectorConfig(backbone="iwin_base", embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32),
                           drop_path_rate=0.3),
}


class IwinMaskRCNN(GeneralizedRCNN):
    """Iwin + FPN Mask R-CNN (eval only for now). Parts: ``backbone`` (:class:`IwinFPN`), ``rpn``
    (:class:`SigmoidLevelNMSRPN`), ``roi_heads`` (:class:`BackgroundLastRoIHeads`), ``transform``."""

    def forward(self, images: list[Tensor], targets=None) -> list[dict[str, Tensor]]:
        if self.training or targets is not None:
            raise NotImplementedError("training the Iwin detectors is not ported yet: use model.eval()")
        return [self.detect_prepared(self.transform(image))[0] for image in images]

    def detect_prepared(self, images: ScaledImageList) -> list[dict[str, Tensor]]:
        """The detections of an already preprocessed input (the authors' padded tensor + metas)."""
        features = self.backbone(images.tensors)
        proposals, _ = self.rpn(images, features)
        detections = self.roi_heads(features, proposals, images.image_sizes, images.scale_factors)
        return self.transform.postprocess(detections, images)


class IwinCascadeMaskRCNN(IwinMaskRCNN):
    """Iwin + FPN Cascade Mask R-CNN: the same wiring with :class:`CascadeRoIHeads`."""


def _roi_heads(cfg: DetectorConfig) -> BackgroundLastRoIHeads:
    c, fc, conv, n = cfg.fpn_channels, cfg.fc_channels, cfg.conv_channels, cfg.num_classes
    pools = MMDetRoIAlign(7), MMDetRoIAlign(14)
    if not cfg.cascade:
        return BackgroundLastRoIHeads(pools[0], shared_2fc_head(c, fc), BackgroundLastPredictor(fc, n),
                                      pools[1], fcn_mask_head(c, conv), mask_predictor(conv, n))
    stages = range(3)
    return CascadeRoIHeads(pools[0], [conv4_fc1_head(c, conv, fc) for _ in stages],
                           [BackgroundLastPredictor(fc, n) for _ in stages], pools[1],
                           [fcn_mask_head(c, conv) for _ in stages], [mask_predictor(conv, n) for _ in stages])


def build_detector(variant: str | DetectorConfig = "tiny", cascade: bool = False, **overrides) -> IwinMaskRCNN:
    """An untrained detector: ``variant`` 'tiny' / 'small' / 'base' or a :class:`DetectorConfig`;
    ``overrides`` replace config fields (e.g. the widths of a small test model)."""
    cfg = VARIANTS[variant] if isinstance(variant, str) else variant
    cfg = replace(cfg, cascade=cascade, **overrides)
    backbone = iwin_fpn(cfg.backbone, cfg.fpn_channels, embed_dim=cfg.embed_dim, depths=cfg.depths,
                        num_heads=cfg.num_heads, window_size=cfg.window_size, drop_path_rate=cfg.drop_path_rate)
    anchors = UnroundedAnchorGenerator()
    rpn = SigmoidLevelNMSRPN(anchors, RPNHead(cfg.fpn_channels, anchors.num_anchors_per_location()[0]))
    cls = IwinCascadeMaskRCNN if cfg.cascade else IwinMaskRCNN
    return cls(backbone, rpn, _roi_heads(cfg), MMDetTestTransform())
