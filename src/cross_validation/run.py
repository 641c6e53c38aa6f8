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
`<model>/oof/` and scored together (`src.cross_validation.out_of_fold`), with per-tile
confusion matrices for the intervals and paired comparisons over tiles. The summary
(`summary.json`, `summary.csv`, `summary.png`, a printed table) is written once every unit
is done (`src.cross_validation.outputs`, `.summary`). The units are shared by any number of
workers through claims (`src.cross_validation.claims`: file locks, or leases in PostgreSQL
with `--storage`).

Everything that determines the scores (each model's training options, the selection rule,
folds, TTA, the data's fingerprint) is recorded with its hash in `folds.json` and every
fold's `result.json`, and a finished fold is reused only when it is the same; the default
name ends in that hash, so another configuration is another cross-validation. A second call
completes an interrupted run (resuming a fold that stopped part-way from its `last.ckpt`).
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np

from src.atomic import write_json
from src.claims import Waiting
from src.cross_validation.claims import FAILED_FILE, Claims, open_claims
from src.cross_validation.config import CVConfig
from src.cross_validation.outputs import write_outputs
from src.cross_validation.summary import SCORES
from src.cross_validation.variants import Variant, model_variants
from src.esd_data.folds import assign_folds, class1_shares, fold_manifest, inner_split
from src.esd_data.manifest import Manifest
from src.esd_data.preparation import preparation_lock, record_run
from src.evaluation.config import EvalConfig
from src.evaluation.cv_record import (
    FOLD_RESULT_FILE,
    FOLDS_FILE,
    HYPERPARAMETERS_CHOSEN,
    read_json,
)
from src.evaluation.evaluate import evaluate
from src.training.config import ESDConfig, weights_checked_later
from src.training.result_config import config_hash, differences, result_config
from src.training.run_folder import RunFolderError, run_inside
from src.training.train import build_datamodule, train
from src.visualization.figure_output import figure_output

OUTPUT_OPTIONS = ("bootstrap_resamples", "bootstrap_seed", "tile_pictures")
"""The options of the shared outputs besides the protocol, recorded in the plan."""


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
    config = run_inside(
        base,
        fold_dir,
        f"fold_{fold}",
        limit_val_batches=0 if cv.selection == "last" else base.limit_val_batches,
    )
    if config.resume is None:  # a fold starting afresh reads the pretrained weights' copy
        config = pretrained_copy(config, fold_dir.parent.parent)
    started = time.perf_counter()
    # The model's layers are printed once per cross-validation, by its first fold.
    results = train(config, extra_callbacks, test=False, summary=fold == 0, resume_hint=False)
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
        # what --summarize writes the outputs with (they do not change the scores)
        "outputs": {k: getattr(cv, k) for k in OUTPUT_OPTIONS},
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
    claims = open_claims(root, plan, cv.storage, cv.lease_s, worker=True)
    with claims.turn():  # one worker copies the weights to start from, once
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
                            processed, shares, seed, root, claims)  # fmt: skip
        results = {v.name: [done[(v.name, unit.index)] for unit in units] for v in variants}
        with claims.turn():  # one worker at a time writes the shared outputs
            outputs = write_outputs(root, plan, cv, results, manifest, processed)
    log(outputs["printed"])
    return {"plan": plan, "models": outputs["models"], "pairs": outputs["pairs"], "root": str(root)}


def _train_units(
    cv: CVConfig, base: ESDConfig, log: Callable[[str], None],
    extra_callbacks: list[L.Callback] | None,
    on_fold: Callable[[str, int, dict[str, Any]], None] | None, variants: list[Variant],
    units: list[Unit], manifest: Manifest, processed: Path, shares: dict[str, float],
    seed: int, root: Path, claims: Claims,
) -> dict[tuple[str, int], dict[str, Any]]:  # fmt: skip
    """Every unit's result: read back when finished, trained when this worker claims it, and
    waited for while another worker holds it (a worker that dies loses its claim, and its unit
    is taken up and resumed here)."""
    pending = [(variant, unit) for variant in variants for unit in units]
    done: dict[tuple[str, int], dict[str, Any]] = {}
    waiting = Waiting(log, "unit(s) other workers are training")
    while pending:
        held = []
        for variant, unit in pending:
            config = variant.config
            if cv.seeds > 1:
                config = dataclasses.replace(config, seed=base.seed + unit.seed_index)
            outcome = _unit(cv, config, variant, unit, manifest, processed, shares, seed,
                            root / variant.name, extra_callbacks, claims)  # fmt: skip
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
        waiting.pause(len(held), len(pending))
        pending = held
    return done


def _unit_label(unit: Unit, cv: CVConfig) -> str:
    label = f"fold {unit.index}"
    if cv.repeats > 1 or cv.seeds > 1:
        label += f" (repetition {unit.repeat}, seed #{unit.seed_index})"
    return label


UnitOutcome = tuple[dict[str, Any], bool] | None


def _unit(cv: CVConfig, config: ESDConfig, variant: Variant, unit: Unit, manifest: Manifest,
          processed: Path, shares: dict[str, float], seed: int, model_dir: Path,
          extra_callbacks: list[L.Callback] | None, claims: Claims) -> UnitOutcome:  # fmt: skip
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
    with claims.claimed(fold_dir) as mine:
        if not mine:
            return None
        if done.is_file():  # finished by another worker since we looked
            return finished(), True
        (fold_dir / FAILED_FILE).unlink(missing_ok=True)
        pictures = cv.tile_pictures == "all" or (
            cv.tile_pictures == "full" and variant.reference is None
        )
        plan = FoldPlan(unit.index, view, scored, identity)
        callbacks = [*(extra_callbacks or []), _LeaseGuard(lambda: claims.lost(fold_dir))]
        try:
            return _run_fold(config, cv, plan, fold_dir, callbacks, pictures), False
        except LeaseLostError:  # another worker took the unit over: it finishes it
            return None
        except RunFolderError:  # a stalled worker whose lease lapsed still holds the run:
            return None  # waited for (it stops at its next batch, finding its lease lost)
        except Exception as error:  # said by --status; the next worker tries it again
            (fold_dir / FAILED_FILE).write_text(f"{type(error).__name__}: {error}\n")
            raise


class LeaseLostError(RuntimeError):
    """This worker's claim on the unit it trains was taken over by another worker."""


class _LeaseGuard(L.Callback):
    """Stops a unit's training at the next batch once `lost()` says its claim is gone."""

    def __init__(self, lost: Callable[[], bool]) -> None:
        self.lost = lost

    def on_train_batch_end(self, *args: Any) -> None:
        if self.lost():
            raise LeaseLostError("the lease on this unit was taken over by another worker")
