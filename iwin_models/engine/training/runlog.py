"""The scalar log of a training run: :class:`RunLog` (TensorBoard event files, a durable history, ``curves.png``).

What a :class:`~iwin_models.engine.training.Trainer` writes to its work dir, on rank 0 only:

- ``tf_logs/events.out.tfevents.*``: TensorBoard scalars (``tensorboard --logdir WORK_DIR``), in mmcv's
  place (``TensorboardLoggerHook`` writes ``work_dir/tf_logs``, which the authors' mmseg runs and their users
  know), kept apart from the checkpoints; a ``--logdir`` above several work dirs shows one run per dir.
- ``scalars.jsonl``: the same scalars, one JSON object a line (``{"step": 120, "train/loss": 0.81, ...}``),
  appended as they come and fsynced at every checkpoint. It is what ``curves.png`` is drawn from: reading
  the event files back would need tensorboard installed, and it survives a missing tensorboard.
- ``curves.png``: loss, lr, throughput and validation panels, redrawn after each validation and at the end.

Steps are iterations done (1 after the first optimiser step), as ``train.log``'s ``iter N/ITERS``. A run that
starts at iteration ``k`` (resumed from a checkpoint of iteration ``k``, or 0 afresh) drops the history rows
after ``k`` and gives TensorBoard ``purge_step=k + 1``: what a crashed run logged after its last checkpoint
is redone by the resumed one, so every step shows once.

tensorboard and matplotlib are the ``report`` extra; without either the run says so in one line and goes on.
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path

from ...extras import install_hint, missing
from ...io.files import fsync, write_atomic

__all__ = ["RunLog", "read_history", "trim_history", "draw_curves", "PANELS", "HISTORY", "TENSORBOARD_DIR",
           "CURVES"]

HISTORY, TENSORBOARD_DIR, CURVES = "scalars.jsonl", "tf_logs", "curves.png"


def read_history(path: str | os.PathLike) -> list[dict]:
    """The rows of a ``scalars.jsonl`` (none if it is absent), in file order. A line that does not parse
    (the torn end of a row a killed process was writing) is skipped."""
    return _parse(Path(path).read_text(encoding="utf-8").splitlines()) if Path(path).is_file() else []


def _parse(lines: list[str]) -> list[dict]:
    rows = []
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int):
            rows.append(row)
    return rows


def _write_rows(rows: list[dict], tmp: str) -> None:
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)


def trim_history(path: str | os.PathLike, last_step: int) -> list[dict]:
    """Keep the rows of ``path`` up to step ``last_step``, rewritten atomically and durably where a line
    goes (a later row, or a torn one); returns the rows kept."""
    path = Path(path)
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    kept = [row for row in _parse(lines) if row["step"] <= last_step]
    if len(kept) != len(lines):
        write_atomic(path, lambda tmp: _write_rows(kept, tmp), durable=True)
    return kept


class RunLog:
    """The scalars of a run in ``work_dir``: TensorBoard, ``scalars.jsonl`` and ``curves.png`` (see the module
    docstring).

    Constructing one touches no file; :meth:`open` (``with log.open(start):``) trims the history to ``start``
    and opens the TensorBoard writer, and leaving the block closes it (on an exception too). Before
    :meth:`open`, after :meth:`close`, and always with ``enabled=False`` (every rank but 0) the other methods
    do nothing. ``note`` takes the one-line notes (a missing extra, a failed drawing), each said once.
    """

    def __init__(self, work_dir: str | os.PathLike, *, enabled: bool = True, note: Callable[[str], None] = print):
        self.work_dir = Path(work_dir)
        self.history, self.curves = self.work_dir / HISTORY, self.work_dir / CURVES
        self.tensorboard_dir = self.work_dir / TENSORBOARD_DIR
        self.enabled, self._note = enabled, note
        self._open, self._writer, self._drawn, self._rows = False, None, 0, 0
        self._noted: set[str] = set()

    def open(self, start: int = 0) -> RunLog:
        """Start logging a run that begins after iteration ``start``; returns ``self``."""
        if not self.enabled:
            return self
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self._rows = len(trim_history(self.history, start))
        self._drawn = 0
        self._writer = self._tensorboard(purge_step=start + 1)
        self._open = True
        return self

    def _tensorboard(self, purge_step: int):
        """A SummaryWriter whose ``purge_step`` hides what an earlier run logged from that step on; None
        (and a note) without tensorboard."""
        if missing("tensorboard"):
            self._say("tensorboard", f"note: no TensorBoard event files (tensorboard is not installed): "
                                     f"{install_hint('report')}")
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:  # installed but broken (e.g. a protobuf it does not accept)
            self._say("tensorboard", f"note: no TensorBoard event files (torch.utils.tensorboard: {e})")
            return None
        return SummaryWriter(log_dir=str(self.tensorboard_dir), purge_step=purge_step)

    def _say(self, key: str, message: str) -> None:
        if key not in self._noted:
            self._noted.add(key)
            self._note(message)

    def add(self, step: int, scalars: Mapping[str, float]) -> None:
        """Log ``scalars`` (tag: value, e.g. ``train/loss``) at ``step``: a history row and TensorBoard."""
        if not self._open:
            return
        row = {"step": int(step), **{tag: float(value) for tag, value in scalars.items()}}
        with open(self.history, "a", encoding="utf-8") as f:  # closed at once: the row is in the file
            f.write(json.dumps(row) + "\n")
        self._rows += 1
        if self._writer is not None:
            for tag, value in row.items():
                if tag != "step":
                    self._writer.add_scalar(tag, value, step)

    def flush(self) -> None:
        """Event files flushed and the history fsynced: what a checkpoint of this step needs to find on resume."""
        if not self._open:
            return
        if self._writer is not None:
            self._writer.flush()
        if self.history.is_file():
            fsync(self.history)

    def draw(self) -> Path | None:
        """Redraw ``curves.png`` from the history (if it has new rows); its path, or None where none was drawn.
        A drawing that fails is a note, not the end of the run."""
        if not self._open or self._drawn == self._rows:
            return None
        if missing("matplotlib"):
            self._say("matplotlib", f"note: no {CURVES} (matplotlib is not installed): {install_hint('report')}")
            return None
        try:
            draw_curves(read_history(self.history), self.curves, title=self.work_dir.name)
        except Exception as e:  # noqa: BLE001  a picture is not worth a 160k-iteration run
            self._say("draw", f"warning: could not draw {self.curves} ({type(e).__name__}: {e}); training goes on")
            return None
        self._drawn = self._rows
        return self.curves

    def close(self) -> None:
        """Flush and close the TensorBoard writer; the log does nothing more until :meth:`open`."""
        if self._writer is not None:
            self._writer.close()
        self._writer, self._open = None, False

    def __enter__(self) -> RunLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --- curves.png -------------------------------------------------------------------------------------

# (panel title, [(tag, label, line style)], y axis from 0); a validation figure is one point per validation:
# markers. Rates and fractions start at 0, so a small wobble does not fill the panel.
PANELS = (
    ("loss", [("train/loss", "total", "-"), ("train/decode_loss", "decode head", "-"),
              ("train/aux_loss", "aux head (weighted)", "-")], False),
    ("learning rate", [("train/lr", "lr", "-")], True),
    ("throughput (images/s, all processes)", [("train/throughput", "images/s", "-")], True),
    ("validation", [("val/mIoU", "mIoU", "o-"), ("val/mAcc", "mAcc", "s--"), ("val/aAcc", "aAcc", "^:")], True),
)


def _series(rows: list[dict], tag: str) -> tuple[list[int], list[float]]:
    points = [(row["step"], row[tag]) for row in rows if tag in row]
    return [s for s, _ in points], [v for _, v in points]


def _draw_panel(ax, rows: list[dict], title: str, lines: list, from_zero: bool) -> None:
    ax.set_title(title, fontsize=10)
    drawn = 0
    for tag, label, style in lines:
        steps, values = _series(rows, tag)
        if steps and any(math.isfinite(v) for v in values):
            ax.plot(steps, values, style, label=label, markersize=4, linewidth=1.2)
            drawn += 1
    if not drawn:
        ax.text(0.5, 0.5, "no data yet", ha="center", va="center", transform=ax.transAxes, color="0.5")
        ax.set_yticks([])
        return
    if from_zero:
        ax.set_ylim(bottom=0)
    if len(lines) > 1:
        ax.legend(fontsize=8, loc="best")
    ax.grid(True, alpha=0.3)


def draw_curves(rows: list[dict], path: str | os.PathLike, *, title: str = "") -> Path:
    """Draw the panels of :data:`PANELS` from history ``rows`` into the PNG ``path`` (written atomically).

    matplotlib's object API on an Agg canvas: no pyplot, no change to the process's backend or figures."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 7.5), dpi=100)
    FigureCanvasAgg(figure)
    # fixed margins: the panels never change, and a layout engine would double the drawing time
    figure.subplots_adjust(left=0.07, right=0.98, bottom=0.08, top=0.92, wspace=0.18, hspace=0.16)
    axes = figure.subplots(2, 2, sharex=True).ravel()
    for ax, (panel, lines, from_zero) in zip(axes, PANELS):
        _draw_panel(ax, rows, panel, lines, from_zero)
    for ax in axes[2:]:
        ax.set_xlabel("iteration")
    last = max((row["step"] for row in rows), default=0)
    axes[0].set_xlim(0, max(last, 1))
    figure.suptitle(f"{title}: iteration {last}" if title else f"iteration {last}", fontsize=11)
    return write_atomic(path, lambda tmp: figure.savefig(tmp, format="png"))
