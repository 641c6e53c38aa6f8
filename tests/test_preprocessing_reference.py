"""`preprocess_tile` on the real Tile1 against an independent float64 numpy/scipy reference.

The reference (tests/preprocessing_reference.py) is written from the documented recipe in
float64 and shares no code with `src.esd_data`'s preprocessing; it explains the tolerance.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
import tifffile

from src.esd_data.preprocessing import PreprocessConfig, preprocess_tile
from src.esd_data.reader import RawTile, read_tile
from tests.preprocessing_reference import (
    ATOL,
    SENSOR_ORDER,
    assert_matches,
    ref_no_data,
    reference,
    with_data,
)

pytestmark = pytest.mark.real_data

CONFIG = PreprocessConfig()


# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tile(real_train_dir) -> RawTile:
    return read_tile(real_train_dir / "Tile1")


@pytest.fixture(scope="module")
def processed(tile) -> tuple[np.ndarray, list[str]]:
    # preprocess_tile fills non-finite pixels in place; give it copies so `tile` stays raw.
    copy = with_data(tile, **{name: s.data.copy() for name, s in tile.sensors.items()})
    return preprocess_tile(copy, CONFIG)


@pytest.fixture(scope="module")
def expected(tile) -> dict[str, np.ndarray]:
    return reference(tile, CONFIG)


# --- tests -----------------------------------------------------------------------------------


def test_channel_names_order_and_shape(tile, processed):
    stack, names = processed
    expected_names = []
    for sensor in SENSOR_ORDER:
        s = tile.sensors[sensor]
        expected_names += [f"{sensor}/{d.isoformat()}/{b}" for d in s.dates for b in s.bands]
        if sensor == "viirs":
            expected_names.append("viirs/max/DNB")
    assert names == expected_names
    assert len(names) == 99
    assert stack.shape == (99, 800, 800) and stack.dtype == np.float32


def test_every_channel_matches_the_float64_reference(processed, expected):
    assert_matches(*processed, expected)


def test_values_are_exactly_in_unit_interval(processed):
    stack, names = processed
    outside = [
        f"{name}: [{stack[i].min():.3g}, {stack[i].max():.3g}]"
        for i, name in enumerate(names)
        if not (stack[i].min() >= 0.0 and stack[i].max() <= 1.0)
    ]
    assert not outside, "channels outside [0, 1]:\n" + "\n".join(outside)


def test_values_are_finite_and_span_the_unit_interval(processed):
    stack, names = processed
    assert np.isfinite(stack).all()
    # min–max scaling: every scaling group of Tile1 (none is constant) runs from 0 to 1:
    # each VIIRS and Sentinel-1 channel alone, each optical band over all its dates.
    groups: dict[str, list[int]] = {}
    for index, name in enumerate(names):
        sensor, _, band = name.split("/")
        key = f"{sensor}/*/{band}" if sensor in ("sentinel2", "landsat8") else name
        groups.setdefault(key, []).append(index)
    assert len(groups) == 9 + 1 + 8 + 12 + 11
    for key, indices in groups.items():
        assert stack[indices].min() == pytest.approx(0.0, abs=1e-6), key
        assert stack[indices].max() == pytest.approx(1.0, abs=1e-6), key


def test_viirs_max_projection_is_the_max_of_clipped_dates(tile, processed):
    stack, names = processed
    raw = tile.sensors["viirs"].data[:, 0].astype(np.float64)  # (date, H, W)
    lo, hi = np.quantile(raw, [0.05, 0.95], axis=(1, 2), keepdims=True)
    projection = np.clip(raw, lo, hi).max(axis=0)
    projection = (projection - projection.min()) / (projection.max() - projection.min())
    got = stack[names.index("viirs/max/DNB")]
    np.testing.assert_allclose(got, projection, atol=ATOL)
    # The test tells the recipe from the tempting variant "max of the per-date scaled maps".
    lo, hi = lo[:, 0, 0], hi[:, 0, 0]
    per_date = (np.clip(raw, lo[:, None, None], hi[:, None, None]) - lo[:, None, None]) / (hi - lo)[
        :, None, None
    ]
    variant = per_date.max(axis=0)
    assert np.max(np.abs(variant - projection)) > 1e-2


def test_constant_bands_scale_to_zero(tile):
    viirs = tile.sensors["viirs"].data.copy()
    viirs[2] = 0  # an all-zero VIIRS date (occurs in the contest data)
    s1 = tile.sensors["sentinel1"].data.copy()
    s1[1, 1] = 0.05  # one constant (date, band) plane
    s2 = tile.sensors["sentinel2"].data.copy()
    s2[:, 4] = 1234  # band B05 constant over all dates
    l8 = tile.sensors["landsat8"].data.copy()
    l8[:, 2] = 20000.5  # band B3 constant over all dates, and not an integer DN: this
    # sends the Landsat stack through the floating-point path instead of the lookup table
    changed = with_data(tile, viirs=viirs, sentinel1=s1, sentinel2=s2, landsat8=l8)
    expected = reference(changed, CONFIG)  # before preprocess_tile, which may fill in place
    stack, names = preprocess_tile(changed, CONFIG)
    assert np.isfinite(stack).all()
    viirs_dates = [d.isoformat() for d in tile.sensors["viirs"].dates]
    s1_dates = [d.isoformat() for d in tile.sensors["sentinel1"].dates]
    constant = [f"viirs/{viirs_dates[2]}/DNB", f"sentinel1/{s1_dates[1]}/VH"]
    constant += [n for n in names if n.startswith("sentinel2/") and n.endswith("/B05")]
    constant += [n for n in names if n.startswith("landsat8/") and n.endswith("/B3")]
    assert len(constant) == 2 + 4 + 3
    for name in constant:
        assert (stack[names.index(name)] == 0.0).all(), name
    assert_matches(stack, names, expected)  # and every other channel is still right


def test_non_finite_pixels_are_filled_with_the_plane_median_and_zeros_floored(tile):
    rng = np.random.default_rng(0)
    s1 = tile.sensors["sentinel1"].data.copy()
    l8 = tile.sensors["landsat8"].data.copy()
    rows, cols = rng.integers(0, 800, 500), rng.integers(0, 800, 500)
    s1[2, 0, rows, cols] = np.nan
    s1[2, 0, 5, 7], s1[2, 0, 9, 9] = np.inf, -np.inf
    s1[3, 1, :40] = 0.0  # 5 % zero backscatter (no data): log10 must see the floor, not -inf
    l8[1, 3, rows, cols] = np.nan  # Landsat B4 of the second date
    l8[1, 3, 0, 0] = np.inf
    planted_l8 = ~np.isfinite(l8[1, 3])

    # The fill values, from the documented rule, computed here.
    s1_median = np.median(s1[2, 0][np.isfinite(s1[2, 0])].astype(np.float64))
    l8_median = np.median(l8[1, 3][np.isfinite(l8[1, 3])].astype(np.float64))
    s1_filled, l8_filled = s1.astype(np.float64), l8.astype(np.float64)
    s1_filled[2, 0][~np.isfinite(s1[2, 0])] = s1_median
    l8_filled[1, 3][planted_l8] = l8_median
    expected = reference(with_data(tile, sentinel1=s1_filled, landsat8=l8_filled), CONFIG)

    stack, names = preprocess_tile(with_data(tile, sentinel1=s1, landsat8=l8), CONFIG)
    assert np.isfinite(stack).all()
    assert_matches(stack, names, expected)

    # The filled Landsat pixels all carry the scaled median: clip, gamma, min–max of B4.
    band = l8_filled[:, 3]
    lo, hi = np.quantile(band, [0.05, 0.95])
    g = 1 / 2.2
    value = (np.clip(l8_median, lo, hi) ** g - lo**g) / (hi**g - lo**g)
    name = f"landsat8/{tile.sensors['landsat8'].dates[1].isoformat()}/B4"
    filled = stack[names.index(name)][planted_l8]
    np.testing.assert_allclose(filled, value, atol=ATOL)
    assert 0.0 < value < 1.0  # a median inside the clip range: not an end of the scale


# --- the physical-units recipe ------------------------------------------------------------------


def raw_file(name: str) -> str:
    """The contest's file name of a channel `sensor/date/band` (DATA.md's patterns)."""
    sensor, date, band = name.split("/")
    compact = date.replace("-", "")
    if sensor == "sentinel1":
        return f"S1A_IW_GRDH_{compact}_{band}.tif"
    if sensor == "sentinel2":
        return f"L2A_{compact}_{band}.tif"
    if sensor == "landsat8":
        return f"LC08_L1TP_{date}_{band}.tif"
    day = dt.date.fromisoformat(date).timetuple().tm_yday
    return f"DNB_VNP46A1_A{date[:4]}{day:03d}.tif"


def test_physical_recipe_equals_a_float64_computation_from_the_raw_files(tile, real_train_dir):
    config = PreprocessConfig(recipe="physical", spectral_indices=("NDVI",))
    copy = with_data(tile, **{name: s.data.copy() for name, s in tile.sensors.items()})
    stack, names = preprocess_tile(copy, config)
    folder = real_train_dir / "Tile1"

    def raw(name: str) -> np.ndarray:  # the file as measured: its no-data pixels filled
        return ref_no_data(name.split("/")[0], tifffile.imread(folder / raw_file(name)))

    viirs = [n for n in names if n.startswith("viirs/") and "/max/" not in n]
    for k, name in enumerate(names):
        sensor, date, band = name.split("/")
        if name == "viirs/max/DNB":
            expected = np.max([raw(n) for n in viirs], axis=0)
        elif band == "NDVI":  # near infrared and red: Sentinel-2 B08, B04; Landsat 8 B5, B4
            nir_band, red_band = ("B08", "B04") if sensor == "sentinel2" else ("B5", "B4")
            nir, red = raw(f"{sensor}/{date}/{nir_band}"), raw(f"{sensor}/{date}/{red_band}")
            total = nir + red
            expected = np.divide(nir - red, total, out=np.zeros_like(total), where=total != 0)
        elif sensor == "sentinel1":
            expected = 10 * np.log10(np.maximum(raw(name), 1e-4))
        else:
            expected = raw(name)  # reflectance × 10 000, DNs, radiance: as stored
        np.testing.assert_allclose(stack[k], expected, rtol=1e-6, atol=2e-5, err_msg=name)
    assert -40 <= stack[names.index("sentinel1/2020-07-23/VV")].min() < -10  # dB, not [0, 1]
    assert stack[names.index("sentinel2/2020-08-11/B04")].max() > 100  # nothing rescaled
    assert config.to_dict()["recipe"] == "physical" and "recipe" not in CONFIG.to_dict()
    assert PreprocessConfig.from_dict(config.to_dict()) == config
