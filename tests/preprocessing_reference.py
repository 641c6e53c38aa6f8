"""An independent float64 reference of the preprocessing recipe, shared by the tests.

Written from DATA.md's course recipe with the defects fixed as the preprocessing module's
docstring says, one sensor at a time, in float64 with np.quantile and scipy.ndimage; it shares
no code with `src.esd_data.preprocessing`. Outputs in [0, 1] are compared with an absolute
tolerance of 5e-6: float32 resolves steps of 6e-8 near 1, and the few float32 roundings of
the Sentinel-1 chain add up to errors of order 1e-7 (2.8e-7 on the real Tile1), while a wrong
recipe moves values by 1e-3 or more.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage

from src.esd_data.preprocessing import PreprocessConfig
from src.esd_data.reader import RawTile

ATOL = 5e-6  # float32 arithmetic against the float64 reference (see above)
SENSOR_ORDER = ("viirs", "sentinel1", "sentinel2", "landsat8")


# --- the float64 reference ---------------------------------------------------------------------


def ref_minmax(x: np.ndarray, axis: tuple[int, ...]) -> np.ndarray:
    low = x.min(axis=axis, keepdims=True)
    span = x.max(axis=axis, keepdims=True) - low
    out = np.zeros_like(x)
    np.divide(x - low, span, out=out, where=np.broadcast_to(span > 0, x.shape))
    return out


def ref_fill(data: np.ndarray) -> np.ndarray:
    out = np.array(data, dtype=np.float64)
    for t in range(out.shape[0]):
        for b in range(out.shape[1]):
            plane = out[t, b]
            good = np.isfinite(plane)
            if not good.all():
                plane[~good] = np.median(plane[good]) if good.any() else 0.0
    return out


NO_DATA_VALUES = {"sentinel2": 0.0, "landsat8": 0.0, "viirs": 65535.0}
"""DATA.md's no-data values; Sentinel-1's no data is every non-positive backscatter."""


def ref_no_data(sensor: str, plane: np.ndarray) -> np.ndarray:
    """A raw raster as measured: its product's no-data pixels (and NaN/inf) replaced by the
    median of the others (rounded for the integer products), float64."""
    out = np.array(plane, dtype=np.float64)
    bad = ~np.isfinite(out)
    if sensor == "sentinel1":
        bad |= out <= 0
    else:
        bad |= out == NO_DATA_VALUES[sensor]
    if bad.any():
        fill = np.median(out[~bad]) if (~bad).any() else 0.0
        out[bad] = fill if sensor in ("sentinel1", "landsat8") else np.round(fill)
    return out


def ref_sentinel1(data: np.ndarray, c: PreprocessConfig) -> np.ndarray:
    x = np.log10(np.maximum(ref_fill(data), c.s1_log_floor))
    out = np.empty_like(x)
    for t in range(x.shape[0]):
        for b in range(x.shape[1]):
            lo, hi = np.quantile(x[t, b], c.s1_clip_quantiles)
            plane = np.clip(x[t, b], lo, hi)
            if c.s1_blur_sigma > 0:
                plane = ndimage.gaussian_filter(plane, c.s1_blur_sigma, mode="reflect")
            out[t, b] = ref_minmax(plane, (0, 1))
    return out


def ref_optical(data: np.ndarray, quantiles: tuple[float, float], gamma: float) -> np.ndarray:
    x = ref_fill(data)
    out = np.empty_like(x)
    for b in range(x.shape[1]):
        lo, hi = np.quantile(x[:, b], quantiles)
        out[:, b] = ref_minmax(np.clip(x[:, b], lo, hi) ** (1.0 / gamma), (0, 1, 2))
    return out


def ref_viirs(data: np.ndarray, c: PreprocessConfig) -> tuple[np.ndarray, np.ndarray]:
    x = ref_fill(data)
    clipped = np.empty_like(x)
    for t in range(x.shape[0]):
        lo, hi = np.quantile(x[t], c.viirs_clip_quantiles)
        clipped[t] = np.clip(x[t], lo, hi)
    scaled = np.stack([ref_minmax(clipped[t], (0, 1, 2)) for t in range(x.shape[0])])
    return scaled, ref_minmax(clipped.max(axis=0), (1, 2))


# The module docstring's band pairs (a, b) of each index (a − b) / (a + b), in table order.
INDEX_BANDS = {
    "sentinel2": {"NDVI": ("B08", "B04"), "NDBI": ("B11", "B08"), "NDWI": ("B03", "B08")},
    "landsat8": {"NDVI": ("B5", "B4"), "NDBI": ("B6", "B5"), "NDWI": ("B3", "B5")},
}


def ref_index(data: np.ndarray, bands: tuple[str, ...], pair: tuple[str, str]) -> np.ndarray:
    """(date, H, W): (a − b) / (a + b) of the filled raw values (0 where a + b = 0), clipped
    to [−1, 1] and stored as (index + 1) / 2."""
    x = ref_fill(data)
    a, b = x[:, bands.index(pair[0])], x[:, bands.index(pair[1])]
    total = a + b
    ratio = np.divide(a - b, total, out=np.zeros_like(total), where=total != 0)
    return (np.clip(ratio, -1.0, 1.0) + 1.0) / 2.0


def reference(tile: RawTile, c: PreprocessConfig) -> dict[str, np.ndarray]:
    """Channel name → float64 (H, W) plane, sensor by sensor, date-major; a date's spectral
    indices (in NDVI, NDBI, NDWI order) follow its bands."""
    out: dict[str, np.ndarray] = {}

    def add(sensor: str, planes: np.ndarray) -> None:
        stack = tile.sensors[sensor]
        pairs = INDEX_BANDS.get(sensor, {})
        wanted = [n for n in ("NDVI", "NDBI", "NDWI") if n in c.spectral_indices and pairs]
        indices = {name: ref_index(stack.data, stack.bands, pairs[name]) for name in wanted}
        for t, date in enumerate(stack.dates):
            for b, band in enumerate(stack.bands):
                out[f"{sensor}/{date.isoformat()}/{band}"] = planes[t, b]
            for name in wanted:
                out[f"{sensor}/{date.isoformat()}/{name}"] = indices[name][t]

    scaled, projection = ref_viirs(tile.sensors["viirs"].data, c)
    add("viirs", scaled)
    if c.viirs_max_projection:
        for b, band in enumerate(tile.sensors["viirs"].bands):
            out[f"viirs/max/{band}"] = projection[b]
    add("sentinel1", ref_sentinel1(tile.sensors["sentinel1"].data, c))
    add("sentinel2", ref_optical(tile.sensors["sentinel2"].data, c.s2_clip_quantiles, c.s2_gamma))
    landsat = tile.sensors["landsat8"].data
    add("landsat8", ref_optical(landsat, c.landsat_clip_quantiles, c.landsat_gamma))
    return out


def assert_matches(stack: np.ndarray, names: list[str], expected: dict[str, np.ndarray]) -> None:
    assert names == list(expected)
    assert stack.shape[0] == len(names)
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
