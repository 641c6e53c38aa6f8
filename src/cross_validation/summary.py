"""A cross-validation's summary: per fold, mean ± std and out-of-fold scores, the leaderboard,
each labelled with the selection rule that produced it and its held-out ledger's verdict
(`summary.json`, `.csv`, `.png`). Every leaderboard is ordered by one headline statistic, the
pooled out-of-fold class-1 F1, and every headline score has its interval over tiles."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import numpy as np

from src.atomic import atomic_path, write_json
from src.cross_validation.config import SELECTION_LABELS, CVConfig
from src.evaluation.bootstrap import INTERVAL_SCORES
from src.evaluation.comparison import compare_pair, cv_scored_run, format_pairs, holm
from src.evaluation.cv_record import HYPERPARAMETERS_CHOSEN, SUMMARY_FILE
from src.held_out import OPTIMISTIC, Ledger, Scoring
from src.visualization.evaluation_plots import plot_cross_validation
from src.visualization.figure_output import figure_file

SCORES = ("f1_class1", "accuracy", "iou_macro", "f1_macro")
PARTIAL_STEM = "partial_summary"
"""The summary of a cross-validation with units missing: `partial_summary.json` and `.csv`
(never `summary.json`, which its readers take for the complete one)."""


def oof_ledger(results: list[dict[str, Any]], plan: dict[str, Any]) -> Ledger:
    """The held-out ledger of a model's out-of-fold scores: each fold's checkpoint scoring its
    held-out tiles (the record its evaluation wrote), and, when a sweep chose among
    configurations by these scores, every labelled tile choosing every fold's model."""
    parts = [part for r in results for part in Ledger.from_record(r["held_out"]).parts]
    chooser = plan.get(HYPERPARAMETERS_CHOSEN)
    if chooser:
        every = {t: d for part in parts for t, d in {**part.scored, **part.member.trained}.items()}
        why = f"its hyper-parameters, by {chooser} on these scores"
        parts = [Scoring(p.member.choosing(every, why), p.scored, p.raw_dir) for p in parts]
    return Ledger(tuple(parts))


def _without_tiles(decision: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in decision.items() if k != "tile_confusions"}


def headline_order(summary: dict[str, Any]) -> float:
    """Sort key of every leaderboard: the pooled out-of-fold class-1 F1, best first."""
    return -summary["out_of_fold"]["f1_class1"]


def model_summary(
    name: str, reference: str | None, results: list[dict[str, Any]], oof: dict[str, Any],
    selection: str, plan: dict[str, Any],
) -> dict[str, Any]:  # fmt: skip
    """One model's folds, mean and sample std (ddof=1) over them, its OOF scores with their
    intervals over tiles (`oof` is its out-of-fold metrics) and its held-out ledger; its
    model type and bands as `plan` records them, `reference` the full model it is compared
    with (None for a full model)."""
    values = {k: np.array([r["scores"][k] for r in results]) for k in SCORES}
    ledger = oof_ledger(results, plan)
    training = plan["configuration"]["models"][name]["training"]
    return {
        "name": name,
        "model_type": training["model_type"],
        "bands": training["bands"],
        "reference": reference,
        "selection": selection,
        "optimistic": ledger.optimistic,
        "held_out": ledger.record(),
        "folds": results,
        "mean": {k: float(v.mean()) for k, v in values.items()},
        "std": {k: float(v.std(ddof=1)) for k, v in values.items()},
        "out_of_fold": {k: oof["overall"][k] for k in INTERVAL_SCORES},
        "out_of_fold_interval": oof.get("overall_interval") or None,
        "bootstrap": oof.get("bootstrap"),
        "out_of_fold_tiles": oof["tiles"],
        "out_of_fold_repeats": oof.get("repeats"),
        **({"decision": _without_tiles(oof["decision"])} if "decision" in oof else {}),
    }


def pair_models(summaries: list[dict[str, Any]], cv: CVConfig) -> list[dict[str, Any]]:
    """Paired differences on the same folds and tiles: each ablation against its full model,
    and every pair of full models (better minus worse, in leaderboard order); one family for
    Holm's correction of the verdicts. Models that scored other tiles (a partial summary's,
    with other units missing) are not paired."""
    runs = {s["name"]: cv_scored_run(s, s["name"], s["name"]) for s in summaries}
    full = [s["name"] for s in summaries if s["reference"] is None]
    pairs = [(a, b) for k, a in enumerate(full) for b in full[k + 1 :]]
    pairs += [(s["name"], s["reference"]) for s in summaries if s["reference"] in runs]
    return holm([
        compare_pair(runs[a], runs[b], cv.bootstrap_resamples, cv.bootstrap_seed) for a, b in pairs
        if sorted(runs[a].tiles) == sorted(runs[b].tiles)
    ])  # fmt: skip


def _interval_text(interval: list[float] | None) -> str:
    return " (no interval)" if not interval else f" [{interval[0]:.4f}, {interval[1]:.4f}]"


def _interval_row(summary: dict[str, Any]) -> str:
    """The OOF 95 % interval row of a model's table, with its tile count, or why there is none."""
    interval = summary.get("out_of_fold_interval") or {}
    record = summary.get("bootstrap") or {}
    tiles = len(summary["out_of_fold_tiles"])
    if not interval:
        return f"  {'OOF 95% CI':<19}{record.get('note', 'none')}"
    cells = "".join(
        f"{interval[k][0]:>6.3f}–{interval[k][1]:<5.3f}" if k in interval else f"{'–':>12}"
        for k in SCORES
    )
    return f"  {'OOF 95% CI':<19}{cells}  ({tiles} tiles)"


def format_summary(summaries: list[dict[str, Any]], pairs: list[dict[str, Any]]) -> str:
    """Per fold, mean ± std and out-of-fold scores (with 95 % intervals over tiles), the
    leaderboard by pooled out-of-fold class-1 F1, then the paired differences; OPTIMISTIC
    wherever a model's ledger says so."""
    selection = summaries[0]["selection"]
    lines = [f"selection {SELECTION_LABELS[selection]}"]
    for summary in summaries:
        flag = f"  {OPTIMISTIC}" if summary["optimistic"] else ""
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
            f"  {label:<19}" + "".join(f"{summary['out_of_fold'][k]:>12.4f}" for k in SCORES) + flag
        )
        lines.append(_interval_row(summary))
        decision = summary.get("decision")
        if decision:
            lines.append(
                f"  OOF f1_class1 under the class-1 threshold (each fold's chosen on the other "
                f"folds): {decision['f1_class1']:.4f}{_interval_text(decision['interval'])}; "
                f"thresholds {' '.join(f'{t:.3f}' for t in decision['thresholds'])}"
            )
    if len(summaries) > 1:
        lines.append(
            f"leaderboard (pooled out-of-fold f1_class1 with its 95 % interval over tiles; mean "
            f"± std over the folds; selection {selection}):"
        )
        for rank, summary in enumerate(summaries, start=1):
            mean, std = summary["mean"]["f1_class1"], summary["std"]["f1_class1"]
            oof = summary["out_of_fold"]["f1_class1"]
            interval = (summary.get("out_of_fold_interval") or {}).get("f1_class1")
            flag = f" {OPTIMISTIC}" if summary["optimistic"] else ""
            lines.append(
                f"  {rank}. {summary['name']:<28} OOF {oof:.4f}{_interval_text(interval)}{flag} "
                f"({len(summary['out_of_fold_tiles'])} tiles); folds {mean:.4f} ± {std:.4f}"
            )
    if pairs:
        lines.append(format_pairs(pairs))
    reasons = {s["held_out"]["reason"] for s in summaries if s["optimistic"]}
    lines += sorted(reasons)
    return "\n".join(lines)


def partial_line(missing: list[dict[str, Any]], units: int) -> str:
    """The first line of a partial summary: how many units are missing, and which."""
    named = ", ".join(f"{m['model']} fold {m['fold']}" for m in missing)
    return f"PARTIAL: {len(missing)} of {units} units missing ({named})"


def write_summary(root: Path, summaries: list[dict[str, Any]], pairs: list[dict[str, Any]],
                  plan: dict[str, Any], cv: CVConfig,
                  missing: list[dict[str, Any]] | None = None) -> str:  # fmt: skip
    """Write `summary.json`, `summary.csv` and `summary.png`, or with units `missing`, the
    partial summary (`partial_summary.json`, `.csv`, naming them); the printed table and
    paths."""
    selection = summaries[0]["selection"]
    stem = PARTIAL_STEM if missing else Path(SUMMARY_FILE).stem
    partial = {}
    if missing:
        units = len(plan["folds"]) * len(plan["configuration"]["models"])
        partial = {"partial": partial_line(missing, units), "missing": missing}
    write_json(
        root / f"{stem}.json",
        {
            **partial,
            "selection": selection,
            "selection_rule": SELECTION_LABELS[selection],
            "optimistic": any(s["optimistic"] for s in summaries),
            "headline": "pooled out-of-fold f1_class1 (orders every leaderboard)",
            "configuration_hash": plan["configuration_hash"],
            "plan": plan,
            "bootstrap": summaries[0]["bootstrap"],
            "models": summaries,
            "pairs": pairs,
        },
    )
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["model", "model_type", "selection", "fold", *SCORES, "tiles", "label"])
    for summary in summaries:
        name, model_type = summary["name"], summary["model_type"]
        label = summary["held_out"]["label"]
        for result in summary["folds"]:
            writer.writerow([name, model_type, selection, result["fold"],
                             *(result["scores"][k] for k in SCORES), len(result["val_tiles"]),
                             label])  # fmt: skip
        rows = {row: summary[row] for row in ("mean", "std", "out_of_fold")}
        interval = summary.get("out_of_fold_interval") or {}
        if interval:
            rows["out_of_fold_low"] = {k: interval.get(k, [None, None])[0] for k in SCORES}
            rows["out_of_fold_high"] = {k: interval.get(k, [None, None])[1] for k in SCORES}
        tiles = len(summary["out_of_fold_tiles"])
        for row, values in rows.items():
            writer.writerow([name, model_type, selection, row, *(values[k] for k in SCORES),
                             tiles, label])  # fmt: skip
    with atomic_path(root / f"{stem}.csv") as temporary:
        temporary.write_text(buffer.getvalue())
    if missing:  # the figure joins fold k of every model: a partial one has no figure
        return (
            f"{partial['partial']}: the finished units' scores, models paired only where "
            f"they scored the same tiles\n{format_summary(summaries, pairs)}\npartial summary: "
            f"{root / f'{stem}.json'}, {root / f'{stem}.csv'}"
        )
    plot_cross_validation(summaries, root / "summary.png")
    return (
        format_summary(summaries, pairs)
        + f"\nsummary: {root / SUMMARY_FILE}, {root / 'summary.csv'}, "
        f"{figure_file(root / 'summary.png')}"
    )
