"""Train or fine-tune an Iwin UPerNet with the authors' ADE20K recipe: :class:`TrainConfig` and :class:`Trainer`.

Recipe (mmseg config of the official repository; every value is a :class:`TrainConfig` field or, where
it builds the model and data, an option of ``iwin-seg train``): 160k iterations, 2 images per process
(8 GPUs in the paper), AdamW lr 6e-5, betas 0.9/0.999, weight decay 0.01 except on norms, biases and
other 1-D parameters; linear warm-up over 1500 iterations from ratio 1e-6, then poly decay (power 1.0)
to 0; loss = CE(logits) + 0.4 CE(aux logits), ignore index 255; drop_path 0.3; SyncBN in the heads when
several GPUs train together.

Learning rate at iteration ``t`` (0-based; the lr the ``t``-th optimiser step uses), as mmcv's
``PolyLrUpdaterHook`` with linear warm-up::

    poly(t) = (1 - t / iters) ** power * (1 - min_ratio) + min_ratio
    lr(t)   = base_lr * poly(t) * (1 - (1 - t / warmup) * (1 - warmup_ratio))   for t < warmup
    lr(t)   = base_lr * poly(t)                                                  otherwise

Runs are reproducible: the data order comes from a ``torch.Generator`` seeded with ``seed + epoch``,
every sample's augmentation from a seed derived from (seed, rank, sample number), and a checkpoint
holds the model, optimiser, scheduler, GradScaler, iteration and every random state, so a run killed
at any point and resumed from its last checkpoint ends with the same weights as one never stopped
(bit-identical with ``deterministic=True`` on the same hardware).

The library takes built objects, after an explicit set-up of the process::

    device = setup(config)            # process group under torchrun, determinism flags, seeds (global state)
    model = ...                       # built after setup(): the same initial weights in every process
    Trainer(model, train_set, config, val_set).fit()

Constructing a :class:`Trainer` changes no global state; :meth:`Trainer.fit` seeds the dropout /
drop-path generator of each process (``seed + rank``) when the loop starts, and restores a checkpoint's
random states on resume.

What a run writes to its work dir (rank 0): ``latest.pth`` (and ``iter_N.pth``), ``train.log``, ``final/``, and
the scalars of :class:`~.runlog.RunLog`: loss, aux loss, lr and throughput every ``log_interval``,
mIoU/mAcc/aAcc at each validation, as TensorBoard event files (``tf_logs/``, mmcv's place), a history
(``scalars.jsonl``) and ``curves.png``, redrawn after each validation. A resumed run continues them, each
step once.

``iwin-seg train`` (:mod:`iwin_models.apps.cli.train`) builds the model and data sets from names and paths.
Several processes: ``torchrun --nproc_per_node=N -m iwin_models.apps.cli train ...`` (DDP; nccl on GPU,
gloo on CPU).
"""
from __future__ import annotations

import math
import os
import time
import warnings
from pathlib import Path

import torch
import torch.nn as nn

from ..distributed import local_device, world
from ..precision import PRECISIONS
from .checkpoints import RunCheckpoints
from .config import TrainConfig
from .journal import Journal
from .optim import build_optimisation
from .sampler import InfiniteSampler, build_loader
from .step import StepResult, train_step

__all__ = ["Trainer", "train"]


def _check_finite(images: torch.Tensor, iteration: int) -> None:
    """Refuse NaN/Inf images where data enters training (the model does not read values: no per-forward
    sync). Read on the host, before the batch goes to its device; one step of NaN would spoil the weights."""
    if images.device.type == "cpu" and images.is_floating_point() and not torch.isfinite(images).all():
        raise ValueError(f"the input holds NaN or Inf values (the batch of iteration {iteration}); "
                         f"check the data set and its transform")


def _check_set_up(config: TrainConfig) -> None:
    """A clear error (or warning) when the process was not set up for ``config`` (see :func:`setup`)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    started = torch.distributed.is_available() and torch.distributed.is_initialized()
    if world_size > 1 and not started:
        raise RuntimeError(f"this process is one of {world_size} (torchrun) but torch.distributed is not "
                           f"initialised: call iwin_models.engine.training.setup(config) before building the model")
    if config.deterministic and not torch.are_deterministic_algorithms_enabled():
        warnings.warn("deterministic=True but torch's deterministic algorithms are off: call "
                      "iwin_models.engine.training.setup(config) first for bit-identical resumes", stacklevel=3)


def _due(iteration: int, interval: int, iters: int) -> bool:
    """Whether something done every ``interval`` iterations (0: never) is due now; the last iteration always is."""
    return bool(interval) and (iteration % interval == 0 or iteration == iters)


def _placed(model: nn.Module, config: TrainConfig, device: torch.device, world_size: int, journal: Journal):
    """``model`` on ``device``, with gradient checkpointing if asked and SyncBN with several GPUs."""
    if config.grad_checkpointing:
        model.set_grad_checkpointing(True)
    if world_size > 1:
        if device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # batch 1 is fine: world_size > 1 values
        else:
            journal.log("note: SyncBatchNorm needs GPUs; on CPU each process normalises its own batch")
    return model.to(device)


class Trainer:
    """Trains ``model`` (a segmenter: ``model(x, return_aux=True)`` gives logits and aux logits) on
    ``train_set`` (``(image tensor, label tensor)`` samples; random augmentation is seeded per sample)
    with ``config``; validates on ``val_set`` (see :func:`iwin_models.engine.evaluation.evaluate`) if given.

    Call :func:`setup` first (process group, determinism, seeds). Construction changes no global state:
    it moves the model to its device (SyncBN there with several GPUs) and builds the optimiser, scheduler
    and GradScaler. :meth:`fit` resumes (``config.resume``), wraps the model in DDP with several processes
    and runs the loop, writing ``work_dir/final`` at the end. What the run says goes through :attr:`journal`
    (:class:`~.journal.Journal`: ``train.log``, the run log's scalars), its checkpoints through
    :attr:`checkpoints` (:class:`~.checkpoints.RunCheckpoints`: ``work_dir/latest.pth``, with ``run_args``,
    e.g. the command's options that built the model and data, beside the config, compared on resume).
    """

    def __init__(self, model: nn.Module, train_set, config: TrainConfig | None = None, val_set=None, *,
                 run_args: dict | None = None):
        self.config = config = (config or TrainConfig()).validate()
        if getattr(model, "auxiliary_head", True) is None and config.aux_weight:
            raise ValueError("the model has no auxiliary head; train it with --aux-weight 0")
        _check_set_up(config)
        self.train_set, self.val_set = train_set, val_set
        self.device = local_device(config.device)
        self.rank, self.world_size = world()
        self.work_dir = Path(config.work_dir)
        self.journal = Journal(self.work_dir, self.rank, config.batch_size * self.world_size, config.iters)
        self.model = self.net = _placed(model, config, self.device, self.world_size, self.journal)
        self.optimizer, self.scheduler, self.scaler = build_optimisation(self.model, config, self.device.type)
        self.checkpoints = RunCheckpoints(self.model, self.optimizer, self.scheduler, self.scaler, config,
                                          dict(run_args or {}), self.journal, self.rank, self.world_size)
        self.amp_dtype = PRECISIONS[config.precision]
        self.iteration = 0
        self.sampler: InfiniteSampler | None = None

    def checkpoint(self) -> Path | None:
        """Write the run as it stands (:meth:`RunCheckpoints.write <.checkpoints.RunCheckpoints.write>`); every
        process must call it."""
        return self.checkpoints.write(self.iteration, self.sampler)

    # --- the loop

    def build_loader(self) -> torch.utils.data.DataLoader:
        """An endless loader of this process's batches, starting where the run stands."""
        c = self.config
        loader = build_loader(self.train_set, c.batch_size, c.seed, self.rank, self.world_size,
                              start=self.iteration * c.batch_size, workers=c.workers,
                              pin_memory=self.device.type == "cuda")
        self.sampler = loader.sampler
        return loader

    def _wrap(self) -> None:
        if self.world_size > 1 and self.net is self.model:
            # a depthwise kernel (C, 1, 3, 3) has equivalent strides that DDP's buckets report; harmless
            warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
            self.net = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def step(self, images: torch.Tensor, labels: torch.Tensor) -> StepResult:
        """One iteration on a batch: the loss and its weighted aux term (tensors) and the lr it used."""
        c = self.config
        _check_finite(images, self.iteration)
        images = images.to(self.device, non_blocking=True)
        labels = labels.to(self.device, non_blocking=True)
        lr = self.optimizer.param_groups[0]["lr"]
        loss, aux = train_step(self.net, images, labels, self.optimizer, self.scaler, aux_weight=c.aux_weight,
                               clip_grad=c.clip_grad, amp_dtype=self.amp_dtype, return_aux=True)
        self.scheduler.step()
        self.iteration += 1
        return StepResult(loss, lr, aux)

    def validate(self) -> dict | None:
        """mIoU figures on the validation set (None without one); every process must call it."""
        if self.val_set is None:
            return None
        from ..evaluation import evaluate

        c = self.config
        metrics = evaluate(self.model, self.val_set, scale=tuple(c.val_scale), progress=not c.no_progress)
        self.net.train()
        self.journal.validation(self.iteration, metrics)
        return metrics

    def _log_step(self, step: StepResult, bar) -> float:
        scalars = self.journal.scalars(step, self.iteration)
        value = scalars["train/loss"]
        if not math.isfinite(value) and self.amp_dtype is not torch.float16:
            raise FloatingPointError(f"the loss is {value} at iteration {self.iteration}; "
                                     f"lower --lr or use --precision fp32")
        self.journal.record(self.iteration, scalars, bar)
        return value

    def _log_start(self) -> None:
        c, name = self.config, getattr(self.model, "name", type(self.model).__name__)
        classes = getattr(self.model, "num_classes", None) or getattr(self.train_set, "num_classes", None) or "?"
        self.journal.log(f"training {name} for {c.iters} iterations from {self.iteration}: {len(self.train_set)} "
                         f"images, {classes} classes, {self.world_size} process(es) x batch {c.batch_size}, "
                         f"device {self.device}")

    def fit(self) -> dict:
        """Resume (``config.resume``), train to ``config.iters`` (scalars to the run log), write the final model;
        returns ``iterations``, last logged ``loss``, ``seconds``, ``rank`` and ``mIoU`` if validated."""
        c = self.config
        torch.manual_seed(c.seed + self.rank)  # dropout / drop-path differ between processes
        path = c.resume_path()
        if path is not None:
            self.iteration = self.checkpoints.resume(path)  # its random states replace these when the loop starts
        self._wrap()
        batches = iter(self.build_loader())  # the loader's workers start before the run log's writer thread
        start = self.iteration
        with self.journal.runlog.open(start):  # closed (event files flushed) on any exit
            self.checkpoints.restore_rng()  # last: nothing after this draws random numbers before the first step
            result = self._loop(batches)
            self.journal.runlog.draw()  # a run that never validated gets its curves too
        self._finish(finished_already=start == c.iters and self.checkpoints.resumed_from is not None)
        return result

    def _loop(self, batches) -> dict:
        from tqdm import tqdm

        c = self.config
        self.net.train()
        loss_value, metrics = float("nan"), None
        self._log_start()
        bar = tqdm(total=c.iters, initial=self.iteration, disable=self.rank != 0 or c.no_progress, unit="it",
                   dynamic_ncols=True, desc="train")
        began = time.perf_counter()
        self.journal.restart_clock(self.iteration)
        while self.iteration < c.iters:
            step = self.step(*next(batches))
            bar.update(1)
            if _due(self.iteration, c.log_interval, c.iters):
                loss_value = self._log_step(step, bar)
            if _due(self.iteration, c.val_interval, c.iters):
                metrics = self.validate()
            if _due(self.iteration, c.checkpoint_interval, c.iters) or self.iteration == c.iters:
                self.checkpoint()
        bar.close()
        result = dict(iterations=self.iteration, loss=loss_value, seconds=time.perf_counter() - began, rank=self.rank)
        if metrics is not None:
            result["mIoU"] = float(metrics["mIoU"])
        return result

    def _finish(self, finished_already: bool) -> None:
        if finished_already:
            self.journal.log("the checkpoint had finished already; writing the final model")
        if self.rank == 0:
            final = self.work_dir / "final"
            self.model.save_pretrained(final)
            self.journal.log(f"final model -> {final}")
        if self.world_size > 1:
            torch.distributed.barrier()


def train(model: nn.Module, train_set, config: TrainConfig | None = None, val_set=None) -> dict:
    """``Trainer(model, train_set, config, val_set).fit()`` (call :func:`setup` before building ``model``)."""
    return Trainer(model, train_set, config, val_set).fit()
