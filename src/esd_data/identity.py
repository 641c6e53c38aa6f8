"""`DataIdentity`: which data a model was trained on, stored in every checkpoint.

It names the processed folder and raw folder, the manifest's fingerprint, the split's tile
lists and how they were drawn, the preprocessing parameters, the selected channels with the
training tiles' per-channel mean and std, and each tile's content hash (the SHA-256 of its
processed pixels). Evaluation normalises with these statistics, scores these tiles, and refuses
data that differs from what the model saw.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from src.esd_data.manifest import Manifest

SCORED_SPLITS = ("val", "test")
"""Splits whose scores must never include a tile the model trained on."""


@dataclass(frozen=True)
class DataIdentity:
    """The data a checkpoint was trained on (see the module docstring)."""

    processed_dir: str
    raw_dir: str
    fingerprint: str
    split: dict[str, list[str]]
    split_seed: int
    val_fraction: float
    test_fraction: float
    preprocessing: dict[str, Any]
    channels: list[str]
    mean: list[float]
    std: list[float]
    cell_px: int
    tile_hashes: dict[str, str]

    @classmethod
    def from_manifest(
        cls, manifest: Manifest, processed_dir: Path, channel_indices: list[int]
    ) -> DataIdentity:
        """The identity of training on `channel_indices` of a prepared folder."""
        mean, std = manifest.normalisation(channel_indices)
        return cls(
            processed_dir=str(Path(processed_dir).resolve()),
            raw_dir=str(Path(manifest.raw_dir).resolve()),
            fingerprint=manifest.fingerprint,
            split={name: list(tiles) for name, tiles in manifest.split.items()},
            split_seed=manifest.seed,
            val_fraction=manifest.val_fraction,
            test_fraction=manifest.test_fraction,
            preprocessing=dict(manifest.preprocessing),
            channels=[manifest.channels[i] for i in channel_indices],
            mean=mean.astype(float).tolist(),
            std=std.astype(float).tolist(),
            cell_px=manifest.cell_px,
            tile_hashes={t: r.sha256 for t, r in manifest.tiles.items()},
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain types only (loads with torch.load(weights_only=True))."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DataIdentity:
        """Inverse of `to_dict`."""
        return cls(**values)

    def normalisation(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel (mean, std) of the training tiles, float32, in `channels` order."""
        return np.asarray(self.mean, np.float32), np.asarray(self.std, np.float32)

    def training_tiles(self, tiles: list[str]) -> list[str]:
        """The tiles of `tiles` whose names are in the training split."""
        trained = set(self.split.get("train", []))
        return [tile for tile in tiles if tile in trained]

    def trained_on(self, manifest: Manifest, tiles: list[str]) -> dict[str, str]:
        """The tiles of `manifest` among `tiles` whose pixels equal a training tile's:
        tile → the training tile it is (same content, whatever the names)."""
        trained = {self.tile_hashes[t]: t for t in self.split.get("train", [])}
        return {
            tile: trained[manifest.tiles[tile].sha256]
            for tile in tiles
            if manifest.tiles[tile].sha256 in trained
        }

    def differing_tiles(self, manifest: Manifest, tiles: list[str]) -> list[str]:
        """Tiles whose processed pixels differ from what the model saw (or that are absent)."""
        return [
            tile
            for tile in tiles
            if tile not in manifest.tiles
            or self.tile_hashes.get(tile) != manifest.tiles[tile].sha256
        ]
