"""What the :class:`~iwin_models.engine.training.Trainer` reads: :class:`TrainConfig`, with the defaults of the
authors' ADE20K recipe, and :func:`setup`, the explicit set-up of a training process."""
from __future__ import annotations

import dataclasses
import os
import random
from pathlib import Path

import numpy as np
import torch

from ...models.weights import ADE20K_PROTOCOL
from ..distributed import init_distributed
from ..precision import PRECISIONS

__all__ = ["TrainConfig", "setup", "seed_everything", "set_determinism"]


def _field(default, help: str, group: str):
    """A :class:`TrainConfig` field; ``help`` and ``group`` describe it (``iwin-seg train`` makes its
    options from them: :mod:`iwin_models.cli.train`)."""
    return dataclasses.field(default=default, metadata=dict(help=help, group=group))


@dataclasses.dataclass
class TrainConfig:
    """What the :class:`Trainer` reads, with the defaults of the authors' recipe.

    What builds the model and the data sets (model name, weights, data folders, crop and resize) is
    the command's (:mod:`iwin_models.cli.train`); the Trainer is given them built.
    """

    grad_checkpointing: bool = _field(False, "recompute the backbone's and the decoder's activations in the "
                                             "backward pass (half the activation memory, slower steps)", "model")
    batch_size: int = _field(2, "images per process", "data")
    workers: int = _field(4, "data loader processes per process", "data")
    iters: int = _field(160000, "iterations", "optimisation")
    lr: float = _field(6e-5, "AdamW learning rate", "optimisation")
    betas: tuple[float, float] = _field((0.9, 0.999), "AdamW betas", "optimisation")
    weight_decay: float = _field(0.01, "AdamW weight decay (none on norms, biases)", "optimisation")
    warmup_iters: int = _field(1500, "linear warm-up iterations", "optimisation")
    warmup_ratio: float = _field(1e-6, "warm-up start ratio", "optimisation")
    power: float = _field(1.0, "poly decay power", "optimisation")
    min_lr: float = _field(0.0, "poly decay end lr", "optimisation")
    aux_weight: float = _field(0.4, "auxiliary loss weight", "optimisation")
    clip_grad: float | None = _field(None, "clip the gradient norm (default: off)", "optimisation")
    precision: str = _field("fp32", "autocast precision: fp32 (none), bf16 or fp16 (fp16 uses a GradScaler)",
                            "optimisation")
    work_dir: str = _field("work_dirs/iwin_upernet", "checkpoints, log, final model, scalars (TensorBoard tf_logs/, "
                                                     "scalars.jsonl, curves.png)", "run")
    checkpoint_interval: int = _field(16000, "write work-dir/latest.pth every N iterations, and at the end "
                                             "(0: only at the end)", "run")
    keep_checkpoints: int = _field(0, "also keep the K most recent iter_N.pth", "run")
    resume: str | None = _field(None, "continue from a checkpoint, its folder, or auto (the default with no "
                                      "value: work-dir/latest.pth if any)", "run")
    val_interval: int = _field(16000, "validate every N iterations and at the end; 0 for never", "run")
    val_scale: tuple[int, int] = _field(ADE20K_PROTOCOL.scale, "validation: images fitted into this size, as the test "
                                                     "protocol", "run")
    seed: int = _field(0, "seed of the data order, the augmentation and (seed + rank) dropout", "run")
    deterministic: bool = _field(False, "deterministic algorithms (bit-identical resumes; slower)", "run")
    device: str | None = _field(None, "cpu, cuda, cuda:1 (default: this process's GPU if any, else the CPU)",
                                "run")
    log_interval: int = _field(50, "log loss, aux loss, lr and throughput every N iterations", "run")
    no_progress: bool = _field(False, "no progress bar", "run")

    def validate(self) -> TrainConfig:
        """Raise ValueError naming the first bad field; return the config."""
        for name in ("iters", "batch_size", "log_interval"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be positive")
        for name in ("workers", "checkpoint_interval", "val_interval", "keep_checkpoints"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name.replace('_', '-')} must not be negative")
        if self.precision not in PRECISIONS:
            raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        return self

    def to_dict(self) -> dict:
        """Plain values (tuples as lists), as a checkpoint stores them."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def resume_path(self) -> Path | None:
        """The checkpoint ``resume`` names (None: start afresh); FileNotFoundError if a named one is missing."""
        if not self.resume:
            return None
        if self.resume == "auto":
            latest = Path(self.work_dir) / "latest.pth"
            return latest if latest.is_file() else None
        path = Path(self.resume)
        if path.is_dir():
            path = path / "latest.pth"
        if not path.is_file():
            raise FileNotFoundError(f"no checkpoint to resume from at {path}")
        return path


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch: call it before building the model, so every process starts alike."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def set_determinism(deterministic: bool, device: torch.device) -> None:
    """Deterministic algorithms (bit-identical resumes, slower), or cuDNN's autotuner."""
    if not deterministic:
        torch.backends.cudnn.benchmark = True
        return
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    # bilinear upsampling has no deterministic CUDA backward: warn there instead of failing
    torch.use_deterministic_algorithms(True, warn_only=device.type == "cuda")
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False



def setup(config: TrainConfig) -> torch.device:
    """The explicit set-up of a training process, before its model is built; returns its device.

    Starts torch.distributed under torchrun (:func:`iwin_models.distributed.init_distributed`), sets the
    global determinism flags (:func:`set_determinism`) and seeds python, numpy and torch with
    ``config.seed`` (:func:`seed_everything`), so that every process builds the same initial weights.
    Everything here is process-wide state, which is why a :class:`Trainer` does none of it.
    """
    device, _ = init_distributed(config.device)
    set_determinism(config.deterministic, device)
    seed_everything(config.seed)
    return device
