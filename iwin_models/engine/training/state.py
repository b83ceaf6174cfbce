"""What a training checkpoint holds and how it is written: atomic, durable ``torch.save``, every random state,
and the format tag a resumed run checks."""
from __future__ import annotations

import os
import random
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch

from ...io.checkpoint import CheckpointError, read_checkpoint
from ...io.files import write_atomic

__all__ = ["CHECKPOINT_FORMAT", "save_checkpoint", "load_checkpoint", "link_or_copy", "rng_state", "set_rng_state"]

CHECKPOINT_FORMAT = "iwin-seg-train/1"


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


def link_or_copy(src: Path, dst: Path) -> None:
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
    checkpoint = read_checkpoint(path)
    if checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not an iwin-seg training checkpoint (no format {CHECKPOINT_FORMAT!r}); "
                              f"to start from model weights use --model FOLDER or --weights FILE")
    return checkpoint


def rng_state() -> dict:
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


def set_rng_state(state: dict) -> None:
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
