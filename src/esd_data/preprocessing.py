"""Per-sensor preprocessing of a raw tile into one float32 (channel, H, W) stack.

Two recipes (`PreprocessConfig.recipe`). `course`, the default, gives values in [0, 1] and
follows the course's reference recipe (DATA.md) with its defects fixed: min–max scaling of a
constant band gives zeros instead of dividing by zero, the Sentinel-1 log is taken of values
floored at `s1_log_floor` (no −inf), the Sentinel-1 blur runs on each 2-D band separately,
and non-finite pixels are filled before anything else.

Optionally (`spectral_indices`), normalised-difference indices are appended to Sentinel-2 and
Landsat 8 as derived channels: NDVI, NDBI and NDWI, with the band pairs of
`sensors.SPECTRAL_INDICES`. Each is (a − b) / (a + b) of the RAW values of one date, after the
non-finite fill and before any clip or scaling: Sentinel-2 reflectance × 10 000, and Landsat 8
L1TP DNs as the data provide them (quantised radiance, not reflectance: the index is one of
DNs, which differs from a reflectance-based index by the bands' gains and offsets). A zero
denominator gives the index 0 (never NaN), the ratio is clipped to [−1, 1] (which only acts on
negative inputs), and it is stored as (index + 1) / 2, in [0, 1] like every other channel
(a zero denominator is thus stored as 0.5, the neutral middle).

`physical` keeps physical units and rescales nothing per tile, so a dark tile stays darker
than a bright one (what a pretrained remote-sensing encoder, and any comparison across tiles,
needs): Sentinel-1 backscatter in dB (10·log10 of the backscatter floored at `s1_log_floor`),
Sentinel-2 reflectance × 10 000 and Landsat 8 DNs as stored (Landsat capped at 65 504, the
largest float16 of the cache), VIIRS radiance as stored and its maximum over the dates,
spectral indices as (a − b) / (a + b) in [−1, 1]. Non-finite pixels are filled as in the
course recipe; the clip quantiles, gammas and the Sentinel-1 blur do not apply.

Channel order: sensors in `SENSORS` order; within a sensor, date-major in chronological order;
within a date the sensor's bands in natural order, then that date's indices (in
`SPECTRAL_INDICES` order: NDVI, NDBI, NDWI), so `sentinel2/2020-08-11/NDBI` directly follows
`sentinel2/2020-08-11/B12`; the VIIRS maximum projection follows the VIIRS dates. Without
indices the stack is exactly the 99 channels of the recipe.

With `valid_masks`, in either recipe, each sensor's channels are followed by one validity
channel per date, `sentinel2/2020-08-11/valid`: 1 where every band of that date has data, 0
where one had none and was filled (`src.esd_data.nodata`; Sentinel-2's 60 m B01 and B09 do not
count, `VALIDITY_IGNORES`). A model with a notion of missing
input (Galileo) masks those pixels instead of reading the filled values; to any other model
they are input channels like the rest. (The course recipe's Sentinel-1 blur spreads a filled
value into its valid neighbours; Galileo takes the physical recipe, which does not blur.)
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from scipy import ndimage

from src.esd_data.reader import RawTile, SensorStack
from src.esd_data.sensors import MAX_PROJECTION_DATE, SENSORS, SPECTRAL_INDICES, VALID_BAND


@dataclass(frozen=True)
class PreprocessConfig:
    """Every preprocessing parameter; part of the processed cache's fingerprint."""

    recipe: Literal["course", "physical"] = "course"
    """`course`: values in [0, 1], rescaled per tile; `physical`: physical units (module)."""
    s1_log_floor: float = 1e-4
    s1_clip_quantiles: tuple[float, float] = (0.01, 0.99)
    s1_blur_sigma: float = 1.0
    s2_clip_quantiles: tuple[float, float] = (0.10, 0.90)
    s2_gamma: float = 2.2
    landsat_clip_quantiles: tuple[float, float] = (0.05, 0.95)
    landsat_gamma: float = 2.2
    viirs_clip_quantiles: tuple[float, float] = (0.05, 0.95)
    viirs_max_projection: bool = True
    spectral_indices: tuple[str, ...] = ()
    """Indices appended per date to Sentinel-2 and Landsat 8 (`NDVI`, `NDBI`, `NDWI`); kept
    in `SPECTRAL_INDICES` order whatever the order given, so a set gives one cache."""
    valid_masks: bool = False
    """A validity channel per sensor and date (module docstring)."""

    def __post_init__(self) -> None:
        names = self.spectral_indices
        names = (names,) if isinstance(names, str) else names
        try:
            names = tuple(names)
        except TypeError:
            raise ValueError(
                f"spectral_indices must be a list of index names, got {names!r}"
            ) from None
        unknown = [
            name for name in names if not (isinstance(name, str) and name in SPECTRAL_INDICES)
        ]
        if unknown:
            raise ValueError(
                f"unknown spectral index(es) {', '.join(map(repr, unknown))}: known indices are "
                f"{', '.join(SPECTRAL_INDICES)}"
            )
        object.__setattr__(
            self, "spectral_indices", tuple(name for name in SPECTRAL_INDICES if name in names)
        )
        for field in dataclasses.fields(self):
            if field.name.endswith("_quantiles"):
                lo, hi = getattr(self, field.name)
                if not 0.0 <= lo < hi <= 1.0:
                    raise ValueError(
                        f"{field.name} must satisfy 0 <= low < high <= 1, got {lo, hi}"
                    )
        if self.recipe not in ("course", "physical"):
            raise ValueError(f"recipe must be course or physical, got {self.recipe!r}")
        if self.s1_log_floor <= 0:
            raise ValueError(f"s1_log_floor must be positive, got {self.s1_log_floor}")
        if self.s2_gamma <= 0 or self.landsat_gamma <= 0:
            raise ValueError("gamma values must be positive")
        if not isinstance(self.valid_masks, bool):
            raise ValueError(f"valid_masks must be true or false, got {self.valid_masks!r}")
        if self.s1_blur_sigma < 0:
            raise ValueError(f"s1_blur_sigma must be >= 0, got {self.s1_blur_sigma}")

    def to_dict(self) -> dict[str, object]:
        """JSON-ready parameters (the default `course` recipe and no `valid_masks` unnamed, so
        that the folders and checkpoints made before they existed keep their identity)."""
        values = {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }
        if values["recipe"] == "course":
            del values["recipe"]
        if not values["valid_masks"]:
            del values["valid_masks"]
        return values

    @classmethod
    def from_dict(cls, values: dict[str, object]) -> PreprocessConfig:
        """Inverse of `to_dict`."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def fill_non_finite(stack: np.ndarray) -> np.ndarray:
    """Replace NaN/inf pixels of each (date, band) plane by the median of its finite pixels."""
    if stack.dtype.kind != "f":
        return stack
    bad = ~np.isfinite(stack)
    if not bad.any():
        return stack
    for index in zip(*np.nonzero(bad.any(axis=(-2, -1))), strict=True):
        plane, mask = stack[index], bad[index]
        finite = plane[~mask]
        plane[mask] = np.median(finite) if finite.size else 0.0
    return stack


def _integer_quantiles(x: np.ndarray, quantiles: tuple[float, float]) -> np.ndarray:
    """np.quantile's default (linear) quantiles of small unsigned integers, from a histogram."""
    counts = np.cumsum(np.bincount(x.ravel()))
    positions = (x.size - 1) * np.asarray(quantiles)
    below = np.floor(positions)
    ranks = np.stack([below, below + 1]).clip(max=x.size - 1).astype(np.int64)
    values = np.searchsorted(counts, ranks, side="right").astype(np.float64)
    return values[0] + (positions - below) * (values[1] - values[0])


def _as_small_integers(x: np.ndarray) -> np.ndarray | None:
    """`x` as uint16 when every value is an integer in 0..65535 (e.g. Landsat DNs), else None."""
    if x.dtype.kind == "u" and x.dtype.itemsize <= 2:
        return x
    if x.dtype.kind != "f" or x.min() < 0 or x.max() > np.iinfo(np.uint16).max:
        return None
    as_int = x.astype(np.uint16)
    return as_int if np.array_equal(as_int, x) else None


def quantiles_over(
    x: np.ndarray, quantiles: tuple[float, float], axis: tuple[int, ...]
) -> np.ndarray:
    """Low/high quantiles of `x` over `axis`, shaped (2, *x.shape with axis kept as 1).

    Data that are small non-negative integers (Sentinel-2, VIIRS, Landsat 8 DNs) use an exact
    histogram, several times faster than the partition that np.quantile runs; other data
    use np.quantile. Both give np.quantile's default (linear) result.
    """
    integers = _as_small_integers(x)
    if integers is None:
        return np.quantile(x, quantiles, axis=axis, keepdims=True)
    kept = [d for d in range(x.ndim) if d not in axis]
    moved = np.moveaxis(integers, kept, list(range(len(kept))))
    groups = moved.reshape(int(np.prod(moved.shape[: len(kept)])), -1)
    result = np.stack([_integer_quantiles(group, quantiles) for group in groups], axis=-1)
    shape = [1 if d in axis else x.shape[d] for d in range(x.ndim)]
    return result.reshape(2, *shape)


def clip_to_quantiles(
    data: np.ndarray, quantiles: tuple[float, float], axis: tuple[int, ...]
) -> np.ndarray:
    """`data` as float32, clipped to its low/high quantiles computed over `axis`."""
    low, high = quantiles_over(data, quantiles, axis)
    x = data.astype(np.float32)
    np.clip(x, low.astype(np.float32), high.astype(np.float32), out=x)
    return x


def minmax_scale(x: np.ndarray, axis: tuple[int, ...]) -> None:
    """Scale `x` in place to [0, 1] over `axis`; constant slices become 0, not NaN."""
    low = x.min(axis=axis, keepdims=True)
    span = x.max(axis=axis, keepdims=True) - low
    x -= low
    np.divide(x, span, out=x, where=span > 0)
    x[np.broadcast_to(span == 0, x.shape)] = 0.0


def channel_names(stack: SensorStack) -> list[str]:
    """`sensor/YYYY-MM-DD/band` for each (date, band) of a stack, date-major."""
    return [f"{stack.sensor}/{d.isoformat()}/{b}" for d in stack.dates for b in stack.bands]


def _store(out: np.ndarray, x: np.ndarray) -> None:
    """Write float32 channels (…, H, W) into `out` (C, H, W) of any float dtype.

    torch converts float32 to float16 several times faster than numpy does.
    """
    torch.from_numpy(out).copy_(torch.from_numpy(np.ascontiguousarray(x)).reshape(out.shape))


def preprocess_sentinel1(stack: SensorStack, config: PreprocessConfig, out: np.ndarray) -> None:
    """log10 of floored backscatter, clip, 2-D blur and min–max, each per (date, band)."""
    x = np.log10(np.maximum(fill_non_finite(stack.data), config.s1_log_floor, dtype=np.float32))
    x = clip_to_quantiles(x, config.s1_clip_quantiles, axis=(2, 3))
    if config.s1_blur_sigma > 0:
        sigma = (0, 0, config.s1_blur_sigma, config.s1_blur_sigma)
        x = ndimage.gaussian_filter(x, sigma=sigma, mode="reflect", output=np.float32)
    minmax_scale(x, axis=(2, 3))
    _store(out, x)


def sensor_indices(sensor: str, config: PreprocessConfig) -> tuple[str, ...]:
    """The requested spectral indices that are defined for `sensor`, in table order."""
    return tuple(name for name in config.spectral_indices if sensor in SPECTRAL_INDICES[name])


def store_spectral_indices(
    data: np.ndarray, bands: tuple[str, ...], sensor: str, indices: tuple[str, ...],
    out: np.ndarray, to_unit: bool = True,
) -> None:  # fmt: skip
    """Write (a − b) / (a + b) of each date's raw bands, mapped to [0, 1], into `out`.

    `data` is the (date, band, H, W) raw stack (non-finite pixels already filled) and `out`
    a (date, len(indices), H, W) view of the tile stack; each plane is computed in float32
    (exact sums and differences of the integer data) and written straight into its slice.
    A zero denominator gives the index 0, the ratio is clipped to [−1, 1], then, `to_unit`,
    mapped to [0, 1] as (x + 1) / 2.
    """
    for k, name in enumerate(indices):
        first, second = (bands.index(band) for band in SPECTRAL_INDICES[name][sensor])
        for date in range(data.shape[0]):
            a = torch.from_numpy(data[date, first]).float()
            b = torch.from_numpy(data[date, second]).float()
            total = a + b
            ratio = torch.where(total != 0, (a - b) / total, 0.0)
            ratio.clamp_(-1.0, 1.0)
            if to_unit:
                ratio.add_(1.0).mul_(0.5)
            torch.from_numpy(out[date, k]).copy_(ratio)


def _preprocess_optical(
    stack: SensorStack,
    quantiles: tuple[float, float],
    gamma: float,
    out: np.ndarray,
    indices: tuple[str, ...] = (),
) -> None:
    """Clip per band over all dates, gamma-correct (x^(1/gamma)), min–max per band; then the
    date's spectral `indices` from the raw (filled) values, after each date's bands in `out`.

    Integer data (reflectances, DNs) go through one lookup table per band, which does the
    three steps at once (the clipped band's minimum and maximum are its clip quantiles) and
    writes straight into `out`.
    """
    data = fill_non_finite(stack.data)
    dates, bands = data.shape[:2]
    per_date = np.reshape(out, (dates, bands + len(indices), *out.shape[1:]), copy=False)
    if indices:
        store_spectral_indices(data, stack.bands, stack.sensor, indices, per_date[:, bands:])
    out = per_date[:, :bands]
    integers = _as_small_integers(data)
    if integers is None:
        x = clip_to_quantiles(data, quantiles, axis=(0, 2, 3))
        np.power(x, 1.0 / gamma, out=x)
        minmax_scale(x, axis=(0, 2, 3))
        _store(out, x)
        return
    low, high = quantiles_over(integers, quantiles, axis=(0, 2, 3))
    levels = np.arange(int(integers.max()) + 1, dtype=np.float64)
    for band in range(bands):
        lo, hi = low[0, band, 0, 0], high[0, band, 0, 0]
        corrected = np.clip(levels, lo, hi) ** (1 / gamma)
        # The table's own extremes (not lo ** (1 / gamma), which can differ by one ulp), so
        # the clipped ends map to exactly 0 and 1.
        scaled_lo, scaled_hi = corrected.min(), corrected.max()
        table = np.zeros_like(levels)
        if scaled_hi > scaled_lo:
            table = (corrected - scaled_lo) / (scaled_hi - scaled_lo)
        table = table.astype(out.dtype)
        for date in range(dates):
            np.take(table, integers[date, band], out=out[date, band])


def preprocess_sentinel2(stack: SensorStack, config: PreprocessConfig, out: np.ndarray) -> None:
    """Sentinel-2 reflectances: the optical recipe with the Sentinel-2 quantiles and gamma."""
    _preprocess_optical(
        stack, config.s2_clip_quantiles, config.s2_gamma, out, sensor_indices(stack.sensor, config)
    )


def preprocess_landsat8(stack: SensorStack, config: PreprocessConfig, out: np.ndarray) -> None:
    """Landsat 8 DNs: the optical recipe with the Landsat quantiles and gamma."""
    _preprocess_optical(
        stack,
        config.landsat_clip_quantiles,
        config.landsat_gamma,
        out,
        sensor_indices(stack.sensor, config),
    )


def preprocess_viirs(stack: SensorStack, config: PreprocessConfig, out: np.ndarray) -> None:
    """Clip and min–max per date; then, optionally, the scaled maximum over the clipped dates."""
    x = clip_to_quantiles(fill_non_finite(stack.data), config.viirs_clip_quantiles, axis=(1, 2, 3))
    dates = len(stack.dates) * len(stack.bands)
    if config.viirs_max_projection:
        projection = x.max(axis=0)
        minmax_scale(projection, axis=(1, 2))
        _store(out[dates:], projection)
    minmax_scale(x, axis=(1, 2, 3))
    _store(out[:dates], x)


FLOAT16_MAX = float(np.finfo(np.float16).max)


class CappedWarning(UserWarning):
    """Pixels of a raster (`file`) above what the float16 cache holds, stored as its maximum
    (`count` of them)."""

    def __init__(self, message: str, file: str = "", count: int = 0) -> None:
        super().__init__(message)
        self.file, self.count = file, count


def cap_to_cache(stack: SensorStack, x: np.ndarray) -> np.ndarray:
    """`x` (date, band, H, W) capped at the float16 cache's maximum (65 504, above which it
    would store inf), with a warning per file counting the capped pixels."""
    above = (x > FLOAT16_MAX).sum(axis=(-2, -1))
    for t, b in zip(*np.nonzero(above), strict=True):
        file, count = stack.files[t][b], int(above[t, b])
        message = (
            f"{file}: {count} pixel(s) above {FLOAT16_MAX:.0f}, the float16 cache's maximum, "
            f"stored as {FLOAT16_MAX:.0f}"
        )
        warnings.warn(CappedWarning(message, file, count), stacklevel=3)
    return np.minimum(x, FLOAT16_MAX, dtype=np.float32)


def physical_sentinel1(stack: SensorStack, config: PreprocessConfig, out: np.ndarray) -> None:
    """Backscatter in dB: 10·log10 of the filled backscatter floored at `s1_log_floor`."""
    floored = np.maximum(fill_non_finite(stack.data), config.s1_log_floor, dtype=np.float32)
    _store(out, 10.0 * np.log10(floored))


def _physical_optical(stack: SensorStack, config: PreprocessConfig, out: np.ndarray) -> None:
    """The values as stored (capped at the float16 maximum), each date's indices after it."""
    data = fill_non_finite(stack.data)
    indices = sensor_indices(stack.sensor, config)
    dates, bands = data.shape[:2]
    per_date = np.reshape(out, (dates, bands + len(indices), *out.shape[1:]), copy=False)
    if indices:
        store_spectral_indices(data, stack.bands, stack.sensor, indices, per_date[:, bands:],
                               to_unit=False)  # fmt: skip
    _store(per_date[:, :bands], cap_to_cache(stack, data))


def physical_viirs(stack: SensorStack, config: PreprocessConfig, out: np.ndarray) -> None:
    """Radiance as stored (capped at the float16 maximum); then, optionally, its maximum over
    the dates."""
    x = cap_to_cache(stack, fill_non_finite(stack.data).astype(np.float32))
    dates = len(stack.dates) * len(stack.bands)
    if config.viirs_max_projection:
        _store(out[dates:], x.max(axis=0))
    _store(out[:dates], x)


def sensor_channel_names(stack: SensorStack, config: PreprocessConfig) -> list[str]:
    """The names of the channels a sensor's stack preprocesses into (module docstring: the
    requested spectral indices follow each date's bands)."""
    bands = (*stack.bands, *sensor_indices(stack.sensor, config))
    names = [f"{stack.sensor}/{d.isoformat()}/{b}" for d in stack.dates for b in bands]
    if stack.sensor == "viirs" and config.viirs_max_projection:
        names += [f"viirs/{MAX_PROJECTION_DATE}/{band}" for band in stack.bands]
    if config.valid_masks:
        names += [f"{stack.sensor}/{d.isoformat()}/{VALID_BAND}" for d in stack.dates]
    return names


def store_valid_masks(stack: SensorStack, out: np.ndarray) -> None:
    """One (H, W) validity channel per date: 0 where a band of the date had no data, else 1."""
    if stack.missing is None:
        out[:] = 1
    else:
        np.logical_not(stack.missing, out=out, casting="unsafe")


Preprocessor = Callable[[SensorStack, PreprocessConfig, np.ndarray], None]
"""Writes a sensor's preprocessed channels into the given (C, H, W) slice of the tile stack."""

PREPROCESSORS: dict[str, dict[str, Preprocessor]] = {
    "course": {
        "viirs": preprocess_viirs,
        "sentinel1": preprocess_sentinel1,
        "sentinel2": preprocess_sentinel2,
        "landsat8": preprocess_landsat8,
    },
    "physical": {
        "viirs": physical_viirs,
        "sentinel1": physical_sentinel1,
        "sentinel2": _physical_optical,
        "landsat8": _physical_optical,
    },
}
"""Per recipe, each sensor's preprocessor."""


def preprocess_tile(
    tile: RawTile, config: PreprocessConfig, dtype: np.dtype | type = np.float32
) -> tuple[np.ndarray, list[str]]:
    """Preprocess every sensor of a tile into one (C, H, W) stack of `dtype` and channel names.

    Channels come sensor by sensor in `SENSORS` order (VIIRS, Sentinel-1, Sentinel-2,
    Landsat 8), each date-major in chronological date and natural band order; the VIIRS
    maximum projection, when enabled, follows the VIIRS dates as `viirs/max/DNB`. Requested
    `spectral_indices` are extra bands of each Sentinel-2 / Landsat 8 date, after its bands
    (`…/2020-08-11/B12`, `…/2020-08-11/NDVI`, `…/2020-08-11/NDBI`, `…/2020-08-16/B01`), each
    computed from the raw values and written straight into its slice of the stack; with
    `valid_masks`, each sensor's `sensor/date/valid` channels follow its other channels.
    """
    names = {spec.name: sensor_channel_names(tile.sensors[spec.name], config) for spec in SENSORS}
    stack = np.empty((sum(map(len, names.values())), *tile.shape), dtype=dtype)
    start = 0
    for spec in SENSORS:
        sensor = tile.sensors[spec.name]
        count = len(names[spec.name])
        valid = len(sensor.dates) if config.valid_masks else 0
        preprocess = PREPROCESSORS[config.recipe][spec.name]
        preprocess(sensor, config, stack[start : start + count - valid])
        if valid:
            store_valid_masks(sensor, stack[start + count - valid : start + count])
        start += count
    return stack, [name for sensor_names in names.values() for name in sensor_names]
