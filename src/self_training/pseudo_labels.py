"""Pseudo-labels: the cells of unlabelled tiles a teacher is confident about.

A cell is kept when the teacher's most probable class reaches `confidence`, and no class makes
up more than `class_cap` of the kept cells (the common classes of a scene would drown class 1):
each class keeps at most q of its confident cells, its most confident ones pooled over every
tile, q the largest number for which that holds. Kept cells carry labels 1..4; the others 0,
which a dataset reads as −1 (no label), so neither the loss nor the metrics see them.
"""

from __future__ import annotations

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
    confident = np.array([int((keep & (label == cls)).sum()) for cls in range(1, N_CLASSES + 1)])
    quota = largest_quota(confident, class_cap)
    flat_keep, flat_top, flat_label = keep.reshape(-1), top.reshape(-1), label.reshape(-1)
    for cls in range(1, N_CLASSES + 1):
        cells = np.flatnonzero(flat_keep & (flat_label == cls))
        if len(cells) > quota:
            order = np.argsort(-flat_top[cells], kind="stable")
            flat_keep[cells[order[quota:]]] = False
    kept = np.where(keep, label, NO_LABEL).astype(np.uint8)
    return {name: kept[k] for k, name in enumerate(names)}


def largest_quota(counts: np.ndarray, class_cap: float) -> int:
    """The largest q such that, each class keeping min(its count, q) cells, none holds more
    than `class_cap` of the cells kept (0 when only keeping nothing does)."""
    quotas = np.arange(int(counts.max(initial=0)) + 1)
    kept = np.minimum(counts[:, None], quotas[None, :])
    holds = kept.max(axis=0) <= class_cap * kept.sum(axis=0)
    return int(quotas[holds].max())


def class_counts(labels: np.ndarray) -> list[int]:
    """Cells of each class 1..4 in pseudo-labels."""
    return [int((labels == cls).sum()) for cls in range(1, N_CLASSES + 1)]
