"""Property-based tests (Hypothesis) of the core data code, each against a reference in the test.

Subtile cutting/stitching and window layouts, the tile split, the dihedral augmentation, the
restitching of overlapping windows and the epoch sampler. Every expected value is computed
here independently (plain loops, np.flip / np.rot90, the documented rules), never by calling
the code under test a second time.
"""

from __future__ import annotations

import itertools
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from scipy import ndimage

from src.esd_data.augmentation import AugmentConfig, FlipRotate, NoiseBlur
from src.esd_data.sampler import EpochShuffleSampler, ShardSampler
from src.esd_data.split import split_tiles
from src.esd_data.subtiles import (
    check_tile_size_gt,
    cut_subtiles,
    stitch_subtiles,
    window_origins,
)
from src.evaluation.restitch import restitch_logits

GRID = 16  # label cells per tile side (DATA.md), written out rather than imported
DIVISORS = [1, 2, 4, 8, 16]

# No example database: nothing is written into the repository (.hypothesis/ is not ignored).
FAST = settings(max_examples=100, deadline=None, database=None)
MEDIUM = settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

tile_sizes = st.sampled_from(DIVISORS)


# --- subtiles -------------------------------------------------------------------------------


@FAST
@given(
    t=tile_sizes,
    px_per_cell=st.integers(1, 3),
    lead=st.lists(st.integers(1, 3), min_size=0, max_size=2),
    seed=st.integers(0, 2**32 - 1),
)
def test_cut_and_stitch_round_trip_and_row_major_slices(t, px_per_cell, lead, seed):
    per_side = GRID // t
    size = GRID * px_per_cell  # a multiple of 16
    # Distinct values everywhere, so a misplaced element cannot go unnoticed.
    values = np.random.default_rng(seed).permutation(int(np.prod(lead, dtype=int)) * size * size)
    array = values.reshape(*lead, size, size)
    subtiles = cut_subtiles(array, per_side)
    h = size // per_side
    assert subtiles.shape == (per_side * per_side, *lead, h, h)
    for index in range(per_side * per_side):
        r, c = index // per_side, index % per_side  # row-major
        np.testing.assert_array_equal(
            subtiles[index], array[..., r * h : (r + 1) * h, c * h : (c + 1) * h]
        )
    np.testing.assert_array_equal(stitch_subtiles(subtiles), array)


@FAST
@given(t=st.integers(1, 40))
def test_check_tile_size_gt_accepts_exactly_the_divisors_of_16(t):
    if GRID % t == 0:
        assert check_tile_size_gt(t) == GRID // t
    else:
        with pytest.raises(ValueError, match="tile_size_gt"):
            check_tile_size_gt(t)


@FAST
@given(data=st.data(), t=tile_sizes)
def test_window_origins_cover_the_grid_exactly(data, t):
    stride = data.draw(st.integers(1, t), label="stride")
    origins = window_origins(t, stride)
    assert origins[0] == 0
    assert origins[-1] + t == GRID
    assert all(0 < b - a <= stride for a, b in itertools.pairwise(origins))
    covered = set()
    for origin in origins:
        assert origin >= 0 and origin + t <= GRID
        covered.update(range(origin, origin + t))
    assert covered == set(range(GRID))
    # The default stride is the subtile grid itself.
    assert window_origins(t) == list(range(0, GRID, t))
    with pytest.raises(ValueError, match="stride_gt"):
        window_origins(t, t + 1)


def test_window_origins_examples():
    assert window_origins(4, 3) == [0, 3, 6, 9, 12]
    assert window_origins(8, 3) == [0, 3, 6, 8]
    assert window_origins(16, 1) == [0]


# --- split ----------------------------------------------------------------------------------


def _expected_sizes(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int] | None:
    """The docstring's rule: round() each fraction, at least one val tile when val_fraction > 0
    and that still leaves a training tile; None when no training tile would be left."""
    n_test = round(test_fraction * n)
    n_val = round(val_fraction * n)
    if val_fraction > 0 and n_val == 0 and n - n_test >= 2:
        n_val = 1
    if n - n_test - n_val < 1:
        return None
    return n_test, n_val


tile_number_sets = st.sets(st.integers(1, 300), min_size=0, max_size=60)
fractions = st.floats(0.0, 0.6, allow_nan=False)


@MEDIUM
@given(
    numbers=tile_number_sets,
    seed=st.integers(0, 2**32 - 1),
    val_fraction=fractions,
    test_fraction=fractions,
    data=st.data(),
)
def test_split_tiles_partition_sizes_and_order_independence(
    numbers, seed, val_fraction, test_fraction, data
):
    if not val_fraction + test_fraction < 1:
        with pytest.raises(ValueError):
            split_tiles([f"Tile{n}" for n in numbers], seed, val_fraction, test_fraction)
        return
    ids = [f"Tile{n}" for n in sorted(numbers)]
    expected = _expected_sizes(len(ids), val_fraction, test_fraction)
    event("no training tile left" if expected is None else "split")
    if expected is None:
        with pytest.raises(ValueError):
            split_tiles(ids, seed, val_fraction, test_fraction)
        return
    splits = split_tiles(ids, seed, val_fraction, test_fraction)
    assert set(splits) == {"train", "val", "test"}
    parts = [set(splits[name]) for name in ("train", "val", "test")]
    for name in ("train", "val", "test"):
        assert len(set(splits[name])) == len(splits[name])  # no tile twice
    assert parts[0] | parts[1] | parts[2] == set(ids)
    assert sum(map(len, parts)) == len(ids)  # disjoint
    n_test, n_val = expected
    assert (len(splits["test"]), len(splits["val"])) == (n_test, n_val)
    assert len(splits["train"]) == len(ids) - n_test - n_val >= 1
    # Any listing order, with duplicates, gives the same split.
    shuffled = data.draw(st.permutations(ids), label="shuffled")
    extra = data.draw(st.lists(st.sampled_from(ids), max_size=5), label="duplicates") if ids else []
    assert split_tiles(shuffled + extra, seed, val_fraction, test_fraction) == splits


def test_split_tiles_depends_on_the_seed():
    ids = [f"Tile{n}" for n in range(1, 31)]
    assignments = {
        tuple(tuple(split_tiles(ids, seed, 0.2, 0.1)[name]) for name in ("train", "val", "test"))
        for seed in range(20)
    }
    # A constant (ignored) seed would give one assignment; 20 seeds on 30 tiles give ~20.
    assert len(assignments) >= 15


def test_split_tiles_sorts_by_number_not_as_strings():
    """The documented recipe (sort by number, permute with the seed) pins the assignment:

    `Tile10` must sort after `Tile9`. The recipe is re-done here with numpy's default_rng,
    which is what makes an old split (a manifest's seed) reproducible by a new version.
    """
    numbers = [1, 2, 3, 9, 10, 11, 20, 100, 12, 4, 5, 30]
    ids = [f"Tile{n}" for n in numbers]
    for seed in range(5):
        ordered = [f"Tile{n}" for n in sorted(numbers)]
        permuted = [ordered[i] for i in np.random.default_rng(seed).permutation(len(ordered))]
        n_test, n_val = round(0.25 * 12), round(0.25 * 12)
        expected = {
            "test": set(permuted[:n_test]),
            "val": set(permuted[n_test : n_test + n_val]),
            "train": set(permuted[n_test + n_val :]),
        }
        got = split_tiles(ids, seed, 0.25, 0.25)
        assert {name: set(v) for name, v in got.items()} == expected


# --- FlipRotate -----------------------------------------------------------------------------


def _cell_coded(cells: int, cell_px: int, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels i·cells + j and an image whose cell (i, j) holds 1000·c + label in channel c."""
    labels = np.arange(cells * cells).reshape(cells, cells)
    codes = 1000 * np.arange(channels)[:, None, None] + labels[None]
    image = np.kron(codes, np.ones((cell_px, cell_px), dtype=np.int64))
    return image, labels


probabilities = st.floats(0.0, 1.0, allow_nan=False)


@MEDIUM
@given(
    cells=st.integers(1, 6),
    cell_px=st.integers(1, 4),
    channels=st.integers(1, 3),
    seed=st.integers(0, 2**63 - 1),
    hflip_p=probabilities,
    vflip_p=probabilities,
    rot90_p=probabilities,
)
def test_flip_rotate_keeps_labels_on_their_pixels(
    cells, cell_px, channels, seed, hflip_p, vflip_p, rot90_p
):
    image, labels = _cell_coded(cells, cell_px, channels)
    transform = FlipRotate(AugmentConfig(hflip_p=hflip_p, vflip_p=vflip_p, rot90_p=rot90_p))
    x, y = transform(image, labels, torch.Generator().manual_seed(seed))
    x, y = np.asarray(x), np.asarray(y)
    assert x.shape == image.shape and y.shape == labels.shape
    for i in range(cells):
        for j in range(cells):
            block = x[:, i * cell_px : (i + 1) * cell_px, j * cell_px : (j + 1) * cell_px]
            for c in range(channels):
                assert (block[c] == 1000 * c + y[i, j]).all(), (i, j, c)
    # A dihedral image of the label grid: the same multiset of labels.
    assert sorted(y.ravel().tolist()) == list(range(cells * cells))
    # The generator decides: the same seed gives the same transform.
    x2, y2 = transform(image, labels, torch.Generator().manual_seed(seed))
    np.testing.assert_array_equal(np.asarray(x2), x)
    np.testing.assert_array_equal(np.asarray(y2), y)


def _random_pair(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(3, 8, 8)), rng.permutation(16).reshape(4, 4)


@pytest.mark.parametrize("seed", range(5))
def test_flip_rotate_elementary_transforms(seed):
    image, labels = _random_pair(seed)
    gen = torch.Generator().manual_seed(seed)

    def run(**p):
        config = AugmentConfig(**{"hflip_p": 0.0, "vflip_p": 0.0, "rot90_p": 0.0, **p})
        x, y = FlipRotate(config)(image, labels, gen)
        return np.asarray(x), np.asarray(y)

    x, y = run()
    np.testing.assert_array_equal(x, image)
    np.testing.assert_array_equal(y, labels)
    # Horizontal flip: mirror left–right, i.e. reverse the columns (last axis).
    x, y = run(hflip_p=1.0)
    np.testing.assert_array_equal(x, image[:, :, ::-1])
    np.testing.assert_array_equal(y, labels[:, ::-1])
    # Vertical flip: reverse the rows.
    x, y = run(vflip_p=1.0)
    np.testing.assert_array_equal(x, image[:, ::-1, :])
    np.testing.assert_array_equal(y, labels[::-1, :])
    # Both flips: a 180° rotation.
    x, y = run(hflip_p=1.0, vflip_p=1.0)
    np.testing.assert_array_equal(x, np.rot90(image, 2, axes=(1, 2)))
    np.testing.assert_array_equal(y, np.rot90(labels, 2))


def test_flip_rotate_rotation_is_a_proper_quarter_turn_of_both():
    image, labels = _random_pair(0)
    config = AugmentConfig(hflip_p=0.0, vflip_p=0.0, rot90_p=1.0)
    seen = set()
    for seed in range(60):
        x, y = FlipRotate(config)(image, labels, torch.Generator().manual_seed(seed))
        matches = [
            k
            for k in (1, 2, 3)
            if np.array_equal(x, np.rot90(image, k, axes=(1, 2)))
            and np.array_equal(y, np.rot90(labels, k))
        ]
        assert len(matches) == 1, seed  # rotated (never identity), image and labels alike
        seen.add(matches[0])
    assert seen == {1, 2, 3}


def _dihedral_probabilities() -> dict[bytes, Fraction]:
    """Exact outcome distribution: flip columns (½), flip rows (½), then rot90 by k=1..3 (½)."""
    grid = np.arange(16).reshape(4, 4)
    half = Fraction(1, 2)
    rotations = {0: 1 - half, 1: half / 3, 2: half / 3, 3: half / 3}
    outcome: dict[bytes, Fraction] = {}
    for h, v in itertools.product((0, 1), repeat=2):
        for k, pk in rotations.items():
            g = grid[:, ::-1] if h else grid
            g = g[::-1, :] if v else g
            g = np.rot90(g, k)
            prob = (half if h else 1 - half) * (half if v else 1 - half) * pk
            key = np.ascontiguousarray(g).tobytes()
            outcome[key] = outcome.get(key, Fraction(0)) + prob
    return outcome


def test_flip_rotate_dihedral_frequencies():
    expected = _dihedral_probabilities()
    assert len(expected) == 8 and sum(expected.values()) == 1
    transform = FlipRotate(AugmentConfig())
    grid = np.arange(16).reshape(4, 4)
    image = grid[None].astype(np.float32)
    n = 4000
    counts = dict.fromkeys(expected, 0)
    for seed in range(n):  # deterministic seeds: the test cannot flake
        x, y = transform(image, grid, torch.Generator().manual_seed(seed))
        np.testing.assert_array_equal(np.asarray(x)[0], y)
        key = np.ascontiguousarray(y).tobytes()
        assert key in counts, "not a dihedral image of the label grid"
        counts[key] += 1
    chi2 = sum((counts[k] - n * float(p)) ** 2 / (n * float(p)) for k, p in expected.items())
    # 7 degrees of freedom: P(chi2 > 24.3) = 0.001.
    assert chi2 < 24.3, (chi2, sorted(counts.values()))


# --- NoiseBlur ------------------------------------------------------------------------------


def test_noise_blur_blur_equals_an_independent_gaussian():
    x = torch.from_numpy(np.random.default_rng(0).normal(size=(3, 2, 12, 12))).float()
    config = AugmentConfig(noise_p=0.0, blur_p=1.0, blur_sigma=1.0)
    out = NoiseBlur(config)(x, torch.Generator().manual_seed(0))
    # torchvision pads by reflection without repeating the edge (scipy's "mirror") and
    # truncates the kernel at radius int(3σ + 0.5).
    expected = ndimage.gaussian_filter(
        x.double().numpy(), sigma=(0, 0, 1.0, 1.0), mode="mirror", truncate=3.0
    )
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-5)
    untouched = NoiseBlur(AugmentConfig(noise_p=0.0, blur_p=0.0))(x)
    assert untouched is x


def test_noise_blur_noise_statistics_and_chosen_fraction():
    x = torch.zeros(400, 1, 16, 16)
    config = AugmentConfig(noise_p=0.25, noise_std=0.05, blur_p=0.0)
    out = NoiseBlur(config)(x, torch.Generator().manual_seed(0))
    changed = (out != 0).flatten(1).any(dim=1)
    assert 60 <= int(changed.sum()) <= 140  # about a quarter of 400 (sd ≈ 8.7)
    noise = out[changed]
    assert abs(float(noise.mean())) < 0.002
    assert float(noise.std()) == pytest.approx(0.05, rel=0.03)
    assert (x == 0).all()  # the input is not changed in place
    again = NoiseBlur(config)(x, torch.Generator().manual_seed(0))
    torch.testing.assert_close(again, out, rtol=0, atol=0)


# --- restitch -------------------------------------------------------------------------------


def _reference_mean(logits, rows, cols, origins):
    """Plain loops: for every cell, the mean over the windows that cover it (None if none)."""
    n, classes, size, _ = logits.shape
    out = np.zeros((classes, GRID, GRID))
    for a in range(GRID):
        for b in range(GRID):
            covering = [
                logits[w, :, a - origins[rows[w]], b - origins[cols[w]]]
                for w in range(n)
                if origins[rows[w]] <= a < origins[rows[w]] + size
                and origins[cols[w]] <= b < origins[cols[w]] + size
            ]
            if not covering:
                return None
            out[:, a, b] = np.mean(np.asarray(covering, dtype=np.float64), axis=0)
    return out


@st.composite
def window_layouts(draw, full: bool):
    t = draw(st.sampled_from([2, 4, 8, 16]), label="t")  # t=1 (256 windows) is slow here
    stride = draw(st.integers(1, t), label="stride")
    origins = window_origins(t, stride)
    pairs = list(itertools.product(range(len(origins)), repeat=2))
    if full:
        extra = draw(st.lists(st.sampled_from(pairs), max_size=6), label="extra")
        chosen = pairs + extra
    else:
        chosen = draw(st.lists(st.sampled_from(pairs), min_size=1, max_size=len(pairs) + 2))
    chosen = draw(st.permutations(chosen), label="order")
    classes = draw(st.integers(1, 4), label="classes")
    seed = draw(st.integers(0, 2**32 - 1), label="seed")
    logits = np.random.default_rng(seed).normal(size=(len(chosen), classes, t, t)) * 5
    rows = [r for r, _ in chosen]
    cols = [c for _, c in chosen]
    return logits.astype(np.float32), rows, cols, origins


@MEDIUM
@given(layout=window_layouts(full=True))
def test_restitch_is_the_per_cell_mean_of_covering_windows(layout):
    logits, rows, cols, origins = layout
    expected = _reference_mean(logits, rows, cols, origins)
    result = restitch_logits(logits, rows, cols, origins)
    assert result.shape == (logits.shape[1], GRID, GRID)
    np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-5)


@MEDIUM
@given(layout=window_layouts(full=False))
def test_restitch_any_subset_raises_exactly_when_a_cell_is_uncovered(layout):
    logits, rows, cols, origins = layout
    expected = _reference_mean(logits, rows, cols, origins)
    event("uncovered" if expected is None else "covered")
    if expected is None:
        with pytest.raises(ValueError, match="covered by no window"):
            restitch_logits(logits, rows, cols, origins)
    else:
        np.testing.assert_allclose(
            restitch_logits(logits, rows, cols, origins), expected, rtol=1e-5, atol=1e-5
        )


def test_restitch_disagreeing_windows_give_their_mean():
    # Two full-tile windows (t=16) that disagree, then a 4×4 grid with one window repeated.
    logits = np.stack([np.zeros((2, 16, 16)), np.full((2, 16, 16), 3.0)]).astype(np.float32)
    np.testing.assert_array_equal(restitch_logits(logits, [0, 0], [0, 0], [0]), 1.5)
    origins = [0, 4, 8, 12]
    grid = list(itertools.product(range(4), repeat=2))
    rows = [r for r, _ in grid] + [1]
    cols = [c for _, c in grid] + [2]
    windows = np.ones((17, 1, 4, 4), dtype=np.float32)
    windows[-1] = 5.0  # repeats window (1, 2): cells 4..7 × 8..11 average (1 + 5) / 2
    out = restitch_logits(windows, rows, cols, origins)[0]
    expected = np.ones((16, 16))
    expected[4:8, 8:12] = 3.0
    np.testing.assert_array_equal(out, expected)


# --- EpochShuffleSampler --------------------------------------------------------------------


@FAST
@given(size=st.integers(1, 300), seed=st.integers(0, 2**31 - 1), other=st.integers(1, 1000))
def test_epoch_shuffle_sampler(size, seed, other):
    sampler = EpochShuffleSampler(size, seed)
    assert len(sampler) == size
    epochs = []
    for epoch in range(3):
        keys = list(sampler)
        assert [e for _, e in keys] == [epoch] * size
        order = [i for i, _ in keys]
        assert all(isinstance(i, int) for i in order)
        assert sorted(order) == list(range(size))  # a permutation
        epochs.append(order)
    if size >= 10:
        assert epochs[0] != epochs[1] and epochs[1] != epochs[2]
        different = EpochShuffleSampler(size, seed + other)
        assert [i for i, _ in different] != epochs[0]
    # Same (seed, epoch), fresh sampler: same order; set_epoch(k) reproduces epoch k.
    fresh = EpochShuffleSampler(size, seed)
    for k in (2, 0, 1):
        fresh.set_epoch(k)
        assert [i for i, _ in fresh] == epochs[k]
    assert [e for _, e in fresh] == [2] * size  # iterating advances to the next epoch


@FAST
@given(
    size=st.integers(1, 200),
    seed=st.integers(0, 2**31 - 1),
    world_size=st.integers(1, 5),
    epoch=st.integers(0, 5),
)
def test_epoch_shuffle_sampler_shards(size, seed, world_size, epoch):
    whole = EpochShuffleSampler(size, seed)
    whole.set_epoch(epoch)
    order = [i for i, _ in whole]
    per_rank = -(-size // world_size)  # ceil: every rank runs the same number of steps
    shards = []
    for rank in range(world_size):
        sampler = EpochShuffleSampler(size, seed, rank=rank, world_size=world_size)
        sampler.set_epoch(epoch)
        keys = list(sampler)
        assert len(sampler) == len(keys) == per_rank
        assert {e for _, e in keys} == {epoch}
        shards.append([i for i, _ in keys])
    # Interleaving the shards gives the shared order, padded by repeating its start.
    interleaved = [shards[r][k] for k in range(per_rank) for r in range(world_size)]
    padded = (order * world_size)[: per_rank * world_size]
    assert interleaved == padded
    assert set(interleaved) == set(range(size))


@FAST
@given(size=st.integers(0, 200), world_size=st.integers(1, 5))
def test_shard_sampler_partitions_without_padding(size, world_size):
    shards = [list(ShardSampler(size, rank, world_size)) for rank in range(world_size)]
    assert [len(ShardSampler(size, r, world_size)) for r in range(world_size)] == list(
        map(len, shards)
    )
    assert sorted(i for shard in shards for i in shard) == list(range(size))  # each once
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    with pytest.raises(ValueError):
        ShardSampler(size, world_size, world_size)
