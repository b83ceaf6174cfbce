"""The run log (iwin_models.engine.training.runlog): the history file, TensorBoard event files with a purge on resume,
curves.png drawn off pyplot, one note per missing extra, nothing written where it is disabled (ranks > 0).
Training runs that write it are in tests/test_training.py."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from iwin_models.engine.training import runlog
from iwin_models.engine.training.runlog import RunLog, draw_curves, read_history, trim_history


def _rows(steps, offset: float = 0.0) -> list[dict]:
    return [{"step": s, "train/loss": 1.0 / s + offset, "train/aux_loss": 0.3 / s, "train/lr": 1e-4 * s,
             "train/throughput": 8.0} for s in steps]


def _add(log: RunLog, rows: list[dict]) -> None:
    for row in rows:
        log.add(row["step"], {k: v for k, v in row.items() if k != "step"})


def _event_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value)]} as TensorBoard shows them (after its purges)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_trim_history_keeps_the_rows_up_to_a_step_atomically(tmp_path, monkeypatch):
    path = tmp_path / "scalars.jsonl"
    rows = _rows([1, 2, 3, 4])
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 5, "train/lo')  # a torn last row
    assert read_history(path) == rows
    calls = []
    real = runlog.write_atomic
    monkeypatch.setattr(runlog, "write_atomic", lambda p, w, durable=False: calls.append(durable) or real(p, w))
    assert trim_history(path, 2) == rows[:2] and read_history(path) == rows[:2]
    assert calls == [True]  # atomic and durable
    assert path.read_text().endswith("\n") and len(path.read_text().splitlines()) == 2
    trim_history(path, 2)
    assert calls == [True]  # nothing to drop: not rewritten
    assert trim_history(tmp_path / "none.jsonl", 3) == [] and not (tmp_path / "none.jsonl").exists()


def test_a_resumed_log_shows_each_step_once(tmp_path):
    """A run logs steps 1..4 and crashes after its checkpoint of step 2; the resumed run logs 3..4 again:
    the history and TensorBoard (purge_step=3) both show 1..4 once, the resumed values after step 2."""
    first = _rows([1, 2, 3, 4])
    with RunLog(tmp_path).open(0) as log:
        _add(log, first)
    began = int(time.time())
    while int(time.time()) == began:  # event files are read in name order, which starts with the second
        time.sleep(0.02)
    redone = _rows([3, 4], offset=0.5)
    with RunLog(tmp_path).open(2) as log:
        _add(log, redone)
    expected = first[:2] + redone
    assert read_history(tmp_path / "scalars.jsonl") == expected
    assert len(list((tmp_path / "tf_logs").iterdir())) == 2
    scalars = _event_scalars(tmp_path / "tf_logs")
    assert set(scalars) == {"train/loss", "train/aux_loss", "train/lr", "train/throughput"}
    assert [s for s, _ in scalars["train/loss"]] == [1, 2, 3, 4]
    assert [v for _, v in scalars["train/loss"]] == pytest.approx([r["train/loss"] for r in expected])


def test_curves_png_is_drawn_without_pyplot(tmp_path):
    pyplot_before = "matplotlib.pyplot" in sys.modules
    with RunLog(tmp_path).open(0) as log:
        assert log.draw() is None  # nothing logged yet: nothing to draw
        _add(log, _rows([1, 2, 3]))
        log.add(3, {"val/mIoU": 0.25, "val/mAcc": 0.4, "val/aAcc": 0.7})
        assert log.draw() == tmp_path / "curves.png"
        mtime = (tmp_path / "curves.png").stat().st_mtime_ns
        assert log.draw() is None and (tmp_path / "curves.png").stat().st_mtime_ns == mtime  # no new rows
    with Image.open(tmp_path / "curves.png") as image:
        assert image.format == "PNG" and image.size == (1100, 750)
    assert ("matplotlib.pyplot" in sys.modules) == pyplot_before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curves.png", "scalars.jsonl", "tf_logs"]  # no .tmp

    # panels without data say so, rather than failing or drawing empty axes
    draw_curves([{"step": 2, "train/loss": 1.0}], tmp_path / "early.png", title="early")
    with Image.open(tmp_path / "early.png") as image:
        assert image.size == (1100, 750)


def test_without_the_report_extra_one_note_each_and_the_history_still(tmp_path, monkeypatch):
    for module in ("tensorboard", "matplotlib"):
        monkeypatch.setitem(sys.modules, module, None)  # not importable, as where the extra is not installed
    notes = []
    with RunLog(tmp_path, note=notes.append).open(0) as log:
        for step in (1, 2):
            _add(log, _rows([step]))
            log.flush()
            assert log.draw() is None
    assert len(notes) == 2, notes
    assert all("pip install 'iwin-models[report]'" in n and len(n.splitlines()) == 1 for n in notes)
    assert "tensorboard is not installed" in notes[0] and "matplotlib is not installed" in notes[1]
    assert [r["step"] for r in read_history(tmp_path / "scalars.jsonl")] == [1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scalars.jsonl"]


def test_a_failed_drawing_is_a_note_not_the_end_of_the_run(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no fonts")

    monkeypatch.setattr(runlog, "draw_curves", broken)
    notes = []
    with RunLog(tmp_path, note=notes.append).open(0) as log:
        _add(log, _rows([1]))
        assert log.draw() is None
        _add(log, _rows([2]))
        assert log.draw() is None
    assert len(notes) == 1 and "could not draw" in notes[0] and "no fonts" in notes[0]


def test_a_disabled_log_writes_nothing(tmp_path):
    """Every rank but 0 has a disabled log; a log before open() or after close() does nothing either."""
    work = tmp_path / "run"
    for log in (RunLog(work, enabled=False).open(0), RunLog(work)):
        _add(log, _rows([1, 2]))
        log.flush()
        assert log.draw() is None
        log.close()
    assert not work.exists()
