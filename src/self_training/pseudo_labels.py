"""Pseudo-labels: the cells of unlabelled tiles a teacher is confident about.

A cell is kept when the teacher's most probable class reaches `confidence`; a class that would
make up more than `class_cap` of the confident cells (the common classes of a scene, which
would drown class 1) keeps only its most confident cells up to that share, pooled over every
tile. Kept cells carry labels 1..4; the others 0, which a dataset reads as −1 (no label), so
neither the loss nor the metrics see them.
"""

from __future__ import annotations

import math

import numpy as np

N_CLASSES = 4
NO_LABEL = 0
"""A stored label of 0: the cell has no (pseudo-)label."""


def select_cells(
    probabilities: dict[str, np.ndarray], confidence: float, class_cap: float
) -> dict[str, np.ndarray]:
    """Per tile, (16, 16) uint8 pseudo-labels (1..4, 0: not kept) from (4, 16, 16)
    probabilities (see the module); ties at a class's cap keep the earlier tile and cell."""
    names = list(probabilities)
    if not names:
        return {}
    stacked = np.stack([np.asarray(probabilities[name], dtype=np.float64) for name in names])
    top = stacked.max(axis=1)
    label = stacked.argmax(axis=1) + 1
    keep = top >= confidence
    quota = math.floor(class_cap * int(keep.sum()))
    flat_keep, flat_top, flat_label = keep.ravel(), top.ravel(), label.ravel()
    for cls in range(1, N_CLASSES + 1):
        cells = np.flatnonzero(flat_keep & (flat_label == cls))
        if len(cells) > quota:
            order = np.argsort(-flat_top[cells], kind="stable")
            flat_keep[cells[order[quota:]]] = False
    kept = np.where(keep, label, NO_LABEL).astype(np.uint8)
    return {name: kept[k] for k, name in enumerate(names)}


def class_counts(labels: np.ndarray) -> list[int]:
    """Cells of each class 1..4 in pseudo-labels."""
    return [int((labels == cls).sum()) for cls in range(1, N_CLASSES + 1)]
