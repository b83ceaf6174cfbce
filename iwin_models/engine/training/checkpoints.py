"""The checkpoint state of a training run: :class:`RunCheckpoints` (resume from one, what one holds, writing it,
and the random states a resumed run restores when its loop starts). The file format is :mod:`.state`'s."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from ..distributed import gather
from .config import TrainConfig
from .journal import Journal
from .sampler import InfiniteSampler
from .state import CHECKPOINT_FORMAT, link_or_copy, load_checkpoint, rng_state, save_checkpoint, set_rng_state

__all__ = ["RunCheckpoints"]

# what a resumed run compares with its checkpoint's run (a difference is warned about, not refused)
_COMPARED = ("iters", "batch_size", "lr", "seed", "crop_size")


def _plain(value):
    """Tuples as lists, in dicts and lists too: values as a checkpoint stores (and compares) them."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value


class RunCheckpoints:
    """The checkpoints of one run: the model and its optimiser, scheduler and GradScaler, the config and
    ``run_args`` (stored in every checkpoint and compared on resume), on ``rank`` of ``world_size`` processes;
    messages go to ``journal``."""

    def __init__(self, model: torch.nn.Module, optimizer, scheduler, scaler, config: TrainConfig, run_args: dict,
                 journal: Journal, rank: int, world_size: int):
        self.model, self.optimizer, self.scheduler, self.scaler = model, optimizer, scheduler, scaler
        self.config, self.run_args, self.journal = config, run_args, journal
        self.rank, self.world_size = rank, world_size
        self.resumed_from: Path | None = None
        self._pending_rng: list | None = None

    def resume(self, path: str | os.PathLike) -> int:
        """Continue from a training checkpoint: model, optimiser, scheduler and scaler now, the random states
        at :meth:`restore_rng` (nothing between draws from them then); returns the checkpoint's iteration."""
        checkpoint = load_checkpoint(path)
        self.model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        if checkpoint.get("scaler"):
            self.scaler.load_state_dict(checkpoint["scaler"])
        iteration = int(checkpoint["iteration"])
        self._pending_rng = checkpoint.get("rng")
        self.resumed_from = Path(path)
        saved, now = checkpoint.get("args", {}), self.args()
        changed = [k for k in _COMPARED if k in saved and k in now and _plain(saved[k]) != _plain(now[k])]
        if changed:
            self.journal.log(f"warning: resuming with other {', '.join(changed)} than the checkpoint's run "
                             f"({', '.join(f'{k}={saved[k]}' for k in changed)}); the result will differ from an "
                             f"unbroken run")
        self.journal.log(f"resumed from {path} at iteration {iteration}")
        return iteration

    def restore_rng(self) -> None:
        """Set the random states of the checkpoint resumed from (once; nothing without a resume)."""
        states, self._pending_rng = self._pending_rng, None
        if states is None:
            return
        if len(states) == self.world_size:
            set_rng_state(states[self.rank])
        else:
            self.journal.log(f"warning: the checkpoint was made by {len(states)} processes, this run has "
                             f"{self.world_size}: random states not restored")

    def args(self) -> dict:
        """What a checkpoint records of the run: ``run_args`` and the config."""
        return {**_plain(self.run_args), **self.config.to_dict()}

    def state_dict(self, iteration: int, sampler: InfiniteSampler | None, rng_states: list) -> dict:
        """The checkpoint of the run at ``iteration`` (``rng_states``: every process's, in rank order)."""
        return dict(
            format=CHECKPOINT_FORMAT, iteration=iteration, model=self.model.state_dict(),
            optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict(),
            scaler=self.scaler.state_dict(), rng=rng_states,
            sampler=sampler.position(iteration * self.config.batch_size) if sampler else None,
            world_size=self.world_size, args=self.args())

    def write(self, iteration: int, sampler: InfiniteSampler | None) -> Path | None:
        """Write work_dir/latest.pth atomically (and iter_N.pth with ``keep_checkpoints``) on rank 0;
        every process must call it (their random states are gathered)."""
        states = gather(rng_state())
        if self.rank != 0:
            return None
        work_dir = self.journal.work_dir
        self.journal.runlog.flush()  # first: the history up to this iteration is on disk when the checkpoint is
        latest = save_checkpoint(self.state_dict(iteration, sampler, states), work_dir / "latest.pth")
        keep = self.config.keep_checkpoints
        if keep:
            link_or_copy(latest, work_dir / f"iter_{iteration}.pth")
            kept = sorted(work_dir.glob("iter_*.pth"), key=lambda p: int(p.stem.split("_")[1]))
            for old in kept[:-keep]:
                old.unlink(missing_ok=True)
        self.journal.log(f"checkpoint: iteration {iteration} -> {latest}")
        self.journal.restart_clock(iteration)
        return latest
