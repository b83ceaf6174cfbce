"""Float32 CPU linear layers through oneDNN (fast path ``onednn_linear``, ``IWIN_ONEDNN_LINEAR``).

On CPU, torch sends ``F.linear`` to MKL's sgemm. On the AMD EPYC machines we benchmark on it reaches
~220 GFLOP/s on Iwin's shapes, while oneDNN's convolution kernels reach ~460-500 GFLOP/s on the same
products (benchmarks/RESULTS.md, section 2). A linear layer on rows is a 1x1 convolution over the rows
seen as a channels-last (1, K, rows, 1) image: a view, nothing is copied, and the output comes back as
contiguous rows. ``torch.mkldnn_convolution`` is called directly because ``F.conv2d`` picks its native
kernel for small inputs. Autograd works through it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .config import set_fast_path

__all__ = ["linear", "use_onednn_linears"]

# oneDNN's call overhead (~25 us) outweighs its faster product below about this much work
_ONEDNN_MIN_MACS = 1 << 22


def use_onednn_linears(enabled: bool = True) -> bool:
    """Whether models converted from now on (``optimize_for_cpu``) get oneDNN linears; returns the old setting."""
    return set_fast_path(enabled, "onednn_linear")


def _onednn_takes(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (x.device.type == "cpu" and x.dtype == weight.dtype == torch.float32
            and x.shape[-1] == weight.shape[1]  # otherwise F.linear raises its shape error
            and x.numel() * weight.shape[0] >= _ONEDNN_MIN_MACS
            and not torch.is_autocast_enabled("cpu")  # torch's bfloat16 linear already runs on oneDNN
            and torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)``, computed by oneDNN for large float32 CPU products.

    Small products, other devices and dtypes, autocast, and oneDNN switched off in torch get ``F.linear``.
    Callers are the CPU fast twins (eager only: tracers record the plain model).
    """
    if not _onednn_takes(x, weight):
        return F.linear(x, weight, bias)
    out_features, in_features = weight.shape
    rows = x.reshape(-1, in_features).contiguous()
    image = rows.view(1, rows.shape[0], 1, in_features).permute(0, 3, 1, 2)
    out = torch.mkldnn_convolution(
        image, weight.reshape(out_features, in_features, 1, 1), bias, (0, 0), (1, 1), (1, 1), 1)
    return out.permute(0, 2, 3, 1).reshape(*x.shape[:-1], out_features)
