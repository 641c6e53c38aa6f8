"""The raw reader on the real Tile1: layout, order, exact pixels, and clear errors."""

from __future__ import annotations

import datetime as dt
import re

import numpy as np
import pytest
import tifffile

from src.esd_data.reader import NoDataWarning, TileError, find_tile_dirs, read_tile
from tests.conftest import replace_with_copy

pytestmark = pytest.mark.real_data

# Written out from DATA.md, independently of src.esd_data.sensors.
S2_BANDS = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12"]
L8_BANDS = ["B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B9", "B10", "B11"]


def test_real_tile_layout_and_order(real_train_dir):
    tile = read_tile(real_train_dir / "Tile1")
    counts = {name: s.data.shape[0] * s.data.shape[1] for name, s in tile.sensors.items()}
    assert counts == {"viirs": 9, "sentinel1": 8, "sentinel2": 48, "landsat8": 33}
    assert list(tile.sensors["sentinel2"].bands) == S2_BANDS
    assert list(tile.sensors["landsat8"].bands) == L8_BANDS
    assert list(tile.sensors["sentinel1"].bands) == ["VV", "VH"]
    for stack in tile.sensors.values():
        assert list(stack.dates) == sorted(stack.dates) and len(set(stack.dates)) == len(
            stack.dates
        )
        assert stack.data.shape[-2:] == (800, 800)
    assert tile.sensors["viirs"].dates[0] == dt.date(2020, 8, 8)  # A2020221


def test_real_tile_pixels_equal_tifffile_but_for_no_data(real_train_dir):
    folder = real_train_dir / "Tile1"
    with pytest.warns(NoDataWarning) as caught:
        tile = read_tile(folder)
    warned = {str(w.message).split(":")[0]: str(w.message) for w in caught}
    filled = 0
    for stack in tile.sensors.values():
        for t, date in enumerate(stack.dates):
            for b, band in enumerate(stack.bands):
                name = stack.files[t][b]
                if stack.sensor != "viirs":
                    assert re.search(rf"_{band}\.tif$", name), name
                    assert date.strftime("%Y%m%d") in name.replace("-", ""), name
                expected = tifffile.imread(folder / name)
                assert stack.data[t, b].dtype == expected.dtype
                # Sentinel-2 L2A's no-data value 0 (Tile1: 193 pixels in B01 and B09 of every
                # date) is not a reflectance: those pixels take the median of the others.
                no_data = expected == 0 if stack.sensor == "sentinel2" else np.zeros_like(
                    expected, dtype=bool)  # fmt: skip
                if no_data.any():
                    filled += 1
                    expected = expected.copy()
                    expected[no_data] = np.round(np.median(expected[~no_data]))
                    assert f"{no_data.sum()} of 640000 pixels treated as no data" in warned[
                        f"Tile1/{name}"]  # fmt: skip
                    assert "Sentinel-2 L2A no-data value (0)" in warned[f"Tile1/{name}"]
                np.testing.assert_array_equal(stack.data[t, b], expected)
    assert filled == 8 and len(warned) == 8  # B01 and B09 of the four dates, nothing else
    np.testing.assert_array_equal(tile.ground_truth, tifffile.imread(folder / "groundTruth.tif"))
    assert tile.ground_truth.shape == (16, 16)


def _problems(tile_dir):
    with pytest.raises(TileError) as caught:
        read_tile(tile_dir)
    message = str(caught.value)
    assert "Tile1" in message
    return message


def test_missing_band_is_named(real_tile_copy):
    (real_tile_copy / "L2A_20200816_B8A.tif").unlink()
    assert re.search(r"L2A_20200816_B8A\.tif: missing sentinel2 band", _problems(real_tile_copy))


def test_unknown_tif_is_named(real_tile_copy):
    (real_tile_copy / "L2A_20200816_B10.tif").symlink_to(real_tile_copy / "L2A_20200816_B11.tif")
    assert "L2A_20200816_B10.tif: unknown raster" in _problems(real_tile_copy)


def test_truncated_tiff_is_named(real_tile_copy):
    path = replace_with_copy(real_tile_copy / "S1A_IW_GRDH_20200804_VH.tif")
    path.write_bytes(path.read_bytes()[:100_000])
    assert "S1A_IW_GRDH_20200804_VH.tif: " in (message := _problems(real_tile_copy))
    assert "truncated" in message or "not a readable TIFF" in message


def test_corrupt_tiff_is_named(real_tile_copy):
    path = replace_with_copy(real_tile_copy / "DNB_VNP46A1_A2020224.tif")
    path.write_bytes(b"this is not a TIFF file" * 100)
    assert "DNB_VNP46A1_A2020224.tif: not a readable TIFF" in _problems(real_tile_copy)


def test_wrong_shape_is_named(real_tile_copy):
    path = real_tile_copy / "LC08_L1TP_2020-08-14_B5.tif"
    path.unlink()
    tifffile.imwrite(path, np.zeros((400, 800), np.float32))
    message = _problems(real_tile_copy)
    assert (
        "LC08_L1TP_2020-08-14_B5.tif: shape (400, 800), but the tile's rasters are (800, 800)"
        in message
    )


def test_wrong_dtype_is_named(real_tile_copy):
    path = real_tile_copy / "L2A_20200811_B04.tif"
    path.unlink()
    tifffile.imwrite(path, np.zeros((800, 800), np.float64))
    assert "L2A_20200811_B04.tif: dtype float64, expected uint16" in _problems(real_tile_copy)


def test_labels_outside_range_are_named(real_tile_copy):
    path = real_tile_copy / "groundTruth.tif"
    labels = tifffile.imread(path)
    path.unlink()
    labels[0, :2] = [0, 7]
    tifffile.imwrite(path, labels)
    assert "groundTruth.tif: labels [0, 7] outside 1..4" in _problems(real_tile_copy)


def test_every_problem_reported_at_once(real_tile_copy):
    (real_tile_copy / "L2A_20200816_B8A.tif").unlink()
    (real_tile_copy / "S1A_IW_GRDH_20200723_VV.tif").unlink()
    with pytest.raises(TileError) as caught:
        read_tile(real_tile_copy)
    assert len(caught.value.problems) == 2


def test_non_finite_pixels_warn_with_file_and_count(real_tile_copy):
    path = replace_with_copy(real_tile_copy / "S1A_IW_GRDH_20200816_VV.tif")
    values = tifffile.imread(path)
    values[:3, :5] = np.nan
    values[10, 10] = np.inf
    path.unlink()
    tifffile.imwrite(path, values)
    with pytest.warns(
        NoDataWarning,
        match=r"S1A_IW_GRDH_20200816_VV\.tif: 16 of 640000 pixels treated as no data "
        r"\(16 are not finite\)",
    ):
        read_tile(real_tile_copy)


def test_missing_or_empty_raw_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        find_tile_dirs(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="no TileN folders"):
        find_tile_dirs(tmp_path)
