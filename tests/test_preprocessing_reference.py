"""`preprocess_tile` on the real Tile1 against an independent float64 numpy/scipy reference.

The reference below is written from the documented recipe (DATA.md's course preprocessing,
with the defects fixed as the preprocessing module's docstring says), one sensor at a time,
in float64 with np.quantile and scipy.ndimage, and shares no code with `src.esd_data`'s
preprocessing. The code under test works in float32 (and through integer lookup tables), so
outputs in [0, 1] are compared with an absolute tolerance of 5e-6: float32 resolves steps of
6e-8 near 1, and the few float32 roundings of the Sentinel-1 chain (log10, the clip
quantiles, two separable blur passes, the min–max division by a span of a few log units)
add up to errors of order 1e-7 (observed on Tile1: 2.8e-7 for Sentinel-1, 3e-8 for the
other sensors), while a wrong recipe (wrong axis, a missing gamma, a 3-D blur, wrong
quantiles) moves values by 1e-3 or much more.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy import ndimage

from src.esd_data.preprocessing import PreprocessConfig, preprocess_tile
from src.esd_data.reader import RawTile, read_tile

pytestmark = pytest.mark.real_data

ATOL = 5e-6
CONFIG = PreprocessConfig()
SENSOR_ORDER = ("viirs", "sentinel1", "sentinel2", "landsat8")  # DATA.md / module docstring


# --- the float64 reference -------------------------------------------------------------------


def ref_minmax(x: np.ndarray, axis: tuple[int, ...]) -> np.ndarray:
    """(x − min) / (max − min) over `axis`; a constant slice gives 0 (the fixed defect)."""
    low = x.min(axis=axis, keepdims=True)
    span = x.max(axis=axis, keepdims=True) - low
    out = np.zeros_like(x)
    np.divide(x - low, span, out=out, where=np.broadcast_to(span > 0, x.shape))
    return out


def ref_fill(data: np.ndarray) -> np.ndarray:
    """fill_non_finite's documented rule: NaN/inf → median of the plane's finite pixels."""
    out = np.array(data, dtype=np.float64)
    for t in range(out.shape[0]):
        for b in range(out.shape[1]):
            plane = out[t, b]
            good = np.isfinite(plane)
            if not good.all():
                plane[~good] = np.median(plane[good]) if good.any() else 0.0
    return out


def ref_sentinel1(data: np.ndarray, c: PreprocessConfig) -> np.ndarray:
    """log10(max(x, floor)); per (date, band): clip to quantiles, 2-D gaussian, min–max."""
    x = np.log10(np.maximum(ref_fill(data), c.s1_log_floor))
    out = np.empty_like(x)
    for t in range(x.shape[0]):
        for b in range(x.shape[1]):
            lo, hi = np.quantile(x[t, b], c.s1_clip_quantiles)
            plane = np.clip(x[t, b], lo, hi)
            plane = ndimage.gaussian_filter(plane, c.s1_blur_sigma, mode="reflect")
            out[t, b] = ref_minmax(plane, (0, 1))
    return out


def ref_optical(data: np.ndarray, quantiles: tuple[float, float], gamma: float) -> np.ndarray:
    """Per band over ALL dates: clip to quantiles, x^(1/gamma), min–max."""
    x = ref_fill(data)
    out = np.empty_like(x)
    for b in range(x.shape[1]):
        band = x[:, b]
        lo, hi = np.quantile(band, quantiles)
        out[:, b] = ref_minmax(np.clip(band, lo, hi) ** (1.0 / gamma), (0, 1, 2))
    return out


def ref_viirs(data: np.ndarray, c: PreprocessConfig) -> tuple[np.ndarray, np.ndarray]:
    """Per date: clip to quantiles and min–max; projection: max of the clipped dates, min–max."""
    x = ref_fill(data)
    clipped = np.empty_like(x)
    for t in range(x.shape[0]):
        lo, hi = np.quantile(x[t], c.viirs_clip_quantiles)
        clipped[t] = np.clip(x[t], lo, hi)
    scaled = np.stack([ref_minmax(clipped[t], (0, 1, 2)) for t in range(x.shape[0])])
    projection = ref_minmax(clipped.max(axis=0), (1, 2))  # (band, H, W), per band
    return scaled, projection


def reference(tile: RawTile, c: PreprocessConfig = CONFIG) -> dict[str, np.ndarray]:
    """Channel name → float64 (H, W) plane, for every channel of the tile."""
    out: dict[str, np.ndarray] = {}

    def add(sensor: str, planes: np.ndarray) -> None:
        stack = tile.sensors[sensor]
        for t, date in enumerate(stack.dates):
            for b, band in enumerate(stack.bands):
                out[f"{sensor}/{date.isoformat()}/{band}"] = planes[t, b]

    scaled, projection = ref_viirs(tile.sensors["viirs"].data, c)
    add("viirs", scaled)
    for b, band in enumerate(tile.sensors["viirs"].bands):
        out[f"viirs/max/{band}"] = projection[b]
    add("sentinel1", ref_sentinel1(tile.sensors["sentinel1"].data, c))
    add(
        "sentinel2",
        ref_optical(tile.sensors["sentinel2"].data, c.s2_clip_quantiles, c.s2_gamma),
    )
    add(
        "landsat8",
        ref_optical(tile.sensors["landsat8"].data, c.landsat_clip_quantiles, c.landsat_gamma),
    )
    return out


def compare(stack: np.ndarray, names: list[str], expected: dict[str, np.ndarray]) -> None:
    """Every channel within ATOL of the reference; a failure lists the channels that differ."""
    assert list(names) == list(expected)
    bad = []
    for index, name in enumerate(names):
        error = float(np.max(np.abs(stack[index].astype(np.float64) - expected[name])))
        if not error <= ATOL:
            bad.append(f"{name}: max |error| {error:.3g}")
    assert not bad, "channels off the float64 reference:\n" + "\n".join(bad)


def with_data(tile: RawTile, **data: np.ndarray) -> RawTile:
    """A RawTile whose named sensors carry new (time, band, H, W) data."""
    sensors = dict(tile.sensors)
    for sensor, array in data.items():
        sensors[sensor] = dataclasses.replace(sensors[sensor], data=array)
    return RawTile(tile.tile_id, sensors, tile.ground_truth)


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
    return reference(tile)


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
    compare(*processed, expected)


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
    expected = reference(changed)  # before preprocess_tile, which may fill in place
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
    compare(stack, names, expected)  # and every other channel is still right


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
    expected = reference(with_data(tile, sentinel1=s1_filled, landsat8=l8_filled))

    stack, names = preprocess_tile(with_data(tile, sentinel1=s1, landsat8=l8), CONFIG)
    assert np.isfinite(stack).all()
    compare(stack, names, expected)

    # The filled Landsat pixels all carry the scaled median: clip, gamma, min–max of B4.
    band = l8_filled[:, 3]
    lo, hi = np.quantile(band, [0.05, 0.95])
    g = 1 / 2.2
    value = (np.clip(l8_median, lo, hi) ** g - lo**g) / (hi**g - lo**g)
    name = f"landsat8/{tile.sensors['landsat8'].dates[1].isoformat()}/B4"
    filled = stack[names.index(name)][planted_l8]
    np.testing.assert_allclose(filled, value, atol=ATOL)
    assert 0.0 < value < 1.0  # a median inside the clip range: not an end of the scale
