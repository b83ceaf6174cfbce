"""What a training run says and its clock: :class:`Journal` (messages to the terminal and ``train.log``, the
scalars of a log step with their throughput, and :class:`~.runlog.RunLog`, on rank 0)."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from .runlog import RunLog
from .step import StepResult

__all__ = ["Journal"]


def _stamped(message: str) -> str:
    return f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n"


class Journal:
    """The messages and scalars of a run in ``work_dir``: :meth:`log` prints a message and appends it to
    ``train.log``, :meth:`record` a log step's scalars (the progress bar, ``train.log`` and the run log), on rank 0
    only. The throughput is images (``images_per_step`` an iteration, every process's) per second of training:
    the clock restarts (:meth:`restart_clock`) after a validation or a checkpoint. Constructing one touches no file.
    """

    def __init__(self, work_dir: Path, rank: int, images_per_step: int, iters: int):
        self.work_dir, self.rank = work_dir, rank
        self.images_per_step, self.iters = images_per_step, iters
        self.log_file = work_dir / "train.log" if rank == 0 else None
        self.runlog = RunLog(work_dir, enabled=rank == 0, note=self.log)  # opened by the Trainer's fit()
        self._clock = (time.perf_counter(), 0)  # (time, iteration) the throughput is measured from

    def log(self, message: str) -> None:
        """Print ``message`` (and append it to work_dir/train.log) on rank 0."""
        if self.rank != 0:
            return
        from tqdm import tqdm

        self.work_dir.mkdir(parents=True, exist_ok=True)
        tqdm.write(message, file=sys.stdout)
        sys.stdout.flush()
        with open(self.log_file, "a", encoding="utf-8") as f:
            f.write(_stamped(message))

    def restart_clock(self, iteration: int) -> None:
        """Throughput counts training only: the clock restarts after a validation or a checkpoint."""
        self._clock = (time.perf_counter(), iteration)

    def scalars(self, step: StepResult, iteration: int) -> dict[str, float]:
        """The scalars of a log step: one device sync for all (the step's tensors are read together)."""
        if step.aux_loss is None:
            scalars = {"train/loss": step.loss.item()}
        else:
            loss, aux = torch.stack([step.loss.detach().float(), step.aux_loss.float()]).tolist()
            scalars = {"train/loss": loss, "train/decode_loss": loss - aux, "train/aux_loss": aux}
        (then, since), now = self._clock, time.perf_counter()  # now: after the sync, the steps are done
        self._clock = (now, iteration)
        images = (iteration - since) * self.images_per_step
        return {**scalars, "train/lr": step.lr, "train/throughput": images / max(now - then, 1e-9)}

    def validation(self, iteration: int, metrics: dict) -> None:
        """A validation's mIoU in the log, its figures in the run log (redrawn and flushed); the clock restarts."""
        self.log(f"validation at iteration {iteration}: mIoU {metrics['mIoU']:.4f}")
        self.runlog.add(iteration, {f"val/{k}": metrics[k] for k in ("mIoU", "mAcc", "aAcc")})
        self.runlog.draw()
        self.runlog.flush()
        self.restart_clock(iteration)

    def record(self, iteration: int, scalars: dict[str, float], bar) -> None:
        """A log step's scalars: loss and lr on the progress bar and in train.log, all in the run log."""
        value, lr = scalars["train/loss"], scalars["train/lr"]
        bar.set_postfix(loss=f"{value:.4f}", lr=f"{lr:.3g}")
        if self.log_file is not None:  # the file only: a line per step would flood the terminal
            with open(self.log_file, "a", encoding="utf-8") as f:
                f.write(_stamped(f"iter {iteration}/{self.iters} loss {value:.4f} lr {lr:.6g}"))
        self.runlog.add(iteration, scalars)
