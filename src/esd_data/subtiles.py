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


def window_origins(tile_size_gt: int, stride_gt: int | None = None) -> list[int]:
    """First label cell of each window along one axis: every `stride_gt` cells, last flush.

    With the default stride (= `tile_size_gt`) the windows are the subtile grid; a smaller
    stride gives overlapping windows whose last one ends at the tile's edge.
    """
    check_tile_size_gt(tile_size_gt)
    stride = stride_gt or tile_size_gt
    if not 1 <= stride <= tile_size_gt:
        raise ValueError(f"stride_gt={stride_gt} must be between 1 and tile_size_gt={tile_size_gt}")
    last = LABEL_GRID - tile_size_gt
    origins = list(range(0, last + 1, stride))
    return origins if origins[-1] == last else [*origins, last]


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
