"""`cross_validate`: K-fold cross-validation of one or more model types over parent tiles.

Per fold (see `src.esd_data.folds`): a processed-folder view with the fold's split and its
training tiles' statistics, training as `scripts.train` does (same loggers, checkpoints
under `<output_dir>/<name>/<model_type>/fold_<k>/`), then the restitched evaluation of the
fold's validation tiles with its best checkpoint. The out-of-fold (OOF) predictions, every
labelled tile predicted once by the fold that did not train on it, are gathered in
`<model_type>/oof/` and scored together (the whole-data-set contest score). The summary
(`summary.json`, `summary.csv`, `summary.png`, a printed table) has per fold and mean ± std
(sample standard deviation, ddof=1) of `f1_class1`, accuracy, macro IoU and macro F1, the
OOF metrics, and with several model types one leaderboard, best mean `f1_class1` first.

A finished fold leaves `result.json`; a second call skips those folds (and resumes a fold
that stopped part-way from its `last.ckpt`), so an interrupted cross-validation completes
with the same summary.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import tifffile

from src.atomic import atomic_path, write_json
from src.esd_data.folds import assign_folds, class1_shares, fold_manifest
from src.esd_data.manifest import Manifest
from src.evaluation.config import EvalConfig
from src.evaluation.evaluate import evaluate
from src.evaluation.evaluator import TilePrediction
from src.evaluation.report import write_run_outputs
from src.training.config import ESDConfig
from src.training.cv_config import FOLD_RESULT_FILE, FOLDS_FILE, CVConfig
from src.training.train import build_datamodule, train
from src.visualization.evaluation_plots import plot_cross_validation

SCORES = ("f1_class1", "accuracy", "iou_macro", "f1_macro")


def cv_name(cv: CVConfig, seed: int) -> str:
    """The cross-validation's name: given, or `<model types>-<K>fold-seed<seed>`."""
    return cv.name or f"{'+'.join(cv.model_type)}-{cv.folds}fold-seed{seed}"


def _fold_plan(root: Path, plan: dict[str, Any]) -> None:
    """Record the folds in `root/folds.json`, or check that a previous call used the same."""
    path = root / FOLDS_FILE
    if path.is_file():
        previous = json.loads(path.read_text())
        if previous != plan:
            raise ValueError(
                f"{root} holds a cross-validation with other folds or data ({path}): choose "
                f"another --name or --output_dir"
            )
        return
    write_json(path, plan)


def _eval_accelerator(accelerator: str) -> str:
    return accelerator if accelerator in ("cpu", "cuda", "mps") else "auto"


def _run_fold(
    base: ESDConfig,
    cv: CVConfig,
    view: Manifest,
    fold_dir: Path,
    fold: int,
    extra_callbacks: list[L.Callback] | None,
) -> dict[str, Any]:
    """Train and evaluate one fold (resuming from its last.ckpt if it stopped part-way)."""
    view.save(fold_dir / "data")
    last = fold_dir / "checkpoints" / base.model_type / f"fold_{fold}" / "last.ckpt"
    config = dataclasses.replace(
        base,
        raw_dir=None,
        processed_dir=fold_dir / "data",
        checkpoint_dir=fold_dir / "checkpoints",
        log_dir=fold_dir / "logs",
        wandb_run_name=f"fold_{fold}",
        wandb_id=None,
        resume=last if last.is_file() else None,
    )
    started = time.perf_counter()
    results = train(config, extra_callbacks)
    trained = time.perf_counter()
    metrics = evaluate(
        EvalConfig(
            model_path=[Path(results["best_model_path"])],
            results_dir=fold_dir / "predictions",
            tta=cv.tta,
            accelerator=_eval_accelerator(base.accelerator),
        ),
        log=lambda _: None,
    )
    result = {
        "fold": fold,
        "val_tiles": view.split["val"],
        "train_tiles": len(view.split["train"]),
        "best_checkpoint": results["best_model_path"],
        "scores": {k: metrics["overall"][k] for k in SCORES},
        "train_seconds": round(trained - started, 1),
        "evaluation_seconds": round(time.perf_counter() - trained, 2),
    }
    write_json(fold_dir / FOLD_RESULT_FILE, result)
    return result


def _out_of_fold(model_dir: Path, results: list[dict[str, Any]], manifest: Manifest,
                 processed_dir: Path) -> dict[str, Any]:  # fmt: skip
    """Gather every fold's validation predictions into `oof/` and score them together."""
    oof = model_dir / "oof"
    predictions = []
    for result in results:
        tiles = model_dir / f"fold_{result['fold']}" / "predictions" / "tiles"
        for tile in result["val_tiles"]:
            for suffix in ("_prediction.tif", "_probabilities.tif"):
                target = oof / "tiles" / f"{tile}{suffix}"
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(tiles / f"{tile}{suffix}", target)
            truth = np.load(processed_dir / manifest.tiles[tile].labels).astype(np.uint8)
            predictions.append(
                TilePrediction(
                    tile,
                    tifffile.imread(oof / "tiles" / f"{tile}_probabilities.tif"),
                    tifffile.imread(oof / "tiles" / f"{tile}_prediction.tif"),
                    truth,
                )
            )
    info = {"out_of_fold": True, "folds": len(results)}
    return write_run_outputs(oof, predictions, [], info)["overall"]


def _summary(model: str, results: list[dict[str, Any]], oof: dict[str, Any]) -> dict[str, Any]:
    values = {k: np.array([r["scores"][k] for r in results]) for k in SCORES}
    return {
        "model_type": model,
        "folds": results,
        "mean": {k: float(v.mean()) for k, v in values.items()},
        "std": {k: float(v.std(ddof=1)) for k, v in values.items()},
        "out_of_fold": {k: oof[k] for k in SCORES},
    }


def format_summary(summaries: list[dict[str, Any]]) -> str:
    """Per fold, mean ± std and out-of-fold scores, then the leaderboard."""
    lines = []
    for summary in summaries:
        lines.append(f"{summary['model_type']}:")
        lines.append(f"  {'fold':<8}{'val tiles':>10}" + "".join(f"{k:>12}" for k in SCORES))
        for result in summary["folds"]:
            lines.append(
                f"  {result['fold']:<8}{len(result['val_tiles']):>10}"
                + "".join(f"{result['scores'][k]:>12.4f}" for k in SCORES)
            )
        mean, std = summary["mean"], summary["std"]
        lines.append(
            f"  {'mean±std':<18}" + "".join(f"{mean[k]:>6.3f}±{std[k]:<5.3f}" for k in SCORES)
        )
        lines.append(
            f"  {'OOF':<18}" + "".join(f"{summary['out_of_fold'][k]:>12.4f}" for k in SCORES)
        )
    if len(summaries) > 1:
        lines.append("leaderboard (mean f1_class1 over the folds):")
        for rank, summary in enumerate(summaries, start=1):
            mean, std = summary["mean"]["f1_class1"], summary["std"]["f1_class1"]
            oof = summary["out_of_fold"]["f1_class1"]
            lines.append(
                f"  {rank}. {summary['model_type']:<18} {mean:.4f} ± {std:.4f}  (OOF {oof:.4f})"
            )
    return "\n".join(lines)


def _write_summary(root: Path, summaries: list[dict[str, Any]], plan: dict[str, Any]) -> None:
    write_json(root / "summary.json", {"plan": plan, "models": summaries})
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["model_type", "fold", *SCORES])
    for summary in summaries:
        for result in summary["folds"]:
            writer.writerow(
                [summary["model_type"], result["fold"], *(result["scores"][k] for k in SCORES)]
            )
        for row in ("mean", "std", "out_of_fold"):
            values = summary[row]
            writer.writerow([summary["model_type"], row, *(values[k] for k in SCORES)])
    with atomic_path(root / "summary.csv") as temporary:
        temporary.write_text(buffer.getvalue())
    plot_cross_validation(summaries, root / "summary.png")


def cross_validate(
    cv: CVConfig,
    base: ESDConfig,
    log: Callable[[str], None] = print,
    extra_callbacks: list[L.Callback] | None = None,
    on_fold: Callable[[str, int, dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run (or complete) the cross-validation; returns what `summary.json` holds.

    `on_fold(model_type, fold, result)` is called after each fold (e.g. to report it to a
    sweep, which may stop the cross-validation by raising).
    """
    data = build_datamodule(base)
    data.prepare_data()
    manifest = data.manifest
    processed = Path(base.processed_dir).resolve()
    labelled = sorted(manifest.split["train"] + manifest.split["val"])
    seed = base.seed if base.split_seed is None else base.split_seed
    folds = assign_folds(class1_shares(processed, manifest, labelled), cv.folds, seed)
    root = cv.output_dir / cv_name(cv, seed)
    plan = {
        "folds": folds,
        "seed": seed,
        "test": manifest.split["test"],
        "data_fingerprint": manifest.fingerprint,
        "processed_dir": str(processed),
    }
    _fold_plan(root, plan)
    summaries = []
    for model in cv.model_type:
        model_dir = root / model
        config = dataclasses.replace(base, model_type=model)
        results: list[dict[str, Any]] = []
        for fold, validation in enumerate(folds):
            fold_dir = model_dir / f"fold_{fold}"
            done = fold_dir / FOLD_RESULT_FILE
            finished = done.is_file()
            view = fold_manifest(manifest, processed, validation, labelled)
            result = (
                json.loads(done.read_text())
                if finished
                else _run_fold(config, cv, view, fold_dir, fold, extra_callbacks)
            )
            results.append(result)
            if on_fold is not None:
                on_fold(model, fold, result)
            scores = [r["scores"]["f1_class1"] for r in results]
            log(
                f"{model} fold {fold + 1} of {len(folds)}"
                + (" (finished earlier)" if finished else "")
                + f": {len(view.split['train'])} training, {len(validation)} validation tiles "
                f"({', '.join(validation)}): f1_class1 {scores[-1]:.4f}; so far "
                f"{np.mean(scores):.4f} ± {np.std(scores, ddof=1) if len(scores) > 1 else 0:.4f}"
            )
        summaries.append(
            _summary(model, results, _out_of_fold(model_dir, results, manifest, processed))
        )
    summaries.sort(key=lambda s: -s["mean"]["f1_class1"])
    _write_summary(root, summaries, plan)
    log(format_summary(summaries))
    log(f"summary: {root / 'summary.json'}, {root / 'summary.csv'}, {root / 'summary.png'}")
    return {"plan": plan, "models": summaries, "root": str(root)}
