"""A shuffling sampler whose order and augmentation seeds depend only on (seed, epoch).

Lightning calls `set_epoch` before every training epoch, so a run resumed from a checkpoint
sees exactly the batches, and the same random flips, that an uninterrupted run would see,
whatever state the (persistent) loader workers are in.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from torch.utils.data import Sampler

SampleKey = tuple[int, int]
"""(item index, epoch): what `ESDDataset.__getitem__` receives from this sampler."""


class EpochShuffleSampler(Sampler[SampleKey]):
    """Yields every index once per epoch, in a permutation drawn from (seed, epoch)."""

    def __init__(self, size: int, seed: int) -> None:
        self.size = size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Fix the epoch whose permutation the next iteration yields."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[SampleKey]:
        epoch = self.epoch
        order = np.random.default_rng((self.seed, epoch)).permutation(self.size)
        self.epoch += 1  # the next epoch unless set_epoch says otherwise
        return ((int(index), epoch) for index in order)
