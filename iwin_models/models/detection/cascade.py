"""Cascade Mask R-CNN RoI heads (``cascade_roi_head.py:290-415``)."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ._utils import MMDetBoxCoder, clip_to_shape, rois_from_boxes
from .losses import DecodedGIoULoss, MaxIoUMatcher
from .roi_heads import BackgroundLastRoIHeads
from .sampling import SampledRoIs

__all__ = ["CascadeRoIHeads", "CASCADE_STDS", "CASCADE_IOUS", "CASCADE_LOSS_WEIGHTS"]

# the three stages' bbox coder stds (configs/iwin/cascade_*.py:33, 52, 71)
CASCADE_STDS = ((0.1, 0.1, 0.2, 0.2), (0.05, 0.05, 0.1, 0.1), (0.033, 0.033, 0.067, 0.067))
# train_cfg.rcnn[i].assigner pos = neg = min_pos IoU, no low-quality matches (cascade_mask_rcnn_iwin_fpn.py)
CASCADE_IOUS = (0.5, 0.6, 0.7)
CASCADE_LOSS_WEIGHTS = (1.0, 0.5, 0.25)  # stage_loss_weights
GIOU_LOSS_WEIGHT = 10.0  # the iwin cascade configs' GIoULoss(loss_weight=10.0), reg_decoded_bbox=True


class CascadeRoIHeads(BackgroundLastRoIHeads):
    """Three box stages and three mask heads, held as ``ModuleList`` in torchvision's attributes.

    Stage ``i`` refines the RoIs with its deltas of the ``argmax`` over the foreground logits, clipped
    to the image (``:322-328``, ``bbox_head.py:455-485``). Scores: softmax of the **mean of the three
    stages' raw logits** (``:331-334``); boxes: the last stage's deltas on the last stage's RoIs. Masks:
    the mean of the three mask heads' sigmoid probabilities (``:372-402``). No y2 == 0 quirk here.

    Training (``forward_train`` ``:215-288``): stage ``i`` samples with IoU ``CASCADE_IOUS[i]``, its losses
    (``s{i}.loss_classifier``, ``s{i}.loss_box_reg`` = GIoU x 10 on decoded boxes, ``s{i}.loss_mask``) are
    multiplied by ``CASCADE_LOSS_WEIGHTS[i]``, and the next stage's proposals are this stage's sampled RoIs
    regressed by their gt class (the best foreground class for negatives) without the gt boxes, detached.
    """

    def __init__(self, box_roi_pool: nn.Module, box_heads: Sequence[nn.Module], box_predictors: Sequence[nn.Module],
                 mask_roi_pool: nn.Module, mask_heads: Sequence[nn.Module], mask_predictors: Sequence[nn.Module],
                 stage_stds: Sequence[Sequence[float]] = CASCADE_STDS, **kwargs):
        super().__init__(box_roi_pool, nn.ModuleList(box_heads), nn.ModuleList(box_predictors), mask_roi_pool,
                         nn.ModuleList(mask_heads), nn.ModuleList(mask_predictors), box_stds=stage_stds[0], **kwargs)
        self.stage_coders = [MMDetBoxCoder(s) for s in stage_stds]
        self.stage_matchers = [MaxIoUMatcher(iou, iou, iou, match_low_quality=False) for iou in CASCADE_IOUS]
        self.stage_box_losses = [DecodedGIoULoss(c, GIOU_LOSS_WEIGHT) for c in self.stage_coders]
        self.stage_loss_weights = CASCADE_LOSS_WEIGHTS

    def stage_box_loss(self, stage: int) -> DecodedGIoULoss:
        return self.stage_box_losses[stage]

    def train_losses(self, feats: list[Tensor], proposals: list[Tensor], image_shapes, targets) -> dict[str, Tensor]:
        losses = {}
        for stage in range(self.num_stages):
            samples = self.sample(proposals, targets, self.stage_matchers[stage])
            stage_losses, (rois, cls_score, bbox_pred) = self.stage_losses(feats, samples, targets, stage)
            weight = self.stage_loss_weights[stage]
            losses.update({f"s{stage}.{k}": v * weight for k, v in stage_losses.items()})
            if stage < self.num_stages - 1:
                with torch.no_grad():
                    proposals = self.refine_samples(samples, cls_score, bbox_pred, self.stage_coders[stage],
                                                    image_shapes)
        return losses

    def refine_samples(self, samples: list[SampledRoIs], cls_score: Tensor, bbox_pred: Tensor,
                       coder: MMDetBoxCoder, image_shapes) -> list[Tensor]:
        """``refine_bboxes`` (``bbox_head.py:376-453``): per image the sampled RoIs decoded with the deltas of
        their target class (negatives: the best foreground logit), clipped, gt-box positives dropped."""
        labels = torch.cat([s.labels for s in samples])
        labels = torch.where(labels == self.num_classes, cls_score[:, :-1].argmax(dim=1), labels) * 4
        deltas = torch.gather(bbox_pred, 1, torch.stack((labels, labels + 1, labels + 2, labels + 3), 1))
        out = []
        for s, d, shape in zip(samples, deltas.split([len(s.labels) for s in samples]), image_shapes):
            boxes = clip_to_shape(coder.decode_single(d, s.boxes), shape)
            keep = torch.ones(len(boxes), dtype=torch.bool, device=boxes.device)
            keep[: s.num_pos] = ~s.pos_is_gt
            out.append(boxes[keep])
        return out

    @property
    def num_stages(self) -> int:
        return len(self.box_head)

    def box_stage(self, stage: int) -> tuple[nn.Module, nn.Module]:
        return self.box_head[stage], self.box_predictor[stage]

    def mask_stage(self, stage: int) -> tuple[nn.Module, nn.Module]:
        return self.mask_head[stage], self.mask_predictor[stage]

    def box_outputs(self, feats: list[Tensor], rois: Tensor, image_shape):
        logits = []
        for stage in range(self.num_stages):
            cls_score, bbox_pred = self.box_forward(feats, rois, stage)
            logits.append(cls_score)
            if stage < self.num_stages - 1:
                rois = self.refine(rois, cls_score, bbox_pred, self.stage_coders[stage], image_shape)
        mean = sum(logits) / float(len(logits))  # the same sum order as the authors' (cascade_roi_head.py:331-334)
        return rois, mean, bbox_pred, self.stage_coders[-1]

    @staticmethod
    def refine(rois: Tensor, cls_score: Tensor, bbox_pred: Tensor, coder: MMDetBoxCoder, image_shape) -> Tensor:
        """The next stage's RoIs: each RoI decoded with the deltas of its best foreground class."""
        label = cls_score[:, :-1].argmax(dim=1) * 4
        deltas = torch.gather(bbox_pred, 1, torch.stack((label, label + 1, label + 2, label + 3), 1))
        boxes = clip_to_shape(coder.decode_single(deltas, rois[:, 1:]), image_shape)
        return torch.cat((rois[:, [0]], boxes), dim=1)

    def mask_probs(self, feats: list[Tensor], mask_boxes: Tensor, labels: Tensor) -> Tensor:
        if mask_boxes.shape[0] == 0:
            return mask_boxes.new_zeros((0, *self.mask_out_size()))
        rois = rois_from_boxes([mask_boxes])
        index = torch.arange(len(labels), device=labels.device)
        probs = [self.mask_forward(feats, rois, s)[index, labels].sigmoid() for s in range(self.num_stages)]
        return sum(probs[1:], probs[0]) / len(probs)  # np.mean over the stages (merge_augs.py:120-150)

    def has_mask(self, mask_boxes: Tensor) -> Tensor:
        return torch.ones_like(mask_boxes[:, 0], dtype=torch.bool)
