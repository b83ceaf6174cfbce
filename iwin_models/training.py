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
the scalars of :class:`iwin_models.runlog.RunLog`: loss, aux loss, lr and throughput every ``log_interval``,
mIoU/mAcc/aAcc at each validation, as TensorBoard event files (``tf_logs/``, mmcv's place), a history
(``scalars.jsonl``) and ``curves.png``, redrawn after each validation. A resumed run continues them, each
step once.

``iwin-seg train`` (:mod:`iwin_models.cli.train`) builds the model and data sets from names and paths.
Several processes: ``torchrun --nproc_per_node=N -m iwin_models.cli train ...`` (DDP; nccl on GPU,
gloo on CPU).
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import random
import shutil
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .ade20k import IGNORE_INDEX
from .distributed import gather, init_distributed, local_device, world
from .files import write_atomic
from .runlog import RunLog
from .weights import ADE20K_PROTOCOL

__all__ = [
    "param_groups", "build_optimizer", "lr_factor", "build_scheduler", "InfiniteSampler", "SeededDataset",
    "save_checkpoint", "load_checkpoint", "segmentation_loss", "segmentation_losses", "train_step", "seed_everything",
    "set_determinism", "setup", "TrainConfig", "Trainer", "StepResult", "train", "PRECISIONS", "CHECKPOINT_FORMAT",
]

CHECKPOINT_FORMAT = "iwin-seg-train/1"
# The one precision table of the package (``--precision`` of predict, eval and train): the autocast dtype,
# None for plain float32. fp16 training adds a GradScaler.
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def __getattr__(name: str):
    if name == "AMP_DTYPES":  # the old table of --amp, whose "none" is now "fp32"
        warnings.warn("iwin_models.training.AMP_DTYPES is deprecated: use PRECISIONS (\"none\" is \"fp32\")",
                      DeprecationWarning, stacklevel=2)
        return {"none": None, **{k: v for k, v in PRECISIONS.items() if v is not None}}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --- optimiser and schedule -----------------------------------------------------------------------

def _no_decay_names(model: nn.Module) -> set[str]:
    """Names a backbone asks to keep free of weight decay (timm's ``no_weight_decay``), in model terms."""
    names = set()
    for prefix, module in model.named_modules():
        fn = getattr(module, "no_weight_decay", None)
        if callable(fn):
            names |= {f"{prefix}.{n}" if prefix else n for n in fn()}
    return names


def param_groups(model: nn.Module, weight_decay: float = 0.01) -> list[dict]:
    """Two AdamW groups: decayed weights, and the rest (norms, biases, any 1-D parameter, position
    tables) with weight decay 0. Frozen parameters are left out. Each group lists its ``param_names``."""
    skip = _no_decay_names(model)
    decay, no_decay = ([], []), ([], [])
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        plain = name.removeprefix("module.")
        free = (p.ndim <= 1 or plain.endswith(".bias") or plain in skip
                or "relative_position_bias_table" in plain or plain.endswith("pos_embed"))
        group = no_decay if free else decay
        group[0].append(p)
        group[1].append(plain)
    return [dict(params=decay[0], param_names=decay[1], weight_decay=weight_decay),
            dict(params=no_decay[0], param_names=no_decay[1], weight_decay=0.0)]


def build_optimizer(model: nn.Module, lr: float = 6e-5, weight_decay: float = 0.01,
                    betas: Sequence[float] = (0.9, 0.999)) -> torch.optim.AdamW:
    """AdamW with :func:`param_groups`."""
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=tuple(betas))


def lr_factor(t: int, iters: int, warmup: int = 1500, warmup_ratio: float = 1e-6, power: float = 1.0,
              min_ratio: float = 0.0) -> float:
    """The multiple of the base lr used at iteration ``t`` (see the module docstring)."""
    poly = (1.0 - min(t, iters) / iters) ** power * (1.0 - min_ratio) + min_ratio
    if t < warmup:
        return poly * (1.0 - (1.0 - t / warmup) * (1.0 - warmup_ratio))
    return poly


def build_scheduler(optimizer, iters: int, warmup: int = 1500, warmup_ratio: float = 1e-6, power: float = 1.0,
                    min_lr: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    """LambdaLR of :func:`lr_factor`; step it once after every optimiser step."""
    if iters < 1:
        raise ValueError(f"iters must be positive, got {iters}")
    base = optimizer.param_groups[0]["lr"]
    min_ratio = min_lr / base if base > 0 else 0.0

    def factor(t: int) -> float:
        return lr_factor(t, iters, warmup, warmup_ratio, power, min_ratio)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# --- data -----------------------------------------------------------------------------------------

def _sample_seed(seed: int, rank: int, n: int) -> int:
    return int(np.random.SeedSequence([seed, rank, n]).generate_state(1, dtype=np.uint32)[0])


class InfiniteSampler(torch.utils.data.Sampler):
    """An endless stream of ``(index, sample_seed)`` for this process.

    Epoch ``e`` is ``torch.randperm`` from a generator seeded with ``seed + e``, padded to a multiple
    of ``world_size`` and dealt out ``rank::world_size`` (as ``DistributedSampler``). ``start`` is the
    number of samples this process already consumed (``iteration * batch_size`` on resume), so the
    stream restarts exactly where it was, whatever the loader had prefetched.
    """

    def __init__(self, size: int, seed: int = 0, rank: int = 0, world_size: int = 1, shuffle: bool = True,
                 start: int = 0):
        if size < 1:
            raise ValueError("the training data set is empty")
        self.size, self.seed, self.rank, self.world_size = size, seed, rank, world_size
        self.shuffle, self.start = shuffle, start
        self.per_rank = math.ceil(size / world_size)

    def position(self, consumed: int) -> dict:
        """Where the stream stands after ``consumed`` samples: ``epoch`` and ``position`` in it."""
        epoch, position = divmod(consumed, self.per_rank)
        return dict(seed=self.seed, epoch=epoch, position=position, consumed=consumed)

    def epoch_order(self, epoch: int) -> list[int]:
        """This process's indices for ``epoch``."""
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + epoch)
            order = torch.randperm(self.size, generator=g).tolist()
        else:
            order = list(range(self.size))
        total = self.per_rank * self.world_size
        order = (order * math.ceil(total / self.size))[:total]
        return order[self.rank::self.world_size]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, position = divmod(self.start, self.per_rank)
        while True:
            order = self.epoch_order(epoch)
            for p in range(position, self.per_rank):
                yield order[p], _sample_seed(self.seed, self.rank, epoch * self.per_rank + p)
            epoch, position = epoch + 1, 0


@contextlib.contextmanager
def _seeded_rng(seed: int):
    """Seed python, numpy and torch (CPU) with ``seed`` inside, and put their states back after."""
    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    random.seed(seed)
    np.random.seed(seed)
    torch.default_generator.manual_seed(seed)  # CPU only: the GPU generators drive dropout, not data
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])


class SeededDataset(torch.utils.data.Dataset):
    """Reads ``(index, seed)`` from :class:`InfiniteSampler` and runs the dataset (and its random
    augmentation, whichever generator it uses) with every global generator seeded by ``seed``: the
    samples do not depend on the worker that loads them, nor on anything before them."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item):
        index, seed = item
        with _seeded_rng(seed):
            return self.dataset[index]


def _worker_init(worker_id: int) -> None:
    torch.set_num_threads(1)  # the samples are seeded one by one (SeededDataset); only keep workers lean


# --- checkpoints ----------------------------------------------------------------------------------

def save_checkpoint(obj: dict, path: str | os.PathLike) -> Path:
    """``torch.save`` atomically and durably (:func:`iwin_models.files.write_atomic`: a temporary file in
    the same folder, fsynced, renamed over ``path``, the folder fsynced). On failure (a full disk) the
    temporary file is removed, ``path`` keeps its previous content, and an ``OSError`` says so."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        return write_atomic(path, lambda tmp: _torch_save(obj, tmp), durable=True)
    except OSError as e:
        raise OSError(e.errno, f"could not write checkpoint {path} ({e.strerror or e}); "
                               f"the previous checkpoint there, if any, is intact") from e


def _torch_save(obj, path: str) -> None:
    with open(path, "wb") as f:
        torch.save(obj, f)


def _link_or_copy(src: Path, dst: Path) -> None:
    """``dst`` becomes a copy of ``src`` atomically: a hard link where the file system allows, else a copy."""
    def link(tmp: str) -> None:
        os.unlink(tmp)  # os.link makes the name itself
        os.link(src, tmp)

    try:
        write_atomic(dst, link, durable=True)
    except OSError:
        write_atomic(dst, lambda tmp: shutil.copyfile(src, tmp), durable=True)


def load_checkpoint(path: str | os.PathLike) -> dict:
    """A training checkpoint, read with ``torch.load(weights_only=True)``."""
    from .checkpoint import CheckpointError, read_checkpoint

    checkpoint = read_checkpoint(path)
    if checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not an iwin-seg training checkpoint (no format {CHECKPOINT_FORMAT!r}); "
                              f"to start from model weights use --model FOLDER or --weights FILE")
    return checkpoint


def _rng_state() -> dict:
    """Every global random state, as tensors and plain containers (``weights_only`` loads them)."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    return dict(
        torch=torch.get_rng_state(),
        cuda=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        numpy=dict(key=torch.from_numpy(np_state[1].astype(np.int64)), pos=int(np_state[2]),
                   has_gauss=int(np_state[3]), cached_gaussian=float(np_state[4])),
        python=[py_state[0], list(py_state[1]), py_state[2]],
    )


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        if len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])
        else:
            warnings.warn("the checkpoint's CUDA random states are for another GPU count; not restored", stacklevel=2)
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))



# --- one step -------------------------------------------------------------------------------------

def segmentation_losses(logits: torch.Tensor, aux_logits: torch.Tensor | None, labels: torch.Tensor,
                        aux_weight: float = 0.4, ignore_index: int = IGNORE_INDEX
                        ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The two terms of :func:`segmentation_loss`: CE(logits), and ``aux_weight`` CE(aux logits) (weighted, as
    mmseg's ``aux.loss_ce``; None with ``aux_weight`` 0), in float32, pixels labelled ``ignore_index`` left out."""
    decode = F.cross_entropy(logits.float(), labels, ignore_index=ignore_index)
    if not aux_weight:
        return decode, None
    return decode, aux_weight * F.cross_entropy(aux_logits.float(), labels, ignore_index=ignore_index)


def segmentation_loss(logits: torch.Tensor, aux_logits: torch.Tensor | None, labels: torch.Tensor,
                      aux_weight: float = 0.4, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """CE(logits) + ``aux_weight`` CE(aux logits), in float32, pixels labelled ``ignore_index`` left out."""
    decode, aux = segmentation_losses(logits, aux_logits, labels, aux_weight, ignore_index)
    return decode if aux is None else decode + aux


def train_step(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, optimizer: torch.optim.Optimizer,
               scaler: torch.amp.GradScaler | None = None, *, aux_weight: float = 0.4,
               clip_grad: float | None = None, amp_dtype: torch.dtype | None = None, return_aux: bool = False
               ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor | None]:
    """One optimiser step of a segmenter (``model(images, return_aux=True)``) on a batch already on its
    device; returns the loss (a tensor: ``.item()`` syncs, so call it only when you log). Step the lr
    scheduler after it. ``scaler``: a GradScaler for fp16 autocast (``amp_dtype``); ``clip_grad``: max norm.
    ``return_aux``: return ``(loss, aux term)``, the weighted auxiliary term of the loss detached (None with
    ``aux_weight`` 0; a tensor too: no sync)."""
    scaler = scaler if scaler is not None else torch.amp.GradScaler(images.device.type, enabled=False)
    autocast = (torch.autocast(device_type=images.device.type, dtype=amp_dtype) if amp_dtype is not None
                else contextlib.nullcontext())
    with autocast:
        logits, aux_logits = model(images, return_aux=True)
    decode, aux = segmentation_losses(logits, aux_logits, labels, aux_weight)
    loss = decode if aux is None else decode + aux
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if clip_grad:
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
    scaler.step(optimizer)
    scaler.update()
    if return_aux:
        return loss, None if aux is None else aux.detach()
    return loss


# --- set-up ---------------------------------------------------------------------------------------

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


def _log(message: str, log_file: Path | None) -> None:
    from tqdm import tqdm

    tqdm.write(message, file=sys.stdout)
    sys.stdout.flush()
    if log_file is not None:
        with open(log_file, "a", encoding="utf-8") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")


# --- configuration --------------------------------------------------------------------------------

def _field(default, help: str, group: str):
    """A :class:`TrainConfig` field; ``help`` and ``group`` describe it (``iwin-seg train`` makes its
    options from them: :mod:`iwin_models.cli.train`)."""
    return dataclasses.field(default=default, metadata=dict(help=help, group=group))


@dataclasses.dataclass
class TrainConfig:
    """What the :class:`Trainer` reads, with the defaults of the authors' recipe.

    What builds the model and the data sets (model name, weights, data folders, crop and resize) is
    the command's (:mod:`iwin_models.cli.train`); the Trainer is given them built. ``amp=`` (the old
    name of ``precision``; ``"none"`` is ``"fp32"``) is still accepted, with a DeprecationWarning.
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
    amp: dataclasses.InitVar[str | None] = None

    def __post_init__(self, amp: str | None) -> None:
        if amp is not None:
            warnings.warn("TrainConfig(amp=...) is deprecated: use precision= (\"none\" is \"fp32\")",
                          DeprecationWarning, stacklevel=3)
            self.precision = "fp32" if amp == "none" else amp

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


# --- the trainer ----------------------------------------------------------------------------------

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
                           f"initialised: call iwin_models.training.setup(config) before building the model")
    if config.deterministic and not torch.are_deterministic_algorithms_enabled():
        warnings.warn("deterministic=True but torch's deterministic algorithms are off: call "
                      "iwin_models.training.setup(config) first for bit-identical resumes", stacklevel=3)


class StepResult(NamedTuple):
    """What :meth:`Trainer.step` returns: tensors on the device (reading them syncs: only when logging)."""

    loss: torch.Tensor  # the total loss, decode CE + aux_weight * aux CE
    lr: float  # the lr the step used
    aux_loss: torch.Tensor | None  # aux_weight * aux CE, the weighted auxiliary term (None with aux_weight 0)


class Trainer:
    """Trains ``model`` (a segmenter: ``model(x, return_aux=True)`` gives logits and aux logits) on
    ``train_set`` (``(image tensor, label tensor)`` samples; random augmentation is seeded per sample)
    with ``config``; validates on ``val_set`` (see :func:`iwin_models.evaluation.evaluate`) if given.

    Call :func:`setup` first (process group, determinism, seeds). Construction changes no global state:
    it moves the model to its device (SyncBN there with several GPUs) and builds the optimiser, scheduler
    and GradScaler. :meth:`fit` resumes (``config.resume``), wraps the model in DDP with several
    processes and runs the loop, writing ``work_dir/latest.pth`` and ``work_dir/final``, and on rank 0 the
    scalars of the run (:class:`iwin_models.runlog.RunLog`: TensorBoard ``tf_logs/``, ``scalars.jsonl``,
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
            _set_rng_state(states[self.rank])
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
        states = gather(_rng_state())
        if self.rank != 0:
            return None
        self.runlog.flush()  # first: the history up to this iteration is on disk when the checkpoint is
        latest = save_checkpoint(self.state_dict(states), self.work_dir / "latest.pth")
        keep = self.config.keep_checkpoints
        if keep:
            _link_or_copy(latest, self.work_dir / f"iter_{self.iteration}.pth")
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
            pin_memory=self.device.type == "cuda", drop_last=True, worker_init_fn=_worker_init,
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
        from .evaluation import evaluate

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
