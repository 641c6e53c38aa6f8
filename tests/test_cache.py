"""The processed cache: reuse, rebuilds, interruption safety, split and normalisation stats."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import tifffile

import src.esd_data.cache as cache
from src.esd_data.cache import PrepareError, prepare_dataset
from src.esd_data.manifest import Manifest
from src.esd_data.preprocessing import PreprocessConfig
from src.esd_data.reader import NoDataWarning, read_tile
from src.esd_data.split import split_tiles


def _forbid_raw_reads(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a raw file was opened")

    monkeypatch.setattr(cache, "inspect_tile", refuse)
    monkeypatch.setattr(cache, "read_inventory", refuse)


def test_second_prepare_reuses_the_cache_without_reading_raw_files(
    synthetic_raw, tmp_path, monkeypatch
):
    first = prepare_dataset(synthetic_raw, tmp_path, workers=2)
    assert len(first.rebuilt) == 12 and first.bytes_written > 0
    _forbid_raw_reads(monkeypatch)
    second = prepare_dataset(synthetic_raw, tmp_path, workers=2)
    assert second.rebuilt == [] and len(second.reused) == 12
    assert second.manifest == first.manifest


def test_changed_parameter_or_raw_file_rebuilds(synthetic_copy, tmp_path):
    processed = tmp_path / "processed"
    first = prepare_dataset(synthetic_copy, processed, workers=1)
    blurrier = PreprocessConfig(s1_blur_sigma=2.0)
    changed = prepare_dataset(synthetic_copy, processed, workers=1, preprocessing=blurrier)
    assert len(changed.rebuilt) == 12
    assert changed.manifest.fingerprint != first.manifest.fingerprint
    assert changed.manifest.preprocessing["s1_blur_sigma"] == 2.0
    before = np.load(processed / "tiles" / "Tile3.npy")

    raster = synthetic_copy / "Train" / "Tile3" / "S1A_IW_GRDH_20200804_VV.tif"
    values = tifffile.imread(raster)
    # A change the recipe cannot cancel (scaling would: log, clip and min–max undo it): the
    # left half of the raster becomes uniformly dark.
    values[:, : values.shape[1] // 2] = values.min()
    tifffile.imwrite(raster, values)
    rebuilt = prepare_dataset(synthetic_copy, processed, workers=1, preprocessing=blurrier)
    assert rebuilt.rebuilt == ["Tile3"] and len(rebuilt.reused) == 11
    after = np.load(processed / "tiles" / "Tile3.npy")
    channel = rebuilt.manifest.channels.index("sentinel1/2020-08-04/VV")
    assert after.shape == before.shape
    assert np.abs(after[channel].astype(float) - before[channel]).max() > 0.2
    others = [c for c in range(after.shape[0]) if c != channel]
    np.testing.assert_array_equal(after[others], before[others])


def test_interrupted_run_leaves_no_tile_a_later_run_trusts(synthetic_copy, tmp_path, monkeypatch):
    processed = tmp_path / "processed"
    real_write = cache.write_npy
    calls = {"images": 0}

    def crash_midway(target, array):
        if target.name.endswith(".npy") and not target.name.endswith(".labels.npy"):
            calls["images"] += 1
            if calls["images"] == 4:  # the 4th tile dies half-way through its image
                temporary = target.with_name(f".{target.name}.crash.tmp")
                temporary.write_bytes(array.tobytes()[: array.nbytes // 2])
                raise KeyboardInterrupt("simulated crash")
        real_write(target, array)

    monkeypatch.setattr(cache, "write_npy", crash_midway)
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset(synthetic_copy, processed, workers=1)
    assert not (processed / "manifest.json").exists()
    records = sorted(p.stem for p in (processed / "tiles").glob("Tile*.json"))
    assert records == ["Tile1", "Tile2", "Tile3"]
    assert not (processed / "tiles" / "Tile4.npy").exists()

    monkeypatch.setattr(cache, "write_npy", real_write)
    resumed = prepare_dataset(synthetic_copy, processed, workers=1)
    assert resumed.reused == ["Tile1", "Tile2", "Tile3"] and len(resumed.rebuilt) == 9
    assert not list((processed / "tiles").glob(".*"))  # temporaries cleaned up
    fresh = prepare_dataset(synthetic_copy, tmp_path / "fresh", workers=2).manifest
    assert resumed.manifest.mean == pytest.approx(fresh.mean)
    for tile in ("Tile2", "Tile4"):
        np.testing.assert_array_equal(
            np.load(processed / "tiles" / f"{tile}.npy"),
            np.load(tmp_path / "fresh" / "tiles" / f"{tile}.npy"),
        )


def test_bad_tile_among_good_ones_stops_before_processing(synthetic_copy, tmp_path):
    (synthetic_copy / "Train" / "Tile7" / "L2A_20200811_B05.tif").unlink()
    with pytest.raises(PrepareError, match=r"Tile7.*\n.*L2A_20200811_B05\.tif: missing"):
        prepare_dataset(synthetic_copy, tmp_path, workers=2)
    assert not (tmp_path / "manifest.json").exists()
    assert not list((tmp_path / "tiles").glob("*.npy"))


def test_split_is_disjoint_and_independent_of_listing_order():
    tiles = [f"Tile{i}" for i in range(1, 61)]
    split = split_tiles(tiles, seed=3, val_fraction=0.2, test_fraction=0.1)
    assert [len(split[k]) for k in ("train", "val", "test")] == [42, 12, 6]
    assigned = [tile for tiles_of_split in split.values() for tile in tiles_of_split]
    assert sorted(assigned, key=lambda t: int(t[4:])) == tiles
    shuffled = tiles[:]
    random.Random(1).shuffle(shuffled)
    assert split_tiles(shuffled, seed=3, val_fraction=0.2, test_fraction=0.1) == split
    assert split_tiles(tiles, seed=4, val_fraction=0.2, test_fraction=0.1) != split


def test_prepared_split_covers_every_tile_once(synthetic_processed):
    manifest = Manifest.load(synthetic_processed)
    assigned = [t for split in manifest.split.values() for t in split]
    assert sorted(assigned) == sorted(manifest.tiles) and len(set(assigned)) == len(assigned)
    assert len(manifest.split["val"]) == 3 and manifest.split["predict"] == []


def test_manifest_records_channels_geometry_and_parameters(synthetic_processed):
    manifest = Manifest.load(synthetic_processed)
    assert len(manifest.channels) == 99 and manifest.channels[9] == "viirs/max/DNB"
    assert "sentinel2/2020-08-11/B04" in manifest.channels
    assert manifest.tile_shape == (64, 64) and manifest.cell_px == 4
    assert manifest.preprocessing == PreprocessConfig().to_dict()
    stored = json.loads((synthetic_processed / "manifest.json").read_text())
    assert stored["split"] == manifest.split and len(stored["mean"]) == 99


def test_train_statistics_match_the_stored_training_tiles(synthetic_processed):
    manifest = Manifest.load(synthetic_processed)
    stack = np.stack(
        [np.load(synthetic_processed / "tiles" / f"{t}.npy") for t in manifest.split["train"]]
    ).astype(np.float64)
    mean = stack.mean(axis=(0, 2, 3))
    std = stack.std(axis=(0, 2, 3))
    np.testing.assert_allclose(manifest.mean, mean, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(np.where(std > 1e-8, std, 1.0), manifest.std, rtol=1e-6)


def test_non_finite_pixels_are_filled_and_reported(synthetic_copy, tmp_path):
    raster = synthetic_copy / "Train" / "Tile2" / "LC08_L1TP_2020-08-14_B4.tif"
    values = tifffile.imread(raster)
    values[:4, :4] = np.nan
    values[20, 30] = -np.inf
    tifffile.imwrite(raster, values)
    with pytest.warns(NoDataWarning, match=r"no data filled .*Landsat 8 L1 \(NaN/inf\)") as caught:
        prepare_dataset(synthetic_copy, tmp_path, workers=2)
    assert len([w for w in caught if issubclass(w.category, NoDataWarning)]) == 1  # one line
    stored = np.load(tmp_path / "tiles" / "Tile2.npy")
    assert np.isfinite(stored).all()
    record = json.loads((tmp_path / "tiles" / "Tile2.json").read_text())["no_data"]
    assert record["Tile2/LC08_L1TP_2020-08-14_B4.tif"]["non_finite"] == 17
    assert read_tile(synthetic_copy / "Train" / "Tile1").ground_truth.shape == (16, 16)


def test_cache_files_get_ordinary_permissions(synthetic_processed, tmp_path):
    probe = tmp_path / "probe"
    probe.write_text("an ordinary file")
    expected = probe.stat().st_mode & 0o777
    for path in [synthetic_processed / "manifest.json", *synthetic_processed.glob("tiles/*")]:
        assert path.stat().st_mode & 0o777 == expected, path
