"""The samplers (src/esd_data/sampler.py): explicit examples and the rank checks.

tests/test_properties.py checks permutations, epochs and shards on random sizes; these pin
small cases by hand, the first epoch, the padding, and the refused ranks and world sizes.
"""

from __future__ import annotations

import numpy as np
import pytest

from src.esd_data.sampler import EpochShuffleSampler, ShardSampler, epoch_order


def test_epoch_order_is_numpys_permutation_seeded_with_seed_and_epoch():
    # The documented draw, which keeps old runs reproducible: default_rng((seed, epoch)).
    for seed, epoch in [(0, 0), (3, 1), (7, 12)]:
        expected = np.random.default_rng([seed, epoch]).permutation(10)
        np.testing.assert_array_equal(epoch_order(10, seed, epoch), expected)
    assert not np.array_equal(epoch_order(50, 1, 0), epoch_order(50, 1, 1))
    assert not np.array_equal(epoch_order(50, 1, 0), epoch_order(50, 2, 0))


def test_a_new_sampler_starts_at_epoch_zero_and_counts_up():
    sampler = EpochShuffleSampler(6, seed=4)
    assert sampler.epoch == 0
    first = list(sampler)
    assert sampler.epoch == 1
    assert first == [(int(i), 0) for i in epoch_order(6, 4, 0)]
    second = list(sampler)
    assert second == [(int(i), 1) for i in epoch_order(6, 4, 1)]
    sampler.set_epoch(0)
    assert list(sampler) == first


def test_shards_pad_by_repeating_the_start_of_the_order():
    # 5 items on 3 ranks: 2 steps each; the order is padded with its first element.
    order = [int(i) for i in epoch_order(5, 9, 2)]
    padded = order + order[:1]
    for rank in range(3):
        sampler = EpochShuffleSampler(5, seed=9, rank=rank, world_size=3)
        assert len(sampler) == 2
        np.testing.assert_array_equal(sampler.indices(2), padded[rank::3])
        sampler.set_epoch(2)
        assert [i for i, _ in sampler] == padded[rank::3]
    # 7 items on 2 ranks: 4 steps each, rank 1 ends with the first element again.
    order = [int(i) for i in epoch_order(7, 1, 0)]
    assert list(EpochShuffleSampler(7, 1, rank=1, world_size=2).indices(0)) == [
        order[1],
        order[3],
        order[5],
        order[0],
    ]


def test_shard_sampler_examples():
    assert list(ShardSampler(7, rank=0, world_size=3)) == [0, 3, 6]
    assert list(ShardSampler(7, rank=2, world_size=3)) == [2, 5]
    assert len(ShardSampler(7, rank=2, world_size=3)) == 2
    assert list(ShardSampler(2, rank=2, world_size=4)) == []
    assert len(ShardSampler(2, rank=3, world_size=4)) == 0
    assert list(ShardSampler(4)) == [0, 1, 2, 3]


@pytest.mark.parametrize(("rank", "world_size"), [(-1, 2), (2, 2), (3, 2), (0, 0), (0, -1)])
def test_ranks_outside_the_world_are_refused(rank, world_size):
    message = rf"^rank {rank} must be in 0..world_size-1 \(world_size {world_size}\)$"
    with pytest.raises(ValueError, match=message):
        EpochShuffleSampler(4, seed=0, rank=rank, world_size=world_size)
    with pytest.raises(ValueError, match=message):
        ShardSampler(4, rank=rank, world_size=world_size)


@pytest.mark.parametrize(("rank", "world_size"), [(0, 1), (1, 2), (0, 2), (4, 5)])
def test_every_rank_inside_the_world_is_accepted(rank, world_size):
    assert EpochShuffleSampler(4, seed=0, rank=rank, world_size=world_size).rank == rank
    assert ShardSampler(4, rank=rank, world_size=world_size).world_size == world_size
