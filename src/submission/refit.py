"""Refit and submit: train a cross-validated model once more on every labelled tile, with the
budget its cross-validation chose, and predict unlabelled folders into checked Kaggle files.

The cross-validation chose the training options (its fold configuration), the number of epochs
(the median of the epochs its folds chose, plus one: a refit has no tiles left to choose an
epoch on) and, with `class1_threshold`, the class-1 threshold (on its out-of-fold predictions).
`<output_dir>/<name>/refit.json` records all of it with the tiles trained on; calling again
with the same options reuses the refit (or resumes its training), other options are refused.
Each unlabelled folder is predicted by `scripts.evaluate`'s code into
`predictions/<decision>/<folder>/` with its Kaggle `predictions.csv`, checked (rows, pixel
ids, tiles); another decision predicts again with the same refit.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from src.atomic import write_json
from src.claims import held
from src.esd_data.folds import fold_manifest
from src.esd_data.manifest import Manifest, sample_digest
from src.esd_data.reader import tile_number
from src.evaluation.config import EvalConfig
from src.evaluation.cv_record import (
    check_cv_data,
    cv_root_and_models,
    read_fold_records,
    read_plan,
)
from src.evaluation.evaluate import evaluate
from src.evaluation.report import KAGGLE_FILE, check_kaggle_csv
from src.submission.config import SubmitConfig
from src.training.checkpoints import read_checkpoint
from src.training.config import ESDConfig
from src.training.result_config import differences
from src.training.resume import saved_run_config
from src.training.run_folder import run_inside
from src.training.train import train

RECORD_FILE = "refit.json"


def refit_and_submit(config: SubmitConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Refit (unless done), predict every unlabelled folder; the record, with each folder's
    Kaggle file, its check line and decision under `submissions`."""
    records = read_fold_records(config.cv_dir)  # one model's, every fold finished
    plan = read_plan(config.cv_dir)
    processed = Path(plan["processed_dir"])
    manifest = Manifest.load(processed)
    manifest.check_files(processed)
    check_cv_data(plan, manifest.fingerprint, "its epochs and threshold")
    raw = Path(manifest.raw_dir).resolve()
    for folder in config.unlabelled:
        if Path(folder).resolve() in (raw, raw / "Train"):
            raise ValueError(
                f"{folder} is the raw folder of the labelled tiles the refit trains on: "
                f"--unlabelled names folders to predict (the contest's Val/ and Test/)"
            )
    fold_epochs = [int(r.result["selected_epoch"]) for r in records]
    root_dir, (model_dir,) = cv_root_and_models(config.cv_dir)
    refit = {  # what determines the refit (the decision only changes the predictions)
        "cv_dir": str(model_dir.resolve()),
        "fold_epochs": fold_epochs,
        "epochs": config.epochs or refit_epochs(fold_epochs),
        "tiles": sorted(manifest.labelled_tiles(), key=tile_number),
        "data": manifest.fingerprint,
    }
    decision = config.decision or records[0].result["configuration"]["protocol"].get(
        "decision", "argmax"
    )
    root = config.output_dir / (config.name or f"{root_dir.name}-{model_dir.name}")
    with held(root):
        record = _refitted(root, refit, records[0].checkpoint, manifest, processed, log)
        record["decision"] = decision
        checkpoint = Path(record["checkpoint"])
        record["submissions"] = {
            str(folder): _predict(checkpoint, Path(folder), root, decision, config, model_dir)
            for folder in config.unlabelled
        }
        write_json(root / RECORD_FILE, record)
    return record


def _refitted(
    root: Path, refit: dict[str, Any], fold_checkpoint: Path, manifest: Manifest,
    processed: Path, log: Callable[[str], None],
) -> dict[str, Any]:  # fmt: skip
    """The refit's record with its checkpoint: the recorded one when it is this refit and its
    file is the one trained, else trained (or resumed) now; ValueError for another refit or a
    checkpoint changed since."""
    previous = _read_record(root)
    if previous is not None:
        recorded = {key: previous.get(key) for key in refit}
        if recorded != refit:
            raise ValueError(
                f"{root} holds another refit ({', '.join(differences(recorded, refit))} differ): "
                f"give another --name, or the same options to reuse it"
            )
        checkpoint = previous.get("checkpoint")
        if checkpoint is not None and Path(checkpoint).is_file():
            if sample_digest(Path(checkpoint)) != previous.get("checkpoint_sha256"):
                raise ValueError(
                    f"the refit's checkpoint {checkpoint} changed since it was trained (trained "
                    f"further with --resume?): delete {root} to refit, or give another --name"
                )
            log(f"refit: {checkpoint} (done)")
            return previous
    checkpoint = _refit(fold_checkpoint, manifest, processed, refit, root, log)
    record = {
        **refit,
        "checkpoint": checkpoint,
        "checkpoint_sha256": sample_digest(Path(checkpoint)),
    }
    write_json(root / RECORD_FILE, record)
    return record


def refit_epochs(fold_epochs: list[int]) -> int:
    """Epochs of a refit: the median of the (0-based) epochs the folds chose, rounded up, plus
    one (epoch e is the (e+1)-th)."""
    return math.ceil(float(np.median(fold_epochs))) + 1


def _read_record(root: Path) -> dict[str, Any] | None:
    path = root / RECORD_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} cannot be read ({error}): delete {root} and refit") from None


def _refit(
    fold_checkpoint: Path,
    manifest: Manifest,
    processed: Path,
    record: dict[str, Any],
    root: Path,
    log: Callable[[str], None],
) -> str:
    """Train the folds' configuration on every labelled tile for the recorded epochs (resumed
    from its last.ckpt when it stopped part-way); the last checkpoint."""
    view = fold_manifest(manifest, processed, record["tiles"], [], [])
    view.save(root / "data")
    write_json(root / RECORD_FILE, record)  # what the training below is, before it starts
    fold_config = saved_run_config(read_checkpoint(fold_checkpoint), fold_checkpoint)
    config = run_inside(
        ESDConfig(**fold_config), root, "refit", max_epochs=record["epochs"], limit_val_batches=0
    )
    log(
        f"refit: {config.model_type} on {len(record['tiles'])} labelled tiles for "
        f"{record['epochs']} epochs (the folds chose epochs {record['fold_epochs']})"
    )
    return train(config, test=False, resume_hint=False)["last_model_path"]


def _predict(
    checkpoint: Path,
    folder: Path,
    root: Path,
    decision: str,
    config: SubmitConfig,
    model_dir: Path,
) -> dict[str, Any]:
    """Predict one unlabelled folder; its Kaggle file, checked, and its decision."""
    threshold = decision == "class1_threshold"
    metrics = evaluate(
        EvalConfig(
            model_path=[checkpoint], raw_dir=folder,
            results_dir=root / "predictions" / decision / folder.name,
            decision=decision, threshold_cv=model_dir if threshold else None,
            tta=config.tta, accelerator=config.accelerator, tile_pictures=False,
        ),
        log=lambda _: None,
    )  # fmt: skip
    csv = Path(metrics["results_dir"]) / KAGGLE_FILE
    check = check_kaggle_csv(csv, metrics["tiles_predicted"])
    entry: dict[str, Any] = {"csv": str(csv), "decision": decision, "check": check}
    if "decision" in metrics:
        entry["threshold"] = metrics["decision"]["threshold"]
    return entry
