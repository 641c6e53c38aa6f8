"""A cross-validation's summary: per fold, mean ± std and out-of-fold scores, the leaderboard,
each labelled with the selection rule that produced it (`summary.json`, `.csv`, `.png`)."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import numpy as np

from src.atomic import atomic_path, write_json
from src.cross_validation.config import OPTIMISTIC, SELECTION_LABELS
from src.visualization.evaluation_plots import plot_cross_validation

SCORES = ("f1_class1", "accuracy", "iou_macro", "f1_macro")


def model_summary(model: str, results: list[dict[str, Any]], oof: dict[str, Any],
                  selection: str) -> dict[str, Any]:  # fmt: skip
    """One model's folds, mean and sample std (ddof=1) over them, and its OOF scores."""
    values = {k: np.array([r["scores"][k] for r in results]) for k in SCORES}
    return {
        "model_type": model,
        "selection": selection,
        "optimistic": selection == OPTIMISTIC,
        "folds": results,
        "mean": {k: float(v.mean()) for k, v in values.items()},
        "std": {k: float(v.std(ddof=1)) for k, v in values.items()},
        "out_of_fold": {k: oof[k] for k in SCORES},
    }


def format_summary(summaries: list[dict[str, Any]]) -> str:
    """Per fold, mean ± std and out-of-fold scores, then the leaderboard."""
    selection = summaries[0]["selection"]
    lines = [f"selection {SELECTION_LABELS[selection]}"]
    for summary in summaries:
        lines.append(f"{summary['model_type']}:")
        lines.append(f"  {'fold':<6}{'epoch':>6}{'tiles':>7}" + "".join(f"{k:>12}" for k in SCORES))
        for result in summary["folds"]:
            lines.append(
                f"  {result['fold']:<6}{result['selected_epoch']:>6}{len(result['val_tiles']):>7}"
                + "".join(f"{result['scores'][k]:>12.4f}" for k in SCORES)
            )
        mean, std = summary["mean"], summary["std"]
        lines.append(
            f"  {'mean±std':<19}" + "".join(f"{mean[k]:>6.3f}±{std[k]:<5.3f}" for k in SCORES)
        )
        lines.append(
            f"  {'OOF':<19}" + "".join(f"{summary['out_of_fold'][k]:>12.4f}" for k in SCORES)
        )
    if len(summaries) > 1:
        lines.append(f"leaderboard (mean f1_class1 over the folds; selection {selection}):")
        for rank, summary in enumerate(summaries, start=1):
            mean, std = summary["mean"]["f1_class1"], summary["std"]["f1_class1"]
            oof = summary["out_of_fold"]["f1_class1"]
            lines.append(
                f"  {rank}. {summary['model_type']:<18} {mean:.4f} ± {std:.4f}  (OOF {oof:.4f})"
            )
    if selection == OPTIMISTIC:
        lines.append(
            "these scores are OPTIMISTIC: each fold's epoch was chosen on the tiles it is scored "
            "on (use --selection inner or last for held-out scores)"
        )
    return "\n".join(lines)


def write_summary(root: Path, summaries: list[dict[str, Any]], plan: dict[str, Any]) -> str:
    """Write `summary.json`, `summary.csv` and `summary.png`; the printed table and paths."""
    selection = summaries[0]["selection"]
    write_json(
        root / "summary.json",
        {
            "selection": selection,
            "selection_rule": SELECTION_LABELS[selection],
            "optimistic": selection == OPTIMISTIC,
            "configuration_hash": plan["configuration_hash"],
            "plan": plan,
            "models": summaries,
        },
    )
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["model_type", "selection", "fold", *SCORES])
    for summary in summaries:
        for result in summary["folds"]:
            writer.writerow([summary["model_type"], selection, result["fold"],
                             *(result["scores"][k] for k in SCORES)])  # fmt: skip
        for row in ("mean", "std", "out_of_fold"):
            values = summary[row]
            writer.writerow([summary["model_type"], selection, row, *(values[k] for k in SCORES)])
    with atomic_path(root / "summary.csv") as temporary:
        temporary.write_text(buffer.getvalue())
    plot_cross_validation(summaries, root / "summary.png")
    return (
        format_summary(summaries)
        + f"\nsummary: {root / 'summary.json'}, {root / 'summary.csv'}, {root / 'summary.png'}"
    )
