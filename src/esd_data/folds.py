"""K-fold cross-validation over parent tiles: the folds, the inner split, one folder view per fold.

`assign_folds` puts every labelled tile in exactly one fold, deterministically from the seed
and whatever the listing order, stratified on each tile's share of class-1 cells: the tiles
are ordered by that share, highest first, cut into blocks of K consecutive tiles, and each
block is dealt to the K folds in an order drawn from the seed. The first block therefore
holds the K tiles richest in class 1, so every fold holds class 1 whenever at least K tiles
do (the partial block, when K does not divide the count, is the poorest one). A held-out
test split stays out of every fold.

`inner_split` cuts a fold's training tiles into the tiles it trains on and the tiles that
choose its epoch (early stopping, best checkpoint), stratified the same way, so that the
fold's own validation tiles never take part in choosing the model scored on them.

`fold_manifest` is a fold's own manifest, saved into a folder of its own: the fold's split,
the per-channel mean and std of the tiles it trains on only, and the shared cache's tile
files by absolute path with their recorded hashes (nothing is copied; a file changed since is
detected by `Manifest.check_files`). Training and evaluation use the view like any processed
folder, so a fold's checkpoint records exactly the data of its fold.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from src.esd_data.cache import TileStats, read_tile_stats
from src.esd_data.manifest import Manifest
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
    ordered = sorted(shares, key=lambda tile: (-shares[tile], tile_number(tile)))
    rng = np.random.default_rng(seed)
    assigned: list[list[str]] = [[] for _ in range(folds)]
    for start in range(0, len(ordered), folds):
        block = ordered[start : start + folds]
        for fold, tile in zip(rng.permutation(folds), block, strict=False):
            assigned[int(fold)].append(tile)
    return [sorted(tiles, key=tile_number) for tiles in assigned]


def inner_split(
    shares: dict[str, float], fraction: float, seed: int
) -> tuple[list[str], list[str]]:
    """(tiles to train on, tiles that choose the epoch) out of a fold's training tiles.

    About `fraction` of the tiles (at least one) choose the epoch, stratified like the folds.
    With at least two class-1 tiles both parts hold class 1; with one, it stays in training
    (a model must see the class to learn it).
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"the inner validation fraction must be in (0, 1), got {fraction}")
    if len(shares) < 2:
        raise ValueError(f"{len(shares)} training tile(s) cannot be split into train and val")
    parts = min(len(shares), max(2, round(1 / fraction)))
    folds = assign_folds(shares, parts, seed)
    with_class1 = sum(share > 0 for share in shares.values())
    if with_class1 >= 2:
        chosen = next(f for f in folds if any(shares[t] > 0 for t in f))
    elif with_class1 == 1:
        chosen = next(f for f in folds if not any(shares[t] > 0 for t in f))
    else:
        chosen = folds[0]
    train = [tile for tile in sorted(shares, key=tile_number) if tile not in set(chosen)]
    return train, chosen


def fold_manifest(
    manifest: Manifest, processed_dir: Path, train: list[str], val: list[str], test: list[str]
) -> Manifest:
    """The manifest of one fold: `train`, `val` and `test` as its split (nothing to predict),
    the statistics of `train`, the shared tile files by absolute path."""
    folder = Path(processed_dir).resolve()
    mean, std = TileStats.merge([read_tile_stats(folder, tile) for tile in train])
    split = {
        "train": sorted(train, key=tile_number),
        "val": sorted(val, key=tile_number),
        "test": sorted(test, key=tile_number),
        "predict": [],
    }
    used = {tile for tiles in split.values() for tile in tiles}
    tiles = {name: manifest.tiles[name].absolute(folder) for name in manifest.tiles if name in used}
    return replace(
        manifest, split=split, mean=mean.tolist(), std=std.tolist(), tiles=tiles
    ).sealed()
