"""`ESDDataset`: subtiles of processed parent tiles, normalised, with labels 0..3."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from src.esd_data.manifest import BandSelection, Manifest
from src.esd_data.sampler import SampleKey
from src.esd_data.subtiles import window_origins

IGNORE_LABEL = -1
"""Label of subtiles whose parent tile has no ground truth (the `predict` split)."""

PairTransform = Callable[[np.ndarray, np.ndarray, torch.Generator], tuple[np.ndarray, np.ndarray]]
"""Takes (image (C, H, W), labels (t, t), generator) and returns the pair, e.g. `FlipRotate`."""


def sample_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """The generator of item `index`'s transform in `epoch`: the same on every path."""
    state = np.random.SeedSequence((seed, epoch, index)).generate_state(1)[0]
    return torch.Generator().manual_seed(int(state))


class ESDDataset(Dataset):
    """Every t×t-cell subtile of the parent tiles of one split of a processed folder.

    An item is a dict: `X` float32 (C, t·cell_px, t·cell_px), normalised with the training
    tiles' per-channel mean and std; `y` int64 (t, t) with labels 0..3 (−1 without ground
    truth); `tile` (parent tile id), `row` and `col` (the subtile's position in the grid; its
    first label cell is `origins[row]`, `origins[col]`). With `stride_gt` < t the windows
    overlap (for restitching with context). Tiles are memory-mapped, so only the subtile's
    pixels of the selected channels are read.

    With `normalise=False`, `X` is the stored float16 values, half the bytes to move from
    loader workers; `normalise_batch` then does the normalisation, e.g. on the GPU.
    `tiles` serves those parent tiles instead of the split's, and `normalisation` (per-channel
    mean and std of the selected channels, e.g. a checkpoint's) replaces the manifest's.
    """

    def __init__(
        self,
        processed_dir: Path,
        split: str,
        tile_size_gt: int | None = None,
        bands: BandSelection | None = None,
        transform: PairTransform | None = None,
        manifest: Manifest | None = None,
        seed: int = 0,
        stride_gt: int | None = None,
        normalise: bool = True,
        tiles: list[str] | None = None,
        normalisation: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> None:
        self.processed_dir = Path(processed_dir)
        self.manifest = manifest or Manifest.load(self.processed_dir)
        self.tile_size_gt = tile_size_gt or self.manifest.tile_size_gt
        self.origins = window_origins(self.tile_size_gt, stride_gt)
        self.per_side = len(self.origins)
        self.channels = self.manifest.select_channels(bands)
        self.channel_names = [self.manifest.channels[i] for i in self.channels]
        self._channel_index: slice | list[int] = (
            slice(None)
            if self.channels == list(range(len(self.manifest.channels)))
            else self.channels
        )
        mean, std = normalisation or self.manifest.normalisation(self.channels)
        mean, std = np.asarray(mean, dtype=np.float32), np.asarray(std, dtype=np.float32)
        if mean.shape != (len(self.channels),) or std.shape != mean.shape:
            raise ValueError(
                f"normalisation has {mean.size} means and {std.size} stds for "
                f"{len(self.channels)} selected channels"
            )
        self._scale = torch.from_numpy(1.0 / std)[:, None, None]
        self._shift = torch.from_numpy(-mean / std)[:, None, None]
        self.normalise = normalise
        self.transform = transform
        self.seed = seed
        self.tiles = self.manifest.tiles_in(split) if tiles is None else list(tiles)
        unknown = [tile for tile in self.tiles if tile not in self.manifest.tiles]
        if unknown:
            raise ValueError(
                f"{self.processed_dir} has no tile(s) {', '.join(unknown)} (it has "
                f"{len(self.manifest.tiles)}: {', '.join(list(self.manifest.tiles)[:8])} …)"
            )
        self.index = [
            (tile, row, col)
            for tile in self.tiles
            for row in range(self.per_side)
            for col in range(self.per_side)
        ]
        self._images: dict[str, np.ndarray] = {}
        self._labels: dict[str, np.ndarray | None] = {}

    def __len__(self) -> int:
        return len(self.index)

    def _open(self, tile: str) -> tuple[np.ndarray, np.ndarray | None]:
        """The tile's memory-mapped image and its labels (opened once per process)."""
        if tile not in self._images:
            record = self.manifest.tiles[tile]
            self._images[tile] = np.load(self.processed_dir / record.image, mmap_mode="r")
            self._labels[tile] = (
                np.load(self.processed_dir / record.labels) if record.labels else None
            )
        return self._images[tile], self._labels[tile]

    def normalise_batch(self, X: torch.Tensor) -> torch.Tensor:
        """(X − mean) / std per channel as float32 on X's device; X is (C, H, W) or (B, C, H, W)."""
        scale, shift = self._scale.to(X.device), self._shift.to(X.device)
        return X.float().mul_(scale).add_(shift)  # in place: half the memory traffic

    def tile_labels(self, tile: str) -> np.ndarray | None:
        """The tile's (16, 16) ground truth, labels 1..4 (None without ground truth)."""
        return self._open(tile)[1]

    def __getitem__(self, key: int | SampleKey) -> dict[str, Any]:
        """Subtile `key`, or `(index, epoch)` from `EpochShuffleSampler`.

        The transform's random draws come from a generator seeded with (seed, epoch, index),
        so they do not depend on which worker process serves the item.
        """
        index, epoch = (key, 0) if isinstance(key, int) else key
        tile, row, col = self.index[index]
        image, labels = self._open(tile)
        t, cell_px = self.tile_size_gt, self.manifest.cell_px
        top, left = self.origins[row], self.origins[col]
        rows = slice(top * cell_px, (top + t) * cell_px)
        cols = slice(left * cell_px, (left + t) * cell_px)
        x = image[self._channel_index, rows, cols]
        cell_rows, cell_cols = slice(top, top + t), slice(left, left + t)
        if labels is None:
            y = np.full((t, t), IGNORE_LABEL, dtype=np.int64)
        else:
            y = labels[cell_rows, cell_cols].astype(np.int64) - 1
        if self.transform is not None:
            x, y = self.transform(x, y, sample_generator(self.seed, epoch, index))
        # One copy of the (possibly flipped) float16 view.
        X = torch.from_numpy(np.array(x, order="C", copy=True))
        if self.normalise:
            X = self.normalise_batch(X)
        Y = torch.from_numpy(np.ascontiguousarray(y))
        return {"X": X, "y": Y, "tile": tile, "row": row, "col": col}
