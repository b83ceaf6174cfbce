"""Train or fine-tune an Iwin UPerNet with the authors' ADE20K recipe.

The library takes built objects, after an explicit set-up of the process::

    device = setup(config)            # process group under torchrun, determinism flags, seeds (global state)
    model = ...                       # built after setup(): the same initial weights in every process
    Trainer(model, train_set, config, val_set).fit()

:mod:`.config` (what the trainer reads, and ``setup``), :mod:`.optim` (AdamW and the schedule), :mod:`.sampler`
(the resumable, seeded data order), :mod:`.step` (loss and one step), :mod:`.state` (the checkpoint file and random
states), :mod:`.checkpoints` (a run's checkpoints: resume, write, restore the random states), :mod:`.runlog`
(TensorBoard, the scalar history, ``curves.png``), :mod:`.journal` (a run's messages, scalars and throughput clock),
:mod:`.trainer` (the loop, the step, validation).
"""
from .config import TrainConfig, seed_everything, set_determinism, setup
from .optim import build_optimizer, build_scheduler, lr_factor, param_groups
from .sampler import InfiniteSampler, SeededDataset
from .state import CHECKPOINT_FORMAT, load_checkpoint, save_checkpoint
from .step import StepResult, segmentation_loss, segmentation_losses, train_step
from .trainer import Trainer, train

__all__ = [
    "TrainConfig", "setup", "seed_everything", "set_determinism", "param_groups", "build_optimizer", "lr_factor",
    "build_scheduler", "InfiniteSampler", "SeededDataset", "CHECKPOINT_FORMAT", "save_checkpoint", "load_checkpoint",
    "segmentation_loss", "segmentation_losses", "train_step", "Trainer", "StepResult", "train",
]
