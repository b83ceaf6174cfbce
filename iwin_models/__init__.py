"""Iwin Transformer for timm, segmentation-models-pytorch and torchvision's detection API.

``import iwin_models`` registers the Iwin backbones with timm (``timm.create_model('iwin_tiny')``) and the
segmenter class with smp (``smp.from_pretrained``); the COCO detectors are ``create_detector(name)``,
``detect(model, image)`` and ``evaluate_detector(model, ann_file, img_dir)``. What is imported here is the public
surface; the sub-packages (``models``, ``layers``, ``fast``, ``data``, ``io``, ``engine``, ``interop``, ``apps``)
are the floors of the house (ARCHITECTURE.md).
"""
from .data import SAMPLE_IMAGE
from .data.ade20k import CLASSES as ADE20K_CLASSES
from .data.ade20k import MEAN as ADE20K_MEAN
from .data.ade20k import PALETTE as ADE20K_PALETTE
from .data.ade20k import STD as ADE20K_STD
from .engine.detection import Detections, detect
from .engine.detection_eval import evaluate_detector
from .engine.evaluation import evaluate
from .engine.inference import predict, segment
from .fast import optimize_for_cpu, restore_plain
from .interop.export import dynamic_tracing, export_detector_backbone, export_forms, export_onnx, export_program
from .io.checkpoint import CheckpointError
from .models import (
    DETECTORS,
    SEGMENTERS,
    IwinCascadeMaskRCNN,
    IwinMaskRCNN,
    IwinTransformer,
    IwinUPerNet,
    create_detector,
    create_segmenter,
    iwin_base_cascade_mask_rcnn_coco_3x,
    iwin_base_upernet_ade20k,
    iwin_small_cascade_mask_rcnn_coco_1x,
    iwin_small_cascade_mask_rcnn_coco_3x,
    iwin_small_mask_rcnn_coco_1x,
    iwin_small_mask_rcnn_coco_3x,
    iwin_small_upernet_ade20k,
    iwin_tiny_cascade_mask_rcnn_coco_1x,
    iwin_tiny_cascade_mask_rcnn_coco_3x,
    iwin_tiny_mask_rcnn_coco_1x,
    iwin_tiny_mask_rcnn_coco_3x,
    iwin_tiny_upernet_ade20k,
    load_segmenter,
)
from .version import __version__

__all__ = [
    "IwinTransformer", "IwinUPerNet", "create_segmenter", "load_segmenter", "iwin_tiny_upernet_ade20k",
    "iwin_small_upernet_ade20k", "iwin_base_upernet_ade20k", "segment", "predict", "evaluate", "optimize_for_cpu",
    "restore_plain", "export_onnx", "export_program", "export_forms", "export_detector_backbone", "dynamic_tracing",
    "CheckpointError",
    "SAMPLE_IMAGE", "ADE20K_CLASSES", "ADE20K_PALETTE", "ADE20K_MEAN", "ADE20K_STD", "SEGMENTERS", "__version__",
    "DETECTORS", "IwinMaskRCNN", "IwinCascadeMaskRCNN", "create_detector", "detect", "Detections", "evaluate_detector",
    "iwin_tiny_mask_rcnn_coco_1x", "iwin_tiny_mask_rcnn_coco_3x", "iwin_small_mask_rcnn_coco_1x",
    "iwin_small_mask_rcnn_coco_3x", "iwin_tiny_cascade_mask_rcnn_coco_1x", "iwin_tiny_cascade_mask_rcnn_coco_3x",
    "iwin_small_cascade_mask_rcnn_coco_3x", "iwin_small_cascade_mask_rcnn_coco_1x",
    "iwin_base_cascade_mask_rcnn_coco_3x",
]
