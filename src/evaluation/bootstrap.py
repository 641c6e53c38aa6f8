"""Uncertainty over parent tiles: bootstrap intervals and paired differences of scores.

The unit of resampling is the parent tile, never the label cell: the 256 cells of a tile
share its place, dates and clouds, so resampling cells would pretend to far more independent
evidence than 60 tiles hold. Each tile is summarised by its 4×4 confusion matrix; a resample
draws tiles with replacement (`numpy.random.default_rng(seed).integers(0, n, (B, n))`), sums
their matrices and scores the sum exactly as `src.evaluation.scores.label_scores` scores the
cells.

- A resample without a class-1 cell in its truth has no class-1 F1 (0/0, which used to be
  scored 0: a perfect model with class 1 in 2 of 12 tiles got `[0.0, 1.0]`): it is left out
  of that score's interval and counted (`resamples_without_class1`).
- The interval is the **expanded percentile** interval (Hesterberg 2015): the percentile
  interval at the levels Φ(±√(n/(n−1))·t_{n−1, 0.975}) instead of 2.5 % and 97.5 %, which
  corrects the percentile interval's known narrowness with few resampled units; measured by
  simulation (`benchmarks/bench_intervals.py`) against the plain percentile and scipy's BCa.
- Below `MIN_INTERVAL_TILES` tiles no interval is given, nor one of class K's F1 when fewer
  than `MIN_CLASS_TILES` tiles hold class K: the output says so instead. Measured coverage of
  the default at 12 tiles: 0.84–0.94; at 60 tiles: 0.94–0.96 (`bench_intervals`, where the
  rarer class 1 is, the lower).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from scipy import stats

from src.esd_data.sensors import N_CLASSES

CONFIDENCE = 0.95
DEFAULT_RESAMPLES = 1000
INTERVAL_SCORES = (
    "f1_class1", "accuracy", "iou_macro", "f1_macro", "f1_class2", "f1_class3", "f1_class4",
)  # fmt: skip
"""The scores given an interval: the four headline scores, then the other classes' F1."""
MIN_INTERVAL_TILES = 12
"""Fewer scored tiles than this get no interval (their bootstrap cannot cover; see module)."""
MIN_CLASS_TILES = 4
"""Fewer tiles holding class K than this get no interval of class K's F1: its coverage falls
to 0.4–0.8 with one to three such tiles, whatever the total (bench_intervals)."""
METHODS = {
    "expanded": "expanded percentile bootstrap over parent tiles",
    "percentile": "percentile bootstrap over parent tiles",
    "bca": "BCa bootstrap over parent tiles (scipy)",
}
DEFAULT_METHOD = "expanded"


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
            **{f"f1_class{k + 1}": f1[..., k] for k in range(1, N_CLASSES)},
        }


def resample_indices(n_tiles: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, n_tiles) tile indices drawn with replacement."""
    return np.random.default_rng(seed).integers(0, n_tiles, size=(resamples, n_tiles))


def _levels(method: str, n: int) -> tuple[float, float]:
    """The percentiles (in %) that bound the interval."""
    tail = (1 - CONFIDENCE) / 2
    if method == "expanded" and n > 1:
        z = np.sqrt(n / (n - 1)) * stats.t.ppf(1 - tail, df=n - 1)
        tail = float(stats.norm.sf(z))
    return 100 * tail, 100 * (1 - tail)


def _bca(tiles: np.ndarray, statistic: Statistic, resamples: int, seed: int) -> np.ndarray:
    """(k, 2) BCa bounds from scipy.stats.bootstrap, which cannot leave resamples out: one
    without class 1 counts its class-1 F1 as 0 there."""

    def scored(sample: np.ndarray, axis: int = -1) -> np.ndarray:
        return np.nan_to_num(statistic(tiles[sample].sum(axis=-tiles.ndim)))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = stats.bootstrap(
            (np.arange(len(tiles)),), scored, n_resamples=resamples, vectorized=True,
            confidence_level=CONFIDENCE, method="BCa", rng=np.random.default_rng(seed),
        )  # fmt: skip
    bounds = np.stack([result.confidence_interval.low, result.confidence_interval.high], -1)
    spread = np.percentile(result.bootstrap_distribution, _levels("percentile", 0), axis=-1).T
    return np.where(np.isfinite(bounds), bounds, spread)  # BCa of no spread: the percentiles


Statistic = Callable[[np.ndarray], np.ndarray]
"""Summed confusion matrices (B, ..., 4, 4) → (k, B) values, NaN for a resample left out."""


def _intervals(tiles: np.ndarray, statistic: Statistic, resamples: int, seed: int,
               method: str) -> np.ndarray:  # fmt: skip
    """(k, 2) bounds of the statistic's k values over resamples of the tiles (n, ..., 4, 4);
    NaN bounds where every resample was left out."""
    if method == "bca":
        return _bca(tiles, statistic, resamples, seed)
    values = statistic(tiles[resample_indices(len(tiles), resamples, seed)].sum(axis=1))
    low, high = _levels(method, len(tiles))
    return np.stack([
        np.nanpercentile(v, [low, high]) if np.isfinite(v).any() else [np.nan, np.nan]
        for v in values
    ])  # fmt: skip


def _too_few(tiles: int) -> str | None:
    if tiles < MIN_INTERVAL_TILES:
        return (
            f"no interval: {tiles} tile(s) are fewer than the {MIN_INTERVAL_TILES} a bootstrap "
            f"over tiles needs to cover"
        )
    return None


def _class_f1(total: np.ndarray, values: np.ndarray, label: int = 1) -> np.ndarray:
    """Class `label`'s F1 values with NaN where the summed truth (total[..., 4, 4]) has no
    cell of the class: its F1 is undefined there, and the resample is left out."""
    return np.where(total[..., label - 1, :].sum(axis=-1) > 0, values, np.nan)


def bootstrap_intervals(
    confusions: Sequence[np.ndarray] | np.ndarray, resamples: int, seed: int,
    method: str = DEFAULT_METHOD,
) -> dict[str, list[float]]:  # fmt: skip
    """Score → [low, high]: the 95 % interval over tiles of each of `INTERVAL_SCORES`
    ({} below `MIN_INTERVAL_TILES` tiles; no `f1_classK` when no tile holds class K)."""
    confusions = np.asarray(confusions)
    if _too_few(len(confusions)):
        return {}

    def statistic(total: np.ndarray) -> np.ndarray:
        scores = scores_of_confusion(total)
        for label in range(1, N_CLASSES + 1):
            key = f"f1_class{label}"
            scores[key] = _class_f1(total, scores[key], label)
        return np.stack([scores[k] for k in INTERVAL_SCORES])

    bounds = _intervals(confusions, statistic, resamples, seed, method)
    rare = set(_rare_classes(confusions))
    return {
        k: [float(bounds[i, 0]), float(bounds[i, 1])]
        for i, k in enumerate(INTERVAL_SCORES)
        if np.isfinite(bounds[i]).all() and k not in rare
    }


def _rare_classes(confusions: np.ndarray) -> dict[str, int]:
    """`f1_classK` → how many tiles hold class K, for the classes held by fewer than
    `MIN_CLASS_TILES` tiles (their F1 gets no interval)."""
    holding = (np.asarray(confusions).sum(axis=-1) > 0).sum(axis=0)  # tiles per class
    return {f"f1_class{k + 1}": int(n) for k, n in enumerate(holding) if n < MIN_CLASS_TILES}


def bootstrap_record(
    resamples: int, seed: int, confusions: Sequence[np.ndarray] | np.ndarray,
    method: str = DEFAULT_METHOD,
) -> dict[str, Any]:  # fmt: skip
    """How the intervals were made, written beside them: method, tiles, how many resamples
    had no class-1 cell (left out of f1_class1's interval), and why there is none when there
    is none."""
    confusions = np.asarray(confusions)
    n = len(confusions)
    with_class1 = int((confusions[:, 0, :].sum(axis=-1) > 0).sum()) if n else 0
    record: dict[str, Any] = {
        "method": METHODS[method], "confidence": CONFIDENCE, "resamples": resamples,
        "seed": seed, "tiles": n, "tiles_with_class1": with_class1,
        "min_tiles": MIN_INTERVAL_TILES,
    }  # fmt: skip
    reason = _too_few(n)
    if reason:
        record["note"] = reason
        return record
    rare = _rare_classes(confusions)
    if rare:
        record["note"] = "no interval of " + ", ".join(
            f"{k} ({count} tile(s) hold the class, fewer than {MIN_CLASS_TILES})"
            for k, count in rare.items()
        )
    truth_class1 = confusions[:, 0, :].sum(axis=-1)[resample_indices(n, resamples, seed)]
    record["resamples_without_class1"] = int((truth_class1.sum(axis=-1) == 0).sum())
    return record


def paired_difference(
    first: Sequence[np.ndarray] | np.ndarray,
    second: Sequence[np.ndarray] | np.ndarray,
    resamples: int,
    seed: int,
    score: str = "f1_class1",
    method: str = DEFAULT_METHOD,
) -> dict[str, Any]:
    """`score` of `first` minus that of `second`, both predicting the same tiles (matrices in
    the same tile order, of the same truth), with the 95 % interval of the difference over
    the same resamples of tiles (None below `MIN_INTERVAL_TILES` tiles). The interval holds
    these trained models fixed: it says nothing of how another training would do."""
    first, second = np.asarray(first, dtype=float), np.asarray(second, dtype=float)
    if first.shape != second.shape:
        raise ValueError(f"cannot pair {len(first)} tiles with {len(second)}")
    pooled = scores_of_confusion(np.stack([first.sum(axis=0), second.sum(axis=0)]))[score]
    difference = float(pooled[0] - pooled[1])
    record: dict[str, Any] = {"score": score, "difference": difference, "tiles": len(first)}
    reason = _too_few(len(first))
    rare = _rare_classes(first).get(score)
    if rare is not None:
        reason = f"no interval: {rare} tile(s) hold the class, fewer than {MIN_CLASS_TILES}"
    if reason:
        return {**record, "interval": None, "includes_zero": None, "note": reason}

    def statistic(total: np.ndarray) -> np.ndarray:  # (..., 2, 4, 4): both runs' sums
        values = scores_of_confusion(total)[score]
        change = values[..., 0] - values[..., 1]
        if score.startswith("f1_class"):
            change = _class_f1(total[..., 0, :, :], change, int(score[-1]))
        return change[np.newaxis]

    both = np.stack([first, second], axis=1)  # (n, 2, 4, 4): tiles resampled together
    bounds = _intervals(both, statistic, resamples, seed, method)
    interval = [float(bounds[0, 0]), float(bounds[0, 1])]
    return {**record, "interval": interval, "includes_zero": bool(interval[0] <= 0 <= interval[1])}
