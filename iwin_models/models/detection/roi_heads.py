"""Mask R-CNN RoI heads with the authors' class layout and post-processing, on torchvision's RoIHeads."""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.roi_heads import RoIHeads

from ._utils import MMDetBoxCoder, batched_nms, clip_to_shape, rois_from_boxes
from .losses import DeltaL1Loss, MaxIoUMatcher, mask_loss, mask_targets
from .sampling import SampledRoIs, box_head_losses, sample_rois

__all__ = ["BackgroundLastRoIHeads", "multiclass_nms"]


def multiclass_nms(boxes: Tensor, scores: Tensor, score_thr: float, iou_threshold: float, max_num: int):
    """mmdet's ``multiclass_nms`` (``bbox_nms.py:7-95``): ``(n, 4C)`` boxes, ``(n, C + 1)`` scores with the
    background last -> boxes, scores, 0-based labels of the kept detections, best first."""
    n, num_classes = scores.shape[0], scores.shape[1] - 1
    boxes = boxes.view(n, -1, 4).reshape(-1, 4)
    labels = torch.arange(num_classes, device=scores.device).view(1, -1).expand(n, num_classes).reshape(-1)
    scores = scores[:, :-1].reshape(-1)
    inds = (scores > score_thr).nonzero().squeeze(1)  # strictly above
    boxes, scores, labels = boxes[inds], scores[inds], labels[inds]
    keep = batched_nms(boxes, scores, labels, iou_threshold)[:max_num]
    return boxes[keep], scores[keep], labels[keep]


class BackgroundLastRoIHeads(RoIHeads):
    """torchvision's RoI heads with mmdet's test path (``bbox_head.py:270-372``, ``test_mixins.py``).

    Softmax over ``C + 1`` logits with the background last, class-specific deltas decoded by mmdet's
    coder and clipped to the input image, **divided by the scale factor before NMS** (so NMS and the
    score threshold act in original-image pixels), per-class NMS, the best ``detections_per_img``.
    Masks on the detections scaled back to the input (``test_mixins.py:246-311``).

    ``forward`` gives per image ``boxes`` (original pixels), ``scores``, ``labels`` (0-based, no
    background), ``mask_probs`` ``(n, 28, 28)`` (the label's channel), ``mask_boxes`` (input pixels,
    where the masks are pasted from) and ``has_mask``.

    In training (``targets`` per image: ``boxes`` in input pixels, 1-based ``labels``, ``masks``
    ``(n, H', W')``) it returns ``loss_classifier``, ``loss_box_reg`` and ``loss_mask`` (the authors'
    ``train_cfg.rcnn``: :class:`MaxIoUMatcher` 0.5 with low-quality matches, 512 RoIs with a quarter
    positives, gts added to the proposals; CE, L1 on deltas with the coder's stds, mask BCE on 28x28 targets).
    """

    def __init__(self, box_roi_pool: nn.Module, box_head: nn.Module, box_predictor: nn.Module,
                 mask_roi_pool: nn.Module, mask_head: nn.Module, mask_predictor: nn.Module,
                 box_stds: Sequence[float] = (0.1, 0.1, 0.2, 0.2), score_thresh: float = 0.05,
                 nms_thresh: float = 0.5, detections_per_img: int = 100):
        super().__init__(box_roi_pool, box_head, box_predictor, fg_iou_thresh=0.5, bg_iou_thresh=0.5,
                         batch_size_per_image=512, positive_fraction=0.25, bbox_reg_weights=None,
                         score_thresh=score_thresh, nms_thresh=nms_thresh, detections_per_img=detections_per_img,
                         mask_roi_pool=mask_roi_pool, mask_head=mask_head, mask_predictor=mask_predictor)
        self.box_coder = MMDetBoxCoder(box_stds)
        self.proposal_matcher = MaxIoUMatcher(0.5, 0.5, min_pos_iou=0.5, match_low_quality=True)
        self.box_loss = DeltaL1Loss(self.box_coder)

    def forward(self, features: dict[str, Tensor], proposals: list[Tensor], image_shapes: list[tuple[int, int]],
                scale_factors: list[Tensor], targets: list[dict[str, Tensor]] | None = None):
        feats = [features[k] for k in self.box_roi_pool.featmap_names]
        if self.training:
            return self.train_losses(feats, proposals, image_shapes, targets)
        return [self.detect(feats, p, s, f) for p, s, f in zip(proposals, image_shapes, scale_factors)]

    @property
    def num_classes(self) -> int:
        return self.box_stage(0)[1].cls_score.out_features - 1

    def train_losses(self, feats: list[Tensor], proposals: list[Tensor], image_shapes, targets) -> dict[str, Tensor]:
        samples = self.sample(proposals, targets, self.proposal_matcher)
        return self.stage_losses(feats, samples, targets, 0)[0]

    def sample(self, proposals: list[Tensor], targets, matcher: MaxIoUMatcher) -> list[SampledRoIs]:
        labels = [t["labels"] - 1 for t in targets]  # 1-based -> the authors' 0-based foreground classes
        for index, lab in enumerate(labels):
            if lab.numel() and int(lab.max()) >= self.num_classes:
                raise ValueError(f"target {index}: label {int(lab.max()) + 1} > num_classes {self.num_classes}")
        return sample_rois(proposals, [t["boxes"] for t in targets], labels, matcher, self.fg_bg_sampler,
                           self.num_classes)

    def stage_losses(self, feats: list[Tensor], samples: list[SampledRoIs], targets, stage: int):
        """A stage's box and mask losses, and its ``(rois, cls_score, bbox_pred)``."""
        rois = rois_from_boxes([s.boxes for s in samples])
        cls_score, bbox_pred = self.box_forward(feats, rois, stage)
        losses = box_head_losses(cls_score, bbox_pred, samples, [t["boxes"] for t in targets],
                                 self.stage_box_loss(stage))
        losses["loss_mask"] = self.mask_train_loss(feats, samples, targets, stage)
        return losses, (rois, cls_score, bbox_pred)

    def stage_box_loss(self, stage: int) -> DeltaL1Loss:
        return self.box_loss

    def mask_train_loss(self, feats: list[Tensor], samples: list[SampledRoIs], targets, stage: int) -> Tensor:
        """Mask BCE of the positives (``FCNMaskHead.loss``); targets cropped from each image's gt masks."""
        logits = self.mask_forward(feats, rois_from_boxes([s.pos_boxes for s in samples]), stage)
        size = logits.shape[-1]
        goal = torch.cat([mask_targets(t["masks"], s.gt_inds, s.pos_boxes, size) for t, s in zip(targets, samples)])
        return mask_loss(logits, torch.cat([s.labels[: s.num_pos] for s in samples]), goal)

    def detect(self, feats: list[Tensor], proposals: Tensor, image_shape, scale_factor: Tensor) -> dict[str, Tensor]:
        """One image (``feats`` of batch size 1): detections and mask probabilities."""
        rois = rois_from_boxes([proposals])
        rois, cls_score, bbox_pred, coder = self.box_outputs(feats, rois, image_shape)
        boxes, scores, labels = self.postprocess_boxes(rois, cls_score, bbox_pred, coder, image_shape, scale_factor)
        mask_boxes = boxes * scale_factor  # back to input pixels (test_mixins.py:278-281)
        probs = self.mask_probs(feats, mask_boxes, labels)
        return dict(boxes=boxes, scores=scores, labels=labels, mask_probs=probs, mask_boxes=mask_boxes,
                    has_mask=self.has_mask(mask_boxes))

    def box_forward(self, feats: list[Tensor], rois: Tensor, stage: int = 0) -> tuple[Tensor, Tensor]:
        """Raw ``cls_score`` ``(K, C + 1)`` and ``bbox_pred`` ``(K, 4C)`` of a stage's head on ``(K, 5)`` RoIs."""
        head, predictor = self.box_stage(stage)
        return predictor(head(self.box_roi_pool.pool_rois(feats, rois)))

    def mask_forward(self, feats: list[Tensor], rois: Tensor, stage: int = 0) -> Tensor:
        """Mask logits ``(K, C, 28, 28)`` of a stage's mask head on ``(K, 5)`` RoIs."""
        head, predictor = self.mask_stage(stage)
        return predictor(head(self.mask_roi_pool.pool_rois(feats, rois)))

    def box_stage(self, stage: int) -> tuple[nn.Module, nn.Module]:
        assert stage == 0, "Mask R-CNN has one stage"
        return self.box_head, self.box_predictor

    def mask_stage(self, stage: int) -> tuple[nn.Module, nn.Module]:
        assert stage == 0, "Mask R-CNN has one stage"
        return self.mask_head, self.mask_predictor

    def box_outputs(self, feats: list[Tensor], rois: Tensor, image_shape):
        """RoIs, logits, deltas and the coder that the detections are made from."""
        cls_score, bbox_pred = self.box_forward(feats, rois)
        # RoIs with y2 == 0 exactly are taken for batch padding: zeroed outputs (test_mixins.py:116-129)
        padding = rois[:, 4] == 0
        cls_score[padding] = 0
        bbox_pred[padding] = 0
        return rois, cls_score, bbox_pred, self.box_coder

    def postprocess_boxes(self, rois: Tensor, cls_score: Tensor, bbox_pred: Tensor, coder: MMDetBoxCoder,
                          image_shape, scale_factor: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        scores = F.softmax(cls_score, dim=-1)
        boxes = clip_to_shape(coder.decode_single(bbox_pred, rois[:, 1:]), image_shape)
        boxes = boxes / scale_factor.repeat(boxes.shape[-1] // 4)  # NMS in original pixels (bbox_head.py:343-351)
        return multiclass_nms(boxes, scores, self.score_thresh, self.nms_thresh, self.detections_per_img)

    def mask_probs(self, feats: list[Tensor], mask_boxes: Tensor, labels: Tensor) -> Tensor:
        if mask_boxes.shape[0] == 0:
            return mask_boxes.new_zeros((0, *self.mask_out_size()))
        logits = self.mask_forward(feats, rois_from_boxes([mask_boxes]))
        return logits[torch.arange(len(labels), device=labels.device), labels].sigmoid()

    def mask_out_size(self) -> tuple[int, int]:
        return tuple(2 * s for s in self.mask_roi_pool.output_size)

    def has_mask(self, mask_boxes: Tensor) -> Tensor:
        # a detection whose input-scale y2 is 0 exactly gets no mask (test_mixins.py:300-306)
        return mask_boxes[:, 3] != 0
