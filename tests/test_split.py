"""`split_tiles` (src/esd_data/split.py): the boundary cases of its documented rule.

tests/test_properties.py checks the rule on random inputs; these are the edges it may not
draw: exactly one training tile left, exactly two tiles outside test, fractions at 0 and at
the limits, the error messages, and the order of each split's list.
"""

from __future__ import annotations

import numpy as np
import pytest

from src.esd_data.split import SPLITS, split_tiles


def tiles(*numbers: int) -> list[str]:
    return [f"Tile{n}" for n in numbers]


def sizes(split: dict[str, list[str]]) -> tuple[int, int, int]:
    return len(split["train"]), len(split["val"]), len(split["test"])


def test_the_three_splits_in_order():
    assert SPLITS == ("train", "val", "test")
    split = split_tiles(tiles(*range(1, 11)), seed=0, val_fraction=0.2, test_fraction=0.1)
    assert list(split) == ["train", "val", "test"]


@pytest.mark.parametrize(
    ("n", "val", "test", "expected"),
    [
        (2, 0.5, 0.0, (1, 1, 0)),  # exactly one training tile left
        (2, 0.1, 0.0, (1, 1, 0)),  # round(0.2) = 0 → at least one val tile
        (3, 0.1, 0.34, (1, 1, 1)),  # n − n_test = 2: still one val tile
        (2, 0.1, 0.5, (1, 0, 1)),  # n − n_test = 1: no val tile, the training tile stays
        (1, 0.3, 0.0, (1, 0, 0)),  # a single tile: no val tile
        (5, 0.0, 0.0, (5, 0, 0)),  # no val, no test
        (5, 0.0, 0.2, (4, 0, 1)),  # val_fraction 0 gives no val tile
        (10, 0.25, 0.15, (6, 2, 2)),  # round half to even: 2.5 → 2, 1.5 → 2
        (4, 0.0, 0.75, (1, 0, 3)),
    ],
)
def test_sizes_at_the_edges_of_the_rule(n, val, test, expected):
    split = split_tiles(tiles(*range(1, n + 1)), 7, val, test)
    assert sizes(split) == expected
    assigned = [tile for name in SPLITS for tile in split[name]]
    assert sorted(assigned, key=lambda t: int(t[4:])) == tiles(*range(1, n + 1))


def test_assignment_follows_the_seeded_permutation_of_the_sorted_tiles():
    numbers = [12, 3, 40, 7, 1, 25, 9, 100, 2, 18, 5]
    ordered = sorted(numbers)  # by number: Tile2 before Tile12
    for seed in (0, 1, 123):
        permutation = np.random.default_rng(seed).permutation(len(ordered))
        permuted = [ordered[i] for i in permutation]
        split = split_tiles(tiles(*numbers), seed, val_fraction=0.3, test_fraction=0.2)
        n_test, n_val = round(0.2 * 11), round(0.3 * 11)  # 2 and 3
        assert split["test"] == tiles(*sorted(permuted[:n_test]))
        assert split["val"] == tiles(*sorted(permuted[n_test : n_test + n_val]))
        assert split["train"] == tiles(*sorted(permuted[n_test + n_val :]))


def test_each_list_is_sorted_by_tile_number():
    split = split_tiles(tiles(*range(1, 31)), seed=5, val_fraction=0.3, test_fraction=0.3)
    for name in SPLITS:
        numbers = [int(t[4:]) for t in split[name]]
        assert numbers == sorted(numbers), name
        assert len(numbers) > 1


@pytest.mark.parametrize(
    ("val", "test"),
    [(-0.1, 0.0), (1.0, 0.0), (0.0, -0.2), (0.0, 1.0), (0.5, 0.5), (0.7, 0.4), (1.5, -0.6)],
)
def test_fractions_outside_the_unit_interval_or_adding_to_one_are_refused(val, test):
    message = (
        rf"^val_fraction={val} and test_fraction={test} must be in \[0, 1\) "
        r"and leave tiles for training$"
    )
    with pytest.raises(ValueError, match=message):
        split_tiles(tiles(*range(1, 101)), 0, val, test)


def test_fractions_just_inside_the_limits_are_accepted():
    split = split_tiles(tiles(*range(1, 101)), 0, 0.0, 0.0)
    assert sizes(split) == (100, 0, 0)
    split = split_tiles(tiles(*range(1, 101)), 0, 0.49, 0.5)
    assert sizes(split) == (1, 49, 50)  # one training tile left


def test_too_few_tiles_for_a_training_tile_is_refused():
    message = (
        r"^2 tile\(s\) cannot be split into val_fraction=0.4, test_fraction=0.5 "
        r"and at least one training tile$"
    )
    with pytest.raises(ValueError, match=message):
        split_tiles(tiles(1, 2), 0, 0.4, 0.5)  # round(0.8) + round(1.0) = 2 of 2
    with pytest.raises(ValueError, match="at least one training tile"):
        split_tiles([], 0, 0.2)
    with pytest.raises(ValueError, match=r"^3 tile\(s\)"):
        split_tiles(tiles(1, 2, 3), 0, 0.5, 0.4)  # round(1.5) + round(1.2) = 3 of 3
