"""A cross-validation's out-of-fold evaluation: every labelled tile predicted by the fold
that did not train on it, gathered in `<model>/oof/` and scored together, with per-tile
confusion matrices for the intervals and paired comparisons over tiles; with repetitions or
seeds, each partition's in `oof/repeat_<r>[_seed_<s>]/` and their pooling. A unit not yet
finished (`None`, for `--summarize`) leaves its tiles out."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from src.cross_validation.config import CVConfig
from src.esd_data.manifest import Manifest
from src.esd_data.sensors import CLASS_NAMES
from src.evaluation.bootstrap import (
    bootstrap_intervals,
    bootstrap_record,
    confusion,
    scores_of_confusion,
)
from src.evaluation.decision import cross_fitted
from src.evaluation.evaluator import TilePrediction
from src.evaluation.report import CLASS_TITLES, tile_scores, write_run_outputs
from src.visualization.evaluation_plots import plot_confusion_matrix, plot_roc_curves


def oof_set_name(repeat: int, seed_index: int, cv: CVConfig) -> str:
    """The folder, under `<model>/oof/`, of one partition's out-of-fold predictions."""
    return f"repeat_{repeat}" + (f"_seed_{seed_index}" if cv.seeds > 1 else "")


def _out_of_fold(
    oof: Path,
    model_dir: Path,
    results: list[dict[str, Any]],
    manifest: Manifest,
    processed_dir: Path,
    cv: CVConfig,
    figures: bool = True,
) -> dict[str, Any]:
    """Gather the held-out predictions of one set of folds into `oof` and score them together
    (with per-tile confusion matrices and intervals over tiles), drawing its confusion matrix
    and ROC curves when `figures`; returns its metrics."""
    predictions, per_tile = [], []
    for result in results:
        tiles = model_dir / f"fold_{result['fold']}" / "predictions" / "tiles"
        for tile in result["val_tiles"]:
            for suffix in ("_prediction.tif", "_probabilities.tif"):
                target = oof / "tiles" / f"{tile}{suffix}"
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(tiles / f"{tile}{suffix}", target)
            truth = np.load(processed_dir / manifest.tiles[tile].labels).astype(np.uint8)
            prediction = TilePrediction(
                tile,
                tifffile.imread(oof / "tiles" / f"{tile}_probabilities.tif"),
                tifffile.imread(oof / "tiles" / f"{tile}_prediction.tif"),
                truth,
            )
            predictions.append(prediction)
            per_tile.append({"tile": tile, "fold": result["fold"], **tile_scores(prediction)})
    info = {"out_of_fold": True, "folds": len(results), "selection": results[0]["selection"]}
    if cv.decision == "class1_threshold" and len(results) > 1:  # a fold's needs another's
        info["decision"] = _threshold_decision(predictions, results, cv)
    return write_run_outputs(
        oof, predictions, per_tile, info, cv.bootstrap_resamples, cv.bootstrap_seed, figures
    )


def _threshold_decision(predictions: list[TilePrediction], results: list[dict[str, Any]],
                        cv: CVConfig) -> dict[str, Any]:  # fmt: skip
    """The out-of-fold scores under the class-1 threshold decision, each fold's threshold
    chosen on the other folds' out-of-fold predictions, beside the arg-max's."""
    probabilities = {p.tile: p.probabilities for p in predictions}
    truths = {p.tile: p.truth for p in predictions}
    folds = [list(r["val_tiles"]) for r in results]
    labels, thresholds = cross_fitted(probabilities, truths, folds)
    confusions = [confusion(truths[t], labels[t]) for t in probabilities]
    scores = scores_of_confusion(np.sum(confusions, axis=0))
    return {
        "rule": "class1_threshold",
        "chosen_on": "each fold's threshold on the other folds' out-of-fold predictions",
        "thresholds": thresholds,
        "f1_class1": float(scores["f1_class1"]),
        "interval": bootstrap_intervals(confusions, cv.bootstrap_resamples,
                                        cv.bootstrap_seed).get("f1_class1"),
        "f1_class1_argmax": float(scores_of_confusion(
            np.sum([confusion(p.truth, p.labels) for p in predictions], axis=0))["f1_class1"]),
        "tile_confusions": {t: c.tolist() for t, c in zip(probabilities, confusions, strict=True)},
    }  # fmt: skip


def repeated_out_of_fold(
    oof: Path, model_dir: Path, results: list[dict[str, Any] | None], manifest: Manifest,
    processed_dir: Path, cv: CVConfig, figures: bool,
) -> dict[str, Any]:  # fmt: skip
    """The out-of-fold metrics of a model's units (`results`, in the order of their folders,
    None for one not finished, whose tiles are left out): of `oof` for one partition; with
    repetitions or seeds, each partition's in `oof/repeat_<r>[_seed_<s>]/` (without figures)
    and, returned, their pooling: each tile's confusion matrix summed over the partitions
    (every tile predicted once in each), scored and bootstrapped over tiles like one
    out-of-fold set. With `figures`, the confusion matrix and ROC curves (of every partition's
    probabilities) are drawn in `oof`."""
    sets = {
        oof_set_name(r, s, cv): [
            result for result in results[(r * cv.seeds + s) * cv.folds :][: cv.folds] if result
        ]
        for r in range(cv.repeats)
        for s in range(cv.seeds)
    }
    if cv.repeats * cv.seeds == 1:
        return _out_of_fold(oof, model_dir, *sets.values(), manifest, processed_dir, cv, figures)
    sets = {name: members for name, members in sets.items() if members}
    partitions = [
        _out_of_fold(oof / name, model_dir, members, manifest, processed_dir, cv, figures=False)
        for name, members in sets.items()
    ]
    pooled: dict[str, dict[str, Any]] = {}
    for metrics in partitions:
        for entry in metrics["tiles"]:
            matrix = np.array(entry["confusion_matrix"])
            if entry["tile"] in pooled:
                pooled[entry["tile"]]["confusion_matrix"] += matrix
            else:
                pooled[entry["tile"]] = {"tile": entry["tile"], "fold": entry["fold"],
                                         "truth_sha256": entry["truth_sha256"],
                                         "confusion_matrix": matrix}  # fmt: skip
    tiles = []
    for entry in pooled.values():
        scores = scores_of_confusion(entry["confusion_matrix"])
        tiles.append({**entry, **{k: float(v) for k, v in scores.items()},
                      "confusion_matrix": entry["confusion_matrix"].tolist()})  # fmt: skip
    matrices = np.array([t["confusion_matrix"] for t in tiles])
    overall = scores_of_confusion(matrices.sum(axis=0))
    if figures:
        _pooled_figures(oof, list(sets), matrices.sum(axis=0), manifest, processed_dir)
    record = bootstrap_record(cv.bootstrap_resamples, cv.bootstrap_seed, matrices)
    decisions = [m["decision"] for m in partitions if "decision" in m]
    return {
        **({"decision": _pooled_decision(decisions, cv)} if decisions else {}),
        "overall": {k: float(v) for k, v in overall.items()},
        "overall_interval": bootstrap_intervals(
            matrices, cv.bootstrap_resamples, cv.bootstrap_seed
        ),
        "bootstrap": record,
        "tiles": tiles,
        "repeats": [m["overall"] for m in partitions],
        "sets": list(sets),
    }


def _pooled_decision(decisions: list[dict[str, Any]], cv: CVConfig) -> dict[str, Any]:
    """The threshold decision's scores pooled over the partitions (each tile's counts summed),
    every partition's thresholds kept."""
    tiles: dict[str, np.ndarray] = {}
    for decision in decisions:
        for tile, matrix in decision["tile_confusions"].items():
            tiles[tile] = tiles.get(tile, 0) + np.array(matrix)
    argmax = [d["f1_class1_argmax"] for d in decisions]
    matrices = list(tiles.values())
    return {
        **{k: decisions[0][k] for k in ("rule", "chosen_on")},
        "thresholds": [t for d in decisions for t in d["thresholds"]],
        "f1_class1": float(scores_of_confusion(np.sum(matrices, axis=0))["f1_class1"]),
        "interval": bootstrap_intervals(matrices, cv.bootstrap_resamples,
                                        cv.bootstrap_seed).get("f1_class1"),
        "f1_class1_argmax_per_partition": argmax,
    }  # fmt: skip


def _pooled_figures(oof: Path, sets: list[str], matrix: np.ndarray, manifest: Manifest,
                    processed_dir: Path) -> None:  # fmt: skip
    """The pooled confusion matrix and the ROC curves of every partition's probabilities,
    drawn in `oof/` (each partition's own are in its folder)."""
    truths, probabilities = [], []
    for name in sets:
        for path in sorted((oof / name / "tiles").glob("*_probabilities.tif")):
            tile = path.name.removesuffix("_probabilities.tif")
            truths.append(np.load(processed_dir / manifest.tiles[tile].labels).ravel())
            probabilities.append(tifffile.imread(path).reshape(4, -1).T)
    title = f"out of fold, pooled over {len(sets)} partitions ({len(truths) // len(sets)} tiles)"
    plot_confusion_matrix(matrix, CLASS_TITLES, oof / "confusion_matrix.png", title)
    plot_roc_curves(np.concatenate(truths).astype(np.int64) - 1, np.concatenate(probabilities),
                    CLASS_NAMES, oof / "roc_curves.png", title)  # fmt: skip
