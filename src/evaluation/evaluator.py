"""Predict whole tiles with a checkpoint: load, check against the data, restitch, score."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from src.esd_data.dataset import ESDDataset
from src.esd_data.manifest import Manifest
from src.evaluation.restitch import restitch_logits, softmax
from src.training.module import ESDSegmentation


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable, or does not fit the processed data."""


@dataclass(frozen=True)
class TilePrediction:
    """One tile's restitched prediction: probabilities (4, 16, 16) and labels 1..4."""

    tile: str
    probabilities: np.ndarray
    labels: np.ndarray
    truth: np.ndarray | None


def newest_best_checkpoint(checkpoint_dir: Path) -> Path:
    """The most recently written `best-*.ckpt` under `checkpoint_dir/<model>/<run>/`."""
    found = sorted(Path(checkpoint_dir).glob("*/*/best-*.ckpt"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise CheckpointError(
            f"no best-*.ckpt under {checkpoint_dir}/<model_type>/<run>/: train a model first "
            f"(python -m scripts.train) or pass --model_path"
        )
    return found[-1]


def load_checkpoint(path: Path, device: torch.device) -> ESDSegmentation:
    """The trained module in eval mode, with a clear error for a missing or corrupt file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        module = ESDSegmentation.load_from_checkpoint(path, map_location=device)
    except Exception as error:
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({type(error).__name__}: {error}); is it a "
            f"checkpoint written by scripts.train, and complete?"
        ) from error
    return module.eval()


def check_compatible(module: ESDSegmentation, manifest: Manifest, processed_dir: Path) -> None:
    """CheckpointError unless the processed data has the model's channels and cell size."""
    hp = module.hparams
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
    split: str,
    tile_size_gt: int,
    stride_gt: int | None,
    batch_size: int,
    device: torch.device,
) -> list[TilePrediction]:
    """Predict every window of every tile of `split`, restitch, with a progress bar over tiles."""
    dataset = ESDDataset(
        processed_dir, split, tile_size_gt, bands=list(module.hparams.channels), stride_gt=stride_gt
    )
    windows = len(dataset.origins) ** 2
    predictions = []
    for position, tile in enumerate(tqdm(dataset.tiles, desc=f"predicting {split}", unit="tile")):
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
