"""K-fold cross-validation over parent tiles: the folds, and one processed-folder view per fold.

`assign_folds` puts every labelled tile in exactly one fold, deterministically from the seed
and whatever the listing order, stratified on each tile's share of class-1 cells so that
every fold's validation tiles hold class 1 where the data allow: the tiles are ordered by
that share, cut into blocks of K consecutive tiles, and each block is dealt to the K folds in
an order drawn from the seed. A held-out test split stays out of every fold.

`fold_manifest` is a fold's own manifest, saved into a folder of its own: the fold's
split (its tiles as `val`, the other folds' as `train`, the test and predict tiles as they
are), the per-channel mean and std of the fold's training tiles only, and the shared cache's
tile files by absolute path (nothing is copied). Training and evaluation use the view like
any processed folder, so a fold's checkpoint records exactly the data of its fold.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from src.esd_data.cache import TileStats, read_tile_stats
from src.esd_data.manifest import Manifest, TileRecord
from src.esd_data.reader import tile_number

CONTEST_CLASS = 1


def class1_shares(processed_dir: Path, manifest: Manifest, tiles: list[str]) -> dict[str, float]:
    """Each tile's share of label cells of class 1 (settlements without electricity)."""
    shares = {}
    for tile in tiles:
        labels = np.load(Path(processed_dir) / manifest.tiles[tile].labels)
        shares[tile] = float((labels == CONTEST_CLASS).mean())
    return shares


def assign_folds(shares: dict[str, float], folds: int, seed: int) -> list[list[str]]:
    """The tiles of each fold (sorted by number), stratified on `shares` (see module)."""
    if folds < 2:
        raise ValueError(f"cross-validation needs at least 2 folds, got {folds}")
    if len(shares) < folds:
        raise ValueError(f"{len(shares)} labelled tile(s) cannot fill {folds} folds")
    ordered = sorted(shares, key=lambda tile: (shares[tile], tile_number(tile)))
    rng = np.random.default_rng(seed)
    assigned: list[list[str]] = [[] for _ in range(folds)]
    for start in range(0, len(ordered), folds):
        block = ordered[start : start + folds]
        for fold, tile in zip(rng.permutation(folds), block, strict=False):
            assigned[int(fold)].append(tile)
    return [sorted(tiles, key=tile_number) for tiles in assigned]


def fold_manifest(
    manifest: Manifest, processed_dir: Path, validation: list[str], labelled: list[str]
) -> Manifest:
    """The manifest of one fold: `validation` as val, the other labelled tiles as train,
    the training tiles' statistics, the shared tile files by absolute path."""
    folder = Path(processed_dir).resolve()
    train = [tile for tile in labelled if tile not in set(validation)]
    mean, std = TileStats.merge([read_tile_stats(folder, tile) for tile in train])
    split = {
        "train": sorted(train, key=tile_number),
        "val": sorted(validation, key=tile_number),
        "test": list(manifest.split.get("test", [])),
        "predict": list(manifest.split.get("predict", [])),
    }
    tiles = {
        name: TileRecord(
            str(folder / record.image),
            None if record.labels is None else str(folder / record.labels),
            record.fingerprint,
            record.image_bytes,
            record.sha256,
        )
        for name, record in manifest.tiles.items()
    }
    fingerprint = hashlib.sha256(json.dumps([manifest.fingerprint, split]).encode()).hexdigest()
    return replace(
        manifest, split=split, mean=mean.tolist(), std=std.tolist(), tiles=tiles,
        fingerprint=fingerprint,
    )  # fmt: skip
