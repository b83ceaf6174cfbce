"""RoI sampling and the box-head losses of the authors' RoI heads (``StandardRoIHead.forward_train``)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler
from torchvision.ops import box_iou

from .losses import DeltaL1Loss, MaxIoUMatcher

__all__ = ["SampledRoIs", "sample_rois", "box_head_losses"]


@dataclass
class SampledRoIs:
    """One image's sampled RoIs, **positives first** (mmdet's ``SamplingResult.bboxes``).

    ``labels``: 0-based class of each positive, ``num_classes`` (background, last) for the negatives;
    ``gt_inds``: the matched gt of each positive; ``pos_is_gt``: positives that are gt boxes themselves.
    """
    boxes: Tensor
    labels: Tensor
    gt_inds: Tensor
    pos_is_gt: Tensor

    @property
    def num_pos(self) -> int:
        return len(self.gt_inds)

    @property
    def pos_boxes(self) -> Tensor:
        return self.boxes[: self.num_pos]


def sample_rois(proposals: list[Tensor], gt_boxes: list[Tensor], gt_labels: list[Tensor], matcher: MaxIoUMatcher,
                sampler: BalancedPositiveNegativeSampler, num_classes: int) -> list[SampledRoIs]:
    """mmdet's assign + ``RandomSampler(add_gt_as_proposals=True)``: the gt boxes are prepended to the
    (detached) proposals, matched, and ``sampler`` draws positives and negatives. ``gt_labels`` 0-based."""
    candidates, matches, flags = [], [], []
    for props, gt in zip(proposals, gt_boxes):
        boxes = torch.cat([gt.to(props), props.detach()])
        m = matcher(box_iou(gt, boxes))
        candidates.append(boxes)
        matches.append(m)
        flags.append((m >= 0).to(torch.int64) - (m == -2).to(torch.int64))
    pos_masks, neg_masks = sampler(flags)
    out = []
    for boxes, m, gt, labels, pos, neg in zip(candidates, matches, gt_boxes, gt_labels, pos_masks, neg_masks):
        pos_idx, neg_idx = pos.nonzero().view(-1), neg.nonzero().view(-1)
        gt_inds = m[pos_idx]
        cls = torch.cat([labels[gt_inds], labels.new_full((len(neg_idx),), num_classes)])
        out.append(SampledRoIs(boxes[torch.cat([pos_idx, neg_idx])], cls, gt_inds, pos_idx < len(gt)))
    return out


def box_head_losses(cls_score: Tensor, bbox_pred: Tensor, samples: list[SampledRoIs], gt_boxes: list[Tensor],
                    box_loss: DeltaL1Loss) -> dict[str, Tensor]:
    """``loss_classifier``: mean CE over all sampled RoIs (background last); ``loss_box_reg``: ``box_loss``
    of each positive's own-class deltas, divided by the number of sampled RoIs (``bbox_head.py:loss``).
    ``cls_score`` / ``bbox_pred`` are the head's outputs on the RoIs of ``samples`` in order."""
    labels = torch.cat([s.labels for s in samples])
    loss_cls = F.cross_entropy(cls_score, labels)
    num_pos = [s.num_pos for s in samples]
    starts = torch.tensor([0] + [len(s.labels) for s in samples[:-1]], device=labels.device).cumsum(0)
    pos_rows = torch.cat([torch.arange(n, device=labels.device) + start for n, start in zip(num_pos, starts)])
    pos_labels = labels[pos_rows]
    deltas = bbox_pred.view(len(labels), -1, 4)[pos_rows, pos_labels]
    boxes = torch.cat([s.pos_boxes for s in samples])
    gts = torch.cat([gt[s.gt_inds] for gt, s in zip(gt_boxes, samples)])
    return dict(loss_classifier=loss_cls, loss_box_reg=box_loss(deltas, boxes, gts, len(labels)))
