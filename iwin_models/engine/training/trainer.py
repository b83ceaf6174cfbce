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
import sys
import time
import warnings
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn as nn

from ..distributed import gather, local_device, world
from ..precision import PRECISIONS
from .config import TrainConfig
from .optim import build_optimizer, build_scheduler
from .runlog import RunLog
from .sampler import InfiniteSampler, SeededDataset, worker_init
from .state import CHECKPOINT_FORMAT, link_or_copy, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .step import train_step

__all__ = ["Trainer", "StepResult", "train"]


def _log(message: str, log_file: Path | None) -> None:
    from tqdm import tqdm

    tqdm.write(message, file=sys.stdout)
    sys.stdout.flush()
    if log_file is not None:
        with open(log_file, "a", encoding="utf-8") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")


def _plain(value):
    """Tuples as lists, in dicts and lists too: values as a checkpoint stores (and compares) them."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value


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


class StepResult(NamedTuple):
    """What :meth:`Trainer.step` returns: tensors on the device (reading them syncs: only when logging)."""

    loss: torch.Tensor  # the total loss, decode CE + aux_weight * aux CE
    lr: float  # the lr the step used
    aux_loss: torch.Tensor | None  # aux_weight * aux CE, the weighted auxiliary term (None with aux_weight 0)


class Trainer:
    """Trains ``model`` (a segmenter: ``model(x, return_aux=True)`` gives logits and aux logits) on
    ``train_set`` (``(image tensor, label tensor)`` samples; random augmentation is seeded per sample)
    with ``config``; validates on ``val_set`` (see :func:`iwin_models.engine.evaluation.evaluate`) if given.

    Call :func:`setup` first (process group, determinism, seeds). Construction changes no global state:
    it moves the model to its device (SyncBN there with several GPUs) and builds the optimiser, scheduler
    and GradScaler. :meth:`fit` resumes (``config.resume``), wraps the model in DDP with several
    processes and runs the loop, writing ``work_dir/latest.pth`` and ``work_dir/final``, and on rank 0 the
    scalars of the run (:class:`iwin_models.engine.training.runlog.RunLog`: TensorBoard ``tf_logs/``, ``scalars.jsonl``,
    ``curves.png``). ``run_args`` (e.g. the command's options that built the model and data) are stored in
    every checkpoint beside the config and compared on resume.
    """

    def __init__(self, model: nn.Module, train_set, config: TrainConfig | None = None, val_set=None, *,
                 run_args: dict | None = None):
        self.config = config = (config or TrainConfig()).validate()
        if getattr(model, "auxiliary_head", True) is None and config.aux_weight:
            raise ValueError("the model has no auxiliary head; train it with --aux-weight 0")
        _check_set_up(config)
        self.train_set, self.val_set = train_set, val_set
        self.run_args = dict(run_args or {})
        self.device = local_device(config.device)
        self.rank, self.world_size = world()
        self.work_dir = Path(config.work_dir)
        self.log_file = self.work_dir / "train.log" if self.rank == 0 else None
        self.model = self.net = self._prepare_model(model)
        self.optimizer, self.scheduler, self.scaler = self._build_optimisation()
        self.amp_dtype = PRECISIONS[config.precision]
        self.iteration = 0
        self.sampler: InfiniteSampler | None = None
        self._resumed_from: Path | None = None
        self._pending_rng: list | None = None
        self.runlog = RunLog(self.work_dir, enabled=self.rank == 0, note=self.log)  # opened by fit()
        self._clock = (time.perf_counter(), 0)  # (time, iteration) the throughput is measured from

    def log(self, message: str) -> None:
        """Print ``message`` (and append it to work_dir/train.log) on rank 0."""
        if self.rank == 0:
            self.work_dir.mkdir(parents=True, exist_ok=True)
            _log(message, self.log_file)

    def _prepare_model(self, model: nn.Module) -> nn.Module:
        if self.config.grad_checkpointing:
            model.set_grad_checkpointing(True)
        if self.world_size > 1:
            if self.device.type == "cuda":
                model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # batch 1 is fine: world_size > 1 values
            else:
                self.log("note: SyncBatchNorm needs GPUs; on CPU each process normalises its own batch")
        return model.to(self.device)

    def _build_optimisation(self):
        c = self.config
        optimizer = build_optimizer(self.model, c.lr, c.weight_decay, c.betas)
        scheduler = build_scheduler(optimizer, c.iters, c.warmup_iters, c.warmup_ratio, c.power, c.min_lr)
        scaler = torch.amp.GradScaler(self.device.type, enabled=PRECISIONS[c.precision] is torch.float16)
        return optimizer, scheduler, scaler

    # --- resume and checkpoints

    def resume(self, path: str | os.PathLike) -> None:
        """Continue from a training checkpoint: model, optimiser, scheduler, scaler and iteration now,
        the random states when :meth:`fit` starts (nothing between draws from them then)."""
        checkpoint = load_checkpoint(path)
        self.model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        if checkpoint.get("scaler"):
            self.scaler.load_state_dict(checkpoint["scaler"])
        self.iteration = int(checkpoint["iteration"])
        self._pending_rng = checkpoint.get("rng")
        self._resumed_from = Path(path)
        saved = checkpoint.get("args", {})
        now = self._args()
        changed = [k for k in ("iters", "batch_size", "lr", "seed", "crop_size") if k in saved and k in now
                   and _plain(saved[k]) != _plain(now[k])]
        if changed:
            self.log(f"warning: resuming with other {', '.join(changed)} than the checkpoint's run "
                     f"({', '.join(f'{k}={saved[k]}' for k in changed)}); the result will differ from an unbroken run")
        self.log(f"resumed from {path} at iteration {self.iteration}")

    def _restore_rng(self) -> None:
        states, self._pending_rng = self._pending_rng, None
        if states is None:
            return
        if len(states) == self.world_size:
            set_rng_state(states[self.rank])
        else:
            self.log(f"warning: the checkpoint was made by {len(states)} processes, this run has "
                     f"{self.world_size}: random states not restored")

    def state_dict(self, rng_states: list) -> dict:
        """The checkpoint of the run as it stands (``rng_states``: every process's, in rank order)."""
        c = self.config
        return dict(
            format=CHECKPOINT_FORMAT, iteration=self.iteration, model=self.model.state_dict(),
            optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict(),
            scaler=self.scaler.state_dict(), rng=rng_states,
            sampler=self.sampler.position(self.iteration * c.batch_size) if self.sampler else None,
            world_size=self.world_size, args=self._args())

    def _args(self) -> dict:
        """What a checkpoint records of the run: ``run_args`` and the config."""
        return {**_plain(self.run_args), **self.config.to_dict()}

    def checkpoint(self) -> Path | None:
        """Write work_dir/latest.pth atomically (and iter_N.pth with ``keep_checkpoints``) on rank 0;
        every process must call it (their random states are gathered)."""
        states = gather(rng_state())
        if self.rank != 0:
            return None
        self.runlog.flush()  # first: the history up to this iteration is on disk when the checkpoint is
        latest = save_checkpoint(self.state_dict(states), self.work_dir / "latest.pth")
        keep = self.config.keep_checkpoints
        if keep:
            link_or_copy(latest, self.work_dir / f"iter_{self.iteration}.pth")
            kept = sorted(self.work_dir.glob("iter_*.pth"), key=lambda p: int(p.stem.split("_")[1]))
            for old in kept[:-keep]:
                old.unlink(missing_ok=True)
        self.log(f"checkpoint: iteration {self.iteration} -> {latest}")
        self._restart_clock()
        return latest

    # --- the loop

    def build_loader(self) -> torch.utils.data.DataLoader:
        """An endless loader of this process's batches, starting where the run stands."""
        c = self.config
        self.sampler = InfiniteSampler(len(self.train_set), c.seed, self.rank, self.world_size,
                                       start=self.iteration * c.batch_size)
        return torch.utils.data.DataLoader(
            SeededDataset(self.train_set), batch_size=c.batch_size, sampler=self.sampler, num_workers=c.workers,
            pin_memory=self.device.type == "cuda", drop_last=True, worker_init_fn=worker_init,
            persistent_workers=c.workers > 0,
            generator=torch.Generator().manual_seed(c.seed))  # the loader must not draw from the global RNG

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
        self.log(f"validation at iteration {self.iteration}: mIoU {metrics['mIoU']:.4f}")
        self.runlog.add(self.iteration, {f"val/{k}": metrics[k] for k in ("mIoU", "mAcc", "aAcc")})
        self.runlog.draw()
        self.runlog.flush()
        self._restart_clock()
        return metrics

    def _restart_clock(self) -> None:
        """Throughput counts training only: the clock restarts after a validation or a checkpoint."""
        self._clock = (time.perf_counter(), self.iteration)

    def _scalars(self, step: StepResult) -> dict[str, float]:
        """The scalars of a log step: one device sync for all (the step's tensors are read together)."""
        if step.aux_loss is None:
            scalars = {"train/loss": step.loss.item()}
        else:
            loss, aux = torch.stack([step.loss.detach().float(), step.aux_loss.float()]).tolist()
            scalars = {"train/loss": loss, "train/decode_loss": loss - aux, "train/aux_loss": aux}
        (then, since), now = self._clock, time.perf_counter()  # now: after the sync, the steps are done
        self._clock = (now, self.iteration)
        images = (self.iteration - since) * self.config.batch_size * self.world_size
        return {**scalars, "train/lr": step.lr, "train/throughput": images / max(now - then, 1e-9)}

    def _log_step(self, step: StepResult, bar) -> float:
        scalars = self._scalars(step)
        value, lr = scalars["train/loss"], step.lr
        if not math.isfinite(value) and self.amp_dtype is not torch.float16:
            raise FloatingPointError(f"the loss is {value} at iteration {self.iteration}; "
                                     f"lower --lr or use --precision fp32")
        bar.set_postfix(loss=f"{value:.4f}", lr=f"{lr:.3g}")
        if self.log_file is not None:  # the file only: a line per step would flood the terminal
            with open(self.log_file, "a", encoding="utf-8") as f:
                f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} iter {self.iteration}/{self.config.iters} "
                        f"loss {value:.4f} lr {lr:.6g}\n")
        self.runlog.add(self.iteration, scalars)
        return value

    def _log_start(self) -> None:
        c, name = self.config, getattr(self.model, "name", type(self.model).__name__)
        classes = getattr(self.model, "num_classes", None) or getattr(self.train_set, "num_classes", None) or "?"
        self.log(f"training {name} for {c.iters} iterations from {self.iteration}: {len(self.train_set)} images, "
                 f"{classes} classes, {self.world_size} process(es) x batch {c.batch_size}, device {self.device}")

    def _due(self, interval: int) -> bool:
        return bool(interval) and (self.iteration % interval == 0 or self.iteration == self.config.iters)

    def fit(self) -> dict:
        """Resume (``config.resume``), train to ``config.iters`` (scalars to the run log), write the final model;
        returns ``iterations``, last logged ``loss``, ``seconds``, ``rank`` and ``mIoU`` if validated."""
        c = self.config
        torch.manual_seed(c.seed + self.rank)  # dropout / drop-path differ between processes
        path = c.resume_path()
        if path is not None:
            self.resume(path)  # its random states replace these when the loop starts
        self._wrap()
        batches = iter(self.build_loader())  # the loader's workers start before the run log's writer thread
        start = self.iteration
        with self.runlog.open(start):  # closed (event files flushed) on any exit
            self._restore_rng()  # last: nothing after this draws random numbers before the first step
            result = self._loop(batches)
            self.runlog.draw()  # a run that never validated gets its curves too
        self._finish(finished_already=start == c.iters and self._resumed_from is not None)
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
        self._restart_clock()
        while self.iteration < c.iters:
            step = self.step(*next(batches))
            bar.update(1)
            if self._due(c.log_interval):
                loss_value = self._log_step(step, bar)
            if self._due(c.val_interval):
                metrics = self.validate()
            if self._due(c.checkpoint_interval) or self.iteration == c.iters:
                self.checkpoint()
        bar.close()
        result = dict(iterations=self.iteration, loss=loss_value, seconds=time.perf_counter() - began, rank=self.rank)
        if metrics is not None:
            result["mIoU"] = float(metrics["mIoU"])
        return result

    def _finish(self, finished_already: bool) -> None:
        if finished_already:
            self.log("the checkpoint had finished already; writing the final model")
        if self.rank == 0:
            final = self.work_dir / "final"
            self.model.save_pretrained(final)
            self.log(f"final model -> {final}")
        if self.world_size > 1:
            torch.distributed.barrier()


def train(model: nn.Module, train_set, config: TrainConfig | None = None, val_set=None) -> dict:
    """``Trainer(model, train_set, config, val_set).fit()`` (call :func:`setup` before building ``model``)."""
    return Trainer(model, train_set, config, val_set).fit()
