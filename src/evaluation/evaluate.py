"""`evaluate(config)`: score a checkpoint on whole tiles and write every output.

What is scored comes from the checkpoint's `DataIdentity`, not from whatever the processed
folder holds now: the checkpoint's own split (its `val` tiles by default), normalised with
its own training statistics, on tiles whose processed pixels are the ones it was trained
and validated on. A tile the model trained on is never scored as `val` or `test`. With
`raw_dir`, the tiles of any folder (the contest's unlabelled Val/ or Test/, say) are
prepared with the checkpoint's preprocessing into a cache of their own and predicted.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from src.atomic import check_writable, replaced_folder
from src.esd_data.identity import SCORED_SPLITS, DataIdentity
from src.esd_data.manifest import Manifest
from src.esd_data.preparation import preparation_lock, read_previous_manifest
from src.esd_data.reader import tile_number
from src.evaluation.config import EvalConfig
from src.evaluation.cv_record import cv_root_and_models, read_fold_checkpoints
from src.evaluation.evaluator import (
    Predictor,
    check_compatible,
    check_ensemble,
    newest_best_checkpoint,
    predict_tiles,
)
from src.evaluation.report import true_colour_image, write_run_outputs, write_tile_outputs
from src.hardware import resolve_device
from src.training.checkpoints import CheckpointError, data_identity, load_module, read_checkpoint
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


def processed_tiles(config: EvalConfig, identities: list[DataIdentity]) -> TileSource:
    """The first checkpoint's own split (or `--tiles`) of the processed folder, checked
    against every checkpoint's data (same pixels, never a tile one of them trained on)."""
    identity = identities[0]
    processed_dir = config.processed_dir or Path(identity.processed_dir)
    manifest = Manifest.load(processed_dir)
    manifest.check_files(processed_dir)
    for each in identities:
        check_compatible(each, manifest, processed_dir)
        _check_preprocessing(manifest, each, processed_dir)
    if config.tiles is not None:
        tiles, label = list(config.tiles), config.split
    elif config.split == "predict":
        tiles, label = list(manifest.split["predict"]), "predict"
    else:
        tiles, label = list(identity.split.get(config.split, [])), config.split
    if not tiles:
        raise ValueError(_empty_split_message(config.split, identity, processed_dir))
    missing = [tile for tile in tiles if tile not in manifest.tiles]
    if missing:
        raise CheckpointError(
            f"{processed_dir} has no tile(s) {', '.join(missing)} of the checkpoint's "
            f"{config.split} split: evaluate with --raw_dir {identity.raw_dir} (prepares them "
            f"as the checkpoint's data) or pass --processed_dir"
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
        if label in SCORED_SPLITS:
            _refuse_training_tiles(each, manifest, tiles, label, by_name=True)
    return TileSource(processed_dir, manifest, tiles, label)


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


def _refuse_training_tiles(
    identity: DataIdentity, manifest: Manifest, tiles: list[str], label: str, by_name: bool
) -> None:
    """CheckpointError naming the tiles the model trained on: by content (the same pixels
    under any name) and, within the training folder (`by_name`), by name."""
    by_name_tiles = set(identity.training_tiles(tiles)) if by_name else set()
    by_content = identity.trained_on(manifest, tiles)
    leaked = sorted(by_name_tiles | set(by_content), key=tile_number)
    if leaked:
        names = ", ".join(
            f"{tile} (= training tile {by_content[tile]})"
            if tile in by_content and by_content[tile] != tile
            else tile
            for tile in leaked
        )
        raise CheckpointError(
            f"refusing to score as {label}: the checkpoint was trained on {names}; its scores "
            f"there would not be honest. Score its own {label} split (leave out --tiles) or "
            f"tiles it never saw"
        )


def default_cache_dir(raw_dir: Path, identity: DataIdentity) -> Path:
    """`data/eval_cache/<folder>-<hash of the folder's path and the preprocessing>`."""
    key = json.dumps([str(Path(raw_dir).resolve()), identity.preprocessing], sort_keys=True)
    return EVAL_CACHE_ROOT / f"{Path(raw_dir).name}-{hashlib.sha256(key.encode()).hexdigest()[:8]}"


def _from_raw(
    config: EvalConfig, identities: list[DataIdentity], log: Callable[[str], None]
) -> TileSource:
    """Every tile of `config.raw_dir`, prepared like the checkpoints' data in its own cache."""
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
    tiles = list(manifest.split["predict"])
    for each in identities:
        check_compatible(each, manifest, cache_dir)
        _refuse_training_tiles(each, manifest, tiles, "held-out", by_name=False)
    return TileSource(cache_dir, manifest, tiles, raw_dir.name)


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


def choose_checkpoints(config: EvalConfig) -> tuple[list[Path], str]:
    """The checkpoint(s) to evaluate and why they were chosen."""
    if config.model_path is not None:
        return list(config.model_path), "--model_path"
    if config.cv_dir is not None:
        return _cv_checkpoints(config.cv_dir)
    path, why = newest_best_checkpoint(config.checkpoint_dir, config.model_type)
    return [path], why


def _cv_checkpoints(cv_dir: Path) -> tuple[list[Path], str]:
    """The checkpoint each fold of a cross-validation chose when it finished (`cv_dir` is its
    folder, all its model types, or one model's folder in it)."""
    chosen = read_fold_checkpoints(cv_dir)
    return chosen, f"the checkpoint each of the {len(chosen)} folds in {cv_dir} chose"


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
    model_paths, why = choose_checkpoints(config)
    for path in model_paths:
        log(f"checkpoint: {path} ({why})")
    identities, hparams, epochs = [], [], []
    for path in model_paths:  # only what is needed is kept, not the weights
        checkpoint = read_checkpoint(path)
        identities.append(data_identity(checkpoint, path))
        hparams.append(checkpoint["hyper_parameters"])
        epochs.append(int(checkpoint.get("epoch", -1)))
    del checkpoint
    check_ensemble(hparams, config.tile_size_gt)
    device = resolve_device(config.accelerator)
    if config.raw_dir is not None:
        source = _from_raw(config, identities, log)
    else:
        source = processed_tiles(config, identities)
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
        "evaluation_key": key,
    }
    with replaced_folder(results_dir) as staging:
        per_tile = [
            write_tile_outputs(
                staging,
                p,
                true_colour_image(source.processed_dir, source.manifest, p.tile),
                _model_label(model_type, run, len(model_paths), config),
                picture=config.tile_pictures,
            )
            for p in predictions
        ]
        metrics = write_run_outputs(
            staging, predictions, per_tile, info, config.bootstrap_resamples,
            config.bootstrap_seed, figures=run_figures,
        )  # fmt: skip
    return metrics | {"results_dir": str(results_dir)}


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
        check_writable(results_dir.parent, f"the {what}'s results")
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
    check_writable(results_dir.parent, f"the {what}'s results")
