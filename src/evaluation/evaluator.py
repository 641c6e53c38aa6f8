"""Predict whole tiles with a checkpoint: load, check against the data, restitch, score."""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from src.esd_data.dataset import ESDDataset
from src.esd_data.identity import DataIdentity
from src.esd_data.manifest import Manifest
from src.evaluation.restitch import restitch_logits
from src.evaluation.tta import averaged_probabilities
from src.progress import progress_disabled
from src.training.checkpoints import CheckpointError
from src.training.module import ESDSegmentation, NonFiniteError

BEST_PATTERN = "*/*/best-*.ckpt"


@dataclass(frozen=True)
class TilePrediction:
    """One tile's restitched prediction: probabilities (4, 16, 16) and labels 1..4.

    `date_weights` (TemporalFusion with attention): sensor → date → the mean attention weight
    of that date over the tile's pixels (which dates the model relied on).
    """

    tile: str
    probabilities: np.ndarray
    labels: np.ndarray
    truth: np.ndarray | None
    date_weights: dict[str, dict[str, float]] | None = None


@dataclass(frozen=True)
class Predictor:
    """A trained module with the normalisation of its own training data."""

    module: ESDSegmentation
    mean: np.ndarray
    std: np.ndarray

    @property
    def channels(self) -> list[str]:
        return list(self.module.hparams.channels)

    @functools.cached_property
    def _moments(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std (C, 1, 1) on the module's device, made once."""
        device = self.module.device
        return (
            torch.as_tensor(self.mean, dtype=torch.float32, device=device)[:, None, None],
            torch.as_tensor(self.std, dtype=torch.float32, device=device)[:, None, None],
        )

    def normalise(self, stored: torch.Tensor) -> torch.Tensor:
        """Windows as stored (float16 (B, C, H, W) on the module's device), normalised."""
        mean, std = self._moments
        return (stored.float() - mean) / std


class _DateWeights:
    """Sums of TemporalFusion's attention weights per sensor and date over predicted windows."""

    def __init__(self, module: ESDSegmentation) -> None:
        self.dates: dict[str, list[str]] = getattr(module.model, "sensor_dates", {})
        self.model = module.model
        self.sums: dict[str, np.ndarray] = {}
        self.pixels = 0

    def add(self) -> None:
        weights = getattr(self.model, "attention_weights", None) or {}
        for sensor, value in weights.items():  # (B, T, h, w)
            total = value.float().sum(dim=(0, 2, 3)).cpu().numpy()
            self.sums[sensor] = self.sums.get(sensor, 0) + total
        if weights:
            first = next(iter(weights.values()))
            self.pixels += first.shape[0] * first.shape[2] * first.shape[3]

    def means(self) -> dict[str, dict[str, float]] | None:
        if not self.sums:
            return None
        return {
            sensor: {
                d: float(v) / self.pixels for d, v in zip(self.dates[sensor], sums, strict=True)
            }
            for sensor, sums in self.sums.items()
        }


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


def check_ensemble(hparams: Sequence[Mapping[str, Any]], tile_size_gt: int | None = None) -> None:
    """CheckpointError unless every checkpoint (its hyper-parameters) reads the same channels
    at the same cell size, and, unless `tile_size_gt` sets one window for all, was trained on
    windows of the same size."""
    first = hparams[0]
    sizes = sorted({int(hp["tile_size_gt"]) for hp in hparams})
    if tile_size_gt is None and len(sizes) > 1:
        raise CheckpointError(
            f"the checkpoints of an ensemble were trained on windows of "
            f"{' and '.join(map(str, sizes))} label cells (tile_size_gt): every model would run "
            f"at the first one's window; ensemble checkpoints of one tile_size_gt, or choose "
            f"the window for all with --tile_size_gt"
        )
    for hp in hparams[1:]:
        if list(hp["channels"]) != list(first["channels"]) or hp["cell_px"] != first["cell_px"]:
            raise CheckpointError(
                f"the checkpoints of an ensemble must read the same channels at the same cell "
                f"size: {first['model_type']} has {len(first['channels'])} channels at "
                f"{first['cell_px']} px per cell, {hp['model_type']} {len(hp['channels'])} at "
                f"{hp['cell_px']} px"
            )


def check_finite_input(batch: torch.Tensor, channels: list[str], tile: str, where: Path) -> None:
    """NonFiniteError naming the tile and channels when stored inputs are NaN or infinite."""
    bad = (~torch.isfinite(batch)).flatten(2).any(dim=2).any(dim=0)
    if bad.any():
        names = [channels[k] for k in torch.nonzero(bad).flatten().tolist()]
        raise NonFiniteError(
            f"{tile} of {where} holds non-finite values in {', '.join(names[:5])}"
            f"{' …' if len(names) > 5 else ''}: prepare it again with this version (it caps "
            f"or fills such pixels); refusing to predict from them"
        )


def predict_tiles(
    predictors: Sequence[Predictor],
    processed_dir: Path,
    tiles: list[str],
    tile_size_gt: int,
    stride_gt: int | None,
    batch_size: int,
    device: torch.device,
    tta: str = "none",
) -> list[TilePrediction]:
    """Predict every window of every tile, restitch, with a progress bar over tiles.

    Each window's probabilities are the mean over the models (each normalising the window
    with its own training statistics) and over the views of `tta` (each mapped back onto the
    label grid); a cell's probabilities are the mean over the windows that cover it. The
    models must read the same channels (`check_ensemble`).
    """
    dataset = ESDDataset(
        processed_dir,
        "predict",
        tile_size_gt,
        bands=predictors[0].channels,
        stride_gt=stride_gt,
        tiles=tiles,
        normalise=False,
    )
    windows = len(dataset.origins) ** 2
    predictions = []
    bar = tqdm(dataset.tiles, desc="predicting", unit="tile", disable=progress_disabled())
    for position, tile in enumerate(bar):
        items = [dataset[position * windows + k] for k in range(windows)]
        attention = _DateWeights(predictors[0].module)
        probabilities = []
        with torch.no_grad():
            for start in range(0, windows, batch_size):
                batch = torch.stack([item["X"] for item in items[start : start + batch_size]])
                check_finite_input(batch, predictors[0].channels, tile, processed_dir)
                batch = batch.to(device)
                # Normalised once per model: a per-channel normalisation commutes with the views.
                total = sum(
                    averaged_probabilities(
                        predictor.module,
                        predictor.normalise(batch),
                        tta,
                        attention.add if index == 0 else None,
                    )
                    for index, predictor in enumerate(predictors)
                )
                probabilities.append((total / len(predictors)).cpu().numpy())
        if not all(np.isfinite(part).all() for part in probabilities):
            raise NonFiniteError(
                f"the model's outputs on {tile} are not finite although its inputs are: the "
                f"checkpoint's weights are broken (retrain it, e.g. with a lower --learning_rate)"
            )
        tile_probabilities = restitch_logits(
            np.concatenate(probabilities),
            [item["row"] for item in items],
            [item["col"] for item in items],
            dataset.origins,
        )
        labels = dataset.tile_labels(tile)
        predictions.append(
            TilePrediction(
                tile,
                tile_probabilities,
                tile_probabilities.argmax(axis=0).astype(np.uint8) + 1,
                None if labels is None else np.asarray(labels, dtype=np.uint8),
                attention.means(),
            )
        )
    return predictions
