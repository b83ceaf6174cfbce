"""Data: image decoding lives in :mod:`iwin_models.io`; here the data sets (:mod:`.datasets`; COCO-format
detection training data: :mod:`.coco`), the training pipeline and the keep-ratio
rescale (:mod:`.transforms`), the ADE20K classes and palette (:mod:`.ade20k`) and the bundled sample
photograph (:data:`SAMPLE_IMAGE`)."""
from pathlib import Path

from . import ade20k
from .coco import CocoDetection
from .datasets import ADE20KDataset, FolderSegmentationDataset, read_class_names
from .transforms import TrainTransform, build_train_transform, rescale_size

SAMPLE_IMAGE = Path(__file__).resolve().parents[1] / "assets" / "sample.jpg"  # public domain (assets/README.md)

__all__ = ["ade20k", "CocoDetection", "ADE20KDataset", "FolderSegmentationDataset", "read_class_names",
           "TrainTransform", "build_train_transform", "rescale_size", "SAMPLE_IMAGE"]
