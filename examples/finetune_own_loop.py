"""Fine-tune the ADE20K Iwin-T UPerNet on your own classes with a plain PyTorch loop.

    python examples/finetune_own_loop.py --num-classes 4 --out my_segmenter
    python examples/finetune_own_loop.py --weights iwin_tiny_ade20k.pth   # a downloaded checkpoint
    python examples/finetune_own_loop.py --tiny --no-pretrained --steps 5 # offline smoke run

The loop is yours; the recipe's pieces come from ``iwin_models.engine.training``: the seeds (``seed_everything``,
before the model is built), AdamW without weight decay on norms and biases (``build_optimizer``), warm-up
+ poly lr (``build_scheduler``), one step with the auxiliary loss (``train_step``) and an atomic checkpoint
(``save_checkpoint``: a crash while writing leaves the previous one intact). On the CPU the model trains
with its fast twins (``optimize_for_cpu``: the same results to float32 round-off, the same checkpoints).
``iwin-seg train`` runs the whole recipe (resume, DDP, validation).
"""
import argparse
from pathlib import Path

import torch

from iwin_models import IwinUPerNet, iwin_tiny_upernet_ade20k, optimize_for_cpu
from iwin_models.engine.training import build_optimizer, build_scheduler, save_checkpoint, seed_everything, train_step

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--num-classes", type=int, default=4)
parser.add_argument("--weights", help="local ADE20K checkpoint instead of the official download")
parser.add_argument("--no-pretrained", action="store_true", help="random init (offline)")
parser.add_argument("--tiny", action="store_true", help="a small random model, for a quick run")
parser.add_argument("--steps", type=int, default=200)
parser.add_argument("--checkpoint-every", type=int, default=100, metavar="N", help="OUT/training_state.pth")
parser.add_argument("--out", default="my_segmenter")
args = parser.parse_args()
device = "cuda" if torch.cuda.is_available() else "cpu"
seed_everything(0)  # before the model: the same initial weights (and classifiers) every run

if args.tiny:
    model = IwinUPerNet("iwin_tiny", encoder_kwargs=dict(embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8)),
                        decoder_channels=64, aux_channels=32, classes=args.num_classes)
else:  # another class count than 150 keeps the trained body and re-initialises the classifiers (a warning says so)
    model = iwin_tiny_upernet_ade20k(pretrained=not args.no_pretrained, num_classes=args.num_classes,
                                     weights=args.weights)
model.to(device).train()
if device == "cpu":
    model = optimize_for_cpu(model)  # the CPU fast twins; they keep autograd and the state_dict keys


class ToyShapes(torch.utils.data.Dataset):
    """Stand-in data: a bright square of a random class on noise. Yields (normalised image, labels)."""

    def __len__(self):
        return 64

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        image, label = torch.randn(3, 128, 128, generator=g), torch.zeros(128, 128, dtype=torch.long)
        cls = int(torch.randint(1, args.num_classes, (1,), generator=g))
        y, x = torch.randint(0, 64, (2,), generator=g).tolist()
        image[:, y:y + 64, x:x + 64] += cls
        label[y:y + 64, x:x + 64] = cls
        return image, label


dataset = ToyShapes()
# Your data: a folder of images and one label PNG each (class index per pixel, 255 = ignore):
#   from iwin_models.data import FolderSegmentationDataset, build_train_transform
#   dataset = FolderSegmentationDataset("data/images", "data/labels", ["background", "cat", "dog", "bird"],
#                                       transform=build_train_transform(crop_size=512))
loader = torch.utils.data.DataLoader(dataset, batch_size=2, shuffle=True, drop_last=True)
optimizer = build_optimizer(model, lr=6e-5, weight_decay=0.01)
scheduler = build_scheduler(optimizer, iters=args.steps, warmup=max(args.steps // 10, 1))  # recipe: 1500 of 160k
state_file = Path(args.out) / "training_state.pth"

step = 0
while step < args.steps:
    for images, labels in loader:
        loss = train_step(model, images.to(device), labels.to(device), optimizer, aux_weight=0.4)
        scheduler.step()
        step += 1
        print(f"step {step}/{args.steps} loss {loss.item():.4f}")
        if step % args.checkpoint_every == 0 or step == args.steps:  # resume: torch.load(state_file, weights_only=True)
            save_checkpoint(dict(step=step, model=model.state_dict(), optimizer=optimizer.state_dict(),
                                 scheduler=scheduler.state_dict()), state_file)
        if step == args.steps:
            break

model.set_class_info([f"class {i}" for i in range(args.num_classes)], None)  # your names here
model.save_pretrained(args.out)  # reload: IwinUPerNet.from_pretrained(args.out) or smp.from_pretrained(args.out)
print(f"saved to {args.out} (training state: {state_file})")
