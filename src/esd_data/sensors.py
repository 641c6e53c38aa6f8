"""The four DFC2021 Track DSE sensors: file-name patterns, dates, bands and dtypes.

One `SensorSpec` per sensor is the single source of truth for how a raw file is named, which
bands a date must have and in which order bands and dates are stacked. The reader, the
preprocessing and the synthetic data generator all use it.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SensorSpec:
    """How one sensor's single-band rasters are named and stacked."""

    name: str
    pattern: re.Pattern[str]
    date_format: str
    file_template: str
    bands: tuple[str, ...]
    n_dates: int
    dtype: np.dtype
    reference_dates: tuple[str, ...]
    """ISO dates of the contest's files (Tile1), used by the synthetic generator."""

    def parse(self, file_name: str) -> tuple[dt.date, str] | None:
        """Return (date, band) when `file_name` belongs to this sensor, else None."""
        match = self.pattern.fullmatch(file_name)
        if match is None:
            return None
        date = dt.datetime.strptime(match["date"], self.date_format).date()
        return date, match.groupdict().get("band") or self.bands[0]

    def file_name(self, date: dt.date, band: str) -> str:
        """The contest's file name for one (date, band) raster."""
        return self.file_template.format(date=date, band=band)


VIIRS = SensorSpec(
    name="viirs",
    pattern=re.compile(r"DNB_VNP46A1_A(?P<date>\d{7})\.tif"),
    date_format="%Y%j",
    file_template="DNB_VNP46A1_A{date:%Y%j}.tif",
    bands=("DNB",),
    n_dates=9,
    dtype=np.dtype(np.uint16),
    reference_dates=(
        "2020-08-08",
        "2020-08-11",
        "2020-08-12",
        "2020-08-13",
        "2020-08-14",
        "2020-08-18",
        "2020-08-22",
        "2020-08-23",
        "2020-08-24",
    ),
)
SENTINEL1 = SensorSpec(
    name="sentinel1",
    pattern=re.compile(r"S1A_IW_GRDH_(?P<date>\d{8})_(?P<band>VV|VH)\.tif"),
    date_format="%Y%m%d",
    file_template="S1A_IW_GRDH_{date:%Y%m%d}_{band}.tif",
    bands=("VV", "VH"),
    n_dates=4,
    dtype=np.dtype(np.float32),
    reference_dates=("2020-07-23", "2020-08-04", "2020-08-16", "2020-08-28"),
)
SENTINEL2 = SensorSpec(
    name="sentinel2",
    pattern=re.compile(r"L2A_(?P<date>\d{8})_(?P<band>B\d\d|B8A)\.tif"),
    date_format="%Y%m%d",
    file_template="L2A_{date:%Y%m%d}_{band}.tif",
    bands=("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12"),
    n_dates=4,
    dtype=np.dtype(np.uint16),
    reference_dates=("2020-08-11", "2020-08-16", "2020-08-26", "2020-08-31"),
)
LANDSAT8 = SensorSpec(
    name="landsat8",
    pattern=re.compile(r"LC08_L1TP_(?P<date>\d{4}-\d\d-\d\d)_(?P<band>B\d{1,2})\.tif"),
    date_format="%Y-%m-%d",
    file_template="LC08_L1TP_{date:%Y-%m-%d}_{band}.tif",
    bands=tuple(f"B{i}" for i in range(1, 12)),
    n_dates=3,
    dtype=np.dtype(np.float32),
    reference_dates=("2020-07-29", "2020-08-14", "2020-08-30"),
)

SENSORS: tuple[SensorSpec, ...] = (VIIRS, SENTINEL1, SENTINEL2, LANDSAT8)
SENSORS_BY_NAME: dict[str, SensorSpec] = {spec.name: spec for spec in SENSORS}

SPECTRAL_INDICES: dict[str, dict[str, tuple[str, str]]] = {
    # index: sensor → (a, b), the index being (a − b) / (a + b) of the raw values
    "NDVI": {"sentinel2": ("B08", "B04"), "landsat8": ("B5", "B4")},  # (NIR − Red)
    "NDBI": {"sentinel2": ("B11", "B08"), "landsat8": ("B6", "B5")},  # (SWIR1 − NIR)
    "NDWI": {"sentinel2": ("B03", "B08"), "landsat8": ("B3", "B5")},  # (Green − NIR), McFeeters
}
"""Normalised-difference indices that the preprocessing can append as derived channels
(`PreprocessConfig.spectral_indices`): NDVI (vegetation), NDBI (built-up, the one closest to
"settlement") and NDWI (open water, McFeeters 1996). Bands: Sentinel-2 Green B03, Red B04, NIR
B08, SWIR1 B11; Landsat 8 Green B3, Red B4, NIR B5, SWIR1 B6. Each index is stored as a band
of its date: `sentinel2/2020-08-11/NDBI`."""


def spectral_index_names(sensor: str) -> tuple[str, ...]:
    """The spectral indices defined for a sensor, in table order (none for VIIRS, Sentinel-1)."""
    return tuple(name for name, bands in SPECTRAL_INDICES.items() if sensor in bands)


VALID_BAND = "valid"
"""Band name of a date's validity channel (`PreprocessConfig.valid_masks`): 1 where every band
of that date has data, 0 where one had none (`src.esd_data.nodata`) and was filled."""

MAX_PROJECTION_DATE = "max"
"""Date part of the name of the VIIRS maximum-projection channel: `viirs/max/DNB`."""

GROUND_TRUTH_FILE = "groundTruth.tif"
GROUND_TRUTH_RGB_FILE = "groundTruthRGB.png"
LABEL_GRID = 16
"""The ground truth of every tile is a 16×16 grid of label cells."""
N_CLASSES = 4
CLASS_NAMES = (
    "settlement, no electricity",
    "no settlement, no electricity",
    "settlement, electricity",
    "no settlement, electricity",
)
CLASS_COLOURS = ("#ff0000", "#0000ff", "#ffff00", "#b266ff")
"""Colours of labels 1..4 in the contest's groundTruthRGB.png."""


def identify(file_name: str) -> tuple[SensorSpec, dt.date, str] | None:
    """Return (sensor, date, band) for a raster file name, or None for an unknown name."""
    for spec in SENSORS:
        parsed = spec.parse(file_name)
        if parsed is not None:
            return spec, parsed[0], parsed[1]
    return None


def reference_channel_names() -> list[str]:
    """The 99 channel names of a contest tile prepared with the default preprocessing
    (`sensor/date/band` for the contest's dates, then `viirs/max/DNB` after the VIIRS dates),
    for building models and benchmarks without data."""
    names = []
    for spec in SENSORS:
        names += [
            f"{spec.name}/{date}/{band}" for date in spec.reference_dates for band in spec.bands
        ]
        if spec.name == VIIRS.name:
            names += [f"viirs/{MAX_PROJECTION_DATE}/{band}" for band in spec.bands]
    return names


CHANNEL_GROUPINGS = ("sensor", "date", "band")
"""How channels (`sensor/date/band`) are grouped: by sensor, by sensor and date, or by
sensor and band across its dates."""


def group_channels(channels: list[str], grouping: str) -> dict[str, list[str]]:
    """Channel names grouped as `grouping` says (`viirs`, `viirs/2020-08-08` or
    `sentinel2/B04`), groups and their members in the order of `channels`."""
    if grouping not in CHANNEL_GROUPINGS:
        raise ValueError(f"unknown grouping {grouping!r}: use {', '.join(CHANNEL_GROUPINGS)}")
    groups: dict[str, list[str]] = {}
    for name in channels:
        sensor, date, band = name.split("/")
        key = {"sensor": sensor, "date": f"{sensor}/{date}", "band": f"{sensor}/{band}"}[grouping]
        groups.setdefault(key, []).append(name)
    return groups


def is_source_of(channel: str, derived: str) -> bool:
    """Whether the channel `derived` (`sensor/date/band`) is computed from `channel`: the
    maximum projection `viirs/max/DNB` from every VIIRS date, a spectral index from the two
    bands of its date."""
    sensor, date, band = derived.split("/")
    source_sensor, source_date, source_band = channel.split("/")
    if source_sensor != sensor or channel == derived:
        return False
    if date == MAX_PROJECTION_DATE:
        return source_band == band and source_date != MAX_PROJECTION_DATE
    pair = SPECTRAL_INDICES.get(band, {}).get(sensor)
    return pair is not None and source_date == date and source_band in pair


def derived_followers(members: list[str], channels: list[str]) -> list[str]:
    """The derived channels of `channels`, outside `members`, computed from one of them: what
    must be left out or permuted with `members` so that their information goes with them."""
    chosen = set(members)
    return [c for c in channels if c not in chosen and any(is_source_of(m, c) for m in chosen)]
