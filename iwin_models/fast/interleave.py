"""Interleaved windows without the padded map (switch ``skip_padding``).

The model file pads the map to window multiples, then one reshape + permute makes the windows
(``iwin.interleave_windows``). Here the tokens are copied through that same view straight into the
windows (at most four rectangles) and only the padding is filled, so the padded map is never built;
the inverse copies the real tokens out and drops the padding on the way. Equal to the model file's
functions bit for bit (tests/test_layers.py).
"""
from __future__ import annotations

import torch

__all__ = ["windows_from_map", "map_from_windows", "padding_share"]


def padding_share(H: int, W: int, window_size: int) -> float:
    """Padded tokens per real token when an H x W map is padded to window multiples."""
    return (-(-H // window_size) * -(-W // window_size) * window_size ** 2) / (H * W) - 1


def _grid_blocks(n: int, groups: int) -> list[tuple[slice, slice, slice]]:
    """The first ``n`` rows of a map padded to ``ws * groups`` rows, as rectangles of its grid.

    Row ``i * groups + a`` of the padded map is cell (i, a) of a (ws, groups) grid, so rows 0..n-1
    are the cells with ``i < n // groups`` plus the first ``n % groups`` cells of the next ``i``.
    Each rectangle is (its rows in the map, its range of i, its range of a).
    """
    full, rest = divmod(n, groups)
    blocks = [(slice(0, full * groups), slice(0, full), slice(0, groups))] if full else []
    if rest:
        blocks.append((slice(full * groups, n), slice(full, full + 1), slice(0, rest)))
    return blocks


def _padding_blocks(n: int, groups: int) -> list[tuple[slice, slice]]:
    """The grid cells of the padding rows (``n`` onwards), as (range of i, range of a) rectangles."""
    full, rest = divmod(n, groups)
    return [(slice(full, full + 1), slice(rest, groups)), (slice(full + 1, None), slice(None))]


def _as_grid(windows: torch.Tensor, window_size: int, Hg: int, Wg: int) -> torch.Tensor:
    """(B * Hg * Wg, ws * ws, C) windows as a (B, ws, Hg, ws, Wg, C) view of the padded map."""
    ws = window_size
    return windows.view(-1, Hg, Wg, ws, ws, windows.shape[-1]).permute(0, 3, 1, 4, 2, 5)


def _map_blocks(x: torch.Tensor, Hg: int, Wg: int):
    """Pairs (block of the (B, H, W, C) map ``x`` as a 6-d tensor, its index into the grid)."""
    _, H, W, _ = x.shape
    for rows, i, a in _grid_blocks(H, Hg):
        for cols, j, b in _grid_blocks(W, Wg):
            block = x[:, rows, cols].unflatten(1, (-1, a.stop - a.start)).unflatten(3, (-1, b.stop - b.start))
            yield block, (slice(None), i, a, j, b)


def windows_from_map(x: torch.Tensor, window_size: int, pad_value: torch.Tensor | None = None) -> torch.Tensor:
    """``iwin.interleave_windows(x, window_size)`` with the padding filled by ``pad_value`` ((C,), zeros if None)."""
    B, H, W, C = x.shape
    ws = window_size
    Hg, Wg = -(-H // ws), -(-W // ws)
    if H == ws * Hg and W == ws * Wg:
        return x.reshape(B, ws, Hg, ws, Wg, C).permute(0, 2, 4, 1, 3, 5).reshape(-1, ws * ws, C)
    windows = x.new_empty(B * Hg * Wg, ws * ws, C)
    grid = _as_grid(windows, ws, Hg, Wg)
    pad = x.new_zeros(C) if pad_value is None else pad_value
    padding = [(slice(None), i, a) for i, a in _padding_blocks(H, Hg)] + \
              [(slice(None), slice(None), slice(None), j, b) for j, b in _padding_blocks(W, Wg)]
    for index in padding:
        block = grid[index]
        block.copy_(pad.expand_as(block))
    for block, index in _map_blocks(x, Hg, Wg):
        grid[index].copy_(block)
    return windows


def map_from_windows(windows: torch.Tensor, window_size: int, H: int, W: int) -> torch.Tensor:
    """``iwin.deinterleave_windows``, as a contiguous (B, H, W, C) map built without the padded one."""
    ws = window_size
    Hg, Wg = -(-H // ws), -(-W // ws)
    grid = _as_grid(windows, ws, Hg, Wg)
    if H == ws * Hg and W == ws * Wg:
        return grid.reshape(-1, H, W, windows.shape[-1])
    x = windows.new_empty(grid.shape[0], H, W, windows.shape[-1])
    for block, index in _map_blocks(x, Hg, Wg):
        block.copy_(grid[index])
    return x
