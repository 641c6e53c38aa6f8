"""Assemble per-window logits into whole-tile 16×16 maps.

`grid`: the windows are the subtiles as cut, each cell predicted once. `overlap`: windows
slide with a stride smaller than the window; the logits of every window covering a cell are
summed and divided by the number of windows (a per-cell count map), as mmsegmentation's
sliding-window inference does, so cells at subtile borders are predicted with context.
Evaluation restitches each window's class probabilities this way.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from src.esd_data.sensors import LABEL_GRID


def restitch_logits(
    logits: np.ndarray, rows: Sequence[int], cols: Sequence[int], origins: Sequence[int]
) -> np.ndarray:
    """Mean logits (C, 16, 16) of a tile from windows (N, C, t, t) at (origins[row], origins[col]).

    Raises ValueError when the windows leave a cell uncovered.
    """
    classes, size = logits.shape[1], logits.shape[-1]
    total = np.zeros((classes, LABEL_GRID, LABEL_GRID), dtype=np.float64)
    count = np.zeros((LABEL_GRID, LABEL_GRID), dtype=np.int64)
    for window, row, col in zip(logits, rows, cols, strict=True):
        top, left = origins[row], origins[col]
        total[:, top : top + size, left : left + size] += window
        count[top : top + size, left : left + size] += 1
    if (count == 0).any():
        raise ValueError(f"{int((count == 0).sum())} label cells are covered by no window")
    return (total / count).astype(np.float32)
