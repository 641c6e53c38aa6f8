"""Paired comparisons of scored runs: the same tiles (and folds) scored by two models.

A `ScoredRun` is what a comparison needs of an evaluation (`metrics.json`) or of one model of
a cross-validation (its out-of-fold tiles and per-fold scores): each tile's confusion matrix
and, for a cross-validation, which tiles each fold held out and what it scored. Two runs pair
only when they scored the same tiles with the same truth (and, for the per-fold part, the same
folds); anything else is a `PairingError` naming the difference.

Per pair: the difference of the pooled class-1 F1 with its paired bootstrap interval over
tiles (`src.evaluation.bootstrap`), and, over folds, the mean ± std of the per-fold
differences with the corrected resampled t-test of Nadeau & Bengio (2003): the plain paired
t-test treats folds as independent, which they are not (their training sets overlap), and is
known to reject far too often; the correction inflates the variance by n_test / n_train.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from src.evaluation.bootstrap import paired_difference, scores_of_confusion
from src.evaluation.cv_record import SUMMARY_FILE, read_json

FOLD_TEST = "corrected resampled t-test over folds (Nadeau & Bengio 2003)"


class PairingError(ValueError):
    """Two runs that cannot be paired: other tiles, other truth or other folds."""


@dataclass(frozen=True)
class ScoredRun:
    """A run's per-tile confusion matrices (in `tiles` order) and, for a cross-validation,
    its folds: held-out tiles, training-tile count and class-1 F1 of each."""

    name: str
    tiles: list[str]
    confusions: np.ndarray
    fold_tiles: list[list[str]] | None = None
    fold_scores: list[float] | None = None
    fold_train_sizes: list[int] | None = None
    interval: list[float] | None = None
    source: str = ""
    optimistic: bool = False
    """The scored tiles chose the model's epoch (a val split, or --selection outer)."""

    @property
    def f1_class1(self) -> float:
        return float(scores_of_confusion(self.confusions.sum(axis=0))["f1_class1"])

    def aligned(self, tiles: list[str]) -> np.ndarray:
        """The confusion matrices in the order of `tiles`."""
        position = {tile: k for k, tile in enumerate(self.tiles)}
        return self.confusions[[position[tile] for tile in tiles]]


def _check_pairable(first: ScoredRun, second: ScoredRun) -> None:
    if set(first.tiles) != set(second.tiles):
        only_first = sorted(set(first.tiles) - set(second.tiles))
        only_second = sorted(set(second.tiles) - set(first.tiles))
        raise PairingError(
            f"{first.name} and {second.name} were not scored on the same tiles (only "
            f"{first.name}: {', '.join(only_first) or 'none'}; only {second.name}: "
            f"{', '.join(only_second) or 'none'}): a paired comparison needs the same tiles"
        )
    if not np.array_equal(first.confusions.sum(-1), second.aligned(first.tiles).sum(-1)):
        raise PairingError(
            f"{first.name} and {second.name} scored the same tile names against other ground "
            f"truth (other data?): they cannot be paired"
        )
    if first.fold_tiles is not None and second.fold_tiles is not None:
        folds_first = [sorted(fold) for fold in first.fold_tiles]
        folds_second = [sorted(fold) for fold in second.fold_tiles]
        if folds_first != folds_second:
            raise PairingError(
                f"{first.name} and {second.name} were cross-validated on other folds: their "
                f"per-fold scores cannot be paired (use the same --folds and seed)"
            )


def fold_difference(first: ScoredRun, second: ScoredRun) -> dict[str, Any] | None:
    """Per-fold class-1 F1 differences: mean, std and the corrected t-test (None without
    folds on both sides)."""
    if first.fold_scores is None or second.fold_scores is None:
        return None
    differences = np.array(first.fold_scores) - np.array(second.fold_scores)
    count = len(differences)
    mean = float(differences.mean())
    std = float(differences.std(ddof=1)) if count > 1 else 0.0
    sizes = first.fold_train_sizes or [1]
    ratio = float(np.mean([len(f) for f in first.fold_tiles or [[]]]) / np.mean(sizes))
    scale = math.sqrt((1 / count + ratio) * std**2)
    if scale == 0.0:
        t, p = (0.0, 1.0) if mean == 0.0 else (math.copysign(math.inf, mean), 0.0)
    else:
        t = mean / scale
        p = float(2 * stats.t.sf(abs(t), df=count - 1))
    return {
        "differences": differences.tolist(), "mean": mean, "std": std, "t": t, "p_value": p,
        "test": FOLD_TEST,
    }  # fmt: skip


def compare_pair(first: ScoredRun, second: ScoredRun, resamples: int, seed: int) -> dict[str, Any]:
    """`first` − `second`: pooled class-1 F1 difference with its paired interval over tiles,
    and the per-fold differences when both are cross-validations. PairingError when they
    scored other tiles, truth or folds."""
    _check_pairable(first, second)
    tiles = first.tiles
    paired = paired_difference(first.confusions, second.aligned(tiles), resamples, seed)
    return {
        "first": first.name, "second": second.name, "tiles": len(tiles), **paired,
        "folds": fold_difference(first, second),
    }  # fmt: skip


def compare_runs(
    runs: list[ScoredRun], resamples: int, seed: int, reference: str | None = None
) -> list[dict[str, Any]]:
    """Every pair of `runs` in leaderboard order (better minus worse), or, with `reference`,
    each run against that one."""
    ranked = sorted(runs, key=lambda run: -run.f1_class1)
    if reference is not None:
        base = next(run for run in runs if run.name == reference)
        return [compare_pair(run, base, resamples, seed) for run in ranked if run is not base]
    return [compare_pair(a, b, resamples, seed) for a, b in combinations(ranked, 2)]


def _verdict(pair: dict[str, Any]) -> str:
    if pair["includes_zero"]:
        return "the interval includes 0: no difference shown"
    better = pair["first"] if pair["difference"] > 0 else pair["second"]
    return f"{better} is better (interval excludes 0)"


def format_pairs(pairs: list[dict[str, Any]]) -> str:
    """One line per pair: the difference, its interval, the fold statistics, the verdict."""
    lines = ["paired differences of f1_class1 (95 % interval over tiles):"]
    for pair in pairs:
        low, high = pair["interval"]
        line = (
            f"  {pair['first']} − {pair['second']}: {pair['difference']:+.4f} "
            f"[{low:+.4f}, {high:+.4f}] over {pair['tiles']} tiles"
        )
        folds = pair["folds"]
        if folds is not None:
            line += (
                f"; per fold {folds['mean']:+.4f} ± {folds['std']:.4f} "
                f"(corrected t-test p = {folds['p_value']:.3f})"
            )
        lines.append(f"{line}; {_verdict(pair)}")
    return "\n".join(lines)


def tile_confusions(tiles: list[dict[str, Any]], where: Path | str) -> tuple[list[str], np.ndarray]:
    """(tile names, confusion matrices) of a metrics.json's scored `tiles` entries."""
    scored = [entry for entry in tiles if "accuracy" in entry]
    if any("confusion_matrix" not in entry for entry in scored):
        raise PairingError(
            f"{where} records no per-tile confusion matrices (written by an older esd): "
            f"evaluate again to compare it"
        )
    if not scored:
        raise PairingError(f"{where} scored no labelled tiles: there is nothing to compare")
    return [e["tile"] for e in scored], np.array([e["confusion_matrix"] for e in scored])


def cv_scored_run(name: str, folds: list[dict[str, Any]], oof_tiles: list[dict[str, Any]],
                  where: Path | str) -> ScoredRun:  # fmt: skip
    """One model of a cross-validation: its out-of-fold tiles (`oof/metrics.json`'s `tiles`)
    and its folds (the fold results: held-out tiles, training tiles, scores)."""
    tiles, confusions = tile_confusions(oof_tiles, where)
    return ScoredRun(
        name,
        tiles,
        confusions,
        fold_tiles=[list(fold["val_tiles"]) for fold in folds],
        fold_scores=[float(fold["scores"]["f1_class1"]) for fold in folds],
        fold_train_sizes=[
            len(fold["train_tiles"]) + len(fold.get("selection_tiles", [])) for fold in folds
        ],
        source=str(where),
    )


METRICS_FILE = "metrics.json"


def load_scored_runs(folder: Path) -> list[ScoredRun]:
    """The runs of an evaluation's results folder (one) or of a finished cross-validation's
    folder (one per model); PairingError for anything else."""
    folder = Path(folder)
    if (folder / METRICS_FILE).is_file():
        metrics = read_json(folder / METRICS_FILE)
        tiles, confusions = tile_confusions(metrics.get("tiles", []), folder / METRICS_FILE)
        name = f"{metrics.get('model_type', '?')}/{metrics.get('run', folder.name)}"
        interval = (metrics.get("overall_interval") or {}).get("f1_class1")
        optimistic = metrics.get("split") == "val"  # training chose its epoch on them
        return [ScoredRun(name, tiles, confusions, interval=interval, source=str(folder),
                          optimistic=optimistic)]  # fmt: skip
    if (folder / SUMMARY_FILE).is_file():
        summary = read_json(folder / SUMMARY_FILE)
        runs = []
        for model in summary["models"]:
            if "out_of_fold_tiles" not in model:
                raise PairingError(
                    f"{folder / SUMMARY_FILE} records no out-of-fold tiles (written by an older "
                    f"esd): run python -m scripts.cross_validate again to rewrite its summary"
                )
            run = cv_scored_run(f"{folder.name}/{model['name']}", model["folds"],
                                model["out_of_fold_tiles"], folder)  # fmt: skip
            interval = (model.get("out_of_fold_interval") or {}).get("f1_class1")
            optimistic = bool(summary.get("optimistic"))
            runs.append(ScoredRun(**{**run.__dict__, "interval": interval,
                                     "optimistic": optimistic}))  # fmt: skip
        return runs
    raise PairingError(
        f"{folder} is neither an evaluation's results folder (no {METRICS_FILE}) nor a finished "
        f"cross-validation (no {SUMMARY_FILE}): pass folders written by scripts.evaluate or "
        f"scripts.cross_validate"
    )


def format_leaderboard(runs: list[ScoredRun]) -> str:
    """The runs by pooled class-1 F1, each with its 95 % interval over tiles."""
    lines = ["leaderboard (f1_class1 over the pooled tiles, 95 % interval over tiles):"]
    for rank, run in enumerate(sorted(runs, key=lambda r: -r.f1_class1), start=1):
        interval = f" [{run.interval[0]:.4f}, {run.interval[1]:.4f}]" if run.interval else ""
        folds = "" if run.fold_scores is None else f", {len(run.fold_scores)} folds"
        flag = " OPTIMISTIC" if run.optimistic else ""
        lines.append(
            f"  {rank}. {run.name:<36} {run.f1_class1:.4f}{interval}{flag}  ({len(run.tiles)} "
            f"tiles{folds}; {run.source})"
        )
    if any(run.optimistic for run in runs):
        lines.append(
            "  OPTIMISTIC: these tiles chose the model's epoch (a val split or --selection "
            "outer); compare on test tiles or held-out folds for honest numbers"
        )
    return "\n".join(lines)
