"""Label-scarce study: the contest decision and self-training against UNet's arg-max.

    python -m benchmarks.bench_self_training [--labelled 10 --unlabelled 30 --folds 3
        --repeats 2 --seeds 2 --tile_px 160 --max_epochs 8 --confidence 0.9 --class_cap 0.5]

Synthetic 160-px tiles: a few labelled, many unlabelled (prepared into the predict split). One
repeated cross-validation of UNet over the labelled tiles (`--selection last`: a fixed budget,
nothing chosen on the scored tiles) gives the teachers; each of its units (fold × repetition ×
seed) is then self-trained (`src.self_training`: the unit's checkpoint pseudo-labels the
unlabelled tiles, a student with the unit's seed trains on the unit's training tiles and the
pseudo-labelled ones for the same budget) and the student predicts the unit's held-out tiles.
Four arms, each on every labelled tile once per partition: arg-max, class-1 threshold (each
fold's chosen on the other folds' out-of-fold predictions of its partition), self-training,
and both. Paired over the same units with `src.evaluation.comparison` (tile interval, fold-level
test, Holm over the four pairs, verdicts that need two seeds); prints the wall time of each part.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile

from src.cross_validation.config import CVConfig
from src.cross_validation.run import cross_validate
from src.esd_data.cache import prepare_dataset
from src.esd_data.manifest import Manifest
from src.esd_data.synthetic import generate_synthetic_dataset
from src.evaluation.bootstrap import confusion, scores_of_confusion
from src.evaluation.comparison import ScoredRun, compare_pair, format_pairs, holm
from src.evaluation.config import EvalConfig
from src.evaluation.cv_record import read_fold_records, read_plan
from src.evaluation.decision import cross_fitted, decide
from src.evaluation.evaluate import evaluate
from src.self_training.config import SelfTrainConfig
from src.self_training.run import self_train
from src.training.config import ESDConfig

ARMS = ("argmax", "threshold", "self-training", "self-training + threshold")


def held_out_probabilities(folder: Path, tiles: list[str]) -> dict[str, np.ndarray]:
    """The (4, 16, 16) probabilities an evaluation folder wrote for `tiles`."""
    return {t: tifffile.imread(folder / "tiles" / f"{t}_probabilities.tif") for t in tiles}


def arm_labels(
    probabilities: list[dict[str, np.ndarray]],
    truths: dict[str, np.ndarray],
    folds: int,
    threshold: bool,
) -> list[dict[str, np.ndarray]]:
    """Each unit's labels of its held-out tiles: arg-max, or the threshold chosen on the other
    folds of its partition (every `folds` consecutive units)."""
    if not threshold:
        return [{t: decide(p, None) for t, p in unit.items()} for unit in probabilities]
    labels: list[dict[str, np.ndarray]] = []
    for start in range(0, len(probabilities), folds):
        partition = probabilities[start : start + folds]
        pooled = {t: p for unit in partition for t, p in unit.items()}
        decided, _ = cross_fitted(pooled, truths, [list(unit) for unit in partition])
        labels += [{t: decided[t] for t in unit} for unit in partition]
    return labels


def scored_run(name: str, labels: list[dict[str, np.ndarray]], truths: dict[str, np.ndarray],
               train_sizes: list[int], partitions: int, seeds: int) -> ScoredRun:  # fmt: skip
    """The arm as a comparison sees a cross-validation: per-tile confusions summed over the
    partitions, each unit's held-out tiles and class-1 F1."""
    tiles = sorted(truths, key=lambda t: int(t[4:]))
    matrices = {t: np.zeros((4, 4)) for t in tiles}
    fold_scores = []
    for unit in labels:
        unit_total = np.zeros((4, 4))
        for tile, predicted in unit.items():
            matrix = confusion(truths[tile].ravel(), predicted.ravel())
            matrices[tile] += matrix
            unit_total += matrix
        fold_scores.append(float(scores_of_confusion(unit_total)["f1_class1"]))
    digests = [hashlib.sha256(truths[t].tobytes()).hexdigest() for t in tiles]
    return ScoredRun(
        name, tiles, np.stack([matrices[t] for t in tiles]), digests,
        fold_tiles=[sorted(unit) for unit in labels], fold_scores=fold_scores,
        fold_train_sizes=train_sizes, partitions=partitions, seeds=seeds,
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    for name, default in (("labelled", 10), ("unlabelled", 30), ("folds", 3), ("repeats", 2),
                          ("seeds", 2), ("tile_px", 160), ("max_epochs", 8)):  # fmt: skip
        parser.add_argument(f"--{name}", type=int, default=default)
    parser.add_argument("--confidence", type=float, default=0.9)
    parser.add_argument("--class_cap", type=float, default=0.5)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_self_training_"))
    raw, processed = work / "raw", work / "processed"
    generate_synthetic_dataset(raw, n_tiles=args.labelled, seed=0, tile_px=args.tile_px,
                               unlabelled=args.unlabelled)  # fmt: skip
    prepare_dataset(raw, processed, workers=2, val_fraction=0.0)
    base = ESDConfig(raw_dir=None, processed_dir=processed, model_type="UNet",
                     max_epochs=args.max_epochs, num_workers=0, wandb_mode="disabled",
                     limit_val_batches=0)  # fmt: skip
    cv = CVConfig(folds=args.folds, repeats=args.repeats, seeds=args.seeds, model_type=["UNet"],
                  selection="last", output_dir=work / "cv", name="teachers",
                  tile_pictures="none")  # fmt: skip
    start = time.perf_counter()
    cross_validate(cv, base, log=lambda _: None)
    cv_seconds = time.perf_counter() - start
    model_dir = work / "cv" / "teachers" / "UNet"
    records, plan = read_fold_records(model_dir), read_plan(model_dir)
    manifest = Manifest.load(processed)
    truths = {t: np.load(processed / manifest.tiles[t].labels) for t in manifest.labelled_tiles()}
    teacher, student = [], []
    start = time.perf_counter()
    for record, unit in zip(records, plan["units"], strict=True):
        held_out = record.result["val_tiles"]
        teacher.append(held_out_probabilities(record.folder / "predictions", held_out))
        options = SelfTrainConfig(model_path=[record.checkpoint], unlabelled=[processed],
                                  confidence=args.confidence, class_cap=args.class_cap,
                                  output_dir=work / "self", name=record.folder.name)  # fmt: skip
        config = dataclasses.replace(base, processed_dir=record.folder / "data", seed=unit["seed"])
        (result,) = self_train(options, config, log=lambda _: None)
        folder = work / "students" / record.folder.name
        evaluate(EvalConfig(model_path=[Path(result["checkpoint"])], split="test",
                            results_dir=folder, accelerator="cpu", tile_pictures=False),
                 log=lambda _: None, run_figures=False)  # fmt: skip
        student.append(held_out_probabilities(folder, held_out))
    self_seconds = time.perf_counter() - start
    sizes = [len(r.result["train_tiles"]) for r in records]
    partitions = args.repeats * args.seeds
    arms = zip(ARMS, (teacher, teacher, student, student), (False, True, False, True), strict=True)
    runs = {}
    for name, probabilities, threshold in arms:
        labels = arm_labels(probabilities, truths, args.folds, threshold)
        runs[name] = scored_run(name, labels, truths, sizes, partitions, args.seeds)
    print(
        f"UNet, {args.labelled} labelled + {args.unlabelled} unlabelled synthetic "
        f"{args.tile_px}-px tiles, {args.folds} folds × {args.repeats} repetitions × "
        f"{args.seeds} seeds, {args.max_epochs} epochs; confidence {args.confidence}, class cap "
        f"{args.class_cap}"
    )
    for run in runs.values():
        spread = np.array(run.fold_scores)
        print(f"  {run.name:<26} pooled f1_class1 {run.f1_class1:.4f} (units {spread.min():.4f}"
              f"–{spread.max():.4f})")  # fmt: skip
    pairs = [compare_pair(runs[a], runs[b], 1000, 0) for a, b in (
        ("threshold", "argmax"), ("self-training", "argmax"),
        ("self-training + threshold", "argmax"), ("self-training + threshold", "threshold"),
    )]  # fmt: skip
    print(format_pairs(holm(pairs)))
    print(f"wall: cross-validation (teachers, arg-max and threshold arms) {cv_seconds:.1f} s; "
          f"self-training of {len(records)} units (pseudo-labels, students, their "
          f"predictions) {self_seconds:.1f} s")  # fmt: skip
    print(f"(work folder: {work})")


if __name__ == "__main__":
    main()
