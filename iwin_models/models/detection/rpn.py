"""torchvision's RPN with the authors' test-time proposal selection."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead, concat_box_prediction_layers
from torchvision.ops import box_iou

from ._utils import MMDetBoxCoder, batched_nms, clip_to_shape
from .losses import DeltaL1Loss, MaxIoUMatcher

__all__ = ["SigmoidLevelNMSRPN", "RPNHead"]


class SigmoidLevelNMSRPN(RegionProposalNetwork):
    """Proposals as mmdet's ``RPNHead._get_bboxes`` makes them (``rpn_head.py:82-236``).

    Per level the ``nms_pre`` best anchors by a descending sort of the **sigmoid** scores, decoded with
    mmdet's coder and clipped to the image, then one NMS over all levels with the level as class id
    (mmcv's offset trick), keeping ``max_per_img``. Unlike torchvision's RPN, no small or low-score box
    is removed (``min_bbox_size=0``, ``:221``): zero-area proposals clipped at the border stay.

    Training (the authors' ``train_cfg.rpn``): :class:`MaxIoUMatcher` (0.7 / 0.3, ``min_pos_iou`` 0.3, low-quality
    matches), 256 anchors per image with half positives, sigmoid BCE + ``box_loss`` (L1 in the Mask R-CNN
    configs, smooth L1 beta 1/9 in the Cascade ones), both divided by the number of sampled anchors.
    Anchors off the image's own padded feature grid are never sampled (mmdet's ``valid_flags``); with
    ``allowed_border >= 0`` neither are anchors crossing the unpadded image by more than that.
    Proposals in training: ``train_nms_pre`` per level, ``train_max_per_img`` kept (``rpn_proposal``).
    """

    def __init__(self, anchor_generator: nn.Module, head: RPNHead, nms_pre: int = 1000, max_per_img: int = 1000,
                 iou_threshold: float = 0.7, train_nms_pre: int = 2000, train_max_per_img: int = 1000,
                 allowed_border: int = -1, box_loss: DeltaL1Loss | None = None):
        super().__init__(anchor_generator, head, fg_iou_thresh=0.7, bg_iou_thresh=0.3, batch_size_per_image=256,
                         positive_fraction=0.5, pre_nms_top_n=dict(training=train_nms_pre, testing=nms_pre),
                         post_nms_top_n=dict(training=train_max_per_img, testing=max_per_img),
                         nms_thresh=iou_threshold)
        self.box_coder = MMDetBoxCoder((1.0, 1.0, 1.0, 1.0))
        self.proposal_matcher = MaxIoUMatcher(0.7, 0.3, min_pos_iou=0.3, match_low_quality=True)
        self.allowed_border = allowed_border
        self.box_loss = box_loss or DeltaL1Loss(self.box_coder)

    def forward(self, images: ImageList, features: dict[str, Tensor], targets=None) -> tuple[list[Tensor], dict]:
        """Proposals; in training also ``loss_objectness`` and ``loss_rpn_box_reg`` (``targets``: per image
        ``boxes`` in input pixels)."""
        features = list(features.values())
        objectness, deltas = self.head(features)
        boxes, _ = self.select(images, features, objectness, deltas)
        if not self.training:
            return boxes, {}
        anchors = self.anchor_generator(images, features)
        valid = [self.usable_anchors(a, features, images, i) for i, a in enumerate(anchors)]
        objectness, deltas = concat_box_prediction_layers(objectness, deltas)
        return boxes, self.losses(objectness.view(len(anchors), -1), deltas.view(len(anchors), -1, 4),
                                  anchors, valid, [t["boxes"] for t in targets])

    def usable_anchors(self, anchors: Tensor, features: list[Tensor], images: ImageList, index: int) -> Tensor:
        """``(A,)`` bool: mmdet's ``valid_flags`` (grid cells inside the image's padded size) and, for
        ``allowed_border >= 0``, ``anchor_inside_flags`` on the unpadded size."""
        pad_h, pad_w = images.pad_sizes[index]
        flags = []
        for feature, stride in zip(features, self.anchor_generator.strides):
            h, w = feature.shape[-2:]
            rows = torch.arange(h, device=anchors.device) < min(-(-pad_h // stride), h)
            cols = torch.arange(w, device=anchors.device) < min(-(-pad_w // stride), w)
            cell = rows[:, None] & cols[None, :]
            flags.append(cell.reshape(-1, 1).expand(-1, self.anchor_generator.num_anchors_per_location()[0]))
        valid = torch.cat([f.reshape(-1) for f in flags])
        if self.allowed_border >= 0:
            (img_h, img_w), b = images.image_sizes[index], self.allowed_border
            valid &= ((anchors[:, 0] >= -b) & (anchors[:, 1] >= -b) & (anchors[:, 2] < img_w + b)
                      & (anchors[:, 3] < img_h + b))
        return valid

    def losses(self, objectness: Tensor, deltas: Tensor, anchors: list[Tensor], valid: list[Tensor],
               gt_boxes: list[Tensor]) -> dict[str, Tensor]:
        """``objectness`` ``(N, A)`` logits, ``deltas`` ``(N, A, 4)``; per image anchors, usable flags, gts."""
        labels, matched = [], []
        for a, v, gt in zip(anchors, valid, gt_boxes):
            matches = torch.full((len(a),), -2, dtype=torch.int64, device=a.device)
            matches[v] = self.proposal_matcher(box_iou(gt, a[v]))
            labels.append((matches >= 0).to(torch.int64) - (matches == -2).to(torch.int64))
            matched.append(matches)
        pos, neg = self.fg_bg_sampler(labels)
        pos, neg = torch.stack(pos).bool(), torch.stack(neg).bool()
        num_samples = int(pos.sum() + neg.sum())
        target = pos[pos | neg].to(objectness)
        loss_cls = F.binary_cross_entropy_with_logits(objectness[pos | neg], target, reduction="sum") / num_samples
        pos_anchors = torch.cat([a[p] for a, p in zip(anchors, pos)])
        pos_gts = torch.cat([gt[m[p]] for gt, m, p in zip(gt_boxes, matched, pos)])
        loss_box = self.box_loss(deltas[pos], pos_anchors, pos_gts, num_samples)
        return dict(loss_objectness=loss_cls, loss_rpn_box_reg=loss_box)

    def propose(self, images: ImageList, features: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Per image: proposals ``(p, 4)`` in input pixels and their objectness (sigmoid), best first."""
        objectness, deltas = self.head(features)
        return self.select(images, features, objectness, deltas)

    def select(self, images: ImageList, features: list[Tensor], objectness: list[Tensor],
               deltas: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Proposals from the head's per-level ``(N, A, H, W)`` logits and ``(N, 4A, H, W)`` deltas."""
        anchors = self.anchor_generator(images, features)
        per_level = [o[0].numel() for o in objectness]
        objectness, deltas = concat_box_prediction_layers(objectness, deltas)
        proposals = self.box_coder.decode(deltas.detach(), anchors).view(len(anchors), -1, 4)
        return self.filter_proposals(proposals, objectness, images.image_sizes, per_level)

    def filter_proposals(self, proposals: Tensor, objectness: Tensor, image_shapes: list[tuple[int, int]],
                         num_anchors_per_level: list[int]) -> tuple[list[Tensor], list[Tensor]]:
        scores = objectness.detach().reshape(proposals.shape[0], -1).sigmoid()
        out_boxes, out_scores = [], []
        for boxes, prob, shape in zip(proposals, scores, image_shapes):
            boxes, prob, levels = self._top_per_level(boxes, prob, num_anchors_per_level)
            boxes = clip_to_shape(boxes, shape)
            keep = batched_nms(boxes, prob, levels, self.nms_thresh)[: self.post_nms_top_n()]
            out_boxes.append(boxes[keep])
            out_scores.append(prob[keep])
        return out_boxes, out_scores

    def _top_per_level(self, boxes: Tensor, prob: Tensor, per_level: list[int]) -> tuple[Tensor, Tensor, Tensor]:
        kept_boxes, kept_prob, levels = [], [], []
        for level, (b, p) in enumerate(zip(boxes.split(per_level), prob.split(per_level))):
            if p.numel() > self.pre_nms_top_n():
                # a descending sort, not topk: the same order among equal scores (rpn_head.py:165-171)
                p, order = p.sort(descending=True)
                p, b = p[: self.pre_nms_top_n()], b[order[: self.pre_nms_top_n()]]
            kept_boxes.append(b)
            kept_prob.append(p)
            levels.append(torch.full_like(p, level, dtype=torch.int64))
        return torch.cat(kept_boxes), torch.cat(kept_prob), torch.cat(levels)
