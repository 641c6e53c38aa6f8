"""Cut a tile's last two axes into an n×n grid of subtiles, and stitch them back."""

from __future__ import annotations

import numpy as np

from src.esd_data.sensors import LABEL_GRID

VALID_TILE_SIZES = tuple(t for t in range(1, LABEL_GRID + 1) if LABEL_GRID % t == 0)


def check_tile_size_gt(tile_size_gt: int) -> int:
    """Subtiles per side for `tile_size_gt` cells per subtile; ValueError unless it divides 16."""
    if tile_size_gt not in VALID_TILE_SIZES:
        raise ValueError(
            f"tile_size_gt={tile_size_gt} must divide the {LABEL_GRID}×{LABEL_GRID} label grid: "
            f"one of {', '.join(map(str, VALID_TILE_SIZES))}"
        )
    return LABEL_GRID // tile_size_gt


def subtile_window(row: int, col: int, size: int) -> tuple[slice, slice]:
    """The (rows, cols) slices of subtile (row, col) when subtiles are `size` wide."""
    return slice(row * size, (row + 1) * size), slice(col * size, (col + 1) * size)


def cut_subtiles(array: np.ndarray, per_side: int) -> np.ndarray:
    """(…, H, W) → (per_side², …, H/per_side, W/per_side), subtiles in row-major order."""
    *lead, height, width = array.shape
    if height % per_side or width % per_side:
        raise ValueError(
            f"a {height}×{width} array does not split into {per_side}×{per_side} subtiles"
        )
    h, w = height // per_side, width // per_side
    blocks = array.reshape(*lead, per_side, h, per_side, w)
    n = len(lead)
    order = (n, n + 2, *range(n), n + 1, n + 3)
    return blocks.transpose(order).reshape(per_side * per_side, *lead, h, w)


def stitch_subtiles(subtiles: np.ndarray) -> np.ndarray:
    """Inverse of `cut_subtiles`: (n², …, h, w) in row-major order → (…, n·h, n·w)."""
    count, *lead, h, w = subtiles.shape
    per_side = round(count**0.5)
    if per_side * per_side != count:
        raise ValueError(f"{count} subtiles do not form a square grid")
    blocks = subtiles.reshape(per_side, per_side, *lead, h, w)
    n = len(lead)
    order = (*range(2, 2 + n), 0, 2 + n, 1, 3 + n)
    return blocks.transpose(order).reshape(*lead, per_side * h, per_side * w)
