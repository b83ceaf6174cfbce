"""The one precision table of the package: ``--precision`` of every command, ``TrainConfig.precision``, the demo's
choice. Each name gives the autocast dtype, None for plain float32 (fp16 training adds a GradScaler)."""
from __future__ import annotations

import torch

__all__ = ["PRECISIONS"]

PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
