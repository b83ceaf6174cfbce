"""Reading checkpoint files safely, the torch.hub cache, and strict-fit checks with readable errors.

Every ``torch.load`` here uses ``weights_only=True``: a weights file never runs code. The authors' files are
plain ``{'model': state_dict}`` (ImageNet), mmseg 0.x / mmdet 2.x ``{'meta': ..., 'state_dict': ...}``
(ADE20K, COCO), all readable that way. Their key names are mapped to ours in :mod:`iwin_models.models.keymaps`;
this module knows no model class. :mod:`iwin_models.io.locate` finds the file behind what a user names.
"""
from __future__ import annotations

import os
import pickle
import re
import zipfile
from pathlib import Path
from urllib.parse import urlparse

import torch

__all__ = [
    "CheckpointError", "check_state_dict_fits", "unwrap_state_dict", "read_checkpoint", "cached_path_for_url",
    "download_to_cache", "load_url", "torch_hub_checkpoints", "explain_load_failure",
]


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read, or does not fit the model it is loaded into."""


def unwrap_state_dict(checkpoint: dict) -> dict[str, torch.Tensor]:
    """The state dict inside the known wrappers (``model``, ``state_dict``), or the dict itself."""
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"expected a checkpoint dict, got {type(checkpoint).__name__}")
    for key in ("model", "state_dict"):
        inner = checkpoint.get(key)
        if isinstance(inner, dict):
            return dict(inner)
    if not checkpoint or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise CheckpointError(
            "not a model checkpoint: expected tensors, or a dict with 'model' or 'state_dict', "
            f"got keys {sorted(checkpoint)[:5]}")
    return dict(checkpoint)


def read_checkpoint(path: str | os.PathLike) -> dict:
    """Load a ``.pth``/``.pt`` (``weights_only=True``) or ``.safetensors`` file with clear errors.

    Returns what the file holds (a dict; for safetensors the tensors, plus ``__metadata__`` when the
    file has metadata).
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory, not a checkpoint file")
    if not path.is_file():
        raise CheckpointError(f"no such checkpoint file: {path}")
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    try:
        checkpoint = _weights_only_load(path)
    except pickle.UnpicklingError as e:
        # torch words every refusal "Weights only load failed"; only a named global means code objects
        refused = re.findall(r"(?:Unsupported global: GLOBAL |unsupported GLOBAL |but got <class ')([\w.]+)", str(e))
        if refused:
            raise CheckpointError(
                f"{path} holds Python objects that a weights-only load refuses to build ({', '.join(refused)}); "
                f"building them could run code. If you trust the file, allow-list those types with "
                f"torch.serialization.add_safe_globals([...])") from e
        reason = next((line for line in str(e).splitlines() if "rror" in line), "unpickling failed")
        raise CheckpointError(f"{path} is not a PyTorch checkpoint ({reason.strip()})") from e
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, IndexError, KeyError) as e:
        # torch raises many types for damaged files (IndexError for some garbage pickles)
        raise CheckpointError(
            f"{path} could not be read as a PyTorch checkpoint; it is probably truncated or corrupt "
            f"({type(e).__name__}: {e})") from e
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{path} does not hold a checkpoint dict (found {type(checkpoint).__name__})")
    return checkpoint


def _numpy_data_types() -> dict[str, object]:
    """numpy's array/scalar reconstructors and dtypes: they rebuild data, never call user code.

    Training frameworks sometimes leave numpy values in a checkpoint's ``meta`` (a palette array, a
    best score); a weights-only load refuses them unless allow-listed. We allow these and nothing else.
    """
    import numpy as np

    core = getattr(np, "_core", None) or np.core
    types = {
        "numpy.core.multiarray._reconstruct": core.multiarray._reconstruct,
        "numpy._core.multiarray._reconstruct": core.multiarray._reconstruct,
        "numpy.core.multiarray.scalar": core.multiarray.scalar,
        "numpy._core.multiarray.scalar": core.multiarray.scalar,
        "numpy.ndarray": np.ndarray,
        "numpy.dtype": np.dtype,
    }
    for name in dir(np.dtypes):
        if name.endswith("DType"):
            types[f"numpy.dtypes.{name}"] = getattr(np.dtypes, name)
    return types


def _weights_only_load(path: Path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        try:
            refused = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except ValueError:  # the scan reads only zip (new-style) files; keep the original refusal
            raise error from None
        allowed = _numpy_data_types()
        if not refused or not all(g in allowed for g in refused):
            raise
        # the dtype classes (numpy.dtypes.*) are not reported by the scan, so allow the whole data-only list
        with torch.serialization.safe_globals(list({id(t): t for t in allowed.values()}.values())):
            return torch.load(path, map_location="cpu", weights_only=True)


def _read_safetensors(path: Path) -> dict:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
            metadata = f.metadata()
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file; it may be truncated ({e})") from e
    if metadata:
        tensors["__metadata__"] = metadata
    return tensors


def torch_hub_checkpoints() -> Path:
    """``$TORCH_HOME/hub/checkpoints``: where torch.hub (and so every official download here) keeps files."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def cached_path_for_url(url: str, model_dir: str | None = None) -> str:
    """Where ``torch.hub.load_state_dict_from_url`` keeps ``url``: ``$TORCH_HOME/hub/checkpoints/<file>``."""
    model_dir = model_dir or str(torch_hub_checkpoints())
    return os.path.join(model_dir, os.path.basename(urlparse(url).path))


def download_to_cache(url: str, progress: bool = True) -> str:
    """The torch.hub cache's copy of ``url``, downloaded once."""
    cached = cached_path_for_url(url)
    if not os.path.exists(cached):
        try:
            os.makedirs(os.path.dirname(cached), exist_ok=True)
            torch.hub.download_url_to_file(url, cached, progress=progress)
        except Exception as e:  # network errors come in many types (URLError, HTTPError, OSError)
            raise CheckpointError(
                f"{url} is not cached and could not be downloaded ({type(e).__name__}: {e}). Without network "
                f"access, put the file at {cached} or pass a local path.") from e
    return cached


def load_url(url: str, progress: bool = True) -> dict:
    """Fetch ``url`` through torch.hub's cache (or read a local path / ``file://`` URL) safely."""
    parsed = urlparse(str(url))
    if parsed.scheme in ("", "file"):
        return read_checkpoint(parsed.path if parsed.scheme else url)
    cached = download_to_cache(url, progress)
    try:
        return read_checkpoint(cached)
    except CheckpointError as e:
        raise CheckpointError(f"{e}. The cached download {cached} is damaged: delete it and try again.") from e


def check_state_dict_fits(state_dict: dict, model_state: dict, model_name: str, hint: str, skip=()) -> None:
    """Strict-load semantics with one readable error: raise :class:`CheckpointError` when a tensor is
    missing, unexpected or of another shape. Keys starting with a prefix in ``skip`` are not checked."""
    missing = [k for k in model_state if k not in state_dict and not k.startswith(tuple(skip))]
    unexpected = [k for k in state_dict if k not in model_state]
    mismatched = [(k, tuple(v.shape), tuple(model_state[k].shape)) for k, v in state_dict.items()
                  if k in model_state and tuple(v.shape) != tuple(model_state[k].shape)
                  and not k.startswith(tuple(skip))]
    if not (missing or unexpected or mismatched):
        return
    lines = [f"checkpoint does not fit {model_name}:"]
    if mismatched:
        k, got, want = mismatched[0]
        lines.append(f"  {len(mismatched)} tensors have other shapes, e.g. {k}: checkpoint {got}, model {want}")
    if missing:
        lines.append(f"  {len(missing)} model tensors are missing from it, e.g. {', '.join(missing[:3])}")
    if unexpected:
        lines.append(f"  {len(unexpected)} of its tensors are not in the model, e.g. {', '.join(unexpected[:3])}")
    lines.append(f"  {hint}")
    raise CheckpointError("\n".join(lines))


def explain_load_failure(name: str, error: Exception, *, file: str | None = None, url: str | None = None,
                         hub: str | None = None) -> str:
    """Which file failed to load as ``name``'s pretrained weights, and what to do about it (timm's own errors do
    not say): a local ``file`` that is missing or unreadable, a cached ``url`` download that is damaged or one
    that could not be made, a Hugging Face ``hub`` repository."""
    reason = f"{type(error).__name__}: {error}"
    if file:
        if not os.path.isfile(file):
            return f"pretrained weights for {name}: no such file {file}"
        return (f"pretrained weights for {name}: {file} is not a readable checkpoint ({reason}); "
                f"expected a PyTorch .pth/.pt or a .safetensors file, possibly truncated")
    if url:
        cached = cached_path_for_url(url)
        if os.path.exists(cached):
            return (f"pretrained weights for {name}: the cached file {cached} could not be read ({reason}). "
                    f"It is probably a truncated or corrupt download: delete it and try again.")
        return (f"pretrained weights for {name} are not cached and could not be downloaded from {url} "
                f"({reason}). Without network access, put the file at {cached} or pass "
                f"pretrained_cfg_overlay=dict(file='/path/to/{os.path.basename(url)}').")
    return f"pretrained weights for {name} could not be loaded from {hub or 'anywhere'}: {reason}"
