"""Iwin Transformer for timm and segmentation-models-pytorch.

``import iwin_models`` registers the Iwin backbones with timm (``timm.create_model('iwin_tiny')``).
"""
__version__ = "0.1.0"

from . import iwin  # noqa: F401  (registers the timm models)
from .checkpoint import CheckpointError
from .iwin import IwinTransformer

__all__ = ["IwinTransformer", "CheckpointError", "__version__"]
