"""The one atomic writer of the package: :func:`write_atomic`.

Every file the package writes (``iwin-seg predict``'s PNGs, ONNX files, ``torch.export`` programs, training
checkpoints) is written to a temporary file in its folder and renamed over its path, so a killed or failed
write never leaves a truncated file there. The temporary file gets the mode ``open()`` would give it (0o666
less the umask): it is created with ``os.open(..., 0o666)`` and the kernel applies the umask, so nothing
here reads or changes the process's umask.
"""
from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable
from pathlib import Path

__all__ = ["write_atomic", "fsync", "new_file_mode"]


def write_atomic(path: str | os.PathLike, write: Callable[[str], object], *, durable: bool = False) -> Path:
    """``write(temporary path)``, then a rename over ``path``; returns ``path``.

    The temporary file sits in the same folder (a rename across file systems would not be atomic), starts
    empty with ``open()``'s mode, and is removed if ``write`` or the rename fails; ``path`` then keeps its
    previous content. With ``durable`` the file is fsynced before the rename and the folder after it, so the
    new content, not an empty file, is there after a power loss (training checkpoints need it).
    """
    path = Path(path)
    tmp = _new_temporary(path)
    try:
        write(str(tmp))
        if durable:
            fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        with contextlib.suppress(OSError):  # not every platform / file system can open a directory
            fsync(path.parent)
    return path


def _new_temporary(path: Path) -> Path:
    """An empty new file ``.<name>.<random>.tmp`` beside ``path``, with the mode ``open()`` gives."""
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # the kernel applies the umask
            return tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name beside {path}")


def fsync(path: str | os.PathLike) -> None:
    """Flush a file's data, or a folder's entries, to the disk."""
    fd = os.open(path, os.O_RDONLY)  # a file's data, or a folder's entries, reach the disk
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def new_file_mode() -> int:
    """The mode ``open()`` gives a new file now (0o666 less the umask), read without changing the umask
    where the system says it (Linux's /proc/self/status); else the umask is set and put back at once."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask
