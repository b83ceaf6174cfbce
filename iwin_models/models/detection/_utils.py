"""Box coding, clipping and NMS with the float op order of the authors' mmdet 2.11 / mmcv 1.3.17."""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor
from torchvision.models.detection._utils import BoxCoder
from torchvision.ops import nms

__all__ = ["MMDetBoxCoder", "clip_to_shape", "batched_nms", "rois_from_boxes"]


class MMDetBoxCoder(BoxCoder):
    """torchvision's box coder with mmdet's ``delta2bbox`` (``delta_xywh_bbox_coder.py:136-236``).

    The deltas are multiplied by ``stds`` (torchvision divides by weights = 1/std: other ulps), widths
    are ``x2 - x1`` without +1, and ``dw, dh`` are clamped to ``|log(16/1000)|``. Works on any number
    of classes' deltas per box (``(N, 4k)``). Decoding does not clip: see :func:`clip_to_shape`.
    """

    def __init__(self, stds: Sequence[float] = (1.0, 1.0, 1.0, 1.0), wh_ratio_clip: float = 16 / 1000):
        super().__init__(weights=tuple(1.0 / s for s in stds), bbox_xform_clip=abs(math.log(wh_ratio_clip)))
        self.stds = tuple(stds)

    def decode_single(self, rel_codes: Tensor, boxes: Tensor) -> Tensor:
        stds = rel_codes.new_tensor(self.stds).repeat(rel_codes.size(-1) // 4)
        deltas = rel_codes * stds
        dx, dy = deltas[..., 0::4], deltas[..., 1::4]
        dw = deltas[..., 2::4].clamp(min=-self.bbox_xform_clip, max=self.bbox_xform_clip)
        dh = deltas[..., 3::4].clamp(min=-self.bbox_xform_clip, max=self.bbox_xform_clip)
        x1, y1, x2, y2 = boxes.unbind(-1)
        px, py = ((x1 + x2) * 0.5).unsqueeze(-1), ((y1 + y2) * 0.5).unsqueeze(-1)
        pw, ph = (x2 - x1).unsqueeze(-1), (y2 - y1).unsqueeze(-1)
        gw, gh = pw * dw.exp(), ph * dh.exp()
        gx, gy = px + pw * dx, py + ph * dy
        out = torch.stack([gx - gw * 0.5, gy - gh * 0.5, gx + gw * 0.5, gy + gh * 0.5], dim=-1)
        return out.view(rel_codes.shape)

    def encode_single(self, reference_boxes: Tensor, proposals: Tensor) -> Tensor:
        """mmdet's ``bbox2delta``: deltas of ``(N, 4)`` gt boxes on ``(N, 4)`` proposals, divided by ``stds``."""
        px, py = (proposals[:, 0] + proposals[:, 2]) * 0.5, (proposals[:, 1] + proposals[:, 3]) * 0.5
        pw, ph = proposals[:, 2] - proposals[:, 0], proposals[:, 3] - proposals[:, 1]
        g = reference_boxes
        gx, gy = (g[:, 0] + g[:, 2]) * 0.5, (g[:, 1] + g[:, 3]) * 0.5
        gw, gh = g[:, 2] - g[:, 0], g[:, 3] - g[:, 1]
        deltas = torch.stack([(gx - px) / pw, (gy - py) / ph, torch.log(gw / pw), torch.log(gh / ph)], dim=-1)
        return deltas / deltas.new_tensor(self.stds)


def clip_to_shape(boxes: Tensor, shape: Sequence[int]) -> Tensor:
    """Clip ``(N, 4k)`` boxes to an ``(h, w)`` image as mmdet does (two ``torch.where``, NaN kept)."""
    h, w = shape[0], shape[1]
    bound = boxes.new_tensor([w, h]).repeat(boxes.size(-1) // 2)
    boxes = torch.where(boxes < 0, boxes.new_zeros(()), boxes)
    return torch.where(boxes > bound, bound, boxes)


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float, split_thr: int = 10000) -> Tensor:
    """mmcv 1.3.17 ``batched_nms`` (``mmcv/ops/nms.py:260-330``): kept indices, best score first.

    Below ``split_thr`` boxes it always uses the coordinate-offset trick (torchvision switches to a
    per-class loop above 4000 boxes, whose rounding of the offset boxes differs).
    """
    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    offsets = idxs.to(boxes) * (boxes.max() + torch.tensor(1).to(boxes))
    shifted = boxes + offsets[:, None]
    if boxes.shape[0] < split_thr:
        return nms(shifted, scores, iou_threshold)
    kept = torch.zeros_like(scores, dtype=torch.bool)
    for i in torch.unique(idxs):
        members = (idxs == i).nonzero().view(-1)
        kept[members[nms(shifted[members], scores[members], iou_threshold)]] = True
    keep = kept.nonzero().view(-1)
    return keep[scores[keep].sort(descending=True)[1]]


def rois_from_boxes(boxes: list[Tensor]) -> Tensor:
    """``(K, 5)`` RoIs (batch index, x1, y1, x2, y2) as mmdet's ``bbox2roi``."""
    return torch.cat([torch.cat([b.new_full((len(b), 1), i), b[:, :4]], dim=1) for i, b in enumerate(boxes)])
