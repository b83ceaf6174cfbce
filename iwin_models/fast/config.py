"""Global switches: which CPU fast twins ``optimize_for_cpu`` installs.

Like ``timm.layers.config`` (``use_fused_attn``/``set_fused_attn``, ``TIMM_FUSED_ATTN``): each fast path has
a name, a global switch and an environment variable read once at import. ``IWIN_FAST_PATH=0`` turns them
all off (``segment()``, the ``iwin-seg`` commands and the benchmarks then run the plain model);
``IWIN_<NAME>=0`` (e.g. ``IWIN_ONEDNN_LINEAR=0``) one of them. The switches are read when
:func:`iwin_models.optimize_for_cpu` converts a model, never by a forward:

* ``onednn_linear``: float32 CPU linear layers through oneDNN, ~2x MKL's rate on EPYC (``layers/linear.py``);
* ``patch_matmul``: the 4x4 stride-4 patch convolution as one matmul on the patches (``layers/iwin_cpu.py``);
* ``skip_padding``: windows filled without building the padded map, ``qkv`` on the real tokens where the
  padding is a large share, ``proj`` after the padding is dropped (``layers/interleave.py``);
* ``chunked``: inference attention and MLP a few MB at a time, no big fresh buffers (``layers/iwin_cpu.py``);
* ``inplace``: in-place GELU and residual adds written into fresh temporaries (``layers/iwin_cpu.py``);
* ``channels_last_decoder``: the UPerNet decoder run channels-last end to end (``layers/upernet_cpu.py``).

Each is exact up to float32 round-off.
"""
from __future__ import annotations

import contextlib
import os

__all__ = ["FAST_PATHS", "use_fast_path", "set_fast_path", "fast_paths", "enabled_fast_paths"]

FAST_PATHS = ("onednn_linear", "patch_matmul", "skip_padding", "chunked", "inplace", "channels_last_decoder")


def _env_flag(name: str) -> bool:
    value = os.environ.get(name)
    return value is None or value.strip().lower() not in ("0", "false", "no", "off")


_ALL = _env_flag("IWIN_FAST_PATH")
_ENABLED = {name: _env_flag(f"IWIN_{name.upper()}") for name in FAST_PATHS}


def _known(name: str) -> str:
    if name not in _ENABLED:
        raise ValueError(f"unknown fast path {name!r}; known: {', '.join(FAST_PATHS)}")
    return name


def use_fast_path(name: str | None = None) -> bool:
    """Whether the fast path ``name`` (or, with None, the fast paths as a whole) is switched on."""
    return _ALL if name is None else _ALL and _ENABLED[_known(name)]


def set_fast_path(enabled: bool, name: str | None = None) -> bool:
    """Switch the fast path ``name`` (None: all of them) on or off; returns the previous setting."""
    global _ALL
    if name is None:
        previous, _ALL = _ALL, bool(enabled)
    else:
        previous, _ENABLED[_known(name)] = _ENABLED[_known(name)], bool(enabled)
    return previous


@contextlib.contextmanager
def fast_paths(enabled: bool, *names: str):
    """Within the block, the named fast paths (all when none are named) are on or off."""
    previous = {n: set_fast_path(enabled, n) for n in names} if names else {None: set_fast_path(enabled)}
    try:
        yield
    finally:
        for n, value in previous.items():
            set_fast_path(value, n)


def enabled_fast_paths(exclude=()) -> frozenset[str]:
    """The fast paths switched on now, less ``exclude`` (what a conversion installs)."""
    for name in exclude:
        _known(name)
    return frozenset(n for n in FAST_PATHS if use_fast_path(n) and n not in exclude)
