"""A cross-validation's summary: per fold, mean ± std and out-of-fold scores, the leaderboard,
each labelled with the selection rule that produced it (`summary.json`, `.csv`, `.png`)."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import numpy as np

from src.atomic import atomic_path, write_json
from src.cross_validation.config import OPTIMISTIC, SELECTION_LABELS, CVConfig
from src.cross_validation.variants import Variant
from src.evaluation.bootstrap import bootstrap_record
from src.evaluation.comparison import compare_pair, cv_scored_run, format_pairs
from src.evaluation.cv_record import SUMMARY_FILE
from src.visualization.evaluation_plots import plot_cross_validation
from src.visualization.figure_output import figure_file

SCORES = ("f1_class1", "accuracy", "iou_macro", "f1_macro")


def model_summary(variant: Variant, results: list[dict[str, Any]], oof: dict[str, Any],
                  selection: str) -> dict[str, Any]:  # fmt: skip
    """One model's folds, mean and sample std (ddof=1) over them, and its OOF scores with
    their intervals over tiles (`oof` is its out-of-fold metrics)."""
    values = {k: np.array([r["scores"][k] for r in results]) for k in SCORES}
    return {
        "name": variant.name,
        "model_type": variant.config.model_type,
        "bands": variant.config.bands,
        "reference": variant.reference,
        "selection": selection,
        "optimistic": selection == OPTIMISTIC,
        "folds": results,
        "mean": {k: float(v.mean()) for k, v in values.items()},
        "std": {k: float(v.std(ddof=1)) for k, v in values.items()},
        "out_of_fold": {k: oof["overall"][k] for k in SCORES},
        "out_of_fold_interval": oof.get("overall_interval"),
        "out_of_fold_tiles": oof["tiles"],
        "out_of_fold_repeats": oof.get("repeats"),
    }


def pair_models(summaries: list[dict[str, Any]], cv: CVConfig) -> list[dict[str, Any]]:
    """Paired differences on the same folds and tiles: each ablation against its full model,
    and every pair of full models (better minus worse, in leaderboard order)."""
    runs = {
        s["name"]: cv_scored_run(s["name"], s["folds"], s["out_of_fold_tiles"], s["name"])
        for s in summaries
    }
    full = [s["name"] for s in summaries if s["reference"] is None]
    pairs = [(a, b) for k, a in enumerate(full) for b in full[k + 1 :]]
    pairs += [(s["name"], s["reference"]) for s in summaries if s["reference"] is not None]
    return [
        compare_pair(runs[a], runs[b], cv.bootstrap_resamples, cv.bootstrap_seed) for a, b in pairs
    ]


def _interval_text(interval: list[float] | None) -> str:
    return "" if not interval else f" [{interval[0]:.4f}, {interval[1]:.4f}]"


def format_summary(summaries: list[dict[str, Any]], pairs: list[dict[str, Any]]) -> str:
    """Per fold, mean ± std and out-of-fold scores (with 95 % intervals over tiles), the
    leaderboard, then the paired differences."""
    selection = summaries[0]["selection"]
    lines = [f"selection {SELECTION_LABELS[selection]}"]
    for summary in summaries:
        lines.append(f"{summary['name']}:")
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
        repeats = summary.get("out_of_fold_repeats")
        label = "OOF" if not repeats else f"OOF pooled ×{len(repeats)}"
        lines.append(
            f"  {label:<19}" + "".join(f"{summary['out_of_fold'][k]:>12.4f}" for k in SCORES)
        )
        interval = summary.get("out_of_fold_interval")
        if interval:
            lines.append(
                f"  {'OOF 95% CI':<19}"
                + "".join(f"{interval[k][0]:>6.3f}–{interval[k][1]:<5.3f}" for k in SCORES)
            )
    if len(summaries) > 1:
        lines.append(
            f"leaderboard (mean f1_class1 over the folds; OOF with its 95 % interval over tiles; "
            f"selection {selection}):"
        )
        for rank, summary in enumerate(summaries, start=1):
            mean, std = summary["mean"]["f1_class1"], summary["std"]["f1_class1"]
            oof = summary["out_of_fold"]["f1_class1"]
            interval = (summary.get("out_of_fold_interval") or {}).get("f1_class1")
            lines.append(
                f"  {rank}. {summary['name']:<28} {mean:.4f} ± {std:.4f}  (OOF {oof:.4f}"
                f"{_interval_text(interval)})"
            )
    if pairs:
        lines.append(format_pairs(pairs))
    if selection == OPTIMISTIC:
        lines.append(
            "these scores are OPTIMISTIC: each fold's epoch was chosen on the tiles it is scored "
            "on (use --selection inner or last for held-out scores)"
        )
    return "\n".join(lines)


def write_summary(root: Path, summaries: list[dict[str, Any]], pairs: list[dict[str, Any]],
                  plan: dict[str, Any], cv: CVConfig) -> str:  # fmt: skip
    """Write `summary.json`, `summary.csv` and `summary.png`; the printed table and paths."""
    selection = summaries[0]["selection"]
    tiles = len(summaries[0]["out_of_fold_tiles"])
    write_json(
        root / SUMMARY_FILE,
        {
            "selection": selection,
            "selection_rule": SELECTION_LABELS[selection],
            "optimistic": selection == OPTIMISTIC,
            "configuration_hash": plan["configuration_hash"],
            "plan": plan,
            "bootstrap": bootstrap_record(cv.bootstrap_resamples, cv.bootstrap_seed, tiles),
            "models": summaries,
            "pairs": pairs,
        },
    )
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["model", "model_type", "selection", "fold", *SCORES])
    for summary in summaries:
        name, model_type = summary["name"], summary["model_type"]
        for result in summary["folds"]:
            writer.writerow([name, model_type, selection, result["fold"],
                             *(result["scores"][k] for k in SCORES)])  # fmt: skip
        rows = {row: summary[row] for row in ("mean", "std", "out_of_fold")}
        interval = summary.get("out_of_fold_interval") or {}
        if interval:
            rows["out_of_fold_low"] = {k: interval[k][0] for k in SCORES}
            rows["out_of_fold_high"] = {k: interval[k][1] for k in SCORES}
        for row, values in rows.items():
            writer.writerow([name, model_type, selection, row, *(values[k] for k in SCORES)])
    with atomic_path(root / "summary.csv") as temporary:
        temporary.write_text(buffer.getvalue())
    plot_cross_validation(summaries, root / "summary.png")
    return (
        format_summary(summaries, pairs)
        + f"\nsummary: {root / SUMMARY_FILE}, {root / 'summary.csv'}, "
        f"{figure_file(root / 'summary.png')}"
    )
