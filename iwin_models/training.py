"""Train or fine-tune an Iwin UPerNet with the authors' ADE20K recipe; the ``iwin-seg train`` command.

Recipe (mmseg config of the official repository; every value is an option): 160k iterations, 2 images
per process (8 GPUs in the paper), AdamW lr 6e-5, betas 0.9/0.999, weight decay 0.01 except on norms,
biases and other 1-D parameters; linear warm-up over 1500 iterations from ratio 1e-6, then poly decay
(power 1.0) to 0; loss = CE(logits) + 0.4 CE(aux logits), ignore index 255; drop_path 0.3; SyncBN in
the heads when several GPUs train together.

Learning rate at iteration ``t`` (0-based; the lr the ``t``-th optimiser step uses), as mmcv's
``PolyLrUpdaterHook`` with linear warm-up::

    poly(t) = (1 - t / iters) ** power * (1 - min_ratio) + min_ratio
    lr(t)   = base_lr * poly(t) * (1 - (1 - t / warmup) * (1 - warmup_ratio))   for t < warmup
    lr(t)   = base_lr * poly(t)                                                  otherwise

Runs are reproducible: the data order comes from a ``torch.Generator`` seeded with ``seed + epoch``,
every sample's augmentation from a seed derived from (seed, rank, sample number), and a checkpoint
holds the model, optimiser, scheduler, GradScaler, iteration and every random state, so a run killed
at any point and resumed from its last checkpoint ends with the same weights as one never stopped
(bit-identical with ``--deterministic`` on the same hardware).

Several processes: ``torchrun --nproc_per_node=N -m iwin_models.cli train ...`` (DDP; nccl on GPU,
gloo on CPU).
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import random
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "param_groups", "build_optimizer", "lr_factor", "build_scheduler", "InfiniteSampler", "SeededDataset",
    "save_checkpoint", "load_checkpoint", "train", "add_arguments", "run", "main",
]

IGNORE_INDEX = 255
CHECKPOINT_FORMAT = "iwin-seg-train/1"
_AMP = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


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
    """``torch.save`` atomically: a temporary file in the same folder, flushed and fsynced, then
    renamed over ``path``. On failure (a full disk) the temporary file is removed, ``path`` keeps its
    previous content, and an ``OSError`` says so."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise OSError(e.errno, f"could not write checkpoint {path} ({e.strerror or e}); "
                                   f"the previous checkpoint there, if any, is intact") from e
        raise
    _fsync_dir(path.parent)
    return path


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every platform / file system can open a directory
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _link_or_copy(src: Path, dst: Path) -> None:
    """``dst`` becomes a copy of ``src`` atomically (a hard link where the file system allows)."""
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    try:
        os.link(src, tmp)
        os.replace(tmp, dst)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
        save_checkpoint(load_checkpoint(src), dst)


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


# --- distributed ----------------------------------------------------------------------------------

def _init_distributed(device_arg: str | None) -> tuple[int, int, torch.device]:
    from .evaluation import init_distributed

    device, _ = init_distributed(device_arg)
    if torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size(), device
    return 0, 1, device


def _gather(obj, world_size: int) -> list:
    if world_size == 1:
        return [obj]
    out = [None] * world_size
    torch.distributed.all_gather_object(out, obj)
    return out


# --- model and data -------------------------------------------------------------------------------

def build_model(args, num_classes: int, class_names: Sequence[str] | None):
    """The segmenter to train: a registered name (official recipe: ImageNet backbone, drop_path), a
    ``save_pretrained`` folder, or a name with ``--weights`` (a segmenter checkpoint to fine-tune)."""
    from .segmenter import SEGMENTERS, IwinUPerNet, create_segmenter

    if args.model in SEGMENTERS:
        if args.weights:
            encoder_pretrained = False
        elif args.no_pretrained_backbone:
            encoder_pretrained = False
        else:
            encoder_pretrained = args.pretrained or True
        model = create_segmenter(args.model, pretrained=False, num_classes=num_classes, weights=args.weights,
                                 encoder_pretrained=encoder_pretrained, drop_path_rate=args.drop_path)
    elif Path(args.model).is_dir():
        model = IwinUPerNet.from_pretrained(args.model)
        if model.num_classes != num_classes:
            warnings.warn(f"{args.model} has {model.num_classes} classes and the data {num_classes}: "
                          f"the classifiers are re-initialised", stacklevel=2)
            model.reset_classes(num_classes, class_names)
    else:
        raise ValueError(f"unknown model {args.model!r}: choose one of {', '.join(SEGMENTERS)} "
                         f"or a folder written by save_pretrained")
    if class_names is not None:
        model.set_class_info(class_names, model.palette if model.palette and len(model.palette) == num_classes
                             else None)
    if model.auxiliary_head is None and args.aux_weight:
        raise ValueError("the model has no auxiliary head; train it with --aux-weight 0")
    return model


def build_datasets(args):
    """(training set, validation set or None, class names or None)."""
    from .data import ADE20KDataset, FolderSegmentationDataset, build_train_transform, read_class_names

    transform = build_train_transform(crop_size=args.crop_size, scale=tuple(args.scale),
                                      ratio_range=tuple(args.ratio_range))
    if args.data_root:
        if args.images or args.labels:
            raise ValueError("give either --data-root (ADE20K) or --images/--labels (a folder data set), not both")
        train_set = ADE20KDataset(args.data_root, "training", transform)
        val_set = ADE20KDataset(args.data_root, "validation", None) if args.val_interval else None
        return train_set, val_set, None
    if not (args.images and args.labels):
        raise ValueError("no training data: give --data-root ADEChallengeData2016 or --images DIR --labels DIR")
    names = read_class_names(args.class_names) if args.class_names else None
    if names is None:
        if not args.num_classes:
            raise ValueError("a folder data set needs --class-names (file or comma list) or --num-classes")
        names = [f"class {i}" for i in range(args.num_classes)]
    kwargs = dict(ignore_index=IGNORE_INDEX, reduce_zero_label=args.reduce_zero_label)
    train_set = FolderSegmentationDataset(args.images, args.labels, names, transform=transform, **kwargs)
    val_set = None
    if args.val_interval and (args.val_images or args.val_labels):
        if not (args.val_images and args.val_labels):
            raise ValueError("give both --val-images and --val-labels")
        val_set = FolderSegmentationDataset(args.val_images, args.val_labels, names, **kwargs)
    return train_set, val_set, names


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _plain_args(args) -> dict:
    return {k: v if isinstance(v, (str, int, float, bool, type(None))) else list(v) if isinstance(v, (list, tuple))
            else str(v) for k, v in vars(args).items() if not k.startswith("_")}


# --- the loop -------------------------------------------------------------------------------------

def _log(message: str, log_file: Path | None) -> None:
    from tqdm import tqdm

    tqdm.write(message, file=sys.stdout)
    sys.stdout.flush()
    if log_file is not None:
        with open(log_file, "a", encoding="utf-8") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")


def _resume_path(args, work_dir: Path) -> Path | None:
    if not args.resume:
        return None
    if args.resume == "auto":
        latest = work_dir / "latest.pth"
        return latest if latest.is_file() else None
    path = Path(args.resume)
    if path.is_dir():
        path = path / "latest.pth"
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint to resume from at {path}")
    return path


def train(args) -> dict:
    """Run the training ``args`` describe (see :func:`add_arguments`); returns final figures."""
    from tqdm import tqdm

    rank, world_size, device = _init_distributed(args.device)
    work_dir = Path(args.work_dir)
    log_file = work_dir / "train.log" if rank == 0 else None
    if rank == 0:
        work_dir.mkdir(parents=True, exist_ok=True)
    if args.deterministic:
        if device.type == "cuda":
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        # bilinear upsampling has no deterministic CUDA backward: warn there instead of failing
        torch.use_deterministic_algorithms(True, warn_only=device.type == "cuda")
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)  # the same initial weights in every process
    train_set, val_set, class_names = build_datasets(args)
    num_classes = len(class_names) if class_names is not None else args.num_classes
    model = build_model(args, num_classes, class_names)
    if args.grad_checkpointing:
        model.set_grad_checkpointing(True)
    if world_size > 1:
        if device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # batch 1 is fine: world_size > 1 values
        elif rank == 0:
            _log("note: SyncBatchNorm needs GPUs; on CPU each process normalises its own batch", log_file)
    model.to(device)
    torch.manual_seed(args.seed + rank)  # dropout / drop-path differ between processes

    optimizer = build_optimizer(model, args.lr, args.weight_decay, args.betas)
    scheduler = build_scheduler(optimizer, args.iters, args.warmup_iters, args.warmup_ratio, args.power,
                                args.min_lr)
    amp_dtype = _AMP[args.amp]
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype is torch.float16)

    start_iter, rng_states = 0, None
    resume = _resume_path(args, work_dir)
    if resume is not None:
        checkpoint = load_checkpoint(resume)
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        if checkpoint.get("scaler"):
            scaler.load_state_dict(checkpoint["scaler"])
        start_iter = int(checkpoint["iteration"])
        rng_states = checkpoint.get("rng")
        saved = checkpoint.get("args", {})
        changed = [k for k in ("iters", "batch_size", "lr", "seed", "crop_size") if k in saved
                   and saved[k] != getattr(args, k)]
        if changed and rank == 0:
            _log(f"warning: resuming with other {', '.join(changed)} than the checkpoint's run "
                 f"({', '.join(f'{k}={saved[k]}' for k in changed)}); the result will differ from an unbroken run",
                 log_file)
        if rank == 0:
            _log(f"resumed from {resume} at iteration {start_iter}", log_file)
        del checkpoint

    net = model
    if world_size > 1:
        # a depthwise kernel (C, 1, 3, 3) has equivalent strides that DDP's buckets report; harmless
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    sampler = InfiniteSampler(len(train_set), args.seed, rank, world_size, start=start_iter * args.batch_size)
    loader = torch.utils.data.DataLoader(
        SeededDataset(train_set), batch_size=args.batch_size, sampler=sampler, num_workers=args.workers,
        pin_memory=device.type == "cuda", drop_last=True, worker_init_fn=_worker_init,
        persistent_workers=args.workers > 0,
        generator=torch.Generator().manual_seed(args.seed))  # the loader must not draw from the global RNG
    batches = iter(loader)

    if rng_states is not None:  # last: nothing after this draws random numbers before the first step
        if len(rng_states) == world_size:
            _set_rng_state(rng_states[rank])
        elif rank == 0:
            _log(f"warning: the checkpoint was made by {len(rng_states)} processes, this run has {world_size}: "
                 f"random states not restored", log_file)

    def checkpoint_now(iteration: int) -> None:
        states = _gather(_rng_state(), world_size)
        if rank != 0:
            return
        state = dict(
            format=CHECKPOINT_FORMAT, iteration=iteration, model=_unwrap(net).state_dict(),
            optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(), scaler=scaler.state_dict(),
            rng=states, sampler=sampler.position(iteration * args.batch_size), world_size=world_size,
            args=_plain_args(args))
        latest = save_checkpoint(state, work_dir / "latest.pth")
        if args.keep_checkpoints:
            _link_or_copy(latest, work_dir / f"iter_{iteration}.pth")
            kept = sorted(work_dir.glob("iter_*.pth"), key=lambda p: int(p.stem.split("_")[1]))
            for old in kept[:-args.keep_checkpoints]:
                old.unlink(missing_ok=True)
        _log(f"checkpoint: iteration {iteration} -> {latest}", log_file)

    def validate(iteration: int) -> dict | None:
        if val_set is None:
            return None
        from .evaluation import evaluate

        metrics = evaluate(_unwrap(net), val_set, **_eval_kwargs(args))
        net.train()
        if rank == 0:
            _log(f"validation at iteration {iteration}: mIoU {metrics['mIoU']:.4f}", log_file)
        return metrics

    autocast = (torch.autocast(device_type=device.type, dtype=amp_dtype) if amp_dtype is not None
                else contextlib.nullcontext())
    net.train()
    it, loss_value, metrics = start_iter, float("nan"), None
    if rank == 0:
        _log(f"training {_unwrap(net).name} for {args.iters} iterations from {start_iter}: {len(train_set)} images, "
             f"{num_classes} classes, {world_size} process(es) x batch {args.batch_size}, device {device}", log_file)
    bar = tqdm(total=args.iters, initial=start_iter, disable=rank != 0 or args.no_progress, unit="it",
               dynamic_ncols=True, desc="train")
    started = time.perf_counter()
    while it < args.iters:
        images, labels = next(batches)
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        with autocast:
            logits, aux_logits = net(images, return_aux=True)
        loss = F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX)
        if args.aux_weight:
            loss = loss + args.aux_weight * F.cross_entropy(aux_logits.float(), labels, ignore_index=IGNORE_INDEX)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if args.clip_grad:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(net.parameters(), args.clip_grad)
        scaler.step(optimizer)
        scaler.update()
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        it += 1
        bar.update(1)
        if it % args.log_interval == 0 or it == args.iters:
            loss_value = loss.item()
            if not math.isfinite(loss_value) and amp_dtype is not torch.float16:
                raise FloatingPointError(f"the loss is {loss_value} at iteration {it}; lower --lr or use --amp none")
            bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.3g}")
            if rank == 0 and log_file is not None:
                with open(log_file, "a", encoding="utf-8") as f:
                    f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} iter {it}/{args.iters} loss {loss_value:.4f} "
                            f"lr {lr:.6g}\n")
        if args.val_interval and (it % args.val_interval == 0 or it == args.iters):
            metrics = validate(it)
        if (args.checkpoint_interval and it % args.checkpoint_interval == 0) or it == args.iters:
            checkpoint_now(it)
    bar.close()
    if start_iter == args.iters and resume is not None and rank == 0:
        _log("the checkpoint had finished already; writing the final model", log_file)

    result = dict(iterations=it, loss=loss_value, seconds=time.perf_counter() - started, rank=rank)
    if metrics is not None:
        result["mIoU"] = float(metrics["mIoU"])
    if rank == 0:
        final = work_dir / "final"
        _unwrap(net).save_pretrained(final)
        _log(f"final model -> {final}", log_file)
    if world_size > 1:
        torch.distributed.barrier()
    return result


def _eval_kwargs(args) -> dict:
    return dict(scale=tuple(args.val_scale), progress=not args.no_progress)


# --- iwin-seg train -------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    from .segmenter import SEGMENTERS

    g = parser.add_argument_group("model")
    g.add_argument("--model", default="iwin_tiny_upernet_ade20k",
                   help=f"segmenter name ({', '.join(SEGMENTERS)}) or a folder written by save_pretrained "
                        f"(default: %(default)s)")
    g.add_argument("--pretrained", metavar="PATH",
                   help="ImageNet classification checkpoint for the backbone (as the authors' model.pretrained=); "
                        "default: the variant's official in1k weights via timm")
    g.add_argument("--no-pretrained-backbone", action="store_true", help="start the backbone from random init")
    g.add_argument("--weights", metavar="PATH",
                   help="segmenter checkpoint (official .pth, safetensors) to fine-tune instead of the ImageNet start")
    g.add_argument("--num-classes", type=int, default=150, help="classes (default: %(default)s; a folder data set "
                                                                "with --class-names takes their count)")
    g.add_argument("--drop-path", type=float, default=0.3, help="stochastic depth of a named model (%(default)s)")
    g.add_argument("--grad-checkpointing", action="store_true",
                   help="recompute the backbone's and the decoder's activations in the backward pass "
                        "(half the activation memory, slower steps)")

    g = parser.add_argument_group("data")
    g.add_argument("--data-root", metavar="DIR", help="ADEChallengeData2016 folder (images/, annotations/)")
    g.add_argument("--images", metavar="DIR", help="folder data set: images")
    g.add_argument("--labels", metavar="DIR", help="folder data set: label PNGs (class index per pixel)")
    g.add_argument("--class-names", metavar="FILE|LIST", help="file with one name a line (or JSON list), or a "
                                                              "comma-separated list")
    g.add_argument("--reduce-zero-label", action="store_true", help="folder labels: 0 ignored, k -> k-1")
    g.add_argument("--val-images", metavar="DIR", help="folder data set: validation images")
    g.add_argument("--val-labels", metavar="DIR", help="folder data set: validation labels")
    g.add_argument("--crop-size", type=int, default=512, help="training crop (default: %(default)s)")
    g.add_argument("--scale", type=int, nargs=2, default=(2048, 512), metavar=("LONG", "SHORT"),
                   help="training resize scale before the random ratio (default: 2048 512)")
    g.add_argument("--ratio-range", type=float, nargs=2, default=(0.5, 2.0), metavar=("LOW", "HIGH"),
                   help="random resize ratio range (default: 0.5 2.0)")
    g.add_argument("--batch-size", type=int, default=2, help="images per process (default: %(default)s)")
    g.add_argument("--workers", type=int, default=4, help="data loader processes per process (default: %(default)s)")

    g = parser.add_argument_group("optimisation")
    g.add_argument("--iters", type=int, default=160000, help="iterations (default: %(default)s)")
    g.add_argument("--lr", type=float, default=6e-5, help="AdamW learning rate (default: %(default)s)")
    g.add_argument("--betas", type=float, nargs=2, default=(0.9, 0.999), metavar=("B1", "B2"))
    g.add_argument("--weight-decay", type=float, default=0.01, help="(none on norms, biases) (default: %(default)s)")
    g.add_argument("--warmup-iters", type=int, default=1500, help="linear warm-up iterations (default: %(default)s)")
    g.add_argument("--warmup-ratio", type=float, default=1e-6, help="warm-up start ratio (default: %(default)s)")
    g.add_argument("--power", type=float, default=1.0, help="poly decay power (default: %(default)s)")
    g.add_argument("--min-lr", type=float, default=0.0, help="poly decay end lr (default: %(default)s)")
    g.add_argument("--aux-weight", type=float, default=0.4, help="auxiliary loss weight (default: %(default)s)")
    g.add_argument("--clip-grad", type=float, default=None, metavar="NORM", help="clip the gradient norm (off)")
    g.add_argument("--amp", choices=sorted(_AMP), default="none", help="autocast precision (fp16 uses a GradScaler)")

    g = parser.add_argument_group("run")
    g.add_argument("--work-dir", default="work_dirs/iwin_upernet", help="checkpoints, log, final model "
                                                                       "(default: %(default)s)")
    g.add_argument("--checkpoint-interval", type=int, default=16000, metavar="N",
                   help="write work-dir/latest.pth every N iterations, and at the end (default: %(default)s)")
    g.add_argument("--keep-checkpoints", type=int, default=0, metavar="K",
                   help="also keep the K most recent iter_N.pth (default: %(default)s)")
    g.add_argument("--resume", nargs="?", const="auto", metavar="PATH|auto",
                   help="continue from a checkpoint (auto, the default with no value: work-dir/latest.pth if any)")
    g.add_argument("--val-interval", type=int, default=16000, metavar="N",
                   help="validate every N iterations and at the end; 0 for never (default: %(default)s)")
    g.add_argument("--val-scale", type=int, nargs=2, default=(2048, 512), metavar=("LONG", "SHORT"),
                   help="validation: images fitted into this size, as the test protocol (default: 2048 512)")
    g.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    g.add_argument("--deterministic", action="store_true",
                   help="deterministic algorithms (bit-identical resumes; slower)")
    g.add_argument("--device", help="cpu, cuda, cuda:1 (default: this process's GPU if any)")
    g.add_argument("--log-interval", type=int, default=50, metavar="N", help="loss/lr log every N iterations")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> int:
    for name in ("iters", "batch_size", "crop_size", "log_interval"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be positive")
    for name in ("workers", "checkpoint_interval", "val_interval", "keep_checkpoints"):
        if getattr(args, name) < 0:
            raise ValueError(f"--{name.replace('_', '-')} must not be negative")
    try:
        result = train(args)
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    if result["rank"] == 0:
        summary = f"done: {result['iterations']} iterations"
        if math.isfinite(result["loss"]):
            summary += f", last loss {result['loss']:.4f}"
        if "mIoU" in result:
            summary += f", mIoU {result['mIoU']:.4f}"
        print(summary)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``iwin-seg train`` with ``argv`` (default: the command line)."""
    from .cli import main as cli_main

    return cli_main(["train", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
