"""Iwin Transformer for timm and segmentation-models-pytorch.

``import iwin_models`` registers the Iwin backbones with timm (``timm.create_model('iwin_tiny')``).
"""
__version__ = "0.1.0"

from . import (
    iwin,  # noqa: F401  (registers the timm models)
    transformers_port,  # noqa: F401  (registers iwin_small_ade20k with timm; imports no transformers)
)
from .checkpoint import CheckpointError
from .inference import segment
from .iwin import IwinTransformer
from .optimize import optimize_for_cpu, restore_plain
from .segmenter import (
    IwinUPerNet,
    create_segmenter,
    iwin_base_upernet_ade20k,
    iwin_small_upernet_ade20k,
    iwin_tiny_upernet_ade20k,
)

__all__ = [
    "IwinTransformer", "IwinUPerNet", "optimize_for_cpu", "restore_plain", "CheckpointError", "create_segmenter",
    "segment",
    "iwin_tiny_upernet_ade20k", "iwin_small_upernet_ade20k", "iwin_base_upernet_ade20k", "__version__",
]
