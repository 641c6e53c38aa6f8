"""The processed data set's manifest: split, channels, geometry, normalisation, fingerprint."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from src.atomic import write_json
from src.esd_data.sensors import (
    MAX_PROJECTION_DATE,
    SENSORS_BY_NAME,
    SPECTRAL_INDICES,
    spectral_index_names,
)

MANIFEST_FILE = "manifest.json"
FORMAT_VERSION = 3

BandSelection = dict[str, list[str] | None] | list[str]
"""Sensor name → band, date or `date/band` names to keep (None keeps all of that sensor),
or a list of full channel names (`sentinel2/2020-08-11/B04`)."""


def check_band_selection(bands: object) -> None:
    """Check a band selection's shape and names against the sensor specs (no data needed).

    Each value must be None or a list of band names of that sensor (for Sentinel-2 and
    Landsat 8 also the spectral indices NDVI, NDBI, NDWI, which exist when the data were
    prepared with `spectral_indices`), dates (YYYY-MM-DD, or `max` for the VIIRS projection)
    or `date/band`; ValueError lists every problem.
    """
    if bands is None:
        return
    if not isinstance(bands, dict) or not bands:
        raise ValueError(f"bands must be a mapping of sensor to band names, got {bands!r}")
    problems = []
    for sensor, names in bands.items():
        spec = SENSORS_BY_NAME.get(sensor)
        if spec is None:
            problems.append(f"unknown sensor {sensor!r} (use {', '.join(SENSORS_BY_NAME)})")
            continue
        if names is None:
            continue
        if not isinstance(names, list) or not names:
            problems.append(f"{sensor}: expected a list of names or None, got {names!r}")
            continue
        known = (*spec.bands, *spectral_index_names(sensor))
        for name in names:
            *date, band = str(name).split("/")
            if not date and _is_date(band, sensor):
                continue
            if band not in known or (date and not _is_date(date[0], sensor)):
                problems.append(
                    f"{sensor} has no band {name!r} (bands: {', '.join(known)}; or a date "
                    f"YYYY-MM-DD, or date/band)"
                )
    if problems:
        raise ValueError("invalid band selection: " + "; ".join(problems))


def _is_date(text: str, sensor: str) -> bool:
    if sensor == "viirs" and text == MAX_PROJECTION_DATE:
        return True
    try:
        dt.date.fromisoformat(text)
    except ValueError:
        return False
    return True


PURPOSES = ("training", "evaluation")
"""A training folder is split into train/val/test; an evaluation folder (prepared by
`scripts.evaluate --raw_dir`) has every tile in `predict` and is never trained on."""


@dataclass(frozen=True)
class TileRecord:
    """Where one parent tile's processed arrays are, relative to the processed folder, with
    the image file's size in bytes (checked before use), the fingerprint of its raw files and
    parameters, and the SHA-256 of its processed pixels (the same data gives the same hash on
    any machine)."""

    image: str
    labels: str | None
    fingerprint: str
    image_bytes: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    """Everything a dataset needs to serve a processed folder, as recorded by `prepare`."""

    raw_dir: str
    seed: int
    val_fraction: float
    test_fraction: float
    split: dict[str, list[str]]
    channels: list[str]
    preprocessing: dict[str, object]
    tile_shape: tuple[int, int]
    cell_px: int
    tile_size_gt: int
    mean: list[float]
    std: list[float]
    fingerprint: str
    tiles: dict[str, TileRecord]
    purpose: str = "training"
    format_version: int = FORMAT_VERSION

    def save(self, processed_dir: Path) -> None:
        """Atomically write `manifest.json` into `processed_dir`."""
        write_json(Path(processed_dir) / MANIFEST_FILE, asdict(self))

    @classmethod
    def load(cls, processed_dir: Path) -> Manifest:
        """Read `processed_dir/manifest.json`, with a clear error when it is missing or stale."""
        path = Path(processed_dir) / MANIFEST_FILE
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} does not exist: prepare the data first with "
                f"`python -m scripts.prepare --raw_dir RAW --processed_dir {processed_dir}`"
            )
        try:
            values = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(
                f"{path} is not valid JSON ({error}): run scripts.prepare again"
            ) from error
        if values.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"{path} has format version {values.get('format_version')}, this code reads "
                f"{FORMAT_VERSION}: run scripts.prepare again"
            )
        values["tiles"] = {k: TileRecord(**v) for k, v in values["tiles"].items()}
        values["tile_shape"] = tuple(values["tile_shape"])
        return cls(**values)

    def tiles_in(self, split: str) -> list[str]:
        """The parent tiles of a split (`train`, `val`, `test` or `predict`)."""
        if split not in self.split:
            raise ValueError(f"unknown split {split!r}; this data set has {sorted(self.split)}")
        return self.split[split]

    def select_channels(self, bands: BandSelection | None) -> list[int]:
        """Resolve a band selection to channel indices (all channels for None).

        Channels are named `sensor/date/band` (e.g. `sentinel2/2020-08-11/B04`, or
        `viirs/max/DNB`). For each sensor in `bands`, each requested name matches channels
        by band, by date, or by `date/band`; channels come in the order requested, dates
        chronologically. Unknown sensors or names raise ValueError listing what exists.
        """
        if bands is None:
            return list(range(len(self.channels)))
        if isinstance(bands, list):  # full channel names, e.g. from a checkpoint
            missing = [name for name in bands if name not in self.channels]
            if missing:
                raise ValueError(
                    f"the processed data has no channel(s) {', '.join(missing[:5])}"
                    f"{' …' if len(missing) > 5 else ''} ({len(missing)} missing)"
                )
            return [self.channels.index(name) for name in bands]
        parsed = [tuple(name.split("/")) for name in self.channels]
        problems: list[str] = []
        indices: list[int] = []
        for sensor, wanted in bands.items():
            own = [i for i, (s, _, _) in enumerate(parsed) if s == sensor]
            if not own:
                sensors = sorted({s for s, _, _ in parsed})
                problems.append(f"unknown sensor {sensor!r} (available: {', '.join(sensors)})")
                continue
            for name in [None] if wanted is None else list(wanted):
                matched = [
                    i
                    for i in own
                    if name is None or name in (parsed[i][1], parsed[i][2], "/".join(parsed[i][1:]))
                ]
                if not matched:
                    names = sorted({parsed[i][2] for i in own} | {parsed[i][1] for i in own})
                    index = None if name is None else name.split("/")[-1]
                    hint = ""
                    if sensor in SPECTRAL_INDICES.get(index, ()):
                        hint = (
                            f"; prepare the data with --preprocessing "
                            f"'{{spectral_indices: [{index}]}}' for this index"
                        )
                    problems.append(
                        f"{sensor} has no band or date {name!r} (available: {', '.join(names)})"
                        + hint
                    )
                indices += [i for i in matched if i not in indices]
        if problems:
            raise ValueError("invalid band selection: " + "; ".join(problems))
        if not indices:
            raise ValueError("the band selection selects no channel")
        return indices

    def check_files(self, processed_dir: Path) -> None:
        """FileNotFoundError / ValueError naming the first tile file that is missing, truncated
        or of another shape than the manifest says, before any of it is used."""
        folder = Path(processed_dir)
        rebuild = (
            f"rebuild it with `python -m scripts.prepare --raw_dir {self.raw_dir} "
            f"--processed_dir {folder}`"
        )
        for tile, record in self.tiles.items():
            image = folder / record.image
            if not image.is_file():
                raise FileNotFoundError(f"{image} ({tile}) is missing from the cache: {rebuild}")
            size = image.stat().st_size
            if size != record.image_bytes:
                raise ValueError(
                    f"{image} ({tile}) has {size} bytes, the manifest expects "
                    f"{record.image_bytes} (truncated or replaced): {rebuild}"
                )
            if record.labels is not None and not (folder / record.labels).is_file():
                raise FileNotFoundError(
                    f"{folder / record.labels} ({tile}) is missing from the cache: {rebuild}"
                )

    def normalisation(self, indices: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel (mean, std) as float32 arrays for the selected channels."""
        mean = np.asarray(self.mean, dtype=np.float32)[indices]
        std = np.asarray(self.std, dtype=np.float32)[indices]
        return mean, std
