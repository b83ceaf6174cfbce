"""The one atomic writer (``iwin_models.io.files.write_atomic``): content, open()'s mode, failures that leave the
old file, fsync of the file and its folder when durable, no umask change at import, the old import path."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

from iwin_models.io import files
from iwin_models.io.files import new_file_mode, write_atomic


def _umask_now() -> int:
    """The umask, read from /proc (without setting it), or by setting it and putting it back."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("Umask:"):
            return int(line.split()[1], 8)
    raise AssertionError("no Umask line in /proc/self/status")


@pytest.fixture
def umask():
    """Set the umask for a test; the previous one is put back."""
    saved = []

    def set_umask(value: int) -> None:
        saved.append(os.umask(value))

    yield set_umask
    if saved:
        os.umask(saved[0])


def _write_text(text: str):
    return lambda tmp: Path(tmp).write_text(text)


def test_writes_the_content_and_returns_the_path(tmp_path):
    out = write_atomic(tmp_path / "a.txt", _write_text("first"))
    assert out == tmp_path / "a.txt" and out.read_text() == "first"
    assert write_atomic(str(out), _write_text("second")).read_text() == "second"  # replaces; str paths too
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the umask from /proc (Linux)")
@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_new_files_get_the_mode_open_gives(tmp_path, umask, mask):
    umask(mask)
    plain = tmp_path / "plain.txt"
    plain.write_text("x")  # what open() gives
    out = write_atomic(tmp_path / "atomic.txt", _write_text("x"), durable=True)
    assert out.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777 == 0o666 & ~mask
    assert new_file_mode() == 0o666 & ~mask and _umask_now() == mask  # read, not changed


@pytest.mark.parametrize("error", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_a_failed_write_keeps_the_previous_file(tmp_path, error):
    target = write_atomic(tmp_path / "t.bin", lambda tmp: Path(tmp).write_bytes(b"old"))

    def half_then_fail(tmp):
        Path(tmp).write_bytes(b"ne")
        raise error

    with pytest.raises(type(error)):
        write_atomic(target, half_then_fail, durable=True)
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.bin"]  # the temporary file is gone


def test_the_temporary_file_is_beside_the_target_and_empty(tmp_path):
    seen = []

    def look(tmp):
        seen.append((Path(tmp).parent, Path(tmp).name, Path(tmp).stat().st_size))
        Path(tmp).write_text("x")

    write_atomic(tmp_path / "out.png", look)
    (folder, name, size), = seen
    assert folder == tmp_path and name.startswith(".out.png.") and name.endswith(".tmp") and size == 0


@pytest.mark.skipif(not Path("/proc/self/fd").exists(), reason="names fsynced descriptors through /proc (Linux)")
@pytest.mark.parametrize("durable", [True, False])
def test_durable_fsyncs_the_file_then_its_folder(tmp_path, monkeypatch, durable):
    synced = []
    real_fsync = os.fsync

    def recording_fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    write_atomic(tmp_path / "ckpt.pth", _write_text("x"), durable=durable)
    if not durable:
        assert synced == []
        return
    assert len(synced) == 2, synced
    file, folder = map(Path, synced)
    assert file.parent == tmp_path and file.name.startswith(".ckpt.pth.")  # the data, before the rename
    assert folder == tmp_path  # the rename itself


def test_import_changes_no_umask():
    """The package reads no umask at import (it used to set and reset it, racing with other threads)."""
    code = ("import os\n"
            "def refuse(mask): raise AssertionError('os.umask called at import')\n"
            "os.umask = refuse\n"
            "import iwin_models, iwin_models.io.files, iwin_models.io.images, iwin_models.engine.training\n"
            "import iwin_models.interop.export\n"
            "print('imported')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0 and "imported" in proc.stdout, proc.stderr


def test_io_is_a_floor_without_old_names():
    """``iwin_models.io`` is the floor of file reading and writing; the names it once forwarded are not kept."""
    import iwin_models.io as io

    assert io.write_atomic is files.write_atomic
    assert not hasattr(io, "NEW_FILE_MODE") and not hasattr(files, "NEW_FILE_MODE")

