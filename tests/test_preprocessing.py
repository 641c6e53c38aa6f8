"""Preprocessing (src/esd_data/preprocessing.py) on small tiles against a float64 reference.

tests/test_preprocessing_reference.py compares the real Tile1 with a reference, which takes
seconds; these tests do the same on a 32-pixel synthetic tile written as real TIFF files
(and read back with the project's reader), with other parameters, on the float path of the
optical recipe (non-integer data), and on the building blocks one by one: the parameters'
limits, the non-finite fill, the exact integer quantiles, min–max scaling and the channel
names. The reference is written from DATA.md's recipe in float64 with np.quantile and
scipy.ndimage; it shares no code with the module.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from src.esd_data.preprocessing import (
    PreprocessConfig,
    _as_small_integers,
    channel_names,
    clip_to_quantiles,
    fill_non_finite,
    minmax_scale,
    preprocess_landsat8,
    preprocess_sentinel1,
    preprocess_tile,
    quantiles_over,
    sensor_channel_names,
)
from src.esd_data.reader import RawTile, read_tile
from src.esd_data.synthetic import generate_synthetic_dataset
from tests.preprocessing_reference import (
    ATOL,
    SENSOR_ORDER,
    assert_matches,
    ref_fill,
    ref_index,
    ref_minmax,
    ref_optical,
    ref_sentinel1,
    ref_viirs,
    reference,
)


def copy_tile(tile: RawTile, **data: np.ndarray) -> RawTile:
    """A copy of `tile` (preprocessing fills non-finite pixels in place) with new data."""
    sensors = {}
    for name, stack in tile.sensors.items():
        array = data.get(name, stack.data)
        sensors[name] = dataclasses.replace(stack, data=np.array(array, copy=True))
    return RawTile(tile.tile_id, sensors, tile.ground_truth)


@pytest.fixture(scope="module")
def tile(tmp_path_factory: pytest.TempPathFactory) -> RawTile:
    """One 32-pixel synthetic tile in the contest's file format, read back from its TIFFs."""
    raw = tmp_path_factory.mktemp("raw")
    generate_synthetic_dataset(raw, n_tiles=1, seed=3, tile_px=32)
    return read_tile(next(Path(raw).rglob("Tile1")))


# --- the whole tile ----------------------------------------------------------------------------


def test_tile_matches_the_reference(tile):
    config = PreprocessConfig()
    stack, names = preprocess_tile(copy_tile(tile), config)
    assert stack.dtype == np.float32 and stack.shape[1:] == (32, 32)
    assert [name.split("/")[0] for name in names] == sorted(
        (name.split("/")[0] for name in names), key=SENSOR_ORDER.index
    )
    assert_matches(stack, names, reference(tile, config))
    assert names[9] == "viirs/max/DNB" and len(names) == 99


def test_tile_with_other_parameters_matches_the_reference(tile):
    config = PreprocessConfig(
        s1_log_floor=0.05,
        s1_clip_quantiles=(0.2, 0.7),
        s1_blur_sigma=0.7,
        s2_clip_quantiles=(0.0, 1.0),
        s2_gamma=1.3,
        landsat_clip_quantiles=(0.3, 0.6),
        landsat_gamma=3.0,
        viirs_clip_quantiles=(0.25, 0.8),
        viirs_max_projection=False,
    )
    stack, names = preprocess_tile(copy_tile(tile), config)
    assert "viirs/max/DNB" not in names and len(names) == 98
    assert_matches(stack, names, reference(tile, config))


def test_tile_with_spectral_indices_matches_the_reference(tile):
    config = PreprocessConfig(spectral_indices=("NDWI", "NDVI", "NDBI"))
    stack, names = preprocess_tile(copy_tile(tile), config)
    assert len(names) == 99 + 3 * (4 + 3)  # three indices on 4 Sentinel-2 and 3 Landsat dates
    first = names.index("sentinel2/2020-08-11/B12")
    assert names[first + 1 : first + 5] == [
        "sentinel2/2020-08-11/NDVI",
        "sentinel2/2020-08-11/NDBI",
        "sentinel2/2020-08-11/NDWI",
        "sentinel2/2020-08-16/B01",
    ]
    assert not any(name.endswith("NDVI") for name in names if name.startswith("sentinel1"))
    assert_matches(stack, names, reference(tile, config))
    only = PreprocessConfig(spectral_indices="NDBI", viirs_max_projection=False)
    stack, names = preprocess_tile(copy_tile(tile), only)
    assert len(names) == 98 + 7 and "landsat8/2020-08-14/NDBI" in names
    assert_matches(stack, names, reference(tile, only))


def test_spectral_indices_of_zero_and_negative_values():
    import datetime as dt

    from src.esd_data.preprocessing import preprocess_sentinel2

    bands = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12")
    rng = np.random.default_rng(4)
    data = rng.integers(0, 5000, size=(2, 12, 6, 6)).astype(np.uint16)
    data[0, [3, 7], 0, :3] = 0  # B04 = B08 = 0: NDVI's denominator is 0 → stored 0.5
    stack = _stack("sentinel2", data, bands)
    config = PreprocessConfig(spectral_indices=("NDVI", "NDWI"))
    out = np.full((2 * 14, 6, 6), np.nan, dtype=np.float32)
    preprocess_sentinel2(stack, config, out)
    per_date = out.reshape(2, 14, 6, 6)
    np.testing.assert_allclose(per_date[:, 12], ref_index(data, bands, ("B08", "B04")), atol=ATOL)
    np.testing.assert_allclose(per_date[:, 13], ref_index(data, bands, ("B03", "B08")), atol=ATOL)
    assert (per_date[0, 12, 0, :3] == 0.5).all()
    expected = ref_optical(data, config.s2_clip_quantiles, config.s2_gamma)
    np.testing.assert_allclose(per_date[:, :12], expected, atol=ATOL)
    assert dt.date(2020, 8, 1) == stack.dates[0]
    # Negative values (a float stack) push the ratio outside [−1, 1]: clipped.
    landsat = rng.normal(1000.0, 100.0, size=(2, 11, 5, 5)).astype(np.float32)
    lbands = ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B9", "B10", "B11")
    landsat[0, 4, 0, 0], landsat[0, 3, 0, 0] = -50.0, 10.0  # (−50 − 10) / −40 = 1.5 → 1
    landsat[1, 4, 0, 0], landsat[1, 3, 0, 0] = 10.0, -50.0  # (10 + 50) / −40 = −1.5 → −1
    out = np.empty((2 * 12, 5, 5), dtype=np.float32)
    lconfig = PreprocessConfig(spectral_indices=("NDVI",))
    preprocess_landsat8(_stack("landsat8", landsat.copy(), lbands), lconfig, out)
    ndvi = out.reshape(2, 12, 5, 5)[:, 11]
    np.testing.assert_allclose(ndvi, ref_index(landsat, lbands, ("B5", "B4")), atol=ATOL)
    assert ndvi[0, 0, 0] == 1.0 and ndvi[1, 0, 0] == 0.0


def test_no_blur_when_sigma_is_zero(tile):
    config = PreprocessConfig(s1_blur_sigma=0.0)
    stack, names = preprocess_tile(copy_tile(tile), config)
    assert_matches(stack, names, reference(tile, config))


def test_float16_output_is_the_reference_rounded(tile):
    half, names = preprocess_tile(copy_tile(tile), PreprocessConfig(), dtype=np.float16)
    assert half.dtype == np.float16
    expected = reference(tile, PreprocessConfig())
    assert names == list(expected)
    for index, name in enumerate(names):  # float16 resolves steps of 2^-11 near 1
        np.testing.assert_allclose(half[index], expected[name], atol=2.0**-11 + ATOL, err_msg=name)


def test_non_finite_and_constant_data(tile):
    s1 = tile.sensors["sentinel1"].data.copy()
    s1[0, 1, 3:5, 7] = np.nan
    s1[2, 0, 0, 0] = np.inf
    s1[1, 1] = 0.0  # all floored: a constant plane → zeros
    landsat = tile.sensors["landsat8"].data.copy()
    landsat[1, 4, 10, 10:12] = -np.inf
    landsat[:, 6] = 7000.0  # a constant band over all dates
    s2 = tile.sensors["sentinel2"].data.copy()
    s2[:, 3] = 1234  # a constant band on the integer (lookup table) path
    viirs = tile.sensors["viirs"].data.copy()
    viirs[4] = 0  # an all-zero date
    raw = copy_tile(tile, sentinel1=s1, landsat8=landsat, sentinel2=s2, viirs=viirs)
    config = PreprocessConfig()
    expected = reference(raw, config)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no division by zero, no NaN on the way
        stack, names = preprocess_tile(copy_tile(raw), config)
    assert np.isfinite(stack).all()
    assert_matches(stack, names, expected)
    for name in ("sentinel1/2020-08-04/VH", "landsat8/2020-08-14/B7", "sentinel2/2020-08-16/B04"):
        assert (stack[names.index(name)] == 0).all(), name
    assert (stack[4] == 0).all()  # the all-zero VIIRS date


def test_optical_float_data_take_the_float_path():
    rng = np.random.default_rng(0)
    data = (rng.integers(5000, 30000, size=(3, 4, 8, 8)) + 0.37).astype(np.float32)
    assert _as_small_integers(data) is None
    data[0, 1, 2, 2] = np.nan
    data[:, 2] = 9000.5  # constant band
    stack = _stack("landsat8", data.copy(), bands=("B1", "B2", "B3", "B4"))
    config = PreprocessConfig(landsat_clip_quantiles=(0.1, 0.8), landsat_gamma=1.7)
    expected = ref_optical(data, config.landsat_clip_quantiles, config.landsat_gamma)
    out = np.empty((12, 8, 8), dtype=np.float32)
    preprocess_landsat8(stack, config, out)
    np.testing.assert_allclose(out.reshape(3, 4, 8, 8), expected, atol=ATOL)


def test_sentinel1_per_date_and_band():
    rng = np.random.default_rng(1)
    data = rng.gamma(2.0, 0.2, size=(3, 2, 10, 12)).astype(np.float32) * [[[[1]], [[30]]]]
    stack = _stack("sentinel1", data.astype(np.float32), bands=("VV", "VH"))
    config = PreprocessConfig(s1_clip_quantiles=(0.05, 0.9), s1_blur_sigma=1.5)
    out = np.empty((6, 10, 12), dtype=np.float32)
    preprocess_sentinel1(stack, config, out)
    expected = ref_sentinel1(data, config)
    np.testing.assert_allclose(out.reshape(3, 2, 10, 12), expected, atol=ATOL)


def _stack(sensor: str, data: np.ndarray, bands: tuple[str, ...]):
    import datetime as dt

    from src.esd_data.reader import SensorStack

    dates = tuple(dt.date(2020, 8, 1) + dt.timedelta(days=5 * t) for t in range(data.shape[0]))
    files = tuple(tuple(f"{sensor}-{t}-{b}.tif" for b in bands) for t in range(len(dates)))
    return SensorStack(sensor, data, dates, bands, files)


# --- names ---------------------------------------------------------------------------------------


def test_channel_names_are_date_major():
    stack = _stack("sentinel1", np.zeros((2, 2, 1, 1), np.float32), bands=("VV", "VH"))
    expected = [
        "sentinel1/2020-08-01/VV",
        "sentinel1/2020-08-01/VH",
        "sentinel1/2020-08-06/VV",
        "sentinel1/2020-08-06/VH",
    ]
    assert channel_names(stack) == expected
    assert sensor_channel_names(stack, PreprocessConfig()) == expected  # no projection
    viirs = _stack("viirs", np.zeros((2, 1, 1, 1), np.uint16), bands=("DNB",))
    names = ["viirs/2020-08-01/DNB", "viirs/2020-08-06/DNB"]
    assert sensor_channel_names(viirs, PreprocessConfig()) == [*names, "viirs/max/DNB"]
    off = PreprocessConfig(viirs_max_projection=False)
    assert sensor_channel_names(viirs, off) == names


# --- parameters ----------------------------------------------------------------------------------


def test_defaults_are_the_documented_recipe():
    config = PreprocessConfig()
    assert config.s1_log_floor == 1e-4
    assert config.s1_clip_quantiles == (0.01, 0.99) and config.s1_blur_sigma == 1.0
    assert config.s2_clip_quantiles == (0.10, 0.90) and config.s2_gamma == 2.2
    assert config.landsat_clip_quantiles == (0.05, 0.95) and config.landsat_gamma == 2.2
    assert config.viirs_clip_quantiles == (0.05, 0.95) and config.viirs_max_projection is True
    assert config.spectral_indices == ()


def test_spectral_indices_are_checked_and_kept_in_table_order():
    assert PreprocessConfig(spectral_indices=["NDWI", "NDVI"]).spectral_indices == (
        "NDVI",
        "NDWI",
    )
    assert PreprocessConfig(spectral_indices="NDBI").spectral_indices == ("NDBI",)
    assert PreprocessConfig(spectral_indices=("NDBI", "NDVI")) == PreprocessConfig(
        spectral_indices=("NDVI", "NDBI")
    )  # one cache for one set
    message = r"^unknown spectral index\(es\) 'EVI', 3: known indices are NDVI, NDBI, NDWI$"
    with pytest.raises(ValueError, match=message):
        PreprocessConfig(spectral_indices=("NDVI", "EVI", 3))
    with pytest.raises(
        ValueError, match=r"^spectral_indices must be a list of index names, got 5$"
    ):
        PreprocessConfig(spectral_indices=5)


def test_the_configuration_is_immutable_and_hashable():
    # Frozen: the checks hold for the object's life, and equal parameters hash equal.
    config = PreprocessConfig(s2_gamma=1.5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.s2_gamma = -1.0
    assert hash(config) == hash(PreprocessConfig(s2_gamma=1.5))


QUANTILE_FIELDS = [
    "s1_clip_quantiles",
    "s2_clip_quantiles",
    "landsat_clip_quantiles",
    "viirs_clip_quantiles",
]


@pytest.mark.parametrize("name", QUANTILE_FIELDS)
def test_quantile_pairs_must_be_increasing_within_the_unit_interval(name):
    for good in [(0.0, 1.0), (0.0, 0.01), (0.99, 1.0)]:
        assert getattr(PreprocessConfig(**{name: good}), name) == good
    for bad in [(-0.01, 0.5), (0.5, 1.01), (0.5, 0.5), (0.6, 0.4)]:
        message = rf"^{name} must satisfy 0 <= low < high <= 1, got \({bad[0]}, {bad[1]}\)$"
        with pytest.raises(ValueError, match=message):
            PreprocessConfig(**{name: bad})


def test_other_parameter_limits():
    assert PreprocessConfig(s1_log_floor=1e-12).s1_log_floor == 1e-12
    assert PreprocessConfig(s1_blur_sigma=0.0).s1_blur_sigma == 0.0
    assert PreprocessConfig(s2_gamma=0.01, landsat_gamma=0.01).landsat_gamma == 0.01
    for value in (0.0, -1.0):
        with pytest.raises(ValueError, match=rf"^s1_log_floor must be positive, got {value}$"):
            PreprocessConfig(s1_log_floor=value)
    for values in (
        {"s2_gamma": 0.0},
        {"landsat_gamma": 0.0},
        {"s2_gamma": -2.2},
        {"landsat_gamma": -1.0},
    ):
        with pytest.raises(ValueError, match=r"^gamma values must be positive$"):
            PreprocessConfig(**values)
    with pytest.raises(ValueError, match=r"^s1_blur_sigma must be >= 0, got -0.5$"):
        PreprocessConfig(s1_blur_sigma=-0.5)


def test_to_dict_is_json_ready_and_from_dict_inverts_it():
    config = PreprocessConfig(
        s2_clip_quantiles=(0.2, 0.8), viirs_max_projection=False, spectral_indices=("NDBI",)
    )
    values = config.to_dict()
    assert values["s2_clip_quantiles"] == [0.2, 0.8] and values["spectral_indices"] == ["NDBI"]
    assert all(not isinstance(v, tuple) for v in values.values())
    assert values["s1_log_floor"] == 1e-4 and values["viirs_max_projection"] is False
    # Every field, except the default recipe's name and no validity channels: folders
    # prepared before they existed keep their identity.
    fields = {f.name for f in dataclasses.fields(PreprocessConfig)}
    assert set(values) == fields - {"recipe", "valid_masks"}
    again = PreprocessConfig.from_dict(json.loads(json.dumps(values)))
    assert again == config
    assert again.s2_clip_quantiles == (0.2, 0.8)
    physical = dataclasses.replace(config, recipe="physical").to_dict()
    assert physical == {**values, "recipe": "physical"}
    assert PreprocessConfig.from_dict(physical).recipe == "physical"
    masked = dataclasses.replace(config, valid_masks=True).to_dict()
    assert masked == {**values, "valid_masks": True}
    assert PreprocessConfig.from_dict(masked).valid_masks is True


# --- building blocks -----------------------------------------------------------------------------


def test_fill_non_finite_uses_each_planes_median():
    rng = np.random.default_rng(2)
    stack = rng.normal(size=(2, 3, 4, 5)).astype(np.float32)
    stack[0, 1, 0, :2] = np.nan
    stack[1, 2, 3, 4] = np.inf
    stack[1, 0, 1, 1] = -np.inf
    stack[0, 2] = np.nan  # nothing finite: zeros
    expected = ref_fill(stack)
    result = fill_non_finite(stack)
    assert result is stack  # in place
    np.testing.assert_allclose(result, expected, rtol=1e-6)
    assert (result[0, 2] == 0).all()
    clean = rng.normal(size=(2, 2, 3, 3)).astype(np.float32)
    before = clean.copy()
    assert fill_non_finite(clean) is clean and np.array_equal(clean, before)
    integers = np.arange(8, dtype=np.uint16).reshape(1, 2, 2, 2)
    assert fill_non_finite(integers) is integers


def test_small_integers_are_recognised():
    uint16 = np.array([[0, 65535]], dtype=np.uint16)
    assert _as_small_integers(uint16) is uint16
    uint8 = np.array([3, 4], dtype=np.uint8)
    assert _as_small_integers(uint8) is uint8
    assert _as_small_integers(np.array([1, 2], dtype=np.uint32)) is None
    assert _as_small_integers(np.array([1, 2], dtype=np.int16)) is None
    for values in ([0.0, 17.0, 65535.0], [5006.0, 45408.0]):  # Landsat DNs held as floats
        result = _as_small_integers(np.array(values, dtype=np.float32))
        assert result is not None and result.dtype == np.uint16
        assert result.tolist() == [int(v) for v in values]
    for values in ([-1.0, 3.0], [0.0, 65536.0], [1.5, 2.0]):
        assert _as_small_integers(np.array(values, dtype=np.float32)) is None


@pytest.mark.parametrize(
    ("shape", "axis"),
    [((3, 4, 5, 6), (0, 2, 3)), ((5, 1, 6, 7), (1, 2, 3)), ((2, 3, 4, 5), (2, 3)), ((7,), (0,))],
)
@pytest.mark.parametrize("dtype", [np.uint16, np.uint8, np.float32])
def test_quantiles_of_integers_equal_numpys(shape, axis, dtype):
    for seed in range(3):
        rng = np.random.default_rng(seed)
        high = 255 if dtype == np.uint8 else 3000
        x = rng.integers(0, high, size=shape).astype(dtype)
        x.flat[0] = high  # the top quantile is the maximum, present once
        for quantiles in [(0.1, 0.9), (0.0, 1.0), (0.05, 0.95), (0.33, 0.5), (0.999, 1.0)]:
            got = quantiles_over(x, quantiles, axis)
            want = np.quantile(x.astype(np.float64), quantiles, axis=axis, keepdims=True)
            assert got.shape == want.shape
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-9)


def test_quantiles_of_a_constant_and_of_non_integers():
    constant = np.full((2, 3, 3), 7, dtype=np.uint16)
    np.testing.assert_array_equal(quantiles_over(constant, (0.1, 0.9), (0, 1, 2)).ravel(), [7, 7])
    x = np.random.default_rng(5).normal(size=(3, 4, 4))
    got = quantiles_over(x, (0.2, 0.7), (1, 2))
    np.testing.assert_allclose(got, np.quantile(x, (0.2, 0.7), axis=(1, 2), keepdims=True))


def test_clip_to_quantiles_gives_float32_within_the_quantiles():
    x = np.random.default_rng(6).integers(0, 1000, size=(2, 3, 8, 8)).astype(np.uint16)
    clipped = clip_to_quantiles(x, (0.1, 0.8), axis=(0, 2, 3))
    assert clipped.dtype == np.float32
    low, high = np.quantile(x.astype(np.float64), (0.1, 0.8), axis=(0, 2, 3), keepdims=True)
    expected = np.clip(x.astype(np.float64), low, high)
    np.testing.assert_allclose(clipped, expected, rtol=1e-6)


def test_minmax_scale_in_place_with_constant_slices_at_zero():
    x = np.random.default_rng(7).normal(size=(3, 2, 4, 4)).astype(np.float32)
    x[1, 0] = 2.5  # a constant (date, band) slice
    expected = ref_minmax(x.astype(np.float64), (2, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert minmax_scale(x, axis=(2, 3)) is None
    np.testing.assert_allclose(x, expected, atol=1e-6)
    assert (x[1, 0] == 0).all()
    assert x[0].min() == 0.0 and x[0].max() == pytest.approx(1.0)


def test_minmax_scale_of_a_slice_spanning_exactly_one():
    x = np.array([[[2.0, 3.0], [2.5, 2.25]], [[7.0, 7.0], [7.0, 7.0]]], dtype=np.float32)
    minmax_scale(x, axis=(1, 2))
    np.testing.assert_array_equal(x[0], [[0.0, 1.0], [0.5, 0.25]])
    assert (x[1] == 0).all()


def test_optical_integers_with_an_odd_maximum_and_all_zero_data():
    from src.esd_data.preprocessing import preprocess_sentinel2

    bands = ("B02", "B03")
    rng = np.random.default_rng(8)
    for high in (3801, 3802, 1):  # the stack's maximum: odd, even, one
        data = rng.integers(0, high, size=(3, 2, 5, 5), endpoint=True).astype(np.uint16)
        data[0, 0, 0, 0] = high
        out = np.empty((6, 5, 5), dtype=np.float32)
        config = PreprocessConfig(s2_clip_quantiles=(0.0, 1.0), s2_gamma=2.0)
        preprocess_sentinel2(_stack("sentinel2", data, bands), config, out)
        expected = ref_optical(data, (0.0, 1.0), 2.0)
        np.testing.assert_allclose(out.reshape(3, 2, 5, 5), expected, atol=ATOL)
    zeros = np.zeros((2, 2, 4, 4), dtype=np.uint16)  # a tile without data
    out = np.full((4, 4, 4), np.nan, dtype=np.float32)
    preprocess_sentinel2(_stack("sentinel2", zeros, bands), PreprocessConfig(), out)
    assert (out == 0).all()


def test_viirs_is_scaled_per_date_over_all_its_bands():
    from src.esd_data.preprocessing import preprocess_viirs

    rng = np.random.default_rng(9)
    data = rng.integers(0, 200, size=(3, 2, 6, 6)).astype(np.uint16)
    data[:, 1] *= 3  # the second band brighter: scaling per (date, band) would differ
    config = PreprocessConfig(viirs_clip_quantiles=(0.1, 0.9))
    out = np.empty((3 * 2 + 2, 6, 6), dtype=np.float32)
    preprocess_viirs(_stack("viirs", data, ("DNB", "X")), config, out)
    scaled, projection = ref_viirs(data, config)
    np.testing.assert_allclose(out[:6].reshape(3, 2, 6, 6), scaled, atol=ATOL)
    np.testing.assert_allclose(out[6:], projection, atol=ATOL)


def test_sensor_names_are_compared_by_value():
    # A name made at run time (say, read from a manifest) is as good as the literal.
    name = "".join(["vi", "irs"])
    viirs = _stack(name, np.zeros((1, 1, 1, 1), np.uint16), bands=("DNB",))
    assert sensor_channel_names(viirs, PreprocessConfig())[-1] == "viirs/max/DNB"
