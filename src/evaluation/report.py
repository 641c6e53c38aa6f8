"""Write an evaluation's files: per-tile images, TIFFs, metrics, plots and the Kaggle CSV."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
from sklearn.metrics import classification_report, confusion_matrix

from src.atomic import atomic_path, write_json
from src.esd_data.manifest import Manifest
from src.esd_data.reader import tile_number
from src.esd_data.sensors import CLASS_NAMES, LABEL_GRID
from src.evaluation.bootstrap import bootstrap_intervals, bootstrap_record, confusion
from src.evaluation.evaluator import TilePrediction
from src.evaluation.scores import LABELS, label_scores
from src.visualization.evaluation_plots import (
    one_vs_rest_auc,
    plot_confusion_matrix,
    plot_date_weights,
    plot_roc_curves,
    plot_tile_prediction,
)
from src.visualization.plot_utils import true_colour

TRUE_COLOUR_BANDS = ("B04", "B03", "B02")
AVERAGING = (
    "f1_class1 is the contest's score (class 1 against the rest); *_macro are unweighted means "
    "over the classes present in the truth or the prediction (classification_report.txt "
    "averages over all four classes, an absent class counting 0); auc_macro over the classes "
    "that have both positive and negative cells"
)
CLASS_TITLES = [f"{label} {name}" for label, name in zip(LABELS, CLASS_NAMES, strict=True)]


def true_colour_image(processed_dir: Path, manifest: Manifest, tile: str) -> np.ndarray | None:
    """Sentinel-2 B04/B03/B02 of the tile's clearest date (least bright blue), stretched."""
    dates = sorted({n.split("/")[1] for n in manifest.channels if n.startswith("sentinel2/")})
    if not dates:
        return None
    image = np.load(processed_dir / manifest.tiles[tile].image, mmap_mode="r")
    blue = [image[manifest.channels.index(f"sentinel2/{d}/B02")].mean() for d in dates]
    date = dates[int(np.argmin(blue))]
    indices = [manifest.channels.index(f"sentinel2/{date}/{band}") for band in TRUE_COLOUR_BANDS]
    return true_colour(np.asarray(image[indices], dtype=np.float32))


def write_tiff(target: Path, array: np.ndarray) -> None:
    """Atomically write an uncompressed TIFF."""
    with atomic_path(target) as temporary:
        tifffile.imwrite(temporary, array, photometric="minisblack")


def kaggle_rows(predictions: list[TilePrediction]) -> list[tuple[int, int]]:
    """(pixelId, prediction) for every cell: pixelId = (tile − 1)·256 + row·16 + col."""
    rows = []
    for prediction in predictions:
        base = (tile_number(prediction.tile) - 1) * LABEL_GRID * LABEL_GRID
        for index, label in enumerate(prediction.labels.ravel()):
            rows.append((base + index, int(label)))
    return rows


def write_tile_outputs(
    results_dir: Path, prediction: TilePrediction, rgb: np.ndarray | None, model: str,
    picture: bool = True,
) -> dict[str, Any]:  # fmt: skip
    """The tile's picture (unless not `picture`), label TIFF (1..4) and probability TIFF
    (4, 16, 16); its scores and confusion matrix."""
    scores = tile_scores(prediction)
    tiles = results_dir / "tiles"
    if picture:
        plot_tile_prediction(
            rgb, prediction.truth, prediction.labels, prediction.tile,
            None if not scores else scores["f1_class1"],
            save_to=tiles / f"{prediction.tile}.png",
            probability=prediction.probabilities[0], model=model,
        )  # fmt: skip
    write_tiff(tiles / f"{prediction.tile}_prediction.tif", prediction.labels)
    write_tiff(tiles / f"{prediction.tile}_probabilities.tif", prediction.probabilities)
    extra: dict[str, Any] = {}
    if prediction.date_weights and picture:
        plot_date_weights(
            prediction.date_weights, prediction.tile, tiles / f"{prediction.tile}_attention.png"
        )
    if prediction.date_weights:
        extra["date_weights"] = prediction.date_weights
    return {"tile": prediction.tile, **scores, **extra}


def tile_scores(prediction: TilePrediction) -> dict[str, Any]:
    """A labelled tile's scores and confusion matrix (rows truth); {} without ground truth."""
    if prediction.truth is None:
        return {}
    return {
        **label_scores(prediction.truth, prediction.labels),
        "confusion_matrix": confusion(prediction.truth, prediction.labels).tolist(),
    }


def write_run_outputs(
    results_dir: Path, predictions: list[TilePrediction], per_tile: list[dict[str, Any]],
    info: dict[str, Any], resamples: int, seed: int, figures: bool = True,
) -> dict[str, Any]:  # fmt: skip
    """metrics.json, confusion matrix, ROC curves, report and Kaggle CSV; returns the metrics.

    The overall scores get 95 % intervals over the labelled tiles (`resamples` bootstrap
    resamples drawn with `seed`; none with `resamples` 0 or a single tile). Without
    `figures`, the confusion matrix and ROC curves are not drawn (the matrix and the AUCs
    are in metrics.json either way)."""
    with atomic_path(results_dir / "predictions.csv") as temporary, temporary.open("w") as out:
        writer = csv.writer(out)
        writer.writerow(["pixelId", "predictions"])
        writer.writerows(kaggle_rows(predictions))
    labelled = [p for p in predictions if p.truth is not None]
    metrics: dict[str, Any] = {**info, "averaging": AVERAGING, "tiles": per_tile}
    if labelled:
        truth = np.concatenate([p.truth.ravel() for p in labelled])
        predicted = np.concatenate([p.labels.ravel() for p in labelled])
        probabilities = np.concatenate([p.probabilities.reshape(4, -1).T for p in labelled])
        metrics["overall"] = label_scores(truth, predicted)
        aucs = one_vs_rest_auc(truth - 1, probabilities)
        metrics["overall"].update({f"auc_class{k + 1}": v for k, v in aucs.items()})
        present = [v for v in aucs.values() if v is not None]
        metrics["overall"]["auc_macro"] = float(np.mean(present)) if present else None
        if resamples and len(labelled) > 1:
            confusions = [confusion(p.truth, p.labels) for p in labelled]
            metrics["overall_interval"] = bootstrap_intervals(confusions, resamples, seed)
            metrics["bootstrap"] = bootstrap_record(resamples, seed, len(labelled))
        matrix = confusion_matrix(truth, predicted, labels=LABELS)
        metrics["confusion_matrix"] = matrix.tolist()
        if figures:
            plot_confusion_matrix(matrix, CLASS_TITLES, results_dir / "confusion_matrix.png")
            plot_roc_curves(truth - 1, probabilities, CLASS_NAMES, results_dir / "roc_curves.png")
        report = classification_report(
            truth, predicted, labels=LABELS, target_names=CLASS_TITLES, zero_division=0, digits=4
        )
        with atomic_path(results_dir / "classification_report.txt") as temporary:
            temporary.write_text(report)
    write_json(results_dir / "metrics.json", metrics)
    return metrics


def format_table(metrics: dict[str, Any]) -> str:
    """Per-tile and overall accuracy, macro IoU/F1 and the contest score, as a text table."""
    columns = ("accuracy", "iou_macro", "f1_macro", "f1_class1")
    lines = [f"{'tile':<10}" + "".join(f"{c:>12}" for c in columns)]
    rows = [(t["tile"], t) for t in metrics["tiles"] if "accuracy" in t]
    if "overall" in metrics:
        rows.append(("overall", metrics["overall"]))
    for name, values in rows:
        lines.append(f"{name:<10}" + "".join(f"{values[c]:>12.4f}" for c in columns))
    interval = metrics.get("overall_interval")
    if interval:
        lines.append(
            f"{'95% CI':<10}"
            + "".join(
                f"{interval[c][0]:>6.3f}–{interval[c][1]:<5.3f}" if c in interval else " " * 12
                for c in columns
            )
        )
        lines.append(f"(interval: {metrics['bootstrap']['method']}, "
                     f"{metrics['bootstrap']['resamples']} resamples of "
                     f"{metrics['bootstrap']['tiles']} tiles)")  # fmt: skip
    return "\n".join(lines)
