"""Figures for the evaluation script: per-tile predictions, confusion matrix and ROC curves.

Like `plot_utils`, every function builds a pyplot-free Figure with an Agg canvas, returns it
and saves it atomically when `save_to` is given.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from sklearn.metrics import roc_auc_score, roc_curve

from src.esd_data.sensors import N_CLASSES
from src.visualization.plot_utils import (
    check_labels,
    class_legend_handles,
    finish_figure,
    hide_ticks,
    new_figure,
    plot_ground_truth,
)

PANEL_WIDTH = 4.0
"""Inches of figure width per panel of the tile figure."""
ERROR_COLOURS = ("#f2f2f2", "#000000")
"""Error map colours: correct cells light grey, wrong cells black."""
ROC_COLOURS = ("#ff0000", "#0000ff", "#d4b400", "#b266ff")
"""ROC line colours: the contest's, with its yellow darkened to stay visible on white."""


def _score_text(score: float | None) -> str:
    if score is None or not math.isfinite(score):
        return "n/a"
    return f"{score:.3f}"


def plot_tile_prediction(
    rgb: np.ndarray | None,
    truth: np.ndarray | None,
    prediction: np.ndarray,
    tile_id: str,
    score: float | None,
    save_to: Path | str | None = None,
    probability: np.ndarray | None = None,
    model: str | None = None,
    flag: str = "",
) -> Figure:
    """Panels side by side: true colour, ground truth, prediction, class-1 probability and
    error map.

    `rgb` (H, W, 3) floats in [0, 1] (e.g. `plot_utils.true_colour`), `truth` (labels 1..4)
    and `probability` (the class-1 probability per cell) are optional; the error map (correct
    vs wrong cells) needs `truth`. The four-class legend sits below the panels; the title
    carries the tile id, the `model` that predicted it and, for a labelled tile, its class-1
    F1 `score` ("n/a" when None or not finite) and `flag` (OPTIMISTIC for a tile that chose
    the model). An unlabelled tile gets no score at all.
    """
    prediction = check_labels(prediction, "prediction")
    if truth is not None:
        truth = check_labels(truth, "truth")
        if truth.shape != prediction.shape:
            raise ValueError(
                f"truth shape {truth.shape} differs from prediction shape {prediction.shape}"
            )
    if rgb is not None:
        rgb = np.asarray(rgb)
        if rgb.ndim != 3 or rgb.shape[-1] != 3:
            raise ValueError(f"rgb must be an (H, W, 3) image, got shape {rgb.shape}")
        rgb = np.clip(np.nan_to_num(rgb.astype(np.float64)), 0.0, 1.0)
    n_panels = 1 + (rgb is not None) + 2 * (truth is not None) + (probability is not None)
    legend_columns = N_CLASSES if n_panels >= 3 else n_panels
    legend_rows = math.ceil(N_CLASSES / legend_columns)
    height = PANEL_WIDTH + 1.0 + 0.25 * legend_rows + 0.3 * (truth is not None)
    figure = new_figure((PANEL_WIDTH * n_panels, height), layout="constrained")
    axes = list(figure.subplots(1, n_panels, squeeze=False).ravel())
    if rgb is not None:
        ax = axes.pop(0)
        ax.imshow(rgb, interpolation="nearest")
        ax.set_title("Sentinel-2 true colour")
        hide_ticks(ax)
    if truth is not None:
        plot_ground_truth(truth, title="ground truth", ax=axes.pop(0), legend=False)
    plot_ground_truth(prediction, title="prediction", ax=axes.pop(0), legend=False)
    if probability is not None:
        ax = axes.pop(0)
        shown = ax.imshow(np.asarray(probability, dtype=np.float64), cmap="magma", vmin=0.0,
                          vmax=1.0, interpolation="nearest")  # fmt: skip
        figure.colorbar(shown, ax=ax, fraction=0.046, pad=0.02)
        ax.set_title("class-1 probability")
        hide_ticks(ax)
    if truth is not None:
        _draw_errors(axes.pop(0), truth, prediction)
    figure.legend(
        handles=class_legend_handles(),
        loc="outside lower center",
        ncols=legend_columns,
        fontsize=10 if n_panels >= 3 else 9,
        frameon=False,
    )
    title = tile_id if truth is None else f"{tile_id} — class-1 F1 {_score_text(score)}"
    title += f" {flag}" if flag else ""
    figure.suptitle(title + (f" — {model}" if model else ""), fontsize=14)
    return finish_figure(figure, save_to)


def _draw_errors(ax: Axes, truth: np.ndarray, prediction: np.ndarray) -> None:
    wrong = truth != prediction
    ax.imshow(
        wrong.astype(np.int64),
        cmap=ListedColormap(list(ERROR_COLOURS)),
        vmin=0,
        vmax=1,
        interpolation="nearest",
    )
    n_wrong = int(wrong.sum())
    ax.set_title(f"errors: {n_wrong} of {wrong.size} cells")
    hide_ticks(ax)
    ax.legend(
        handles=[
            Patch(facecolor=ERROR_COLOURS[0], edgecolor="black", label="correct"),
            Patch(facecolor=ERROR_COLOURS[1], edgecolor="black", label="wrong"),
        ],
        loc="upper center",
        bbox_to_anchor=(0.5, -0.02),
        ncols=2,
        fontsize=9,
        frameon=False,
    )


def row_normalise(matrix: np.ndarray) -> np.ndarray:
    """Each row divided by its sum (rows = true class); an all-zero row stays 0, no warning."""
    counts = np.asarray(matrix, dtype=np.float64)
    sums = counts.sum(axis=1, keepdims=True)
    out = np.zeros_like(counts)
    np.divide(counts, sums, out=out, where=sums > 0)
    return out


def _wrap(names: Sequence[str], width: int = 14) -> list[str]:
    return ["\n".join(textwrap.wrap(name, width)) or name for name in names]


def _annotated_matrix(
    ax: Axes, values: np.ndarray, vmax: float, fmt: str, names: list[str], title: str
) -> None:
    ax.imshow(values, cmap="Blues", vmin=0.0, vmax=vmax, interpolation="nearest")
    for (row, col), value in np.ndenumerate(values):
        ax.text(
            col,
            row,
            format(value, fmt),
            ha="center",
            va="center",
            fontsize=10,
            color="white" if value > 0.55 * vmax else "black",
        )
    ticks = np.arange(len(names))
    ax.set_xticks(ticks, names, fontsize=8)
    ax.set_yticks(ticks, names, fontsize=8)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)


def plot_confusion_matrix(
    matrix: np.ndarray, class_names: Sequence[str], save_to: Path | str | None = None,
    title: str = "",
) -> Figure:  # fmt: skip
    """Confusion matrix as counts (left) and row-normalised (right; rows = true class), under
    `title` (what was scored, OPTIMISTIC when its tiles chose the model).

    Each cell is annotated with its value (counts as integers, fractions with two decimals);
    a true class without samples gives a row of zeros.
    """
    counts = np.asarray(matrix)
    k = len(class_names)
    if counts.shape != (k, k):
        raise ValueError(f"matrix must be ({k}, {k}) for {k} class names, got {counts.shape}")
    if not np.all(np.isfinite(counts)) or np.any(counts < 0):
        raise ValueError("matrix must hold finite, non-negative counts")
    names = _wrap(class_names)
    figure = new_figure((12.0, 5.6), layout="constrained")
    left, right = figure.subplots(1, 2)
    integer = np.all(counts == np.round(counts))
    total = counts.sum()
    _annotated_matrix(
        left,
        counts.astype(np.float64),
        max(float(counts.max()), 1.0),
        ".0f" if integer else ".1f",
        names,
        f"counts (total {total:.0f})" if integer else f"counts (total {total:.1f})",
    )
    _annotated_matrix(
        right, row_normalise(counts), 1.0, ".2f", names, "row-normalised (recall per class)"
    )
    if title:
        figure.suptitle(title, fontsize="medium")
    return finish_figure(figure, save_to)


def _check_scores(y_true: np.ndarray, probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true)
    p = np.asarray(probabilities, dtype=np.float64)
    if y.ndim != 1 or p.ndim != 2 or p.shape[0] != y.shape[0]:
        raise ValueError(
            f"y_true must be (N,) and probabilities (N, K), got {y.shape} and {p.shape}"
        )
    if y.size and (y.min() < 0 or y.max() >= p.shape[1]):
        raise ValueError(f"y_true must hold class indices 0..{p.shape[1] - 1}")
    return y.astype(np.int64), p


def one_vs_rest_auc(y_true: np.ndarray, probabilities: np.ndarray) -> dict[int, float | None]:
    """ROC AUC of each class k against the rest from `probabilities[:, k]`.

    `y_true` holds class indices 0..K-1. A class that no sample has, or that every sample
    has, has no defined AUC: it maps to None.
    """
    y, p = _check_scores(y_true, probabilities)
    aucs: dict[int, float | None] = {}
    for k in range(p.shape[1]):
        positives = y == k
        if positives.all() or not positives.any():
            aucs[k] = None
        else:
            aucs[k] = float(roc_auc_score(positives, p[:, k]))
    return aucs


def plot_roc_curves(
    y_true: np.ndarray,
    probabilities: np.ndarray,
    class_names: Sequence[str],
    save_to: Path | str | None = None,
    title: str = "",
) -> Figure:
    """One-vs-rest ROC curve per class, its AUC in the legend; `title` above the panel's.

    A class absent from `y_true` is listed as "(absent)" (and one held by every sample as
    "(every sample)") without a curve.
    """
    y, p = _check_scores(y_true, probabilities)
    if len(class_names) != p.shape[1]:
        raise ValueError(f"{len(class_names)} class names for {p.shape[1]} probability columns")
    aucs = one_vs_rest_auc(y, p)
    colours = ROC_COLOURS if p.shape[1] <= len(ROC_COLOURS) else [None] * p.shape[1]
    figure = new_figure((6.4, 6.0), layout="constrained")
    ax = figure.add_subplot()
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="chance")
    for k, name in enumerate(class_names):
        auc = aucs[k]
        if auc is None:
            why = "every sample" if y.size and np.all(y == k) else "absent"
            ax.plot([], [], color=colours[k], linestyle=":", label=f"{k + 1} {name} ({why})")
            continue
        fpr, tpr, _ = roc_curve(y == k, p[:, k])
        ax.plot(fpr, tpr, color=colours[k], linewidth=2, label=f"{k + 1} {name} (AUC {auc:.3f})")
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(f"one-vs-rest ROC ({y.size} samples)")
    if title:
        figure.suptitle(title, fontsize="medium")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=9)
    return finish_figure(figure, save_to)


def plot_date_weights(
    date_weights: dict[str, dict[str, float]],
    tile_id: str,
    save_to: Path | str | None = None,
) -> Figure:
    """One bar chart per sensor: the mean attention weight of each date over the tile.

    A date the model learned to ignore (a cloudy optical date, an empty night) has a short
    bar; with T dates the uniform weight 1 / T is drawn as a dashed line.
    """
    sensors = list(date_weights)
    figure = new_figure((3.2 * len(sensors), 3.0), layout="constrained")
    axes = figure.subplots(1, len(sensors), squeeze=False)[0]
    for axis, sensor in zip(axes, sensors, strict=True):
        dates = list(date_weights[sensor])
        values = [date_weights[sensor][d] for d in dates]
        axis.bar(range(len(dates)), values, color="tab:blue")
        axis.axhline(1 / len(dates), color="tab:gray", linestyle="--", linewidth=1)
        axis.set_xticks(range(len(dates)), [d[5:] for d in dates], rotation=60, fontsize="small")
        axis.set_ylim(0, max(1.0 / len(dates), *values) * 1.15)
        axis.set_title(sensor)
        axis.set_ylabel("mean attention weight")
    figure.suptitle(f"{tile_id}: which dates the model relied on")
    return finish_figure(figure, save_to)


CV_SCORES = ("f1_class1", "f1_macro", "iou_macro", "accuracy")
"""The headline scores of the cross-validation figure, one panel each."""


def plot_cross_validation(summaries: Sequence[dict], save_to: Path | str | None = None) -> Figure:
    """A 2×2 grid, one panel per headline score, sized for a page whatever the number of
    models; per model: mean ± std (bar and whisker), each fold's score joined across models
    by a line (fold k of one model beside fold k of the others, labelled as in the tables:
    fold 0 … K−1), and the out-of-fold score with its 95 % interval over tiles (diamond,
    beside the bar so that the whisker never hides it); OPTIMISTIC models are named so."""
    names = [
        s.get("name", s["model_type"]) + (" (OPTIMISTIC)" if s.get("optimistic") else "")
        for s in summaries
    ]
    width = min(11.0, 3.0 + 1.2 * len(summaries))
    many = len(summaries) > 3
    figure = new_figure((width, 6.8 + (1.2 if many else 0.0)), layout="constrained")
    axes = figure.subplots(2, 2, squeeze=False).ravel()
    x = np.arange(len(summaries))
    n_folds = len(summaries[0]["folds"])
    fold_colours = [f"C{k % 10}" for k in range(n_folds)]
    for axis, score in zip(axes, CV_SCORES, strict=True):
        means = [s["mean"][score] for s in summaries]
        stds = [s["std"][score] for s in summaries]
        axis.bar(x - 0.12, means, width=0.4, color="tab:blue", alpha=0.3, yerr=stds, capsize=5,
                 label="mean ± std")  # fmt: skip
        for k in range(n_folds):
            values = [s["folds"][k]["scores"][score] for s in summaries]
            axis.plot(x - 0.12, values, marker="o", markersize=3, linewidth=0.8,
                      color=fold_colours[k], alpha=0.8,
                      label=f"fold {k}" if n_folds <= 10 else None)  # fmt: skip
        oof = np.array([s["out_of_fold"][score] for s in summaries])
        intervals = [(s.get("out_of_fold_interval") or {}).get(score) for s in summaries]
        errors = np.array(
            [[v - i[0], i[1] - v] if i else [0.0, 0.0] for v, i in zip(oof, intervals, strict=True)]
        ).T
        axis.errorbar(x + 0.22, oof, yerr=errors, fmt="D", color="tab:red", capsize=3,
                      markersize=5, zorder=4, label="out of fold (95 % CI)")  # fmt: skip
        axis.set_xticks(x, names, rotation=35 if many else 0, ha="right" if many else "center",
                        fontsize="small")  # fmt: skip
        axis.set_ylim(0, 1)
        axis.set_title(score, fontsize="medium")
    axes[0].legend(fontsize="x-small", loc="lower left", ncols=2)
    selection = summaries[0].get("selection", "outer")
    warning = ", OPTIMISTIC" if any(s.get("optimistic") for s in summaries) else ""
    figure.suptitle(
        f"{n_folds}-fold cross-validation (epoch selection: {selection}{warning})",
        fontsize="medium",
    )
    return finish_figure(figure, save_to)


def plot_importance(
    rows: Sequence[dict], grouping: str, baseline: float, save_to: Path | str | None = None,
    label: str = "",
) -> Figure:  # fmt: skip
    """Horizontal bars: each group's drop of class-1 F1 when it is permuted, with its 95 %
    interval over tiles (none below the tiles an interval needs), most important on top;
    `label` (OPTIMISTIC) in the title when the scored tiles chose the model."""
    names = [row["group"] + (" (+ derived)" if row.get("derived") else "") for row in rows]
    drops = np.array([row["f1_class1"]["drop"] for row in rows])
    intervals = [row["f1_class1"]["interval"] for row in rows]
    errors = None
    if all(interval is not None for interval in intervals):
        low, high = np.array(intervals).T
        errors = np.vstack([np.maximum(drops - low, 0), np.maximum(high - drops, 0)])
    figure = new_figure((6.0, 1.2 + 0.28 * len(rows)), layout="constrained")
    axis = figure.subplots()
    y = np.arange(len(rows))[::-1]
    axis.barh(y, drops, xerr=errors, color="tab:blue", alpha=0.7, capsize=3)
    axis.axvline(0, color="black", linewidth=0.8)
    axis.set_yticks(y, names, fontsize="small")
    what = "95 % interval over tiles" if errors is not None else "too few tiles for an interval"
    axis.set_xlabel(f"drop of f1_class1 when permuted ({what})")
    flag = f" {label}" if label else ""
    axis.set_title(f"permutation importance by {grouping} (baseline f1_class1 {baseline:.3f}"
                   f"{flag})", fontsize="medium")  # fmt: skip
    return finish_figure(figure, save_to)
