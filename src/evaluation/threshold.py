"""Choosing the contest decision's class-1 threshold for an evaluation, on tiles not scored.

A checkpoint (or an ensemble) chooses it on the val tiles of the first checkpoint's data (the
tiles that already chose its epoch), predicted as the scored tiles are; a cross-validation's
fold ensemble (`--cv_dir`) on its out-of-fold predictions (every labelled tile, each predicted
by the fold that did not train on it), which leaves its test split honest. A selection tile
that a member trained on is refused: its probabilities would be in-sample.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
import torch

from src.esd_data.manifest import Manifest
from src.esd_data.reader import tile_number
from src.evaluation.cv_record import check_cv_data, cv_root_and_models
from src.evaluation.decision import best_class1_threshold, decide
from src.evaluation.evaluator import Predictor, TilePrediction, predict_tiles
from src.held_out import Ledger, Member, Scoring


@dataclass(frozen=True)
class Threshold:
    """The chosen class-1 threshold, its F1 there, and the tiles that chose it."""

    threshold: float
    f1_class1: float
    tiles: dict[str, str]
    raw_dir: str
    where: str

    def record(self) -> dict[str, Any]:
        return {
            "rule": "class1_threshold", "threshold": self.threshold, "chosen_on": self.where,
            "tiles": sorted(self.tiles, key=tile_number),
            "f1_class1_where_chosen": self.f1_class1,
        }  # fmt: skip

    def ledger(self, ledger: Ledger) -> Ledger:
        """`ledger` with the threshold's tiles among those that chose every member."""
        why = f"the class-1 threshold, on {self.where}"
        tiles = self.tiles
        return Ledger(tuple(
            Scoring(part.member.choosing(
                tiles if part.member.raw_dir == self.raw_dir
                else {f"{self.raw_dir}/{t}": d for t, d in tiles.items()}, why),
                part.scored, part.raw_dir)
            for part in ledger.parts
        ))  # fmt: skip


def apply(predictions: list[TilePrediction], threshold: float) -> list[TilePrediction]:
    """The predictions relabelled by the threshold decision."""
    return [dataclasses.replace(p, labels=decide(p.probabilities, threshold)) for p in predictions]


def from_out_of_fold(cv_dir: Path, plan: dict[str, Any]) -> Threshold:
    """The threshold of a cross-validation's out-of-fold predictions (every partition's)."""
    _, models = cv_root_and_models(cv_dir)
    if len(models) != 1:
        raise ValueError(
            f"{cv_dir} holds the folds of {len(models)} models "
            f"({', '.join(m.name for m in models)}): choose the threshold on one, e.g. "
            f"{cv_dir / models[0].name}"
        )
    model_dir = models[0]
    processed = Path(plan["processed_dir"])
    manifest = Manifest.load(processed)
    check_cv_data(plan, manifest.fingerprint, "its out-of-fold predictions' threshold")
    files = sorted((model_dir / "oof").glob("**/tiles/*_probabilities.tif"))
    if not files:
        raise ValueError(
            f"{model_dir / 'oof'} holds no out-of-fold probabilities to choose on: has the "
            f"cross-validation finished? (python -m scripts.cross_validate --status "
            f"{model_dir.parent})"
        )
    names = [f.name.removesuffix("_probabilities.tif") for f in files]
    truths = [np.load(processed / manifest.tiles[t].labels) for t in names]
    threshold, f1 = best_class1_threshold([tifffile.imread(f) for f in files], truths)
    tiles = {t: manifest.tiles[t].sha256 for t in names}
    where = f"the cross-validation's out-of-fold predictions ({len(tiles)} tiles)"
    return Threshold(threshold, f1, tiles, str(Path(manifest.raw_dir).resolve()), where)


def from_val_tiles(
    members: list[Member], identity_split: dict[str, list[str]], processed_dir: Path,
    predictors: list[Predictor], tile_size_gt: int, stride: int | None, batch_size: int,
    device: torch.device, tta: str,
) -> Threshold:  # fmt: skip
    """The threshold of the first checkpoint's val tiles, predicted as the scored ones are."""
    tiles = list(identity_split.get("val", []))
    if not tiles:
        raise ValueError(
            "the checkpoint has no val tiles to choose the class-1 threshold on: use --decision "
            "argmax, or train with --val_fraction above 0"
        )
    manifest = Manifest.load(processed_dir)
    raw_dir = str(Path(manifest.raw_dir).resolve())
    chosen = {t: manifest.tiles[t].sha256 for t in tiles}
    trained = Ledger(tuple(Scoring(m, chosen, raw_dir) for m in members)).trained_tiles()
    if trained:
        raise ValueError(
            f"the class-1 threshold would be chosen on {', '.join(trained)}, which a member of "
            f"the ensemble trained on: ensemble checkpoints of one split"
        )
    predictions = predict_tiles(predictors, processed_dir, tiles, tile_size_gt, stride,
                                batch_size, device, tta)  # fmt: skip
    threshold, f1 = best_class1_threshold(
        [p.probabilities for p in predictions], [p.truth for p in predictions]
    )
    return Threshold(threshold, f1, chosen, raw_dir, f"the checkpoint's {len(tiles)} val tiles")
