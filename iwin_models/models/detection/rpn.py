"""torchvision's RPN with the authors' test-time proposal selection."""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead, concat_box_prediction_layers

from ._utils import MMDetBoxCoder, batched_nms, clip_to_shape

__all__ = ["SigmoidLevelNMSRPN", "RPNHead"]


class SigmoidLevelNMSRPN(RegionProposalNetwork):
    """Proposals as mmdet's ``RPNHead._get_bboxes`` makes them (``rpn_head.py:82-236``).

    Per level the ``nms_pre`` best anchors by a descending sort of the **sigmoid** scores, decoded with
    mmdet's coder and clipped to the image, then one NMS over all levels with the level as class id
    (mmcv's offset trick), keeping ``max_per_img``. Unlike torchvision's RPN, no small or low-score box
    is removed (``min_bbox_size=0``, ``:221``): zero-area proposals clipped at the border stay.
    Eval only: training (losses) is not ported yet.
    """

    def __init__(self, anchor_generator: nn.Module, head: RPNHead, nms_pre: int = 1000, max_per_img: int = 1000,
                 iou_threshold: float = 0.7):
        # the training arguments are the authors' train_cfg.rpn, kept for the later training port
        super().__init__(anchor_generator, head, fg_iou_thresh=0.7, bg_iou_thresh=0.3, batch_size_per_image=256,
                         positive_fraction=0.5, pre_nms_top_n=dict(training=2000, testing=nms_pre),
                         post_nms_top_n=dict(training=1000, testing=max_per_img), nms_thresh=iou_threshold)
        self.box_coder = MMDetBoxCoder((1.0, 1.0, 1.0, 1.0))

    def forward(self, images: ImageList, features: dict[str, Tensor], targets=None) -> tuple[list[Tensor], dict]:
        if self.training or targets is not None:
            raise NotImplementedError("the Iwin detectors' RPN is ported for inference only")
        boxes, _ = self.propose(images, list(features.values()))
        return boxes, {}

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
