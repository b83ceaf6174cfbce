"""The authors' test pipeline (``configs/_base_/datasets/coco_instance.py:15-29``) and mask paste."""
from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.image_list import ImageList

from ...data.transforms import rescale_size  # mmcv's keep-ratio rescale (imrescale's sizes)

__all__ = ["ScaledImageList", "MMDetTestTransform", "MMDetTrainTransform", "paste_masks"]


class ScaledImageList(ImageList):
    """torchvision's ImageList with the rest of mmdet's ``img_metas``: per image the ``scale_factors``
    (float32 ``[w, h, w, h]``) and the ``original_image_sizes`` ``(h, w)``; ``image_sizes`` are the
    unpadded resized sizes (mmdet's ``img_shape``, what boxes are clipped to) and ``pad_sizes`` each image's
    own padded size (``pad_shape``; the batch tensor may be larger), by default the tensor's."""

    def __init__(self, tensors: Tensor, image_sizes: list[tuple[int, int]], scale_factors: list[Tensor],
                 original_image_sizes: list[tuple[int, int]], pad_sizes: list[tuple[int, int]] | None = None):
        super().__init__(tensors, image_sizes)
        self.scale_factors = scale_factors
        self.original_image_sizes = original_image_sizes
        self.pad_sizes = pad_sizes or [tuple(tensors.shape[-2:])] * len(image_sizes)

    def to(self, device: torch.device) -> ScaledImageList:
        return ScaledImageList(self.tensors.to(device), self.image_sizes, [f.to(device) for f in self.scale_factors],
                               self.original_image_sizes, self.pad_sizes)


class MMDetTestTransform(nn.Module):
    """Resize, normalise, pad as the authors' test does, then paste masks into the original image.

    Not torchvision's ``GeneralizedRCNNTransform``: the authors resize the **uint8** image with cv2's
    ``INTER_LINEAR`` before normalising (torchvision interpolates the normalised float image, and its
    uint8 bilinear differs by 1 on many pixels), keep w and h scale factors apart, and pad bottom-right
    to a multiple of 32 one image at a time.
    """

    def __init__(self, scale: Sequence[int] = (1333, 800), size_divisor: int = 32,
                 mean: Sequence[float] = (123.675, 116.28, 103.53), std: Sequence[float] = (58.395, 57.12, 57.375),
                 mask_threshold: float = 0.5):
        super().__init__()
        self.scale, self.size_divisor = tuple(scale), size_divisor
        self.mean, self.std = tuple(mean), tuple(std)
        self.mask_threshold = mask_threshold

    def forward(self, image: Tensor) -> ScaledImageList:
        """One RGB ``(3, H, W)`` image, uint8 or float in [0, 1] (made uint8 first, as the authors read it)."""
        if image.is_floating_point():
            image = (image * 255).round().clamp(0, 255).to(torch.uint8)
        rgb = image.permute(1, 2, 0).cpu().numpy()
        return self.from_resized(self.resize(rgb), rgb.shape[:2], device=image.device)

    def resize(self, image: np.ndarray) -> np.ndarray:
        """``(H, W, 3)`` uint8 -> resized as mmcv ``imrescale`` (``transforms.py:203-232``)."""
        new_h, new_w = rescale_size(image.shape[0], image.shape[1], self.scale)
        return cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)

    def from_resized(self, resized: np.ndarray, original_size: Sequence[int], device=None) -> ScaledImageList:
        """The model input from an already resized ``(H', W', 3)`` uint8 **RGB** image."""
        (h, w), (oh, ow) = resized.shape[:2], original_size[:2]
        scale_factor = torch.tensor(np.array([w / ow, h / oh, w / ow, h / oh], dtype=np.float32), device=device)
        tensor = self.normalize_pad(torch.from_numpy(np.ascontiguousarray(resized)).to(device))
        return ScaledImageList(tensor, [(h, w)], [scale_factor], [(int(oh), int(ow))])

    def normalize_pad(self, resized: Tensor) -> Tensor:
        """``(H', W', 3)`` uint8 RGB -> ``(1, 3, H'', W'')`` float32, ``(x - mean) / std``, zero-padded
        bottom/right to the size divisor (``transforms.py:476-580``)."""
        mean = torch.tensor(self.mean, dtype=torch.float32, device=resized.device)
        std = torch.tensor(self.std, dtype=torch.float32, device=resized.device)
        x = ((resized.float() - mean) / std).permute(2, 0, 1)
        h, w = x.shape[-2:]
        pad_h, pad_w = -h % self.size_divisor, -w % self.size_divisor
        return F.pad(x, (0, pad_w, 0, pad_h))[None]

    def postprocess(self, detections: list[dict[str, Tensor]], images: ScaledImageList) -> list[dict[str, Tensor]]:
        """Boxes stay in original pixels; labels become 1-based (0 = background, torchvision's
        convention); masks ``(n, 1, H, W)`` bool in the original image."""
        return [self._one(d, f, s) for d, f, s in zip(detections, images.scale_factors, images.original_image_sizes)]

    def _one(self, det: dict[str, Tensor], scale_factor: Tensor, original_size) -> dict[str, Tensor]:
        masks = paste_masks(det["mask_probs"], det["mask_boxes"] / scale_factor, original_size, self.mask_threshold)
        masks &= det["has_mask"][:, None, None]
        return dict(boxes=det["boxes"], labels=det["labels"] + 1, scores=det["scores"], masks=masks[:, None])


class MMDetTrainTransform(MMDetTestTransform):
    """The test transform plus the training resize of images **and** targets (``train_batch``).

    Per image a scale drawn uniformly from ``train_scales`` (mmdet's ``Resize(multiscale_mode='value')``;
    default: the test scale), the image resized as at test time, boxes multiplied by the float32 scale
    factors and clipped to the resized image (``transforms.py:_resize_bboxes``), masks resized with cv2's
    nearest neighbour (``BitmapMasks.rescale``). Images are padded to 32 and then to the batch's largest.
    Flips and crops belong to the data pipeline, before the model.
    """

    def __init__(self, train_scales: Sequence[Sequence[int]] = ((1333, 800),), **kwargs):
        super().__init__(**kwargs)
        self.train_scales = tuple(tuple(s) for s in train_scales)

    def train_batch(self, images: list[Tensor], targets: list[dict[str, Tensor]]):
        """``(ScaledImageList, targets)``: targets with ``boxes`` in input pixels, ``labels``, ``masks``
        ``(n, H', W')`` uint8 at the resized size."""
        if len(images) != len(targets):
            raise ValueError(f"{len(images)} images but {len(targets)} targets")
        inputs, out_targets = [], []
        for index, (image, target) in enumerate(zip(images, targets)):
            check_target(target, tuple(image.shape[-2:]), index)
            scale = self.train_scales[int(torch.randint(len(self.train_scales), ()))]
            batch, resized_target = self.resize_pair(image, target, scale)
            inputs.append(batch)
            out_targets.append(resized_target)
        height = max(b.tensors.shape[-2] for b in inputs)
        width = max(b.tensors.shape[-1] for b in inputs)
        tensors = torch.cat([F.pad(b.tensors, (0, width - b.tensors.shape[-1], 0, height - b.tensors.shape[-2]))
                             for b in inputs])
        merged = ScaledImageList(tensors, [b.image_sizes[0] for b in inputs], [b.scale_factors[0] for b in inputs],
                                 [b.original_image_sizes[0] for b in inputs], [b.pad_sizes[0] for b in inputs])
        return merged, out_targets

    def resize_pair(self, image: Tensor, target: dict[str, Tensor], scale: Sequence[int]):
        if image.is_floating_point():
            image = (image * 255).round().clamp(0, 255).to(torch.uint8)
        rgb = image.permute(1, 2, 0).cpu().numpy()
        new_h, new_w = rescale_size(rgb.shape[0], rgb.shape[1], scale)
        batch = self.from_resized(cv2.resize(rgb, (new_w, new_h), interpolation=cv2.INTER_LINEAR), rgb.shape[:2],
                                  device=image.device)
        factor = batch.scale_factors[0]
        boxes = target["boxes"].to(factor) * factor
        boxes = torch.stack([boxes[:, 0::2].clamp(0, new_w), boxes[:, 1::2].clamp(0, new_h)], dim=2).view(-1, 4)
        out = dict(target, boxes=boxes)
        if "masks" in target:
            out["masks"] = resize_masks(target["masks"], new_h, new_w).to(image.device)
        return batch, out


def check_target(target: dict[str, Tensor], image_size: tuple[int, int], index: int = 0) -> None:
    """ValueError naming the image and the problem where a training target cannot be trained on: ``boxes``
    ``(n, 4)`` finite xyxy with positive width and height (mmdet's COCO loader drops the others), ``labels``
    ``(n,)`` integers >= 1 (0 is the background), ``masks`` ``(n, H, W)`` at the image's size."""
    where = f"target {index}"
    missing = {"boxes", "labels", "masks"} - set(target)
    if missing:
        raise ValueError(f"{where}: missing {sorted(missing)} (Mask R-CNN training needs boxes, labels and masks)")
    boxes, labels, masks = target["boxes"], target["labels"], target["masks"]
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{where}: boxes must be (n, 4) xyxy, got shape {tuple(boxes.shape)}")
    good = torch.isfinite(boxes).all(1) & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    if not good.all():
        raise ValueError(f"{where}: boxes {(~good).nonzero().view(-1).tolist()} are not finite xyxy with x2 > x1 "
                         "and y2 > y1 (drop empty boxes; xywh given?)")
    if labels.shape != (len(boxes),) or labels.is_floating_point() or (labels < 1).any():
        raise ValueError(f"{where}: labels must be {len(boxes)} integers >= 1 (1-based, 0 is the background), "
                         f"got {labels.tolist()[:10]} ({labels.dtype})")
    if tuple(masks.shape) != (len(boxes), *image_size):
        raise ValueError(f"{where}: masks must be (n, H, W) = {(len(boxes), *image_size)}, got {tuple(masks.shape)}")


def resize_masks(masks: Tensor, height: int, width: int) -> Tensor:
    """``(n, H, W)`` -> ``(n, height, width)`` uint8 by cv2 nearest neighbour, one mask at a time."""
    arrays = masks.to(torch.uint8).cpu().numpy()
    resized = [cv2.resize(m, (width, height), interpolation=cv2.INTER_NEAREST) for m in arrays]
    return torch.from_numpy(np.stack(resized)) if resized else torch.zeros((0, height, width), dtype=torch.uint8)


def paste_masks(probs: Tensor, boxes: Tensor, image_size: Sequence[int], threshold: float = 0.5) -> Tensor:
    """Binary masks ``(n, H, W)``: each ``(28, 28)`` probability map resampled into its box.

    mmdet's CPU path (``fcn_mask_head.py:169-300``): one box at a time, only over the pixels of
    ``[floor(x0) - 1, ceil(x1) + 1)`` x ``[floor(y0) - 1, ceil(y1) + 1)``, never a full-size float map.
    """
    height, width = int(image_size[0]), int(image_size[1])
    out = torch.zeros((len(probs), height, width), dtype=torch.bool, device=probs.device)
    for i, (prob, box) in enumerate(zip(probs, boxes)):
        pasted, (rows, cols) = _paste_one(prob, box, height, width)
        out[i, rows, cols] = pasted >= threshold
    return out


def _paste_one(prob: Tensor, box: Tensor, height: int, width: int) -> tuple[Tensor, tuple[slice, slice]]:
    """``_do_paste_mask`` (``fcn_mask_head.py:306-380``, ``skip_empty=True``) for one box."""
    x0_int, y0_int = (box.floor()[:2] - 1).clamp(min=0).to(torch.int32).tolist()
    x1_int = int(torch.clamp(box[2].ceil() + 1, max=width).to(torch.int32))
    y1_int = int(torch.clamp(box[3].ceil() + 1, max=height).to(torch.int32))
    x0, y0, x1, y1 = box
    # pixel centres in the box's [-1, 1] frame; a zero-size box divides by 0: inf -> 0 as the authors do
    img_y = (torch.arange(y0_int, y1_int, device=box.device, dtype=torch.float32) + 0.5 - y0) / (y1 - y0) * 2 - 1
    img_x = (torch.arange(x0_int, x1_int, device=box.device, dtype=torch.float32) + 0.5 - x0) / (x1 - x0) * 2 - 1
    img_y = torch.where(torch.isinf(img_y), 0, img_y)
    img_x = torch.where(torch.isinf(img_x), 0, img_x)
    grid = torch.stack([img_x[None, :].expand(len(img_y), -1), img_y[:, None].expand(-1, len(img_x))], dim=-1)
    pasted = F.grid_sample(prob[None, None].float(), grid[None], align_corners=False)[0, 0]
    return pasted, (slice(y0_int, y1_int), slice(x0_int, x1_int))
