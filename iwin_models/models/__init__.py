"""The model families: the Iwin backbone for timm (:mod:`.iwin`, registered on import), the UPerNet segmenter
(:mod:`.upernet`), the segmenters by name (:mod:`.segmenters`), the COCO detectors (:mod:`.detection`, by name
:mod:`.detectors`), the registry of released weights as data
(:mod:`.weights`) and the key maps of the authors' checkpoint layouts (:mod:`.keymaps`)."""
from . import iwin  # noqa: F401  (registers the timm models)
from .detection import DETECTORS, IwinCascadeMaskRCNN, IwinMaskRCNN
from .detectors import (
    create_detector,
    iwin_base_cascade_mask_rcnn_coco_3x,
    iwin_small_cascade_mask_rcnn_coco_1x,
    iwin_small_cascade_mask_rcnn_coco_3x,
    iwin_small_mask_rcnn_coco_1x,
    iwin_small_mask_rcnn_coco_3x,
    iwin_tiny_cascade_mask_rcnn_coco_1x,
    iwin_tiny_cascade_mask_rcnn_coco_3x,
    iwin_tiny_mask_rcnn_coco_1x,
    iwin_tiny_mask_rcnn_coco_3x,
)
from .iwin import IwinTransformer
from .segmenters import (
    create_segmenter,
    iwin_base_upernet_ade20k,
    iwin_small_upernet_ade20k,
    iwin_tiny_upernet_ade20k,
    load_segmenter,
)
from .upernet import IwinUPerNet
from .weights import SEGMENTERS

__all__ = [
    "SEGMENTERS", "IwinTransformer", "IwinUPerNet", "create_segmenter", "load_segmenter",
    "iwin_tiny_upernet_ade20k", "iwin_small_upernet_ade20k", "iwin_base_upernet_ade20k",
    "DETECTORS", "IwinMaskRCNN", "IwinCascadeMaskRCNN", "create_detector", "iwin_tiny_mask_rcnn_coco_1x",
    "iwin_tiny_mask_rcnn_coco_3x", "iwin_small_mask_rcnn_coco_1x", "iwin_small_mask_rcnn_coco_3x",
    "iwin_tiny_cascade_mask_rcnn_coco_1x", "iwin_tiny_cascade_mask_rcnn_coco_3x",
    "iwin_small_cascade_mask_rcnn_coco_3x", "iwin_small_cascade_mask_rcnn_coco_1x",
    "iwin_base_cascade_mask_rcnn_coco_3x",
]
