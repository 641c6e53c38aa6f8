"""Self-training rounds: a teacher pseudo-labels unlabelled tiles, a student learns from the
labelled and the pseudo-labelled tiles; every round resumable.

`<output_dir>/<name>/plan.json` records what determines the run (teacher, unlabelled folders,
confidence, cap, the student's options, the labelled folder's fingerprint); calling again with
the same options completes it, other options are refused. Round r lives in `round_<r>/`:
`teacher/<k>-<folder>/` (the teacher's evaluation of each unlabelled folder, with its
probabilities), `pseudo/<tile>.npy` and `pseudo_labels.json` (the set: teacher and its ledger
members, confidence, cap, where each tile came from, cells kept per class and per tile),
`data/manifest.json` (the student's view), the student's checkpoints and logs, and
`result.json` once it is trained. The next round's teacher is this round's student.

Held out: the teacher may not have trained on a tile the student is validated or tested on
(its pseudo-labels would carry that tile's labels into the student's scores); a tile with
ground truth, or with a labelled tile's pixels, is never pseudo-labelled; the student's
checkpoint records the set, and the ledger counts the teacher's training and choosing tiles
as the student's own wherever the student is scored.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from src.atomic import write_json, write_npy
from src.claims import held
from src.cli import config_values
from src.esd_data.manifest import MANIFEST_FILE, Manifest, sample_digest
from src.esd_data.reader import tile_number
from src.evaluation.config import EvalConfig
from src.evaluation.cv_record import read_fold_records
from src.evaluation.evaluate import choose_models, evaluate
from src.held_out import Ledger, Member
from src.self_training.config import SelfTrainConfig
from src.self_training.pseudo_labels import class_counts, select_cells
from src.self_training.student_data import pseudo_record, student_manifest
from src.training.config import ESDConfig
from src.training.result_config import config_hash, differences, result_config
from src.training.run_folder import run_inside
from src.training.train import train

PLAN_FILE = "plan.json"
RECORD_FILE = "pseudo_labels.json"
RESULT_FILE = "result.json"
RENAME_STEP = 1000
"""An unlabelled tile whose name a labelled tile has becomes Tile<1000·k + n> (folder k ≥ 1)."""


def self_train(
    options: SelfTrainConfig, base: ESDConfig, log: Callable[[str], None] = print
) -> list[dict[str, Any]]:
    """Run (or complete) every round; the result of each (its student's checkpoint, scores,
    cells kept per class)."""
    labelled_dir = Path(base.processed_dir).resolve()
    manifest = Manifest.load(labelled_dir)
    manifest.check_files(labelled_dir)
    plan = _plan(options, base, manifest)
    root = options.output_dir / (options.name or f"{base.model_type}-{config_hash(plan)[:8]}")
    with held(root):
        _check_plan(root, plan)
        return _rounds(root, options, base, manifest, log)


def _rounds(
    root: Path,
    options: SelfTrainConfig,
    base: ESDConfig,
    manifest: Manifest,
    log: Callable[[str], None],
) -> list[dict[str, Any]]:
    """Every round in turn, each one's student teaching the next."""
    log(f"self-training: {root}")
    teacher: dict[str, Any] = (
        {"model_path": list(options.model_path)}
        if options.model_path
        else {"cv_dir": options.cv_dir}
    )
    results = []
    for number in range(1, options.rounds + 1):
        round_dir = root / f"round_{number}"
        if (round_dir / RESULT_FILE).is_file():
            result = read_json(round_dir / RESULT_FILE)
            _check_student(result, round_dir)
            log(f"round {number}: done ({result['checkpoint']})")
        else:
            result = _round(number, round_dir, teacher, options, base, manifest, log)
        results.append(result)
        teacher = {"model_path": [Path(result["checkpoint"])]}
    return results


def _check_student(result: dict[str, Any], round_dir: Path) -> None:
    """ValueError when a finished round's student checkpoint is gone or changed since (trained
    further with `scripts.train --resume`): its result is no longer that checkpoint's."""
    checkpoint = Path(result["checkpoint"])
    if not checkpoint.is_file() or sample_digest(checkpoint) != result.get("checkpoint_sha256"):
        raise ValueError(
            f"round {result['round']}'s student {checkpoint} is gone or changed since it was "
            f"trained: delete {round_dir} (and the rounds after it) to train it again"
        )


def read_json(path: Path) -> dict[str, Any]:
    """A self-training record, with a one-line error for a damaged file."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(
            f"{path} cannot be read ({error}): delete its round folder and run again"
        ) from None


def _plan(options: SelfTrainConfig, base: ESDConfig, manifest: Manifest) -> dict[str, Any]:
    """What determines the self-training's result (rounds may grow between calls)."""
    values = config_values(options)
    for name in ("rounds", "output_dir", "name"):
        values.pop(name)
    values["model_path"] = [str(Path(p).resolve()) for p in options.model_path or []]
    values["cv_dir"] = None if options.cv_dir is None else str(Path(options.cv_dir).resolve())
    values["unlabelled"] = [str(Path(p).resolve()) for p in options.unlabelled or []]
    checkpoints = options.model_path or [r.checkpoint for r in read_fold_records(options.cv_dir)]
    return {
        **values,
        "teacher_files": [sample_digest(Path(path)) for path in checkpoints],
        "student": result_config(base),
        "labelled_data": manifest.fingerprint,
    }


def _check_plan(root: Path, plan: dict[str, Any]) -> None:
    """Write the plan of a new self-training; ValueError when `root` holds another one."""
    path = root / PLAN_FILE
    if path.is_file():
        recorded = read_json(path)
        if recorded != plan:
            changed = ", ".join(differences(recorded, plan)) or "the recorded plan"
            raise ValueError(
                f"{root} holds a self-training with other options ({changed} differ): give "
                f"another --name, or the same options to complete it"
            )
        return
    root.mkdir(parents=True, exist_ok=True)
    write_json(path, plan)


def _round(
    number: int,
    round_dir: Path,
    teacher: dict[str, Any],
    options: SelfTrainConfig,
    base: ESDConfig,
    manifest: Manifest,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Pseudo-label (unless this round already did), train the student, record the round."""
    labelled_dir = Path(base.processed_dir).resolve()
    record_path = round_dir / RECORD_FILE
    if record_path.is_file():
        record = read_json(record_path)
    else:
        record = pseudo_label(teacher, options, base, manifest, round_dir, log)
        write_json(record_path, record)
    log(f"round {number}: {_kept_line(record)}")
    view = student_manifest(manifest, labelled_dir, record["sources"], round_dir / "pseudo")
    view.save(round_dir / "data")
    config = run_inside(base, round_dir, f"round_{number}", pseudo_labels=record)
    trained = train(config, test=True, summary=number == 1, resume_hint=False)
    checkpoint = trained["best_model_path"] or trained["last_model_path"]
    result = {
        "round": number,
        "checkpoint": checkpoint,
        "checkpoint_sha256": sample_digest(Path(checkpoint)),
        "checkpoint_kind": "best" if trained["best_model_path"] else "last",
        "epoch": trained["best_epoch"] if trained["best_model_path"] else trained["last_epoch"],
        "val_f1_class1": trained["best_model_score"],
        "test_f1_class1": trained.get("test_f1_class1"),
        "pseudo_tiles": len(record["tiles"]),
        "cells_kept": record["cells_kept"],
    }
    write_json(round_dir / RESULT_FILE, result)
    return result


def _kept_line(record: dict[str, Any]) -> str:
    kept = record["cells_kept"]
    return (
        f"{sum(kept.values())} of {record['cells_total']} cells of {len(record['tiles'])} "
        f"unlabelled tile(s) pseudo-labelled (class 1–4: "
        f"{', '.join(str(kept[str(c)]) for c in range(1, 5))}; confidence "
        f"{record['confidence']}, class cap {record['class_cap']})"
    )


def pseudo_label(
    teacher: dict[str, Any],
    options: SelfTrainConfig,
    base: ESDConfig,
    manifest: Manifest,
    round_dir: Path,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """The teacher's predictions on every unlabelled folder, the confident cells written as
    `round_dir/pseudo/<tile>.npy`, and the set's record."""
    labelled_dir = Path(base.processed_dir).resolve()
    members = choose_models(EvalConfig(**teacher)).members
    check_teacher(members, manifest, labelled_dir)
    probabilities: dict[str, np.ndarray] = {}
    sources: dict[str, dict[str, Any]] = {}
    origins: dict[str, str] = {}
    for k, folder in enumerate(options.unlabelled or [labelled_dir]):
        predicted = _teacher_predictions(teacher, Path(folder), k, base, manifest, round_dir)
        for tile, (record, source_dir, probability) in predicted.items():
            name = _student_name(tile, k, manifest, sources)
            probabilities[name] = probability
            sources[name] = pseudo_record(record, source_dir)
            origins[name] = f"{Path(folder).resolve()}/{tile}"
    if not probabilities:
        raise ValueError("the unlabelled folders hold no tile to pseudo-label")
    labels = select_cells(probabilities, options.confidence, options.class_cap)
    if not any(kept.any() for kept in labels.values()):
        raise ValueError(
            f"the teacher is sure (confidence ≥ {options.confidence}, no class over "
            f"{options.class_cap} of the kept cells) of no cell of the {len(labels)} unlabelled "
            f"tile(s): lower --confidence or raise --class_cap"
        )
    for name, kept in labels.items():
        write_npy(round_dir / "pseudo" / f"{name}.npy", kept)
    per_tile = {name: class_counts(kept) for name, kept in labels.items()}
    totals = np.sum(list(per_tile.values()), axis=0)
    log(f"pseudo-labels of {len(labels)} tile(s) written to {round_dir / 'pseudo'}")
    return {
        "teacher": {
            key: [str(p) for p in value] if isinstance(value, list) else str(value)
            for key, value in teacher.items()
        },
        "teachers": [member.to_dict() for member in members],
        "confidence": options.confidence,
        "class_cap": options.class_cap,
        "tiles": sorted(labels, key=tile_number),
        "origins": origins,
        "sources": sources,
        "cells_total": int(sum(kept.size for kept in labels.values())),
        "cells_kept": {str(c): int(totals[c - 1]) for c in range(1, 5)},
        "cells_kept_per_tile": per_tile,
    }


def check_teacher(members: list[Member], manifest: Manifest, labelled_dir: Path) -> None:
    """ValueError when a teacher trained on a tile the student is validated or tested on."""
    scored = {
        t: manifest.tiles[t].sha256 for t in [*manifest.split["val"], *manifest.split["test"]]
    }
    raw_dir = str(Path(manifest.raw_dir).resolve())
    leaked = Ledger.ensemble(members, scored, raw_dir).trained_tiles()
    if leaked:
        raise ValueError(
            f"the teacher trained on {', '.join(leaked)}, which the student in {labelled_dir} "
            f"is validated or tested on: its pseudo-labels would carry those labels into the "
            f"student's scores; teach with a model trained on the student's training tiles "
            f"(python -m scripts.train --processed_dir {labelled_dir})"
        )


def _teacher_predictions(
    teacher: dict[str, Any],
    folder: Path,
    k: int,
    base: ESDConfig,
    manifest: Manifest,
    round_dir: Path,
) -> dict[str, tuple[Any, Path, np.ndarray]]:
    """Tile → (its record, its processed folder, the teacher's (4, 16, 16) probabilities) for
    the unlabelled tiles of `folder`; ValueError for a tile with ground truth or with a
    labelled tile's pixels."""
    processed = (folder / MANIFEST_FILE).is_file()
    if processed:
        if not Manifest.load(folder).split["predict"]:
            raise ValueError(
                f"{folder} has no tiles without ground truth (its predict split is empty): pass "
                f"--unlabelled with a folder of unlabelled tiles"
            )
        where: dict[str, Any] = {"processed_dir": folder, "split": "predict"}
    else:
        raw = Path(manifest.raw_dir).resolve()
        if folder.resolve() in (raw, raw / "Train"):
            raise ValueError(
                f"{folder} is the labelled tiles' raw folder: its unlabelled tiles are the "
                f"predict split of {base.processed_dir} (leave out --unlabelled)"
            )
        where = {"raw_dir": folder}
    accelerator = base.accelerator if base.accelerator in ("cpu", "cuda", "mps") else "auto"
    metrics = evaluate(
        EvalConfig(**teacher, **where, accelerator=accelerator, tile_pictures=False,
                   results_dir=round_dir / "teacher" / f"{k}-{folder.name}"),
        log=lambda _: None,
        run_figures=False,
    )  # fmt: skip
    source_dir = Path(metrics["data"]["processed_dir"])
    source = Manifest.load(source_dir)
    labelled = {manifest.tiles[t].sha256: t for t in manifest.labelled_tiles()}
    tiles = Path(metrics["results_dir"]) / "tiles"
    predicted = {}
    for tile in metrics["tiles_predicted"]:
        record = source.tiles[tile]
        if record.labels is not None:
            raise ValueError(
                f"{tile} of {folder} has ground truth: self-training pseudo-labels only tiles "
                f"without one (train on labelled tiles directly)"
            )
        if record.sha256 in labelled:
            raise ValueError(
                f"{tile} of {folder} has the pixels of the labelled tile "
                f"{labelled[record.sha256]}: it is never pseudo-labelled"
            )
        probability = tifffile.imread(tiles / f"{tile}_probabilities.tif")
        predicted[tile] = (record, source_dir, probability)
    return predicted


def _student_name(tile: str, k: int, manifest: Manifest, taken: dict[str, Any]) -> str:
    """The tile's name in the student's folder: its own, unless a labelled tile (or an
    earlier folder's tile) has it, then Tile<1000·(k+1) + n>."""
    used = set(manifest.labelled_tiles()) | set(taken)
    if tile not in used:
        return tile
    name = f"Tile{RENAME_STEP * (k + 1) + tile_number(tile)}"
    if name in used:
        raise ValueError(
            f"{tile} of unlabelled folder {k + 1} cannot be named in the student's data"
        )
    return name
