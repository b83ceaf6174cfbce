"""The authors' training targets and losses (mmdet 2.11), on torchvision's matcher and sampler.

* :class:`MaxIoUMatcher`: mmdet's ``MaxIoUAssigner`` (``core/bbox/assigners/max_iou_assigner.py``) in
  torchvision's :class:`Matcher` format (gt index, ``-1`` negative, ``-2`` ignored). It differs from
  torchvision's low-quality rule: a gt whose best IoU is ``>= min_pos_iou`` takes **every** box that
  reaches that IoU (later gts win), not only the boxes whose own best gt it is.
* Box losses on the positives, summed and divided by the number of sampled boxes (mmdet's
  ``avg_factor``): L1 / smooth L1 on mmdet-encoded deltas, or ``weight * (1 - GIoU)`` on decoded boxes
  (``reg_decoded_bbox``, the Cascade heads).
* :func:`mask_targets`: mmdet's ``mask_target`` (``BitmapMasks.crop_and_resize``): ``roi_align`` of the gt
  mask (``aligned=True``, scale 1, adaptive sampling) then ``>= 0.5`` (torchvision's
  ``project_masks_on_boxes`` uses ``aligned=False`` and keeps the soft values).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.models.detection._utils import Matcher
from torchvision.ops import roi_align

from ._utils import MMDetBoxCoder

__all__ = ["MaxIoUMatcher", "DeltaL1Loss", "DeltaSmoothL1Loss", "DecodedGIoULoss", "aligned_giou", "mask_targets",
           "mask_loss"]


class MaxIoUMatcher(Matcher):
    """``MaxIoUAssigner(pos_iou_thr, neg_iou_thr, min_pos_iou, match_low_quality)`` with
    ``gt_max_assign_all=True``: call on a ``(G, N)`` IoU matrix -> ``(N,)`` matches."""

    def __init__(self, pos_iou_thr: float, neg_iou_thr: float, min_pos_iou: float, match_low_quality: bool):
        super().__init__(pos_iou_thr, neg_iou_thr, allow_low_quality_matches=match_low_quality)
        self.min_pos_iou = min_pos_iou

    def __call__(self, iou: Tensor) -> Tensor:
        if iou.shape[0] == 0:  # no gt: every box is a negative
            return torch.full((iou.shape[1],), self.BELOW_LOW_THRESHOLD, dtype=torch.int64, device=iou.device)
        max_iou, best = iou.max(dim=0)
        matches = torch.full_like(best, self.BETWEEN_THRESHOLDS)
        matches[(max_iou >= 0) & (max_iou < self.low_threshold)] = self.BELOW_LOW_THRESHOLD
        positive = max_iou >= self.high_threshold
        matches[positive] = best[positive]
        if self.allow_low_quality_matches:
            gt_max = iou.max(dim=1).values[:, None]
            hit = (iou == gt_max) & (gt_max >= self.min_pos_iou)  # (G, N); mmdet loops over the gts
            last = iou.shape[0] - 1 - hit.flip(0).int().argmax(dim=0)
            taken = hit.any(dim=0)
            matches[taken] = last[taken]
        return matches


class DeltaL1Loss:
    """``L1Loss`` on deltas encoded by ``coder`` (mmdet's ``bbox2delta``), ``weight * sum / num_samples``."""

    def __init__(self, coder: MMDetBoxCoder, weight: float = 1.0):
        self.coder, self.weight = coder, weight

    def __call__(self, deltas: Tensor, boxes: Tensor, gt_boxes: Tensor, num_samples: int) -> Tensor:
        """``deltas`` predicted on ``boxes`` (the positives), their gts ``gt_boxes``; all ``(P, 4)``."""
        return self.weight * self.elementwise(deltas, self.coder.encode_single(gt_boxes, boxes)).sum() / num_samples

    def elementwise(self, pred: Tensor, target: Tensor) -> Tensor:
        return (pred - target).abs()


class DeltaSmoothL1Loss(DeltaL1Loss):
    """``SmoothL1Loss(beta)`` (the Cascade configs' RPN, beta 1/9) on encoded deltas."""

    def __init__(self, coder: MMDetBoxCoder, beta: float = 1.0 / 9, weight: float = 1.0):
        super().__init__(coder, weight)
        self.beta = beta

    def elementwise(self, pred: Tensor, target: Tensor) -> Tensor:
        diff = (pred - target).abs()
        return torch.where(diff < self.beta, 0.5 * diff * diff / self.beta, diff - 0.5 * self.beta)


class DecodedGIoULoss(DeltaL1Loss):
    """``GIoULoss`` with ``reg_decoded_bbox=True``: the deltas decoded on their boxes (not clipped), then
    ``weight * sum(1 - GIoU) / num_samples`` against the gt boxes themselves."""

    def __call__(self, deltas: Tensor, boxes: Tensor, gt_boxes: Tensor, num_samples: int) -> Tensor:
        if deltas.shape[0] == 0:
            return deltas.sum()
        decoded = self.coder.decode_single(deltas, boxes)
        return self.weight * (1 - aligned_giou(decoded, gt_boxes)).sum() / num_samples


def aligned_giou(a: Tensor, b: Tensor, eps: float = 1e-7) -> Tensor:
    """mmdet's ``bbox_overlaps(a, b, mode='giou', is_aligned=True)`` (union and hull floored at ``eps``)."""
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    wh = (torch.min(a[:, 2:], b[:, 2:]) - torch.max(a[:, :2], b[:, :2])).clamp(min=0)
    overlap = wh[:, 0] * wh[:, 1]
    union = (area_a + area_b - overlap).clamp(min=eps)
    hull = (torch.max(a[:, 2:], b[:, 2:]) - torch.min(a[:, :2], b[:, :2])).clamp(min=0)
    hull_area = (hull[:, 0] * hull[:, 1]).clamp(min=eps)
    return overlap / union - (hull_area - union) / hull_area


def mask_targets(gt_masks: Tensor, gt_inds: Tensor, boxes: Tensor, size: int = 28) -> Tensor:
    """``(P, size, size)`` float 0/1 targets: gt mask ``gt_inds[i]`` (of ``(G, H, W)``) cropped to
    ``boxes[i]`` and resized as mmdet's ``BitmapMasks.crop_and_resize`` + ``>= 0.5``."""
    if boxes.shape[0] == 0:
        return boxes.new_zeros((0, size, size))
    rois = torch.cat([gt_inds[:, None].to(boxes), boxes], dim=1)
    soft = roi_align(gt_masks[:, None].to(boxes), rois, (size, size), 1.0, sampling_ratio=0, aligned=True)
    return (soft[:, 0] >= 0.5).to(boxes)


def mask_loss(logits: Tensor, labels: Tensor, targets: Tensor) -> Tensor:
    """Mean BCE of each positive's own-class ``(28, 28)`` logits (``mask_cross_entropy``)."""
    if targets.shape[0] == 0:
        return logits.sum() * 0
    own = logits[torch.arange(len(labels), device=labels.device), labels]
    return F.binary_cross_entropy_with_logits(own, targets)
