"""Write an evaluation's files: per-tile images, TIFFs, metrics, plots and the Kaggle CSV."""

from __future__ import annotations

import csv
import hashlib
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
from src.held_out import NOT_HELD_OUT, OPTIMISTIC
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


KAGGLE_FILE = "predictions.csv"


def check_kaggle_csv(path: Path, tiles: list[str]) -> str:
    """ValueError unless the Kaggle file holds one row per cell of `tiles` (256 each), each
    pixel id once and labels 1..4; what it holds, in one line."""
    with Path(path).open(newline="") as handle:
        rows = list(csv.reader(handle))
    header, body = rows[0], rows[1:]
    ids = [int(r[0]) for r in body]
    wanted = {(tile_number(t) - 1) * LABEL_GRID**2 + k for t in tiles for k in range(LABEL_GRID**2)}
    problems = []
    if header != ["pixelId", "predictions"]:
        problems.append(f"header {header}")
    if len(body) != len(tiles) * LABEL_GRID**2 or set(ids) != wanted or len(set(ids)) != len(ids):
        problems.append(f"{len(body)} rows for {len(tiles)} tile(s) of {LABEL_GRID**2} cells")
    if any(r[1] not in {"1", "2", "3", "4"} for r in body):
        problems.append("a prediction outside 1..4")
    if problems:
        raise ValueError(f"{path} is not a valid Kaggle submission: {'; '.join(problems)}")
    numbers = sorted(tile_number(t) for t in tiles)
    return (
        f"Kaggle submission: {path} ({len(body)} rows = {len(tiles)} tile(s) × "
        f"{LABEL_GRID**2} cells, pixelId = (tile − 1)·256 + row·16 + col; tiles "
        f"{', '.join(f'Tile{n}' for n in numbers)})"
    )


def write_tile_outputs(
    results_dir: Path, prediction: TilePrediction, rgb: np.ndarray | None, model: str,
    picture: bool = True, optimistic: bool = False,
) -> dict[str, Any]:  # fmt: skip
    """The tile's picture (unless not `picture`), label TIFF (1..4) and probability TIFF
    (4, 16, 16); its scores and confusion matrix, `optimistic` when the tile chose the model
    (said in its picture's title too)."""
    scores = tile_scores(prediction)
    if scores and optimistic:
        scores["optimistic"] = True
    tiles = results_dir / "tiles"
    if picture:
        plot_tile_prediction(
            rgb, prediction.truth, prediction.labels, prediction.tile,
            None if not scores else scores["f1_class1"],
            save_to=tiles / f"{prediction.tile}.png",
            probability=prediction.probabilities[0], model=model,
            flag=f"({OPTIMISTIC}: chose the model)" if scores and optimistic else "",
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


def truth_digest(truth: np.ndarray) -> str:
    """SHA-256 of a label grid (its shape and labels): "same ground truth" means equal ones."""
    grid = np.ascontiguousarray(truth, dtype=np.uint8)
    return hashlib.sha256(repr(grid.shape).encode() + grid.tobytes()).hexdigest()


def tile_scores(prediction: TilePrediction) -> dict[str, Any]:
    """A labelled tile's scores, confusion matrix (rows truth) and truth digest; {} without
    ground truth."""
    if prediction.truth is None:
        return {}
    return {
        **label_scores(prediction.truth, prediction.labels),
        "confusion_matrix": confusion(prediction.truth, prediction.labels).tolist(),
        "truth_sha256": truth_digest(prediction.truth),
    }


def write_run_outputs(
    results_dir: Path, predictions: list[TilePrediction], per_tile: list[dict[str, Any]],
    info: dict[str, Any], resamples: int, seed: int, figures: bool = True,
) -> dict[str, Any]:  # fmt: skip
    """metrics.json, confusion matrix, ROC curves, report and Kaggle CSV; returns the metrics.

    The overall scores get 95 % intervals over the labelled tiles (`resamples` bootstrap
    resamples drawn with `seed`; none with `resamples` 0 or too few tiles, said in
    `bootstrap`). Figure titles say OPTIMISTIC when `info`'s held-out record does. Without
    `figures`, the confusion matrix and ROC curves are not drawn (the matrix and the AUCs
    are in metrics.json either way)."""
    with atomic_path(results_dir / KAGGLE_FILE) as temporary, temporary.open("w") as out:
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
        if resamples:
            confusions = [confusion(p.truth, p.labels) for p in labelled]
            intervals = bootstrap_intervals(confusions, resamples, seed)
            if intervals:
                metrics["overall_interval"] = intervals
            metrics["bootstrap"] = bootstrap_record(resamples, seed, confusions)
        matrix = confusion_matrix(truth, predicted, labels=LABELS)
        metrics["confusion_matrix"] = matrix.tolist()
        if figures:
            title = figure_title(metrics, len(labelled))
            plot_confusion_matrix(matrix, CLASS_TITLES, results_dir / "confusion_matrix.png",
                                  title)  # fmt: skip
            plot_roc_curves(truth - 1, probabilities, CLASS_NAMES, results_dir / "roc_curves.png",
                            title)  # fmt: skip
        report = classification_report(
            truth, predicted, labels=LABELS, target_names=CLASS_TITLES, zero_division=0, digits=4
        )
        with atomic_path(results_dir / "classification_report.txt") as temporary:
            temporary.write_text(report)
    write_json(results_dir / "metrics.json", metrics)
    return metrics


def figure_title(metrics: dict[str, Any], tiles: int) -> str:
    """What a run figure shows: the split and tile count, OPTIMISTIC when the tiles chose
    the model."""
    optimistic = (metrics.get("held_out") or {}).get("optimistic")
    split = metrics.get("split", "out of fold" if metrics.get("out_of_fold") else "")
    return f"{split} ({tiles} tiles)" + (f" — {OPTIMISTIC}: these tiles chose the model"
                                         if optimistic else "")  # fmt: skip


def format_table(metrics: dict[str, Any]) -> str:
    """Per-tile and overall accuracy, macro IoU/F1 and the contest score, as a text table,
    with the interval over tiles (or why there is none) and the held-out verdict."""
    columns = ("accuracy", "iou_macro", "f1_macro", "f1_class1")
    rows = [(t["tile"] + ("*" if t.get("optimistic") else ""), t)
            for t in metrics["tiles"] if "accuracy" in t]  # fmt: skip
    if not rows:
        return f"no labelled tiles: {len(metrics['tiles'])} tile(s) predicted, none scored"
    held_out = metrics.get("held_out") or {}
    lines = [f"{'tile':<10}" + "".join(f"{c:>12}" for c in columns)]
    rows.append(("overall", metrics["overall"]))
    for name, values in rows:
        lines.append(f"{name:<10}" + "".join(f"{values[c]:>12.4f}" for c in columns))
    if held_out.get("label"):
        lines[-1] += f"  {held_out['label']}"
    interval = metrics.get("overall_interval")
    record = metrics.get("bootstrap") or {}
    if interval:
        lines.append(
            f"{'95% CI':<10}"
            + "".join(
                f"{interval[c][0]:>6.3f}–{interval[c][1]:<5.3f}" if c in interval else " " * 12
                for c in columns
            )
        )
        lines.append(f"(interval: {record['method']}, {record['resamples']} resamples of "
                     f"{record['tiles']} tiles)")  # fmt: skip
    elif record.get("note"):
        lines.append(f"({record['note']})")
    decision = metrics.get("decision")
    if decision:
        argmax = decision["f1_class1_argmax"]
        lines.append(
            f"decision: class 1 where its probability ≥ {decision['threshold']:.4f} (chosen on "
            f"{decision['chosen_on']}): f1_class1 {metrics['overall']['f1_class1']:.4f}; with "
            f"the arg-max: {argmax:.4f}"
        )
    if held_out.get("label") == NOT_HELD_OUT:
        lines.append(f"{NOT_HELD_OUT}: the model trained on these tiles (a fit diagnostic)")
    elif held_out.get("optimistic"):
        lines.append(f"* {held_out['reason']}")
    return "\n".join(lines)
