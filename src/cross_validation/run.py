"""`cross_validate`: K-fold cross-validation of one or more model types over parent tiles.

Per fold (see `src.esd_data.folds`): a processed-folder view with the fold's split and the
statistics of the tiles it trains on, training as `scripts.train` does (same loggers,
checkpoints under `<output_dir>/<name>/<model>/fold_<k>/`, where a model is a model type or,
with `--ablate`, one of its variants, see `src.cross_validation.variants`), then the restitched
evaluation of the fold's held-out tiles with the checkpoint the selection rule chose
without them (`--selection inner`: early stopping and best epoch on an inner split of the
fold's training tiles; `last`: the last epoch, no validation at all; `outer`, optimistic
and labelled so: on the held-out tiles themselves). The out-of-fold (OOF) predictions,
every labelled tile predicted once by the fold that did not train on it, are gathered in
`<model>/oof/` and scored together, with per-tile confusion matrices for the intervals and
paired comparisons over tiles. The summary (`summary.json`, `summary.csv`,
`summary.png`, a printed table) is written by `src.cross_validation.summary`.

Everything that determines the scores (each model's training options, the selection rule,
folds, TTA, the data's fingerprint) is recorded with its hash in `folds.json` and every
fold's `result.json`, and a finished fold is reused only when it is the same; the default
name ends in that hash, so another configuration is another cross-validation. A second call
completes an interrupted run (resuming a fold that stopped part-way from its `last.ckpt`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import tifffile

from src.atomic import write_json
from src.cross_validation.claims import FAILED_FILE, claimed
from src.cross_validation.config import CVConfig
from src.cross_validation.summary import (
    SCORES,
    headline_order,
    model_summary,
    pair_models,
    write_summary,
)
from src.cross_validation.variants import Variant, model_variants
from src.esd_data.folds import assign_folds, class1_shares, fold_manifest, inner_split
from src.esd_data.manifest import Manifest
from src.esd_data.preparation import preparation_lock, record_run
from src.esd_data.sensors import CLASS_NAMES
from src.evaluation.bootstrap import (
    bootstrap_intervals,
    bootstrap_record,
    confusion,
    scores_of_confusion,
)
from src.evaluation.config import EvalConfig
from src.evaluation.cv_record import (
    FOLD_RESULT_FILE,
    FOLDS_FILE,
    HYPERPARAMETERS_CHOSEN,
    read_json,
)
from src.evaluation.decision import cross_fitted
from src.evaluation.evaluate import evaluate
from src.evaluation.evaluator import TilePrediction
from src.evaluation.report import CLASS_TITLES, tile_scores, write_run_outputs
from src.training.config import ESDConfig, weights_checked_later
from src.training.result_config import config_hash, differences, result_config
from src.training.train import build_datamodule, train
from src.visualization.evaluation_plots import plot_confusion_matrix, plot_roc_curves
from src.visualization.figure_output import figure_output
from src.visualization.learning_curves import plot_learning_curves


class ConfigurationMismatchError(ValueError):
    """A folder that holds results of another configuration than the one asked for."""


def cv_name(cv: CVConfig, seed: int, digest: str) -> str:
    """The cross-validation's name: given, or
    `<model types>[-ablate-<what>]-<K>fold[x<repeats>][-<S>seeds]-seed<seed>-<hash>`."""
    ablation = "" if cv.ablate == "none" else f"-ablate-{cv.ablate}"
    models = "+".join(cv.model_type)
    repeats = f"x{cv.repeats}" if cv.repeats > 1 else ""
    seeds = f"-{cv.seeds}seeds" if cv.seeds > 1 else ""
    return cv.name or f"{models}{ablation}-{cv.folds}fold{repeats}{seeds}-seed{seed}-{digest[:8]}"


@dataclasses.dataclass(frozen=True)
class Unit:
    """One training of a cross-validation: fold `k` of repetition `repeat`, trained with the
    `seed_index`-th training seed; it lives in `<model>/fold_<index>/`."""

    index: int
    repeat: int
    seed_index: int
    heldout: list[str]


def plan_units(shares: dict[str, float], cv: CVConfig, seed: int) -> list[Unit]:
    """Every unit, in the order of their folders: repetition by repetition (repetition r
    draws its folds with seed + r), each seed's K folds together, so that every run of K
    consecutive units is a partition of the labelled tiles (one out-of-fold set)."""
    units: list[Unit] = []
    for repeat in range(cv.repeats):
        folds = assign_folds(shares, cv.folds, seed + repeat)
        for seed_index in range(cv.seeds):
            start = len(units)
            units += [Unit(start + k, repeat, seed_index, held) for k, held in enumerate(folds)]
    return units


def oof_set_name(repeat: int, seed_index: int, cv: CVConfig) -> str:
    """The folder, under `<model>/oof/`, of one partition's out-of-fold predictions."""
    return f"repeat_{repeat}" + (f"_seed_{seed_index}" if cv.seeds > 1 else "")


def _check_same(path: Path, recorded: dict[str, Any], wanted: dict[str, Any], hint: str) -> None:
    """ConfigurationMismatchError naming the first differing options of two configurations."""
    if recorded.get("configuration_hash") == wanted["configuration_hash"]:
        return
    changed = differences(recorded.get("configuration", {}), wanted["configuration"])
    raise ConfigurationMismatchError(
        f"{path} holds results of another configuration ({'; '.join(changed)}): {hint}"
    )


def _fold_plan(root: Path, plan: dict[str, Any], default_name: str) -> None:
    """Record the plan in `root/folds.json`, or check that a previous call used the same."""
    path = root / FOLDS_FILE
    if path.is_file():
        hint = (
            f"give another --name, or leave out --name for the name derived from this "
            f"configuration ({default_name})"
        )
        _check_same(path, read_json(path), plan, hint)
        return
    write_json(path, plan)


def _eval_accelerator(accelerator: str) -> str:
    return accelerator if accelerator in ("cpu", "cuda", "mps") else "auto"


@dataclasses.dataclass(frozen=True)
class FoldPlan:
    """One fold: its view of the data, which split of it is scored, what identifies it."""

    fold: int
    view: Manifest
    scored_split: str
    identity: dict[str, Any]


def _fold_view(cv: CVConfig, manifest: Manifest, processed: Path, shares: dict[str, float],
               heldout: list[str], seed: int) -> tuple[Manifest, str]:  # fmt: skip
    """The fold's manifest for `cv.selection` and the split of it that holds `heldout`."""
    train_tiles = [tile for tile in shares if tile not in set(heldout)]
    if cv.selection == "inner":
        fit, choose = inner_split({t: shares[t] for t in train_tiles}, cv.inner_val_fraction, seed)
        return fold_manifest(manifest, processed, fit, choose, heldout), "test"
    if cv.selection == "last":
        return fold_manifest(manifest, processed, train_tiles, [], heldout), "test"
    return fold_manifest(manifest, processed, train_tiles, heldout, []), "val"


def _run_fold(
    base: ESDConfig,
    cv: CVConfig,
    plan: FoldPlan,
    fold_dir: Path,
    extra_callbacks: list[L.Callback] | None,
    pictures: bool,
) -> dict[str, Any]:
    """Train and evaluate one fold (resuming from its last.ckpt if it stopped part-way),
    drawing its tiles' pictures when `pictures`."""
    fold, view = plan.fold, plan.view
    view.save(fold_dir / "data")
    last = fold_dir / "checkpoints" / base.model_type / f"fold_{fold}" / "last.ckpt"
    if not last.is_file():  # a fold that stopped before its first epoch: start it afresh
        for folder in ("logs", "checkpoints"):
            shutil.rmtree(fold_dir / folder, ignore_errors=True)
        base = pretrained_copy(base, fold_dir.parent.parent)
    config = dataclasses.replace(
        base,
        raw_dir=None,
        processed_dir=fold_dir / "data",
        checkpoint_dir=fold_dir / "checkpoints",
        log_dir=fold_dir / "logs",
        wandb_run_name=f"fold_{fold}",
        wandb_id=None,
        # a W&B run per fold only when asked for (--wandb_mode offline or online)
        wandb_mode="disabled" if base.wandb_mode == "auto" else base.wandb_mode,
        resume=last if last.is_file() else None,
        limit_val_batches=0 if cv.selection == "last" else base.limit_val_batches,
    )
    started = time.perf_counter()
    # The model's layers are printed once per cross-validation, by its first fold.
    results = train(config, extra_callbacks, test=False, summary=fold == 0)
    trained = time.perf_counter()
    checkpoint = results["last_model_path" if cv.selection == "last" else "best_model_path"]
    if not checkpoint:
        raise RuntimeError(
            f"fold {fold} saved no checkpoint by {base.monitor} (was it logged?): check "
            f"--monitor, or use --selection last"
        )
    metrics = evaluate(
        EvalConfig(
            model_path=[Path(checkpoint)],
            results_dir=fold_dir / "predictions",
            split=plan.scored_split,
            tta=cv.tta,
            accelerator=_eval_accelerator(base.accelerator),
            tile_pictures=pictures,
        ),
        log=lambda _: None,
        run_figures=False,  # the out-of-fold evaluation draws them, of every fold together
    )
    result = {
        "fold": fold,
        "val_tiles": view.split[plan.scored_split],
        "train_tiles": view.split["train"],
        "selection": cv.selection,
        "selection_tiles": view.split["val"] if cv.selection == "inner" else [],
        "checkpoint": checkpoint,
        "selected_epoch": metrics["epoch"],
        "scores": {k: metrics["overall"][k] for k in SCORES},
        "held_out": metrics["held_out"],
        "configuration": plan.identity,
        "configuration_hash": config_hash(plan.identity),
        "train_seconds": round(trained - started, 1),
        "evaluation_seconds": round(time.perf_counter() - trained, 2),
    }
    write_json(fold_dir / FOLD_RESULT_FILE, result)
    return result


PRETRAINED_FOLDER = "pretrained"
"""Where a cross-validation keeps a copy of the pretrained weights its folds start from."""


def pretrained_copy(config: ESDConfig, root: Path) -> ESDConfig:
    """`config` reading its pretrained weights from the cross-validation's own copy
    (`root/pretrained/<model type>/`), made from `weights_path` the first time: the folds
    that start later, in this call or in one that completes an interrupted run, need the
    original file or folder no more. ValueError naming both when neither is there."""
    if not config.pretrained:
        return config
    copy = root / PRETRAINED_FOLDER / config.model_type
    problems = config.weights_problems()
    if not problems:
        source = Path(config.weights_path) if config.weights_path is not None else None
        if source is None:  # FCN-ResNet101 from the torch hub cache
            from src.models.fcn_resnet_transfer import resolve_weights_file

            source = resolve_weights_file(None)
        target = copy / source.name
        if not target.exists():
            temporary = copy / f".{source.name}.partial"
            shutil.rmtree(temporary, ignore_errors=True)
            copy.mkdir(parents=True, exist_ok=True)
            if source.is_dir():
                shutil.copytree(source, temporary)
            else:
                shutil.copyfile(source, temporary)
            temporary.rename(target)
    found = sorted(p for p in copy.glob("*") if not p.name.startswith(".")) if copy.is_dir() else []
    if not found:
        raise ValueError(
            f"{config.model_type} starts from pretrained weights, and neither --weights_path "
            f"nor this cross-validation's copy ({copy}) holds them: {'; '.join(problems)}"
        )
    return dataclasses.replace(config, weights_path=found[0])


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
    if cv.decision == "class1_threshold":
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


def _repeated_out_of_fold(
    model_dir: Path, results: list[dict[str, Any]], manifest: Manifest, processed_dir: Path,
    cv: CVConfig, figures: bool,
) -> dict[str, Any]:  # fmt: skip
    """The out-of-fold metrics: of `oof/` for one partition; with repetitions or seeds, each
    partition's in `oof/repeat_<r>[_seed_<s>]/` (without figures) and, returned, their
    pooling: each tile's confusion matrix summed over the partitions (every tile predicted
    once in each), scored and bootstrapped over tiles like one out-of-fold set. With
    `figures`, the confusion matrix and ROC curves (of every partition's probabilities) are
    drawn in `oof/`."""
    if cv.repeats * cv.seeds == 1:
        return _out_of_fold(model_dir / "oof", model_dir, results, manifest, processed_dir, cv,
                            figures)  # fmt: skip
    sets = {
        oof_set_name(r, s, cv): results[(r * cv.seeds + s) * cv.folds :][: cv.folds]
        for r in range(cv.repeats)
        for s in range(cv.seeds)
    }
    partitions = [
        _out_of_fold(model_dir / "oof" / name, model_dir, members, manifest, processed_dir, cv,
                     figures=False)
        for name, members in sets.items()
    ]  # fmt: skip
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
        _pooled_figures(model_dir / "oof", list(sets), matrices.sum(axis=0), manifest,
                        processed_dir)  # fmt: skip
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


def _metrics_csv(model_dir: Path, fold: int) -> Path | None:
    """The fold's `metrics.csv` (None when its logs are gone)."""
    return next((model_dir / f"fold_{fold}" / "logs").rglob("metrics.csv"), None)


def _model_identity(cv: CVConfig, config: ESDConfig, data_fingerprint: str) -> dict[str, Any]:
    return {"training": result_config(config), "protocol": cv.protocol(), "data": data_fingerprint}


def cross_validate(
    cv: CVConfig,
    base: ESDConfig,
    log: Callable[[str], None] = print,
    extra_callbacks: list[L.Callback] | None = None,
    on_fold: Callable[[str, int, dict[str, Any]], None] | None = None,
    hyperparameters_chosen_by: str | None = None,
) -> dict[str, Any]:
    """Run (or complete) the cross-validation; returns what `summary.json` holds.

    `on_fold(model_type, fold, result)` is called after each fold (e.g. to report it to a
    sweep, which may stop the cross-validation by raising); `hyperparameters_chosen_by`
    (a sweep) records that configurations are chosen among by these scores, which makes them
    OPTIMISTIC. ConfigurationMismatchError when the named folder holds results of another
    configuration.
    """
    # the pretrained weights are checked where a fold starts from them (`pretrained_copy`)
    with figure_output(base), weights_checked_later():
        return _cross_validate(cv, base, log, extra_callbacks, on_fold, hyperparameters_chosen_by)


def _cross_validate(
    cv: CVConfig,
    base: ESDConfig,
    log: Callable[[str], None],
    extra_callbacks: list[L.Callback] | None,
    on_fold: Callable[[str, int, dict[str, Any]], None] | None,
    chosen_by: str | None,
) -> dict[str, Any]:
    data = build_datamodule(base)
    data.prepare_data()
    manifest = data.manifest
    processed = Path(base.processed_dir).resolve()
    labelled = sorted(manifest.split["train"] + manifest.split["val"])
    seed = base.seed if base.split_seed is None else base.split_seed
    shares = class1_shares(processed, manifest, labelled)
    units = plan_units(shares, cv, seed)
    folds = [unit.heldout for unit in units]
    configs = {model: cv.model_config(base, model) for model in cv.model_type}
    variants = model_variants(configs, cv.ablate, base, manifest)
    configuration = {
        "models": {
            variant.name: _model_identity(cv, variant.config, manifest.fingerprint)
            for variant in variants
        },
        "folds": folds,
    }  # fmt: skip
    digest = config_hash(configuration)
    default_name = cv_name(dataclasses.replace(cv, name=None), seed, digest)
    root = cv.output_dir / (cv.name or default_name)
    plan = {
        "folds": folds,
        "repeats": cv.repeats,
        "seeds": [base.seed + s for s in range(cv.seeds)],
        "units": [{"repeat": u.repeat, "seed": base.seed + u.seed_index} for u in units],
        "seed": seed,
        "selection": cv.selection,
        "test": manifest.split["test"],
        "data_fingerprint": manifest.fingerprint,
        "processed_dir": str(processed),
        "configuration": configuration,
        "configuration_hash": digest,
    }
    if chosen_by is not None:
        plan[HYPERPARAMETERS_CHOSEN] = chosen_by
    return _run_plan(cv, base, log, extra_callbacks, on_fold, root, plan, default_name, configs,
                     variants, units, manifest, processed, shares, seed)  # fmt: skip


def _run_plan(
    cv: CVConfig, base: ESDConfig, log: Callable[[str], None],
    extra_callbacks: list[L.Callback] | None,
    on_fold: Callable[[str, int, dict[str, Any]], None] | None, root: Path,
    plan: dict[str, Any], default_name: str, configs: dict[str, ESDConfig],
    variants: list[Variant], units: list[Unit], manifest: Manifest, processed: Path,
    shares: dict[str, float], seed: int,
) -> dict[str, Any]:  # fmt: skip
    """Record the plan (or check it against the recorded one), train the units no worker has
    finished or holds (waiting for the ones other workers train), then write the summary."""
    _fold_plan(root, plan, default_name)
    with _summary_turn(root):  # one worker copies the weights to start from, once
        for config in configs.values():
            pretrained_copy(config, root)
    log(
        f"cross-validation {root}: selection {cv.selection}; configuration "
        f"{plan['configuration_hash'][:12]}"
    )
    if base.wandb_mode == "auto":
        log("W&B: off for the folds (--wandb_mode offline or online logs each fold as a run)")
    # The shared cache stays as it is while its folds train (a preparation waits).
    with preparation_lock(processed, shared=True):
        record_run(processed, root, manifest.fingerprint)
        done = _train_units(cv, base, log, extra_callbacks, on_fold, variants, units, manifest,
                            processed, shares, seed, root)  # fmt: skip
        summaries = []
        for variant in variants:
            model_dir = root / variant.name
            results = [done[(variant.name, unit.index)] for unit in units]
            # an ablation variant's figures are drawn where pictures are looked at (`all`)
            figures = cv.tile_pictures == "all" or variant.reference is None
            with _summary_turn(root):  # one worker at a time writes the shared outputs
                oof = _repeated_out_of_fold(model_dir, results, manifest, processed, cv, figures)
                curves = {f"fold {r['fold']}": _metrics_csv(model_dir, r["fold"]) for r in results}
                if figures:
                    plot_learning_curves(
                        {k: v for k, v in curves.items() if v is not None},
                        f"{variant.name}: learning curves of the {len(results)} folds",
                        model_dir / "learning_curves.png",
                        val_label=VAL_LABELS[cv.selection],
                    )
            summaries.append(model_summary(variant, results, oof, cv.selection, plan))
    summaries.sort(key=headline_order)
    pairs = pair_models(summaries, cv)
    with _summary_turn(root):
        log(write_summary(root, summaries, pairs, plan, cv))
    return {"plan": plan, "models": summaries, "pairs": pairs, "root": str(root)}


WAIT_S = 2.0
"""How often a worker looks again at the units other workers hold."""


def _train_units(
    cv: CVConfig, base: ESDConfig, log: Callable[[str], None],
    extra_callbacks: list[L.Callback] | None,
    on_fold: Callable[[str, int, dict[str, Any]], None] | None, variants: list[Variant],
    units: list[Unit], manifest: Manifest, processed: Path, shares: dict[str, float],
    seed: int, root: Path,
) -> dict[tuple[str, int], dict[str, Any]]:  # fmt: skip
    """Every unit's result: read back when finished, trained when this worker claims it, and
    waited for while another worker holds it (a worker that dies loses its claim, and its unit
    is taken up and resumed here)."""
    pending = [(variant, unit) for variant in variants for unit in units]
    done: dict[tuple[str, int], dict[str, Any]] = {}
    waiting_said = False
    while pending:
        held = []
        for variant, unit in pending:
            config = variant.config
            if cv.seeds > 1:
                config = dataclasses.replace(config, seed=base.seed + unit.seed_index)
            outcome = _unit(cv, config, variant, unit, manifest, processed, shares, seed,
                            root / variant.name, extra_callbacks)  # fmt: skip
            if outcome is None:
                held.append((variant, unit))
                continue
            result, finished = outcome
            done[(variant.name, unit.index)] = result
            if on_fold is not None:
                on_fold(variant.name, unit.index, result)
            scores = [r["scores"]["f1_class1"] for (name, _), r in done.items()
                      if name == variant.name]  # fmt: skip
            log(
                f"{variant.name} {_unit_label(unit, cv)} (of 0–{len(units) - 1})"
                + (" (finished earlier, same configuration)" if finished else "")
                + f": {len(result['train_tiles'])} training, {len(unit.heldout)} held-out "
                f"tiles ({', '.join(unit.heldout)}), epoch {result['selected_epoch']}: "
                f"f1_class1 {scores[-1]:.4f}; so far {np.mean(scores):.4f} ± "
                f"{np.std(scores, ddof=1) if len(scores) > 1 else 0:.4f}"
            )
        if held and len(held) == len(pending):
            if not waiting_said:
                log(f"waiting for {len(held)} unit(s) other workers are training")
                waiting_said = True
            time.sleep(WAIT_S)
        pending = held
    return done


@contextlib.contextmanager
def _summary_turn(root: Path) -> Iterator[None]:
    """Hold the cross-validation's summary lock (workers write the shared outputs in turn)."""
    with (root / ".summary.lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


VAL_LABELS = {"inner": "inner val", "outer": "held-out val", "last": "val"}
"""What a fold's validation curve is, by selection rule: an inner split of its training
tiles, or its held-out tiles themselves (`last` validates nothing)."""


def _unit_label(unit: Unit, cv: CVConfig) -> str:
    label = f"fold {unit.index}"
    if cv.repeats > 1 or cv.seeds > 1:
        label += f" (repetition {unit.repeat}, seed #{unit.seed_index})"
    return label


UnitOutcome = tuple[dict[str, Any], bool] | None


def _unit(cv: CVConfig, config: ESDConfig, variant: Variant, unit: Unit, manifest: Manifest,
          processed: Path, shares: dict[str, float], seed: int, model_dir: Path,
          extra_callbacks: list[L.Callback] | None) -> UnitOutcome:  # fmt: skip
    """The unit's result: trained and evaluated now (resumed from its last.ckpt when a worker
    stopped part-way), or read back when a worker finished it with the same configuration;
    and whether it was read back. None while another worker holds its claim."""
    fold_dir = model_dir / f"fold_{unit.index}"
    # repeated k-fold: repetition r splits (and chooses inner tiles) with seed + r
    view, scored = _fold_view(cv, manifest, processed, shares, unit.heldout, seed + unit.repeat)
    identity = _model_identity(cv, config, view.fingerprint)
    done = fold_dir / FOLD_RESULT_FILE

    def finished() -> dict[str, Any]:
        result = read_json(done)
        wanted = {"configuration": identity, "configuration_hash": config_hash(identity)}
        _check_same(done, result, wanted, f"delete {fold_dir} to train the fold again")
        return result

    if done.is_file():
        return finished(), True
    with claimed(fold_dir) as mine:
        if not mine:
            return None
        if done.is_file():  # finished by another worker since we looked
            return finished(), True
        (fold_dir / FAILED_FILE).unlink(missing_ok=True)
        pictures = cv.tile_pictures == "all" or (
            cv.tile_pictures == "full" and variant.reference is None
        )
        plan = FoldPlan(unit.index, view, scored, identity)
        try:
            return _run_fold(config, cv, plan, fold_dir, extra_callbacks, pictures), False
        except Exception as error:  # said by --status; the next worker tries it again
            (fold_dir / FAILED_FILE).write_text(f"{type(error).__name__}: {error}\n")
            raise
