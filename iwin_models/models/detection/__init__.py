"""Iwin Mask R-CNN and Cascade Mask R-CNN (the authors' mmdet 2.11 detectors) on torchvision.

``build_detector('tiny', cascade=True)`` + ``load_mmdet_checkpoint(model, path)`` give the authors'
COCO detector; see :mod:`.model` for the calling and label conventions. The released configurations are
data in :mod:`.weights` (``DETECTORS``); :func:`iwin_models.create_detector` builds them by name.
"""
from .coco import COCO_CATEGORY_IDS, COCO_CLASSES
from .keymaps import convert_mmdet_detector, load_mmdet_checkpoint, to_mmdet_detector
from .model import VARIANTS, DetectorConfig, IwinCascadeMaskRCNN, IwinMaskRCNN, TestConfig, build_detector
from .transform import MMDetTestTransform, MMDetTrainTransform, ScaledImageList, check_target, paste_masks
from .weights import DETECTORS, DetectorWeights, detector_table, registered_detector

__all__ = [
    "COCO_CLASSES", "COCO_CATEGORY_IDS", "convert_mmdet_detector", "to_mmdet_detector", "load_mmdet_checkpoint",
    "VARIANTS", "DetectorConfig", "IwinMaskRCNN", "IwinCascadeMaskRCNN", "build_detector", "MMDetTestTransform",
    "MMDetTrainTransform", "check_target",
    "ScaledImageList", "paste_masks", "TestConfig", "DETECTORS", "DetectorWeights", "detector_table",
    "registered_detector",
]
