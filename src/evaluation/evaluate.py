"""`evaluate(config)`: score a checkpoint on whole tiles and write every output.

What is scored comes from the checkpoint's `DataIdentity`, not from whatever the processed
folder holds now: the checkpoint's own split (its `val` tiles by default), normalised with
its own training statistics, on tiles whose processed pixels are the ones it was trained
and validated on. Every score goes through the held-out ledger (`src.held_out`): a tile a
model trained on is never scored, and a score of tiles that chose a model (a best epoch's
val tiles) is labelled OPTIMISTIC wherever it appears. With `raw_dir`, the tiles of any
folder (the contest's unlabelled Val/ or Test/, say) are prepared with the checkpoint's
preprocessing into a cache of their own and predicted. A cross-validation's folds
(`cv_dir`) score its processed folder's test split, the tiles no fold saw.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from src.atomic import check_writable, replaced_folder
from src.esd_data.identity import DataIdentity
from src.esd_data.manifest import Manifest
from src.esd_data.preparation import preparation_lock, read_previous_manifest
from src.evaluation.config import EvalConfig
from src.evaluation.cv_record import (
    HYPERPARAMETERS_CHOSEN,
    cv_root_and_models,
    enclosing_plan,
    read_fold_records,
    read_plan,
)
from src.evaluation.evaluator import (
    Predictor,
    TilePrediction,
    check_compatible,
    check_ensemble,
    newest_best_checkpoint,
    predict_tiles,
)
from src.evaluation.report import true_colour_image, write_run_outputs, write_tile_outputs
from src.evaluation.scores import label_scores
from src.evaluation.threshold import apply, from_out_of_fold, from_val_tiles
from src.hardware import resolve_device
from src.held_out import Ledger, Member
from src.training.checkpoints import (
    CheckpointError,
    data_identity,
    held_out_member,
    load_module,
    read_checkpoint,
)
from src.visualization.figure_output import figure_output

EVAL_CACHE_ROOT = Path("data/eval_cache")


@dataclass(frozen=True)
class TileSource:
    """Where the evaluated tiles are, which ones, and what to call them in outputs."""

    processed_dir: Path
    manifest: Manifest
    tiles: list[str]
    label: str
    """The split's name, or the raw folder's name."""

    def ledger(self, members: list[Member]) -> Ledger:
        """Every member scoring every labelled tile (by the hash of its processed pixels and,
        within the raw folder it was prepared from, its name; an unlabelled tile is predicted,
        never scored)."""
        records = self.manifest.tiles
        scored = {t: records[t].sha256 for t in self.tiles if records[t].labels is not None}
        return Ledger.ensemble(members, scored, str(Path(self.manifest.raw_dir).resolve()))


@dataclass(frozen=True)
class Models:
    """The checkpoints to evaluate, read once (what is needed, not the weights): their data,
    hyper-parameters, epochs and ledger members, why they were chosen, and the
    cross-validation plan (`folds.json`) when they are its folds."""

    paths: list[Path]
    identities: list[DataIdentity]
    hparams: list[dict[str, Any]]
    epochs: list[int]
    members: list[Member]
    why: str
    cv_plan: dict[str, Any] | None = None


def read_models(paths: list[Path], why: str, cv_plan: dict[str, Any] | None = None) -> Models:
    """`Models` of these checkpoints; a cross-validation whose scores chose its configuration
    (a sweep's trial: `cv_plan`, or the one a fold's checkpoint lies in) makes every labelled
    tile of a fold one that chose the fold's model."""
    identities, hparams, epochs, members = [], [], [], []
    for path in paths:
        checkpoint = read_checkpoint(path)
        identity = data_identity(checkpoint, path)
        member = held_out_member(checkpoint, path)
        chooser = (cv_plan or enclosing_plan(path) or {}).get(HYPERPARAMETERS_CHOSEN)
        if chooser:
            labelled = {t for tiles in identity.split.values() for t in tiles}
            member = member.choosing(
                {t: identity.tile_hashes[t] for t in labelled},
                f"its hyper-parameters, by {chooser} on the cross-validation's scores",
            )
        identities.append(identity)
        hparams.append(checkpoint["hyper_parameters"])
        epochs.append(int(checkpoint.get("epoch", -1)))
        members.append(member)
        del checkpoint
    return Models(list(paths), identities, hparams, epochs, members, why, cv_plan)


def _check_preprocessing(manifest: Manifest, identity: DataIdentity, where: Path) -> None:
    if manifest.preprocessing == identity.preprocessing:
        return
    changed = sorted(
        key
        for key in set(manifest.preprocessing) | set(identity.preprocessing)
        if manifest.preprocessing.get(key) != identity.preprocessing.get(key)
    )
    raise CheckpointError(
        f"{where} was prepared with other preprocessing than the checkpoint's data "
        f"({', '.join(changed)} differ): evaluate with --raw_dir {identity.raw_dir}, which "
        f"prepares the tiles as the checkpoint's data were prepared"
    )


def processed_tiles(config: EvalConfig, models: Models) -> TileSource:
    """The tiles of the processed folder to score: the checkpoint's own split (`--split`), a
    cross-validation's test split (the tiles no fold saw), the predict split or `--tiles`,
    checked against every checkpoint's data (channels, cell size, preprocessing, pixels).
    Whether any of them trained on or chose a model is the ledger's to say."""
    identities = models.identities
    identity = identities[0]
    split = config.scored_split
    plan = models.cv_plan if config.cv_dir is not None else None  # a fold ensemble
    default_dir = plan["processed_dir"] if plan is not None else identity.processed_dir
    processed_dir = config.processed_dir or Path(default_dir)
    manifest = Manifest.load(processed_dir)
    manifest.check_files(processed_dir)
    for each in identities:  # other preprocessing first: it also explains other channels
        _check_preprocessing(manifest, each, processed_dir)
        check_compatible(each, manifest, processed_dir)
    if config.tiles is not None:
        tiles, label = list(config.tiles), split
    elif split == "predict":
        tiles, label = list(manifest.split["predict"]), "predict"
    elif plan is not None:
        tiles, label = _cv_split(split, plan, processed_dir), split
    else:
        tiles, label = list(identity.split.get(split, [])), split
    if not tiles:
        raise ValueError(_empty_split_message(split, identity, processed_dir))
    missing = [tile for tile in tiles if tile not in manifest.tiles]
    if missing:
        asked = "given with --tiles" if config.tiles is not None else f"of the {split} split"
        raise CheckpointError(
            f"{processed_dir} has no tile(s) {', '.join(missing)} {asked}: evaluate with "
            f"--raw_dir {identity.raw_dir} (prepares them as the checkpoint's data) or pass "
            f"--processed_dir"
        )
    for each in identities:
        known = [tile for tile in tiles if tile in each.tile_hashes]
        changed = each.differing_tiles(manifest, known)
        if changed:
            raise CheckpointError(
                f"the processed pixels of {', '.join(changed)} in {processed_dir} differ from "
                f"the ones the checkpoint saw (re-prepared from other raw files?): evaluate "
                f"with --raw_dir RAW to prepare them again, or use the data the model saw"
            )
    return TileSource(processed_dir, manifest, tiles, label)


def _cv_split(split: str, plan: dict[str, Any], processed_dir: Path) -> list[str]:
    """The tiles of a cross-validation's processed folder its fold ensemble may score: the
    test split, which no fold trained on or chose with; a one-line refusal otherwise."""
    alternatives = (
        "its out-of-fold scores (summary.json; python -m scripts.report on its folder), "
        "--split predict, or --raw_dir with tiles no fold saw (the contest's Val/)"
    )
    if split != "test":
        raise ValueError(
            f"the ensemble of a cross-validation's folds has no {split} split: every labelled "
            f"tile trained or chose some fold. Score its test split (--split test), or use "
            f"{alternatives}"
        )
    if not plan["test"]:
        raise ValueError(
            f"the cross-validation's processed folder {processed_dir} has no test split (it was "
            f"prepared with --test_fraction 0) and every labelled tile trained or chose some "
            f"fold: the honest scores are {alternatives}"
        )
    return list(plan["test"])


def _empty_split_message(split: str, identity: DataIdentity, processed_dir: Path) -> str:
    if split == "predict":
        return (
            f"{processed_dir} has no tiles without ground truth (the predict split is empty): "
            f"to predict unlabelled tiles, pass --raw_dir with their folder"
        )
    fraction = {"val": identity.val_fraction, "test": identity.test_fraction}.get(split)
    made = f" (it was trained with {split}_fraction {fraction})" if fraction is not None else ""
    return (
        f"the checkpoint's {split} split has no tiles{made}: choose another --split, or "
        f"prepare with --{split}_fraction > 0 and train again"
    )


def default_cache_dir(raw_dir: Path, identity: DataIdentity) -> Path:
    """`data/eval_cache/<folder>-<hash of the folder's path and the preprocessing>`."""
    key = json.dumps([str(Path(raw_dir).resolve()), identity.preprocessing], sort_keys=True)
    return EVAL_CACHE_ROOT / f"{Path(raw_dir).name}-{hashlib.sha256(key.encode()).hexdigest()[:8]}"


def _from_raw(config: EvalConfig, models: Models, log: Callable[[str], None]) -> TileSource:
    """Every tile of `config.raw_dir`, prepared like the checkpoints' data in its own cache."""
    identities = models.identities
    identity = identities[0]
    if any(each.preprocessing != identity.preprocessing for each in identities):
        raise CheckpointError(
            "the checkpoints were trained on data prepared differently: an ensemble predicts "
            "a raw folder only when they share the preprocessing"
        )
    from src.esd_data.cache import prepare_dataset
    from src.esd_data.preprocessing import PreprocessConfig

    raw_dir = config.raw_dir
    assert raw_dir is not None
    _check_raw_cell_size(raw_dir, identities)
    cache_dir = config.cache_dir or default_cache_dir(raw_dir, identity)
    if cache_dir.resolve() == Path(identity.processed_dir).resolve():
        raise ValueError(
            f"--cache_dir {cache_dir} is the checkpoint's training cache: choose another folder"
        )
    with preparation_lock(cache_dir):
        previous = read_previous_manifest(cache_dir)
        if previous is not None and previous.purpose != "evaluation":
            raise ValueError(
                f"--cache_dir {cache_dir} holds a training cache (prepared by scripts.prepare): "
                f"choose another folder"
            )
        summary = prepare_dataset(
            raw_dir,
            cache_dir,
            workers=config.prepare_workers,
            preprocessing=PreprocessConfig.from_dict(identity.preprocessing),
            purpose="evaluation",
        )
    log(f"data: {raw_dir} → {cache_dir}: {summary}")
    manifest = summary.manifest
    tiles, label = list(manifest.split["predict"]), raw_dir.name
    if Path(raw_dir).resolve() == Path(identity.raw_dir).resolve() and models.cv_plan is None:
        # the checkpoint's own raw folder (its processed one re-prepared since): its own split,
        # not its training tiles
        split = config.scored_split
        tiles, label = [t for t in identity.split.get(split, []) if t in manifest.tiles], split
        log(f"{raw_dir} is the checkpoint's own raw folder: scoring its {split} tiles from it")
        if not tiles:
            raise ValueError(_empty_split_message(split, identity, cache_dir))
    for each in identities:
        check_compatible(each, manifest, cache_dir)
    return TileSource(cache_dir, manifest, tiles, label)


def _check_raw_cell_size(raw_dir: Path, identities: list[DataIdentity]) -> None:
    """CheckpointError, before anything is prepared or written, when the raw folder's tiles
    have another cell size than the checkpoints were trained on (from one tile's headers)."""
    from src.esd_data.reader import find_tile_dirs, inspect_tile
    from src.esd_data.sensors import LABEL_GRID

    first = find_tile_dirs(raw_dir)[0]
    height = inspect_tile(first, require_labels=False).shape[0]
    cell_px = height // LABEL_GRID
    wrong = sorted({i.cell_px for i in identities if i.cell_px != cell_px})
    if wrong:
        raise CheckpointError(
            f"the checkpoint(s) were trained on {', '.join(map(str, wrong))} px per label cell, "
            f"but the tiles of {raw_dir} have {cell_px} ({height} px tiles, e.g. {first.name}): "
            f"predict tiles of the training data's size"
        )


def choose_models(config: EvalConfig) -> Models:
    """The checkpoint(s) to evaluate (read once) and why they were chosen: `--model_path`,
    the checkpoint each fold of `--cv_dir` chose (one model's folds; every repetition and
    seed of a repeated one), or the newest best checkpoint."""
    if config.model_path is not None:
        return read_models(list(config.model_path), "--model_path")
    if config.cv_dir is not None:
        records = read_fold_records(config.cv_dir)
        plan = read_plan(config.cv_dir)
        why = f"the checkpoint each of the {len(records)} folds in {config.cv_dir} chose"
        repeats, seeds = plan.get("repeats", 1), len(plan.get("seeds", [0]))
        if repeats > 1 or seeds > 1:
            why += f" (all {repeats} repetition(s) × {seeds} seed(s), one ensemble)"
        return read_models([r.checkpoint for r in records], why, plan)
    path, why = newest_best_checkpoint(config.checkpoint_dir, config.model_type)
    return read_models([path], why)


def evaluate(
    config: EvalConfig, log: Callable[[str], None] = print, run_figures: bool = True
) -> dict[str, Any]:
    """Predict, restitch and write every output; return the metrics written to metrics.json.

    Several checkpoints form an ensemble: each window's probabilities are averaged over them
    (each normalising with its own training statistics) and over the `tta` views. Without
    `run_figures`, the confusion matrix and ROC curves of all the tiles together are not
    drawn (a cross-validation's fold: its out-of-fold evaluation draws them).
    """
    with figure_output(config):
        return _evaluate(config, log, run_figures)


def _evaluate(config: EvalConfig, log: Callable[[str], None], run_figures: bool) -> dict[str, Any]:
    models = choose_models(config)
    model_paths, identities, hparams = models.paths, models.identities, models.hparams
    epochs = models.epochs
    for path in model_paths:
        log(f"checkpoint: {path} ({models.why})")
    check_ensemble(hparams, config.tile_size_gt)
    device = resolve_device(config.accelerator)
    if config.raw_dir is not None:
        source = _from_raw(config, models, log)
    else:
        source = processed_tiles(config, models)
    ledger = source.ledger(models.members)
    if not (source.label == "train" and config.tiles is None):  # a fit diagnostic, so labelled
        ledger.check()
    if config.stride_gt is not None and config.restitch != "overlap":
        raise ValueError("--stride_gt sets the overlap windows' stride: add --restitch overlap")
    tile_size_gt = config.tile_size_gt or hparams[0]["tile_size_gt"]
    stride = None
    if config.restitch == "overlap":
        stride = config.stride_gt or max(1, tile_size_gt // 2)
    predictors = [
        Predictor(load_module(path, device), *identity.normalisation())
        for path, identity in zip(model_paths, identities, strict=True)
    ]
    types = sorted({hp["model_type"] for hp in hparams})
    model_type = types[0] if len(types) == 1 else "ensemble"
    run = _run_label(config, model_paths)
    key = {
        "checkpoints": [str(Path(path).resolve()) for path in model_paths],
        "epochs": epochs,
        "training_data": [identity.fingerprint for identity in identities],
        "processed_dir": str(Path(source.processed_dir).resolve()),
        "split": source.label,
        "tiles": list(source.tiles),
        "restitch": config.restitch,
        "stride_gt": stride or tile_size_gt,
        "tile_size_gt": tile_size_gt,
        "tta": config.tta,
        "bootstrap": [config.bootstrap_resamples, config.bootstrap_seed],
        **({"decision": config.decision} if config.decision != "argmax" else {}),
        **({"threshold_cv": str(config.threshold_cv.resolve())} if config.threshold_cv else {}),
    }
    results_dir = config.results_dir or (
        Path("data/predictions") / model_type / run / _output_label(config, source, stride)
    )
    check_results_dir(results_dir, key)
    predictions = predict_tiles(
        predictors,
        source.processed_dir,
        source.tiles,
        tile_size_gt,
        stride,
        config.batch_size,
        device,
        config.tta,
    )
    decision: dict[str, Any] = {}
    if config.decision == "class1_threshold":
        threshold_cv = config.threshold_cv or (config.cv_dir if models.cv_plan else None)
        chosen = (
            from_out_of_fold(threshold_cv, read_plan(threshold_cv))
            if threshold_cv is not None
            else from_val_tiles(models.members, identities[0].split,
                                Path(identities[0].processed_dir), predictors, tile_size_gt,
                                stride, config.batch_size, device, config.tta)
        )  # fmt: skip
        labelled = [p for p in predictions if p.truth is not None]
        decision = {**chosen.record(), "f1_class1_argmax": _f1_class1(labelled)}
        predictions = apply(predictions, chosen.threshold)
        ledger = chosen.ledger(ledger)
        log(f"decision: class 1 where its probability ≥ {chosen.threshold:.4f}, chosen on "
            f"{chosen.where}")  # fmt: skip
    info = {
        "model_path": [str(p) for p in model_paths]
        if len(model_paths) > 1
        else str(model_paths[0]),
        "model_type": model_type,
        "run": run,
        "epoch": epochs if len(epochs) > 1 else epochs[0],
        "split": source.label,
        "tiles_scored": [p.tile for p in predictions if p.truth is not None],
        "tiles_predicted": [p.tile for p in predictions],
        "data": {
            "processed_dir": str(source.processed_dir),
            "raw_dir": None if config.raw_dir is None else str(config.raw_dir),
            "training_data_fingerprint": [i.fingerprint for i in identities]
            if len(identities) > 1
            else identities[0].fingerprint,
            "normalisation": "each checkpoint's own training statistics",
        },
        "restitch": config.restitch,
        "tta": config.tta,
        "tile_size_gt": tile_size_gt,
        "stride_gt": stride or tile_size_gt,
        "held_out": ledger.record(),
        **({"decision": decision} if decision else {}),
        "evaluation_key": key,
    }
    optimistic = set(ledger.optimistic_tiles())
    with replaced_folder(results_dir) as staging:
        per_tile = [
            write_tile_outputs(
                staging,
                p,
                true_colour_image(source.processed_dir, source.manifest, p.tile),
                _model_label(model_type, run, len(model_paths), config),
                picture=config.tile_pictures,
                optimistic=p.tile in optimistic,
            )
            for p in predictions
        ]
        metrics = write_run_outputs(
            staging, predictions, per_tile, info, config.bootstrap_resamples,
            config.bootstrap_seed, figures=run_figures,
        )  # fmt: skip
    return metrics | {"results_dir": str(results_dir)}


def _f1_class1(predictions: list[TilePrediction]) -> float | None:
    """Class-1 F1 of the pooled labelled cells of `predictions` as they are labelled."""
    if not predictions:
        return None
    truth = np.concatenate([p.truth.ravel() for p in predictions])
    labels = np.concatenate([p.labels.ravel() for p in predictions])
    return float(label_scores(truth, labels)["f1_class1"])


def _model_label(model_type: str, run: str, count: int, config: EvalConfig) -> str:
    """What predicted the tiles, for the pictures: model, run, ensemble size, TTA."""
    label = f"{model_type} {run}"
    if count > 1:
        label += f" (ensemble of {count})"
    if config.tta != "none":
        label += f", TTA {config.tta}"
    return label


def _run_label(config: EvalConfig, model_paths: list[Path]) -> str:
    """The evaluated run's name in the default output folder: the checkpoint's run, the
    cross-validation (and model) of `--cv_dir`, or the ensemble of these checkpoints."""
    if config.cv_dir is not None:
        root, _ = cv_root_and_models(config.cv_dir)
        return root.name if root == config.cv_dir else f"{root.name}-{config.cv_dir.name}"
    if len(model_paths) == 1:
        return Path(model_paths[0]).parent.name
    paths = sorted(str(Path(path).resolve()) for path in model_paths)
    digest = hashlib.sha256(json.dumps(paths).encode()).hexdigest()[:8]
    return f"ensemble-of-{len(model_paths)}-{digest}"


def _output_label(config: EvalConfig, source: TileSource, stride: int | None) -> str:
    """The split or folder, with every option that changes the result: `val`,
    `val-tta-d4-overlap-2`, `val-tiles-<hash>`."""
    label = source.label
    if config.tiles is not None:
        label += "-tiles-" + hashlib.sha256(" ".join(config.tiles).encode()).hexdigest()[:8]
    if config.tta != "none":
        label += f"-tta-{config.tta}"
    if config.restitch == "overlap":
        label += f"-overlap-{stride}"
    return label


def check_results_dir(
    results_dir: Path, key: dict[str, Any], record: str = "metrics.json", what: str = "evaluation"
) -> None:
    """ValueError unless `results_dir` is new, empty, or holds an `what` (its `record` file
    written with) exactly `key` (which this one then replaces): never another result, never
    someone's other files."""
    if not results_dir.is_dir() or not any(results_dir.iterdir()):
        check_writable(results_dir.parent, f"{what}'s results")
        return
    try:
        previous = json.loads((results_dir / record).read_text()).get("evaluation_key")
    except (OSError, ValueError):
        raise ValueError(
            f"--results_dir {results_dir} holds files that are not an {what}'s (no readable "
            f"{record}): choose a new or empty folder"
        ) from None
    if previous != key:
        changed = sorted(k for k in key if (previous or {}).get(k) != key[k])
        raise ValueError(
            f"{results_dir} holds another {what} ({', '.join(changed) or 'an older esd'} "
            f"differ): choose another --results_dir, or delete it to replace it"
        )
    check_writable(results_dir.parent, f"{what}'s results")
