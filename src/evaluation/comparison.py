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

**Verdicts that retrain.** The tile bootstrap holds the two trained models fixed: it says how
much the score would move on other tiles *given these models*, not whether another training
(another seed) would rank them the same; seed-to-seed noise alone can make its interval exclude
0. So "X is better" needs the evidence that includes retraining: the fold-level test over the
units that were trained (folds, repetitions and `--seeds`), with its p-values corrected for the
number of pairs in one leaderboard by Holm's step-down method, below 0.05, a tile interval on
the same side of 0, and every fold of both runs trained with two seeds or more: with one seed
per run, that seed's luck is shared by all of its folds and the fold test reads it as a
difference. Runs without folds (two evaluations) get the tile interval only, labelled as such,
and no verdict.

Runs whose tiles chose their model (OPTIMISTIC, from their held-out ledger) say so beside every
score; same ground truth means the same label grids (a digest per tile), not the same counts.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from src.evaluation.bootstrap import paired_difference, scores_of_confusion
from src.evaluation.cv_record import SUMMARY_FILE, read_json
from src.held_out import NOT_HELD_OUT, OPTIMISTIC

FOLD_TEST = "corrected resampled t-test over folds (Nadeau & Bengio 2003)"
ALPHA = 0.05
"""Family-wise error rate of the verdicts of one leaderboard (Holm-corrected)."""
TILE_INTERVAL = "95 % paired bootstrap interval over tiles, given these trained models"


class PairingError(ValueError):
    """Two runs that cannot be paired: other tiles, other truth or other folds."""


@dataclass(frozen=True)
class ScoredRun:
    """A run's per-tile confusion matrices (in `tiles` order) and, for a cross-validation,
    its folds: held-out tiles, training-tile count and class-1 F1 of each."""

    name: str
    tiles: list[str]
    confusions: np.ndarray
    truths: list[str]
    """Each tile's truth digest (`truth_sha256`): same truth means the same label grid."""
    fold_tiles: list[list[str]] | None = None
    fold_scores: list[float] | None = None
    fold_train_sizes: list[int] | None = None
    interval: list[float] | None = None
    source: str = ""
    optimistic: bool = False
    """The scored tiles chose a model behind the scores (from its held-out ledger)."""
    partitions: int = 1
    """How many predictions of each tile the counts sum (repeated folds, seeds)."""
    seeds: int = 1
    """The fewest training seeds any of its folds was trained with (`--seeds`)."""

    @property
    def f1_class1(self) -> float:
        return float(scores_of_confusion(self.confusions.sum(axis=0))["f1_class1"])

    def aligned(self, tiles: list[str]) -> np.ndarray:
        """The confusion matrices in the order of `tiles`, per prediction of a tile (a run
        pooled over R partitions counts each tile R times: divided by R, the scores are the
        same and two runs of other R pair tile by tile)."""
        position = {tile: k for k, tile in enumerate(self.tiles)}
        return self.confusions[[position[tile] for tile in tiles]] / self.partitions

    def aligned_truths(self, tiles: list[str]) -> list[str]:
        position = {tile: k for k, tile in enumerate(self.tiles)}
        return [self.truths[position[tile]] for tile in tiles]


def _check_pairable(first: ScoredRun, second: ScoredRun) -> None:
    if set(first.tiles) != set(second.tiles):
        only_first = sorted(set(first.tiles) - set(second.tiles))
        only_second = sorted(set(second.tiles) - set(first.tiles))
        raise PairingError(
            f"{first.name} and {second.name} were not scored on the same tiles (only "
            f"{first.name}: {', '.join(only_first) or 'none'}; only {second.name}: "
            f"{', '.join(only_second) or 'none'}): a paired comparison needs the same tiles"
        )
    other = [t for t, a, b in zip(first.tiles, first.truths, second.aligned_truths(first.tiles),
                                  strict=True) if a != b]  # fmt: skip
    if other:
        raise PairingError(
            f"{first.name} and {second.name} scored the same tile names against other ground "
            f"truth ({', '.join(other[:5])}: other label grids; other data?): they cannot be "
            f"paired"
        )


def same_folds(first: ScoredRun, second: ScoredRun) -> bool:
    """Whether both are cross-validations of the same folds (same tiles held out, in the same
    order of trainings), whose per-fold scores pair."""
    if first.fold_tiles is None or second.fold_tiles is None:
        return False
    return [sorted(f) for f in first.fold_tiles] == [sorted(f) for f in second.fold_tiles]


def fold_difference(first: ScoredRun, second: ScoredRun) -> dict[str, Any] | None:
    """Per-fold class-1 F1 differences: mean, std and the corrected t-test (None unless both
    were cross-validated on the same folds)."""
    if first.fold_scores is None or second.fold_scores is None or not same_folds(first, second):
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
        "test": FOLD_TEST, "seeds": min(first.seeds, second.seeds),
    }  # fmt: skip


def compare_pair(first: ScoredRun, second: ScoredRun, resamples: int, seed: int) -> dict[str, Any]:
    """`first` − `second`: pooled class-1 F1 difference with its paired interval over tiles,
    and the per-fold differences when both are cross-validations of the same folds (`verdict`
    is set for the whole family by `holm`). PairingError when they scored other tiles or
    truth."""
    _check_pairable(first, second)
    tiles = first.tiles
    paired = paired_difference(first.aligned(tiles), second.aligned(tiles), resamples, seed)
    pair = {
        "first": first.name, "second": second.name, **paired,
        "interval_kind": TILE_INTERVAL, "folds": fold_difference(first, second),
        "optimistic": first.optimistic or second.optimistic,
    }  # fmt: skip
    if first.fold_tiles is not None and second.fold_tiles is not None and pair["folds"] is None:
        pair["folds_note"] = "cross-validated on other folds: no fold-level test"
    return pair


def holm(pairs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The pairs of one leaderboard with Holm-adjusted fold-test p-values (`p_holm`) and each
    pair's `verdict` (see the module); pairs without folds are not in the family."""
    tested = sorted((p for p in pairs if p["folds"] is not None),
                    key=lambda p: p["folds"]["p_value"])  # fmt: skip
    running = 0.0
    for rank, pair in enumerate(tested):
        running = max(running, min(1.0, (len(tested) - rank) * pair["folds"]["p_value"]))
        pair["folds"]["p_holm"] = running
        pair["folds"]["family"] = len(tested)
    for pair in pairs:
        pair["verdict"] = verdict(pair)
    return pairs


def verdict(pair: dict[str, Any]) -> str:
    """What the evidence allows one to say of a pair (see the module)."""
    folds, interval = pair["folds"], pair["interval"]
    tiles = (
        f"too few tiles for an interval ({pair['tiles']})"
        if interval is None
        else "the tile interval includes 0"
        if pair["includes_zero"]
        else "the tile interval excludes 0"
    )
    if folds is None:
        return (
            f"no verdict: {tiles} given these trained models, and retraining was not measured "
            f"(cross-validate both on the same folds, with --seeds, for a verdict)"
        )
    p_holm = folds.get("p_holm", folds["p_value"])
    if folds.get("seeds", 1) < 2:
        return (
            f"no verdict: each fold was trained with one seed, so a seed's luck, shared by every "
            f"fold, reads as a difference (fold test p = {p_holm:.3f} after Holm; {tiles}); "
            f"cross-validate both with --seeds 2 or more"
        )
    same_side = (
        interval is not None
        and not pair["includes_zero"]
        and ((interval[0] > 0) == (folds["mean"] > 0))
    )
    if p_holm < ALPHA and same_side:
        better = pair["first"] if pair["difference"] > 0 else pair["second"]
        return f"{better} is better (fold test p = {p_holm:.3f} after Holm, {tiles})"
    return f"no difference shown (fold test p = {p_holm:.3f} after Holm; {tiles})"


def compare_runs(
    runs: list[ScoredRun], resamples: int, seed: int, reference: str | None = None
) -> list[dict[str, Any]]:
    """Every pair of `runs` in leaderboard order (better minus worse), or, with `reference`,
    each run against that one; verdicts Holm-corrected over the pairs."""
    ranked = sorted(runs, key=lambda run: -run.f1_class1)
    if reference is not None:
        base = next(run for run in runs if run.name == reference)
        pairs = [compare_pair(run, base, resamples, seed) for run in ranked if run is not base]
    else:
        pairs = [compare_pair(a, b, resamples, seed) for a, b in combinations(ranked, 2)]
    return holm(pairs)


def format_pairs(pairs: list[dict[str, Any]]) -> str:
    """One line per pair: the difference, its tile interval (given these trained models),
    the fold statistics, the verdict."""
    family = sum(p["folds"] is not None for p in pairs)
    lines = [
        f"paired differences of f1_class1 ({TILE_INTERVAL}; verdicts from the fold test, "
        f"Holm-corrected over {family} pair(s)):"
    ]
    for pair in pairs:
        interval = pair["interval"]
        shown = "" if interval is None else f" [{interval[0]:+.4f}, {interval[1]:+.4f}]"
        line = (
            f"  {pair['first']} − {pair['second']}: {pair['difference']:+.4f}{shown} over "
            f"{pair['tiles']} tiles"
        )
        folds = pair["folds"]
        if folds is not None:
            line += (
                f"; per fold {folds['mean']:+.4f} ± {folds['std']:.4f} over "
                f"{len(folds['differences'])} trainings (corrected t-test p = "
                f"{folds['p_value']:.3f})"
            )
        flag = f" {OPTIMISTIC}" if pair.get("optimistic") else ""
        lines.append(f"{line}; {pair['verdict']}{flag}")
    return "\n".join(lines)


def tile_confusions(
    tiles: list[dict[str, Any]], where: Path | str
) -> tuple[list[str], np.ndarray, list[str]]:
    """(tile names, confusion matrices, truth digests) of a result's scored `tiles` entries."""
    scored = [entry for entry in tiles if "accuracy" in entry]
    if any("confusion_matrix" not in e or "truth_sha256" not in e for e in scored):
        raise PairingError(
            f"{where} records no per-tile confusion matrices or truth digests (written by an "
            f"older esd): evaluate (or cross-validate) again to compare it"
        )
    if not scored:
        raise PairingError(f"{where} scored no labelled tiles: there is nothing to compare")
    return (
        [e["tile"] for e in scored],
        np.array([e["confusion_matrix"] for e in scored]),
        [e["truth_sha256"] for e in scored],
    )


def cv_scored_run(model: dict[str, Any], name: str, where: Path | str) -> ScoredRun:
    """One model of a cross-validation (its entry of `summary.json`): its out-of-fold tiles
    (pooled over every partition), its folds (held-out tiles, training tiles, scores) and its
    held-out ledger's verdict."""
    tiles, confusions, truths = tile_confusions(model["out_of_fold_tiles"], where)
    folds = model["folds"]
    return ScoredRun(
        name,
        tiles,
        confusions,
        truths,
        fold_tiles=[list(fold["val_tiles"]) for fold in folds],
        fold_scores=[float(fold["scores"]["f1_class1"]) for fold in folds],
        fold_train_sizes=[
            len(fold["train_tiles"]) + len(fold.get("selection_tiles", [])) for fold in folds
        ],
        interval=(model.get("out_of_fold_interval") or {}).get("f1_class1"),
        source=str(where),
        optimistic=bool((model.get("held_out") or {}).get("optimistic")),
        partitions=len(model.get("out_of_fold_repeats") or [None]),
        seeds=_seeds_per_fold(folds),
    )


def _seeds_per_fold(folds: list[dict[str, Any]]) -> int:
    """The fewest distinct training seeds the same held-out tiles were trained with."""
    seeds: dict[tuple[str, ...], set[Any]] = {}
    for fold in folds:
        seed = (fold.get("configuration") or {}).get("training", {}).get("seed")
        seeds.setdefault(tuple(sorted(fold["val_tiles"])), set()).add(seed)
    return min(len(s) for s in seeds.values())


METRICS_FILE = "metrics.json"


def load_scored_runs(folder: Path) -> list[ScoredRun]:
    """The runs of an evaluation's results folder (one), of a finished cross-validation's
    folder (one per model) or of one model's folder in it; PairingError for anything else."""
    folder = Path(folder)
    if (folder / METRICS_FILE).is_file():
        metrics = read_json(folder / METRICS_FILE)
        held_out = metrics.get("held_out")
        if held_out is None:
            raise PairingError(
                f"{folder / METRICS_FILE} has no held-out record (written by an older esd): "
                f"evaluate again to compare it"
            )
        if held_out["label"] == NOT_HELD_OUT:
            raise PairingError(
                f"{folder} scored tiles its model trained on ({NOT_HELD_OUT}): a fit "
                f"diagnostic is not compared"
            )
        tiles, confusions, truths = tile_confusions(metrics["tiles"], folder / METRICS_FILE)
        name = f"{metrics.get('model_type', '?')}/{metrics.get('run', folder.name)}"
        interval = (metrics.get("overall_interval") or {}).get("f1_class1")
        return [ScoredRun(name, tiles, confusions, truths, interval=interval, source=str(folder),
                          optimistic=bool(held_out["optimistic"]))]  # fmt: skip
    root, only = folder, None
    if not (folder / SUMMARY_FILE).is_file() and (folder.parent / SUMMARY_FILE).is_file():
        root, only = folder.parent, folder.name  # one model of a cross-validation
    if (root / SUMMARY_FILE).is_file():
        summary = read_json(root / SUMMARY_FILE)
        models = [m for m in summary["models"] if only in (None, m["name"])]
        if not models:
            names = ", ".join(m["name"] for m in summary["models"])
            raise PairingError(f"{root} has no model {only} (it has {names})")
        runs = []
        for model in models:
            if "out_of_fold_tiles" not in model or "held_out" not in model:
                raise PairingError(
                    f"{root / SUMMARY_FILE} records no out-of-fold tiles or held-out ledger "
                    f"(written by an older esd): run python -m scripts.cross_validate again to "
                    f"rewrite its summary"
                )
            runs.append(cv_scored_run(model, f"{root.name}/{model['name']}", root))
        return runs
    raise PairingError(
        f"{folder} is neither an evaluation's results folder (no {METRICS_FILE}) nor a finished "
        f"cross-validation or one model of it (no {SUMMARY_FILE}): pass folders written by "
        f"scripts.evaluate or scripts.cross_validate"
    )


def distinct_names(runs: list[ScoredRun]) -> list[ScoredRun]:
    """The runs, those whose names collide (two evaluations of one run: with and without
    TTA, say) named after their folders too."""
    counts: dict[str, int] = {}
    for run in runs:
        counts[run.name] = counts.get(run.name, 0) + 1
    return [
        dataclasses.replace(run, name=f"{run.name} [{Path(run.source).name}]")
        if counts[run.name] > 1
        else run
        for run in runs
    ]


def format_leaderboard(runs: list[ScoredRun]) -> str:
    """The runs by pooled class-1 F1 (the headline statistic), each with its 95 % interval
    over tiles and the number of tiles, OPTIMISTIC where their tiles chose the model."""
    lines = ["leaderboard (f1_class1 over the pooled tiles, 95 % interval over tiles):"]
    for rank, run in enumerate(sorted(runs, key=lambda r: -r.f1_class1), start=1):
        interval = (
            f" [{run.interval[0]:.4f}, {run.interval[1]:.4f}]" if run.interval else " (no interval)"
        )
        folds = "" if run.fold_scores is None else f", {len(run.fold_scores)} folds"
        flag = f" {OPTIMISTIC}" if run.optimistic else ""
        lines.append(
            f"  {rank}. {run.name:<36} {run.f1_class1:.4f}{interval}{flag}  ({len(run.tiles)} "
            f"tiles{folds}; {run.source})"
        )
    if any(run.optimistic for run in runs):
        lines.append(
            f"  {OPTIMISTIC}: these tiles chose the model (its epoch or hyper-parameters); "
            f"compare on test tiles or held-out folds for honest numbers"
        )
    return "\n".join(lines)
