"""No-data by product: which raw values are fills, not measurements, and how they are treated.

Every product of the contest marks missing pixels with a value of its own (DATA.md):

| sensor | product | no-data | why |
|---|---|---|---|
| sentinel2 | Sentinel-2 L2A, uint16 reflectance × 10 000 | 0 | the L2A no-data value |
| landsat8 | Landsat 8 L1TP, float32 holding uint16 DNs | ≤ 0 | fill outside the footprint (0) |
| viirs | VIIRS VNP46A1 DNB, uint16 | 65 535 | the Black Marble fill value |
| sentinel1 | Sentinel-1 GRD, float32 linear backscatter | ≤ 0 | no return; its log is −inf/NaN |

and any non-finite value (NaN, ±inf) of a float raster. Such pixels are no data in both
recipes: `fill_no_data` replaces each by the median of the valid pixels of its (date, band)
plane (0 when the plane has none), as non-finite pixels always were, and returns how many it
replaced per raster, which the reader reports per file, and where: a pixel of a date is
missing when a band of that date has no data there (the `valid` channels of
`PreprocessConfig.valid_masks`, which a model with a notion of missing input masks with
instead of reading the filled values), except the bands of `VALIDITY_IGNORES`. Saturated
values (a Landsat 8 DN of 65 535, a bright Sentinel-2 pixel) are measurements and are kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class NoData:
    """A product's no-data rule: a fill value, or every non-positive value."""

    product: str
    value: float | None = None
    non_positive: bool = False

    def mask(self, plane: np.ndarray) -> np.ndarray:
        """The no-data pixels of one raster (non-finite ones included)."""
        bad = ~np.isfinite(plane) if plane.dtype.kind == "f" else np.zeros(plane.shape, bool)
        if self.value is not None:
            bad |= plane == self.value
        if self.non_positive:
            bad |= plane <= 0
        return bad

    def describe(self) -> str:
        what = "non-positive" if self.non_positive else f"{self.value:g}"
        return f"the {self.product} no-data value ({what})"


NO_DATA_RULES = 1
"""The version of these rules, part of every cached tile's fingerprint: a tile prepared under
others (or before there were any) is prepared again."""

VALIDITY_IGNORES = {"sentinel2": ("B01", "B09")}
"""Bands whose no-data does not make a pixel of their date missing (they are filled, and
counted, all the same): Sentinel-2's 60 m atmospheric bands, whose no-data runs along a wider
scene edge once resampled to 10 m, where the 10 m and 20 m bands have data (Tile1: 193 pixels
per date, every other band measured there)."""

NO_DATA = {
    "sentinel2": NoData("Sentinel-2 L2A", value=0),
    # a DN is never negative either: below 0 is no measurement, like the fill value
    "landsat8": NoData("Landsat 8 L1", non_positive=True),
    "viirs": NoData("VNP46A1", value=65535),
    "sentinel1": NoData("Sentinel-1 GRD", non_positive=True),
}
"""Each sensor's no-data rule (see the module's table)."""


@dataclass(frozen=True)
class FilledNoData:
    """What `fill_no_data` replaced in a (date, band, H, W) stack."""

    counts: np.ndarray
    """(2, date, band): pixels replaced per raster, by kind (no-data value, non-finite)."""
    missing: np.ndarray
    """(date, H, W) bool: the pixels where a band of the date (bar `VALIDITY_IGNORES`) had no
    data."""


def fill_no_data(sensor: str, data: np.ndarray, bands: Sequence[str]) -> FilledNoData:
    """Replace, in place, the no-data pixels of a (date, band, H, W) stack of the sensor's
    `bands` by the median of the valid pixels of their plane (0 without any; rounded for an
    integer raster); return how many were replaced per raster and where, per date (bands of
    `VALIDITY_IGNORES` aside)."""
    rule = NO_DATA[sensor]
    counted = [band not in VALIDITY_IGNORES.get(sensor, ()) for band in bands]
    counts = np.zeros((2, *data.shape[:2]), dtype=np.int64)
    missing = np.zeros((data.shape[0], *data.shape[2:]), dtype=bool)
    for index in np.ndindex(*data.shape[:2]):
        plane = data[index]
        bad = rule.mask(plane)
        if not bad.any():
            continue
        if counted[index[1]]:
            missing[index[0]] |= bad
        non_finite = ~np.isfinite(plane) if plane.dtype.kind == "f" else np.zeros_like(bad)
        counts[1][index] = int(non_finite.sum())
        counts[0][index] = int(bad.sum()) - counts[1][index]
        valid = plane[~bad]
        fill = float(np.median(valid)) if valid.size else 0.0
        plane[bad] = np.round(fill) if plane.dtype.kind in "ui" else fill
    return FilledNoData(counts, missing)
