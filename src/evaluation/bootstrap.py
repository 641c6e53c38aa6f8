"""Uncertainty over parent tiles: bootstrap intervals and paired differences of scores.

The unit of resampling is the parent tile, never the label cell: the 256 cells of a tile
share its place, dates and clouds, so resampling cells would pretend to far more independent
evidence than 60 tiles hold. Each tile is summarised by its 4×4 confusion matrix; a resample
draws tiles with replacement (`numpy.random.default_rng(seed).integers(0, n, (B, n))`),
sums their matrices and scores the sum exactly as `src.evaluation.scores.label_scores`
scores the cells (same zero-division and macro-average conventions). The interval is the
percentile interval of the resampled scores. All of it is a few array operations on
(B, n, 4, 4) counts, which is why it is written here rather than through
`scipy.stats.bootstrap` (whose statistic would re-score every resample in Python).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from src.esd_data.sensors import N_CLASSES

CONFIDENCE = 0.95
DEFAULT_RESAMPLES = 1000
INTERVAL_SCORES = ("f1_class1", "accuracy", "iou_macro", "f1_macro")
"""The scores given an interval wherever scores are reported."""
METHOD = "percentile bootstrap over parent tiles"


def confusion(truth: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """The (4, 4) confusion matrix of labels 1..4: rows truth, columns prediction."""
    index = (np.ravel(truth).astype(np.int64) - 1) * N_CLASSES + np.ravel(prediction) - 1
    return np.bincount(index, minlength=N_CLASSES * N_CLASSES).reshape(N_CLASSES, N_CLASSES)


def scores_of_confusion(matrices: np.ndarray) -> dict[str, np.ndarray]:
    """`INTERVAL_SCORES` of confusion matrices (..., 4, 4), as `label_scores` defines them."""
    matrices = np.asarray(matrices, dtype=np.float64)
    true_positive = np.diagonal(matrices, axis1=-2, axis2=-1)
    truth_total = matrices.sum(axis=-1)
    predicted_total = matrices.sum(axis=-2)
    present = (truth_total + predicted_total) > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        f1 = np.where(present, 2 * true_positive / (truth_total + predicted_total), 0.0)
        union = truth_total + predicted_total - true_positive
        iou = np.where(present, true_positive / union, 0.0)
        count = present.sum(axis=-1)
        total = matrices.sum(axis=(-2, -1))
        return {
            "f1_class1": f1[..., 0],
            "accuracy": true_positive.sum(axis=-1) / total,
            "iou_macro": iou.sum(axis=-1) / count,
            "f1_macro": f1.sum(axis=-1) / count,
        }


def resample_indices(n_tiles: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, n_tiles) tile indices drawn with replacement."""
    return np.random.default_rng(seed).integers(0, n_tiles, size=(resamples, n_tiles))


def _resampled_scores(confusions: np.ndarray, indices: np.ndarray) -> dict[str, np.ndarray]:
    return scores_of_confusion(np.asarray(confusions)[indices].sum(axis=1))


def _interval(values: np.ndarray) -> list[float]:
    tail = 100 * (1 - CONFIDENCE) / 2
    low, high = np.percentile(values, [tail, 100 - tail])
    return [float(low), float(high)]


def bootstrap_intervals(
    confusions: Sequence[np.ndarray] | np.ndarray, resamples: int, seed: int
) -> dict[str, list[float]]:
    """Score → [low, high]: the 95 % interval over tiles of each of `INTERVAL_SCORES`."""
    confusions = np.asarray(confusions)
    indices = resample_indices(len(confusions), resamples, seed)
    return {k: _interval(v) for k, v in _resampled_scores(confusions, indices).items()}


def bootstrap_record(resamples: int, seed: int, tiles: int) -> dict[str, Any]:
    """How the intervals were made, written beside them."""
    return {
        "method": METHOD, "confidence": CONFIDENCE, "resamples": resamples, "seed": seed,
        "tiles": tiles,
    }  # fmt: skip


def paired_difference(
    first: Sequence[np.ndarray] | np.ndarray,
    second: Sequence[np.ndarray] | np.ndarray,
    resamples: int,
    seed: int,
    score: str = "f1_class1",
) -> dict[str, Any]:
    """`score` of `first` minus that of `second`, both predicting the same tiles (matrices in
    the same tile order), with the 95 % interval of the difference over the same resamples."""
    first, second = np.asarray(first), np.asarray(second)
    if first.shape != second.shape:
        raise ValueError(f"cannot pair {len(first)} tiles with {len(second)}")
    if not np.array_equal(first.sum(axis=-1), second.sum(axis=-1)):
        raise ValueError("the two predictions are not of the same cells (their truths differ)")
    pooled = scores_of_confusion(np.stack([first.sum(axis=0), second.sum(axis=0)]))[score]
    difference = float(pooled[0] - pooled[1])
    indices = resample_indices(len(first), resamples, seed)
    resampled = _resampled_scores(first, indices)[score] - _resampled_scores(second, indices)[score]
    interval = _interval(resampled)
    return {
        "score": score,
        "difference": difference,
        "interval": interval,
        "includes_zero": bool(interval[0] <= 0.0 <= interval[1]),
    }
