"""Predict whole tiles with a checkpoint: load, check against the data, restitch, score."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from src.esd_data.dataset import ESDDataset
from src.esd_data.identity import DataIdentity
from src.esd_data.manifest import Manifest
from src.evaluation.restitch import restitch_logits, softmax
from src.training.checkpoints import CheckpointError
from src.training.module import ESDSegmentation

BEST_PATTERN = "*/*/best-*.ckpt"


@dataclass(frozen=True)
class TilePrediction:
    """One tile's restitched prediction: probabilities (4, 16, 16) and labels 1..4."""

    tile: str
    probabilities: np.ndarray
    labels: np.ndarray
    truth: np.ndarray | None


def newest_best_checkpoint(checkpoint_dir: Path, model_type: str | None = None) -> tuple[Path, str]:
    """The most recently written `best-*.ckpt` under `checkpoint_dir/<model>/<run>/`, and why.

    With `model_type`, only that model's runs count. The reason names the run and, when
    other model types have checkpoints there too, says so (nothing is chosen across model
    types silently).
    """
    folder = Path(checkpoint_dir)
    found = [p for p in folder.glob(BEST_PATTERN) if model_type in (None, p.parts[-3])]
    if not found:
        which = f"{model_type} " if model_type else ""
        raise CheckpointError(
            f"no {which}best-*.ckpt under {folder}/<model_type>/<run>/: train a model first "
            f"(python -m scripts.train) or pass --model_path"
        )
    newest = max(found, key=lambda p: (p.stat().st_mtime_ns, str(p)))
    written = dt.datetime.fromtimestamp(newest.stat().st_mtime).strftime("%Y-%m-%d %H:%M:%S")
    runs = {p.parent for p in found}
    reason = (
        f"the newest best checkpoint under {folder} (written {written}; "
        f"{len(runs)} run(s) considered)"
    )
    others = sorted({p.parts[-3] for p in folder.glob(BEST_PATTERN)} - {newest.parts[-3]})
    if model_type is None and others:
        reason += (
            f"; {folder} also has {', '.join(others)} runs: pass --model_type or --model_path "
            f"to choose"
        )
    return newest, reason


def check_compatible(identity: DataIdentity, manifest: Manifest, processed_dir: Path) -> None:
    """CheckpointError unless the processed data has the model's channels and cell size."""
    hp = identity
    if hp.cell_px != manifest.cell_px:
        raise CheckpointError(
            f"the checkpoint was trained on {hp.cell_px} px per label cell, but {processed_dir} "
            f"has {manifest.cell_px} px per cell ({manifest.tile_shape[0]} px tiles): evaluate "
            f"on data prepared like the training data"
        )
    missing = [name for name in hp.channels if name not in manifest.channels]
    if missing:
        raise CheckpointError(
            f"the checkpoint was trained on {len(hp.channels)} channels, {len(missing)} of which "
            f"{processed_dir} lacks (e.g. {', '.join(missing[:3])}): evaluate on data prepared "
            f"with the same sensors and dates"
        )


def predict_tiles(
    module: ESDSegmentation,
    processed_dir: Path,
    tiles: list[str],
    tile_size_gt: int,
    stride_gt: int | None,
    batch_size: int,
    device: torch.device,
    normalisation: tuple[np.ndarray, np.ndarray],
) -> list[TilePrediction]:
    """Predict every window of every tile, restitch, with a progress bar over tiles.

    The windows are normalised with `normalisation` (the checkpoint's training statistics).
    """
    dataset = ESDDataset(
        processed_dir,
        "predict",
        tile_size_gt,
        bands=list(module.hparams.channels),
        stride_gt=stride_gt,
        tiles=tiles,
        normalisation=normalisation,
    )
    windows = len(dataset.origins) ** 2
    predictions = []
    for position, tile in enumerate(tqdm(dataset.tiles, desc="predicting", unit="tile")):
        items = [dataset[position * windows + k] for k in range(windows)]
        logits = []
        with torch.no_grad():
            for start in range(0, windows, batch_size):
                batch = torch.stack([item["X"] for item in items[start : start + batch_size]])
                logits.append(module(batch.to(device)).float().cpu().numpy())
        mean_logits = restitch_logits(
            np.concatenate(logits),
            [item["row"] for item in items],
            [item["col"] for item in items],
            dataset.origins,
        )
        labels = dataset.tile_labels(tile)
        probabilities = softmax(mean_logits)
        predictions.append(
            TilePrediction(
                tile,
                probabilities,
                probabilities.argmax(axis=0).astype(np.uint8) + 1,
                None if labels is None else np.asarray(labels, dtype=np.uint8),
            )
        )
    return predictions
