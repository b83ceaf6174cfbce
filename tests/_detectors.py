"""The mini detectors of ``<fixtures>/detection`` (the authors' mini configs), shared by the detection tests."""
from __future__ import annotations

from pathlib import Path

# the widths of the fixtures' mini detectors (their backbone, FPN and heads), as DetectorConfig fields
MINI = dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8), fpn_channels=32, fc_channels=64,
            conv_channels=32)
# fixture checkpoint -> the registered detector it is a mini version of
MINIS = {"mini_mask_rcnn": "iwin_tiny_mask_rcnn_coco_3x",
         "mini_cascade_mask_rcnn": "iwin_tiny_cascade_mask_rcnn_coco_3x"}


def mini_detector(detection_fixtures: Path, name: str = "mini_mask_rcnn", **kwargs):
    """The fixture checkpoint ``name`` built through ``create_detector`` (``kwargs``: e.g. ``num_classes``)."""
    from iwin_models import create_detector

    return create_detector(MINIS[name], weights=detection_fixtures / f"{name}.pth", **MINI, **kwargs)
