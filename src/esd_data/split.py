"""Deterministic split of parent tiles into train / val / test."""

from __future__ import annotations

import numpy as np

from src.esd_data.reader import tile_number

SPLITS = ("train", "val", "test")


def check_fractions(val_fraction: float, test_fraction: float) -> None:
    """ValueError unless both fractions are in [0, 1) and leave tiles for training."""
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(
            f"val_fraction={val_fraction} and test_fraction={test_fraction} must be in [0, 1) "
            f"and leave tiles for training"
        )


def split_tiles(
    tile_ids: list[str], seed: int, val_fraction: float, test_fraction: float = 0.0
) -> dict[str, list[str]]:
    """Assign whole parent tiles to splits from `seed`, independent of the listing order.

    The tiles are sorted by number, permuted by a generator seeded with `seed`, and the
    first round(test_fraction·n) go to test, the next round(val_fraction·n) to val (at least
    one when val_fraction > 0 and there are two tiles or more), the rest to train.
    """
    check_fractions(val_fraction, test_fraction)
    ordered = sorted(set(tile_ids), key=tile_number)
    n = len(ordered)
    n_test = round(test_fraction * n)
    n_val = round(val_fraction * n)
    if val_fraction > 0 and n_val == 0 and n - n_test >= 2:
        n_val = 1
    if n - n_test - n_val < 1:
        raise ValueError(
            f"{n} tile(s) cannot be split into val_fraction={val_fraction}, "
            f"test_fraction={test_fraction} and at least one training tile"
        )
    permuted = [ordered[i] for i in np.random.default_rng(seed).permutation(n)]
    chosen = {
        "test": permuted[:n_test],
        "val": permuted[n_test : n_test + n_val],
        "train": permuted[n_test + n_val :],
    }
    return {name: sorted(chosen[name], key=tile_number) for name in SPLITS}
