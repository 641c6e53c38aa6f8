"""Samplers whose order and augmentation seeds depend only on (seed, epoch), and shard by rank.

Lightning calls `set_epoch` before every training epoch, so a run resumed from a checkpoint
sees exactly the batches, and the same random flips, that an uninterrupted run would see,
whatever state the (persistent) loader workers are in. Under DDP each rank takes its own
shard (`rank`, `world_size`), as torch's DistributedSampler does: the training order is
padded by repeating its start so that every rank runs the same number of steps, while the
evaluation shards are not padded, so that every subtile is scored exactly once.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from torch.utils.data import Sampler

SampleKey = tuple[int, int]
"""(item index, epoch): what `ESDDataset.__getitem__` receives from this sampler."""


def _check_shard(rank: int, world_size: int) -> None:
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} must be in 0..world_size-1 (world_size {world_size})")


def epoch_order(size: int, seed: int, epoch: int) -> np.ndarray:
    """The permutation of range(size) that every rank shares in `epoch`."""
    return np.random.default_rng((seed, epoch)).permutation(size)


class EpochShuffleSampler(Sampler[SampleKey]):
    """Yields rank `rank`'s shard of a permutation of range(size) drawn from (seed, epoch)."""

    def __init__(self, size: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        _check_shard(rank, world_size)
        self.size = size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Fix the epoch whose permutation the next iteration yields."""
        self.epoch = epoch

    def __len__(self) -> int:
        return -(-self.size // self.world_size)

    def indices(self, epoch: int) -> np.ndarray:
        """This rank's item indices in `epoch`, in order."""
        order = epoch_order(self.size, self.seed, epoch)
        padded = np.resize(order, len(self) * self.world_size)  # repeats the start
        return padded[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[SampleKey]:
        epoch = self.epoch
        self.epoch += 1  # the next epoch unless set_epoch says otherwise
        return ((int(index), epoch) for index in self.indices(epoch))


class ShardSampler(Sampler[int]):
    """Rank `rank`'s share of range(size) in order, without padding (evaluation)."""

    def __init__(self, size: int, rank: int = 0, world_size: int = 1) -> None:
        _check_shard(rank, world_size)
        self.size = size
        self.rank = rank
        self.world_size = world_size

    def __len__(self) -> int:
        return len(range(self.rank, self.size, self.world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.size, self.world_size))
