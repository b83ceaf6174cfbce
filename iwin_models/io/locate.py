"""What a user names as weights -> the file: :func:`locate_weights`, and :func:`read_weights` to read it.

A local file, the bare file name of a download in the torch.hub cache (``$TORCH_HOME/hub/checkpoints``), a URL
(downloaded there once), a folder written by ``save_pretrained`` / ``iwin-seg convert`` (``config.json`` +
``model.safetensors``) or a Hugging Face hub repository (``owner/name``, through the Hugging Face cache, so it
works offline once downloaded).
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from .checkpoint import CheckpointError, download_to_cache, load_url, read_checkpoint, torch_hub_checkpoints

__all__ = ["WeightsLocation", "locate_weights", "read_weights", "hub_repo_id", "SAFETENSORS_NAME", "CONFIG_NAME"]

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
        return WeightsLocation(text, Path(download_to_cache(text)))
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
