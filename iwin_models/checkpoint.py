"""Reading checkpoints safely: files, URLs through the torch.hub cache, and strict-fit checks.

:func:`locate_weights` finds the file behind what a user names as weights: a local file, the bare file
name of a download in the torch.hub cache (``$TORCH_HOME/hub/checkpoints``), a URL (downloaded there
once), a folder written by ``save_pretrained`` / ``iwin-seg convert`` (``config.json`` +
``model.safetensors``) or a Hugging Face hub repository (``owner/name``, through the Hugging Face
cache, so it works offline once downloaded); :func:`read_weights` reads it.

Every ``torch.load`` here uses ``weights_only=True``: a weights file never runs code. The authors'
files are plain ``{'model': state_dict}`` (ImageNet) or mmseg 0.x ``{'meta': ..., 'state_dict': ...}``
(ADE20K), both readable that way. Their key names are mapped to ours in :mod:`iwin_models.convert`,
which a model reaches through its ``checkpoint_filter_fn`` (timm's name): this module knows no model
class and imports none, so :func:`load_segmenter_weights` loads into the model it is handed.
"""
from __future__ import annotations

import json
import os
import pickle
import re
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
import torch.nn as nn

__all__ = [
    "CheckpointError", "check_state_dict_fits", "unwrap_state_dict", "read_checkpoint", "cached_path_for_url",
    "load_url", "load_segmenter_weights", "WeightsLocation", "locate_weights", "read_weights", "hub_repo_id",
    "torch_hub_checkpoints",
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


def _download(url: str, progress: bool = True) -> str:
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
    cached = _download(url, progress)
    try:
        return read_checkpoint(cached)
    except CheckpointError as e:
        raise CheckpointError(f"{e}. The cached download {cached} is damaged: delete it and try again.") from e


# --- what a user names as weights -> the file ------------------------------------------------------

_WEIGHTS_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".safetensors")
_REPO_ID = re.compile(r"^(?:hf-hub:|hf_hub:)?([A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)$")
SAFETENSORS_NAME, CONFIG_NAME = "model.safetensors", "config.json"  # what save_pretrained writes


@dataclass(frozen=True)
class WeightsLocation:
    """Where the tensors a user named are: ``file`` (.pth/.safetensors), and for a ``save_pretrained`` folder
    or hub repository also ``folder`` (holding ``config.json``) and ``config`` (its content)."""

    source: str
    file: Path
    folder: Path | None = None
    config: dict | None = None


def hub_repo_id(source: str) -> str | None:
    """``owner/name`` when ``source`` is written as a Hugging Face hub repository (``owner/name`` or
    ``hf-hub:owner/name``, not a weights file name), else None. Local paths are looked at first by
    :func:`locate_weights`: a local folder ``owner/name`` wins."""
    match = _REPO_ID.match(str(source))
    if not match or match[1].endswith(_WEIGHTS_SUFFIXES) or ".." in match[1] or "--" in match[1]:
        return None
    return match[1]


def _is_url(text: str) -> bool:
    """A URL to download (``file://`` is a local path)."""
    return "://" in text and urlparse(text).scheme not in ("", "file")


def _folder(folder: Path, source: str) -> WeightsLocation:
    weights, config_file = folder / SAFETENSORS_NAME, folder / CONFIG_NAME
    if not weights.is_file():
        raise CheckpointError(
            f"{source} is a directory, not a checkpoint file nor a folder written by save_pretrained or "
            f"iwin-seg convert (it has no {SAFETENSORS_NAME})")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8")) if config_file.is_file() else None
    except (ValueError, OSError) as e:
        raise CheckpointError(f"{config_file} is not a readable JSON config ({e})") from e
    if config is not None and not isinstance(config, dict):
        raise CheckpointError(f"{config_file} does not hold a config object (found {type(config).__name__})")
    return WeightsLocation(source, weights, folder, config)


def _hub_error(error: Exception, source: str) -> CheckpointError:
    from huggingface_hub import constants
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError

    where = "no such local file or folder, and as a Hugging Face hub repository it"
    if isinstance(error, LocalEntryNotFoundError):
        reason = "HF_HUB_OFFLINE is set" if constants.is_offline_mode() else "the hub could not be reached"
        return CheckpointError(f"{source}: {where} is not in the cache ({constants.HF_HUB_CACHE}) and {reason}")
    if isinstance(error, RepositoryNotFoundError):
        return CheckpointError(f"{source}: {where} does not exist (or is private: log in with `hf auth login`)")
    if isinstance(error, EntryNotFoundError):
        return CheckpointError(f"{source}: {where} has no {CONFIG_NAME} and {SAFETENSORS_NAME} (not a "
                               f"save_pretrained / iwin-seg convert upload)")
    first = next((line.strip() for line in str(error).splitlines() if line.strip()), "")
    return CheckpointError(f"{source}: {where} could not be loaded ({type(error).__name__}: {first})")


def _hub_repo(repo: str, source: str) -> WeightsLocation:
    """The repository's ``config.json`` and ``model.safetensors`` through the Hugging Face cache
    (``HF_HUB_OFFLINE=1``: the cache only)."""
    from huggingface_hub import hf_hub_download

    try:
        hf_hub_download(repo, CONFIG_NAME)
        weights = Path(hf_hub_download(repo, SAFETENSORS_NAME))
    except Exception as e:  # hub errors: offline and not cached, no such repository or file, network, ...
        raise _hub_error(e, source) from e
    return _folder(weights.parent, source)


def _not_found(source: str, path: Path) -> CheckpointError:
    if path.name != source:  # a path with folders: only that place was meant
        return CheckpointError(f"no such checkpoint file: {path}")
    return CheckpointError(
        f"no such checkpoint file: {source} (looked in the current folder, {Path.cwd()}, and in the torch.hub "
        f"cache, {torch_hub_checkpoints()}, where downloads of the official weights go)")


def locate_weights(source: str | os.PathLike) -> WeightsLocation:
    """The file behind ``source``, looked for in this order: a URL (``http(s)://``, downloaded once into the
    torch.hub cache; ``file://``: a local path), a local folder (written by ``save_pretrained`` or
    ``iwin-seg convert``), a local file, a bare file name in the torch.hub cache (``$TORCH_HOME/hub/checkpoints``,
    where the official downloads land), a Hugging Face hub repository ``owner/name`` (Hugging Face cache).
    A :class:`CheckpointError` says where it looked when it is in none of them."""
    text = os.fspath(source)
    parsed = urlparse(text)
    if _is_url(text):
        return WeightsLocation(text, Path(_download(text)))
    path = Path(parsed.path if parsed.scheme == "file" else text).expanduser()
    if path.is_dir():
        return _folder(path, text)
    if path.is_file():
        return WeightsLocation(text, path)
    cached = torch_hub_checkpoints() / path.name
    if path.name == text and cached.is_file():
        return WeightsLocation(text, cached)
    repo = hub_repo_id(text)
    if repo is not None:
        return _hub_repo(repo, text)
    raise _not_found(text, path)


def _config_meta(config: dict | None) -> dict:
    """The class names and palette a ``save_pretrained`` config keeps, in mmseg's ``meta`` names."""
    config = config or {}
    meta = {"CLASSES": config.get("class_names"), "PALETTE": config.get("palette")}
    return {k: v for k, v in meta.items() if v is not None}


def read_weights(source: str | os.PathLike | WeightsLocation) -> dict:
    """The checkpoint behind ``source`` (anything :func:`locate_weights` finds), read safely: a dict of the
    file's content; for a folder or hub repository the tensors with the config's class names and palette
    as ``meta`` (``CLASSES``, ``PALETTE``)."""
    text = source.source if isinstance(source, WeightsLocation) else os.fspath(source)
    if _is_url(text):
        return load_url(text)  # through the torch.hub cache; names a damaged download
    where = source if isinstance(source, WeightsLocation) else locate_weights(source)
    checkpoint = read_checkpoint(where.file)
    if where.folder is None:
        return checkpoint
    out = {"state_dict": {k: v for k, v in checkpoint.items() if k != "__metadata__"}}
    meta = _config_meta(where.config)
    return {**out, "meta": meta} if meta else out


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



# --- segmenters -------------------------------------------------------------------------------------

_CLASSIFIERS = ("segmentation_head.conv_seg.", "auxiliary_head.conv_seg.")


def _segmenter_state_dict(checkpoint: dict, filter_fn=None) -> tuple[dict, dict]:
    """(state dict, meta) from an mmseg checkpoint, one of ours, or a bare dict; ``filter_fn`` maps the state
    dict to the model's names (``IwinUPerNet.checkpoint_filter_fn``)."""
    checkpoint = dict(checkpoint)
    meta = checkpoint.pop("meta", None) or {}
    metadata = checkpoint.pop("__metadata__", None)  # safetensors
    sd = checkpoint.get("state_dict", checkpoint)
    if not isinstance(sd, dict) or not sd:
        raise CheckpointError("not a segmenter checkpoint: no state_dict")
    if filter_fn is not None:
        sd = filter_fn(sd)
    if metadata:
        meta = {**meta, **metadata}
    return sd, meta


def load_segmenter_weights(model: nn.Module, checkpoint: dict | str) -> nn.Module:
    """Load an official mmseg checkpoint (or one of ours) into an ``IwinUPerNet`` with strict semantics.

    ``checkpoint`` is a loaded dict or anything :func:`read_weights` reads (a path, .pth or .safetensors, the
    bare name of a file in the torch.hub cache, a URL, a ``save_pretrained`` folder, a hub repository
    ``owner/name``). The keys are mapped by the model's own ``checkpoint_filter_fn``. Every tensor must be
    used and every model tensor provided, except the classifiers when the class count differs
    (they are then re-initialised, with a warning) and the auxiliary head when the model has none.
    The checkpoint's class names and palette (``meta``) are kept on the model.
    """
    if isinstance(checkpoint, (str, os.PathLike, WeightsLocation)):
        checkpoint = read_weights(checkpoint)
    sd, meta = _segmenter_state_dict(checkpoint, model.checkpoint_filter_fn)
    if model.auxiliary_head is None:
        sd = {k: v for k, v in sd.items() if not k.startswith("auxiliary_head.")}
    classifier = sd.get("segmentation_head.conv_seg.weight")
    ckpt_classes = classifier.shape[0] if classifier is not None else None
    reinit = ckpt_classes != model.num_classes
    if ckpt_classes is not None and reinit:
        warnings.warn(
            f"the checkpoint has {ckpt_classes} classes and the model {model.num_classes}: its body is loaded and "
            f"the classifiers are re-initialised (train them before use)", stacklevel=2)
        sd = {k: v for k, v in sd.items() if not k.startswith(_CLASSIFIERS)}
        meta = {}
    check_state_dict_fits(sd, model.state_dict(), model.name, skip=_CLASSIFIERS if reinit else (),
                          hint="it was probably made for another Iwin variant (tiny/small/base) or decoder width")
    model.load_state_dict(sd, strict=not reinit)

    names = meta.get("CLASSES")
    if names is not None and len(names) == model.num_classes:
        palette = meta.get("PALETTE")
        model.set_class_info(names, palette if palette is not None else model.palette)
    return model
