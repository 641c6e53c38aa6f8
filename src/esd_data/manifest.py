"""The processed data set's manifest: split, channels, geometry, normalisation, fingerprint."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from src.atomic import write_json
from src.esd_data.sensors import (
    MAX_PROJECTION_DATE,
    SENSORS_BY_NAME,
    SPECTRAL_INDICES,
    VALID_BAND,
    spectral_index_names,
)

MANIFEST_FILE = "manifest.json"
FORMAT_VERSION = 4
SAMPLE_BLOCKS = 64
SAMPLE_BLOCK_BYTES = 4096

BandSelection = dict[str, list[str] | None] | list[str]
"""Sensor name → band, date or `date/band` names to keep (None keeps all of that sensor),
or a list of full channel names (`sentinel2/2020-08-11/B04`)."""


def check_band_selection(bands: object) -> None:
    """Check a band selection's shape and names against the sensor specs (no data needed).

    Each value must be None or a list of band names of that sensor (for Sentinel-2 and
    Landsat 8 also the spectral indices NDVI, NDBI, NDWI, which exist when the data were
    prepared with `spectral_indices`, and `valid` for every sensor, with `valid_masks`), dates
    (YYYY-MM-DD, or `max` for the VIIRS projection) or `date/band`; ValueError lists every
    problem.
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
        known = (*spec.bands, *spectral_index_names(sensor), VALID_BAND)
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


def sample_digest(path: Path) -> str:
    """SHA-256 of the file's size and of `SAMPLE_BLOCKS` blocks spread evenly over it: reads
    256 KiB whatever the file's size, and tells one tile's pixels from another's."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        size = handle.seek(0, 2)
        digest.update(str(size).encode())
        last = max(0, size - SAMPLE_BLOCK_BYTES)
        for block in range(SAMPLE_BLOCKS):
            handle.seek(last * block // (SAMPLE_BLOCKS - 1))
            digest.update(handle.read(SAMPLE_BLOCK_BYTES))
    return digest.hexdigest()


def pixel_digest(path: Path) -> str:
    """SHA-256 of the pixels of a stored tile (as `TileRecord.sha256` records them)."""
    pixels = np.load(path, mmap_mode="r")
    digest = hashlib.sha256()
    for channel in pixels:  # a channel at a time: bounded memory for any tile size
        digest.update(memoryview(np.ascontiguousarray(channel)).cast("B"))
    return digest.hexdigest()


@dataclass(frozen=True)
class TileRecord:
    """Where one parent tile's processed arrays are, relative to the processed folder, with
    the image file's size in bytes, the fingerprint of its raw files and parameters, the
    SHA-256 of its processed pixels (the same data gives the same hash on any machine) and
    the `sample_digest` of its image file (the cheap check that it is still that file)."""

    image: str
    labels: str | None
    fingerprint: str
    image_bytes: int
    sha256: str
    sample_sha256: str

    def absolute(self, folder: Path) -> TileRecord:
        """This record with its files by absolute path, `folder` being where it is relative
        to (a view's records are absolute already and stay as they are)."""
        folder = Path(folder).resolve()
        labels = None if self.labels is None else str(folder / self.labels)
        return replace(self, image=str(folder / self.image), labels=labels)

    def file_problem(self, folder: Path, full: bool = False) -> str | None:
        """What is wrong with this tile's files in `folder` (None: they are the recorded
        ones): missing, another size, or other content (sampled, or every pixel with `full`)."""
        image = Path(folder) / self.image
        if not image.is_file():
            return f"{image} is missing"
        size = image.stat().st_size
        if size != self.image_bytes:
            return f"{image} has {size} bytes, the manifest records {self.image_bytes}"
        if sample_digest(image) != self.sample_sha256 or (
            full and pixel_digest(image) != self.sha256
        ):
            return f"{image} is not the file the manifest records (other pixels)"
        if self.labels is not None and not (Path(folder) / self.labels).is_file():
            return f"{Path(folder) / self.labels} is missing"
        return None


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
    inputs: str
    """Hash of what the cache was built from (raw files, parameters, split options)."""
    tiles: dict[str, TileRecord]
    purpose: str = "training"
    format_version: int = FORMAT_VERSION
    fingerprint: str = ""
    """Hash of everything above (split, statistics, preprocessing, tile records): a manifest
    edited by hand no longer matches it. Set by `sealed`."""

    def content_hash(self) -> str:
        """The SHA-256 of every field but `fingerprint`."""
        values = {k: v for k, v in asdict(self).items() if k != "fingerprint"}
        return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()

    def sealed(self) -> Manifest:
        """This manifest with its split checked and its `fingerprint` set from its content."""
        self.check_split()
        return replace(self, fingerprint=self.content_hash())

    def check_split(self) -> None:
        """ValueError naming tiles in two splits, or in a split but not in `tiles`."""
        seen: dict[str, str] = {}
        problems = []
        for name, tiles in self.split.items():
            for tile in tiles:
                if tile in seen:
                    problems.append(f"{tile} is in both {seen[tile]} and {name}")
                elif tile not in self.tiles:
                    problems.append(f"{tile} ({name}) has no tile record")
                seen.setdefault(tile, name)
        if problems:
            raise ValueError("the split is inconsistent: " + "; ".join(problems))

    def save(self, processed_dir: Path) -> None:
        """Atomically write `manifest.json` into `processed_dir` (sealed)."""
        write_json(Path(processed_dir) / MANIFEST_FILE, asdict(self.sealed()))

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
        rebuild = f"run scripts.prepare again (or restore {path})"
        try:
            values["tiles"] = {k: TileRecord(**v) for k, v in values["tiles"].items()}
            values["tile_shape"] = tuple(values["tile_shape"])
            manifest = cls(**values)
        except (KeyError, TypeError, AttributeError) as error:
            raise ValueError(f"{path} is damaged ({error}): {rebuild}") from None
        if manifest.fingerprint != manifest.content_hash():
            raise ValueError(
                f"{path} was edited or damaged (its content no longer matches its fingerprint): "
                f"{rebuild}"
            )
        try:
            manifest.check_split()
        except ValueError as error:
            raise ValueError(f"{path}: {error}: {rebuild}") from None
        return manifest

    def tiles_in(self, split: str) -> list[str]:
        """The parent tiles of a split (`train`, `val`, `test` or `predict`)."""
        if split not in self.split:
            raise ValueError(f"unknown split {split!r}; this data set has {sorted(self.split)}")
        return self.split[split]

    def labelled_tiles(self) -> list[str]:
        """The tiles with ground truth: train, val and test (the predict split has none)."""
        return [tile for split in ("train", "val", "test") for tile in self.split[split]]

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
                    elif index == VALID_BAND:
                        hint = (
                            "; prepare the data with --preprocessing '{valid_masks: true}' for "
                            "the validity channels"
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

    def check_files(self, processed_dir: Path, full: bool = False) -> None:
        """ValueError naming every tile whose files are missing, truncated or not the ones the
        manifest records, before any of it is used. The content check reads a sample of each
        file (`sample_digest`); `full` hashes every pixel."""
        folder = Path(processed_dir)
        problems = [
            f"{tile}: {problem}"
            for tile, record in self.tiles.items()
            if (problem := record.file_problem(folder, full)) is not None
        ]
        if problems:
            shared = any(Path(r.image).is_absolute() for r in self.tiles.values())
            fix = (
                "the shared cache this view points at was re-prepared or changed since: run "
                "the cross-validation again under a new name"
                if shared
                else f"rebuild it with `python -m scripts.prepare --raw_dir {self.raw_dir} "
                f"--processed_dir {folder}`"
            )
            raise ValueError(
                f"{len(problems)} tile file(s) of {folder} are not the recorded ones: "
                + "; ".join(problems[:5])
                + (" …" if len(problems) > 5 else "")
                + f"; {fix}"
            )

    def normalisation(self, indices: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel (mean, std) as float32 arrays for the selected channels."""
        mean = np.asarray(self.mean, dtype=np.float32)[indices]
        std = np.asarray(self.std, dtype=np.float32)[indices]
        return mean, std
