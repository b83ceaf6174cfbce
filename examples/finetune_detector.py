"""Fine-tune an Iwin COCO detector on your own classes with a plain PyTorch loop.

    python examples/finetune_detector.py --num-classes 3 --out my_detector          # from the COCO weights
    python examples/finetune_detector.py --tiny --no-pretrained --steps 5           # offline smoke run

The data here is a synthetic set of coloured rectangles (``iwin_models.data.detection.synthetic_rectangles``);
put your own ``(image (3, H, W) uint8, {"boxes": xyxy, "labels": 1-based, "masks": (n, H, W) uint8})`` samples
in its place. The recipe's pieces: the authors' flip + crop augmentation (``DetectionTrainAugment``), the
model's multi-scale resize (``model.transform.train_scales``), AdamW with their weight-decay keys and the step
schedule with warm-up (``iwin_models.engine.detection_train``). ``model(images, targets)`` in train mode returns
the loss dict; ``save_pretrained`` writes a folder that ``create_detector(name, weights=folder)`` reads back.
"""
import argparse
from dataclasses import replace

import torch

from iwin_models import create_detector
from iwin_models.data.detection import DetectionTrainAugment, synthetic_rectangles
from iwin_models.engine.detection_train import (
    build_detection_optimizer,
    build_detection_scheduler,
    detection_train_step,
    recipe_for,
)

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--name", default="iwin_tiny_mask_rcnn_coco_3x")
parser.add_argument("--num-classes", type=int, default=3)
parser.add_argument("--no-pretrained", action="store_true", help="random init (offline)")
parser.add_argument("--tiny", action="store_true", help="a small random model and small images, for a quick run")
parser.add_argument("--steps", type=int, default=200)
parser.add_argument("--batch", type=int, default=2)
parser.add_argument("--out", default="my_detector")
args = parser.parse_args()

torch.manual_seed(0)
mini = dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8), fpn_channels=32, fc_channels=64,
            conv_channels=32) if args.tiny else {}
model = create_detector(args.name, pretrained=not args.no_pretrained, num_classes=args.num_classes, **mini)
recipe = recipe_for(args.name)
recipe = replace(recipe, warmup_iters=min(recipe.warmup_iters, max(args.steps // 5, 1)))  # a short run: short warm-up
model.transform.train_scales = ((160, 128),) if args.tiny else recipe.train_scales
data = synthetic_rectangles(16, num_classes=args.num_classes)
augment = DetectionTrainAugment(flip_ratio=recipe.flip_ratio)
optimizer = build_detection_optimizer(model, recipe)
iters_per_epoch = max(len(data) // args.batch, 1)
scheduler = build_detection_scheduler(optimizer, iters_per_epoch, replace(recipe, milestones=()))

for step in range(args.steps):
    picks = torch.randint(len(data), (args.batch,)).tolist()
    batch = [augment(*data[i]) for i in picks]
    losses = detection_train_step(model, optimizer, [b[0] for b in batch], [b[1] for b in batch])
    scheduler.step()
    if step % 10 == 0 or step == args.steps - 1:
        print(f"step {step + 1}/{args.steps}  loss {losses['loss']:.3f}  lr {optimizer.param_groups[0]['lr']:.2e}")

model.eval()
print("saved to", model.save_pretrained(args.out))
with torch.no_grad():
    found = model([data[0][0]])[0]
print(f"{len(found['boxes'])} detections on the first image; labels {found['labels'][:10].tolist()}")
