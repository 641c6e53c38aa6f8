"""Learning curves from Lightning's `metrics.csv`: per-epoch loss and class-1 F1, train and val.

One figure holds one or more runs (all folds of a cross-validated model, say), each a line
in the run's colour: solid for training, dashed for validation.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from pathlib import Path

from matplotlib.figure import Figure

from src.visualization.plot_utils import finish_figure, new_figure

CURVES = ("loss", "f1_class1")
"""The quantities drawn, each in its own panel, as `train_*` and `val_*`."""


def epoch_metrics(metrics_csv: Path) -> dict[str, list[tuple[int, float]]]:
    """Column → [(epoch, value)] for the epoch-level `train_*`/`val_*` columns of `CURVES`
    (Lightning writes step rows and epoch rows into one file; empty cells are skipped)."""
    series: dict[str, list[tuple[int, float]]] = {}
    with Path(metrics_csv).open(newline="") as handle:
        for row in csv.DictReader(handle):
            if not row.get("epoch"):
                continue
            for stage in ("train", "val"):
                for curve in CURVES:
                    value = row.get(f"{stage}_{curve}")
                    if value:
                        series.setdefault(f"{stage}_{curve}", []).append(
                            (int(row["epoch"]), float(value))
                        )
    return series


def plot_learning_curves(
    runs: Mapping[str, Path], title: str, save_to: Path | str | None = None,
    val_label: str = "val",
) -> Figure:  # fmt: skip
    """Loss and class-1 F1 per epoch of each run (`label → metrics.csv`); `val_label` names
    what the validation curve was computed on (a cross-validation's `inner val` split)."""
    figure = new_figure((9.0, 3.4), layout="constrained")
    axes = figure.subplots(1, len(CURVES), squeeze=False)[0]
    for index, (label, path) in enumerate(runs.items()):
        series = epoch_metrics(path)
        colour = f"C{index % 10}"
        for axis, curve in zip(axes, CURVES, strict=True):
            for stage, style, name in (("train", "-", "train"), ("val", "--", val_label)):
                points = series.get(f"{stage}_{curve}", [])
                if points:
                    epochs, values = zip(*points, strict=True)
                    axis.plot(epochs, values, style, color=colour, marker=".",
                              label=f"{label} {name}")  # fmt: skip
    for axis, curve in zip(axes, CURVES, strict=True):
        axis.set_xlabel("epoch")
        axis.set_ylabel(curve)
        axis.set_title(curve, fontsize="medium")
        if curve == "f1_class1":
            axis.set_ylim(0, 1)
    axes[-1].legend(fontsize="x-small", loc="best")
    figure.suptitle(title, fontsize="medium")
    return finish_figure(figure, save_to)
