"""Read one raw DFC2021 tile folder into per-sensor (time, band, H, W) arrays.

`inspect_tile` validates a folder from the TIFF headers alone (names, dates, bands, shapes,
dtypes, truncation) and the small ground-truth file; `read_tile` then reads the pixels. Every
problem of a tile is collected into one `TileError` that names the tile, each file and what
is wrong with it.
"""

from __future__ import annotations

import datetime as dt
import re
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile

from src.esd_data.nodata import NO_DATA, fill_no_data
from src.esd_data.sensors import (
    GROUND_TRUTH_FILE,
    LABEL_GRID,
    N_CLASSES,
    SENSORS,
    SENSORS_BY_NAME,
    SensorSpec,
    identify,
)

_TILE_NAME = re.compile(r"Tile(\d+)")


class TileError(ValueError):
    """A raw tile folder that cannot be used, with every problem found in it."""

    def __init__(self, tile_dir: Path, problems: list[tuple[str, str]]) -> None:
        self.tile_dir = Path(tile_dir)
        self.problems = problems
        lines = [f"  {file}: {problem}" for file, problem in problems]
        super().__init__(
            f"tile {self.tile_dir.name} ({self.tile_dir}) has {len(problems)} problem(s):\n"
            + "\n".join(lines)
            + "\nFix or replace these files (re-extract the tile from the contest archive)."
        )

    def __reduce__(self) -> tuple[type, tuple[Path, list[tuple[str, str]]]]:
        """Rebuilt from its tile and problems when it crosses from a worker process."""
        return TileError, (self.tile_dir, self.problems)


class _RasterError(Exception):
    """A readable TIFF that is not a usable raster (the message says why)."""


class NoDataWarning(UserWarning):
    """A raster holds no-data pixels (its product's fill value, or NaN/inf), which are filled:
    `file` (tile/file name), `fill` and `non_finite` (how many of each), `product`."""

    def __init__(self, message: str, file: str = "", fill: int = 0, non_finite: int = 0,
                 product: str = "") -> None:  # fmt: skip
        super().__init__(message)
        self.file, self.fill, self.non_finite, self.product = file, fill, non_finite, product


@dataclass(frozen=True)
class SensorStack:
    """One sensor's rasters of a tile: `data` is (time, band, H, W) in the file dtype."""

    sensor: str
    data: np.ndarray
    dates: tuple[dt.date, ...]
    bands: tuple[str, ...]
    files: tuple[tuple[str, ...], ...]
    """files[t][b] is the file name of date t, band b."""
    missing: np.ndarray | None = None
    """(time, H, W) bool: where a band of the date had no data (filled in `data`); None: no
    pixel is known to be missing."""


@dataclass(frozen=True)
class TileInventory:
    """The validated file layout of one tile folder and its ground truth (no pixels read)."""

    tile_dir: Path
    shape: tuple[int, int]
    files: dict[str, tuple[tuple[str, ...], ...]]
    dates: dict[str, tuple[dt.date, ...]]
    labels: np.ndarray | None
    """(16, 16) labels 1..4, or None for a tile without groundTruth.tif."""


@dataclass(frozen=True)
class RawTile:
    """All rasters of one tile and its ground truth ((16, 16) labels 1..4, or None)."""

    tile_id: str
    sensors: dict[str, SensorStack]
    ground_truth: np.ndarray | None

    @property
    def shape(self) -> tuple[int, int]:
        """Raster height and width in pixels."""
        first = next(iter(self.sensors.values()))
        return first.data.shape[-2], first.data.shape[-1]


def tile_number(tile_id: str) -> int:
    """The number in a `TileN` folder name (tiles sort by it, not as strings)."""
    match = _TILE_NAME.fullmatch(tile_id)
    if match is None:
        raise ValueError(f"{tile_id!r} is not a tile folder name of the form TileN")
    return int(match[1])


def find_tile_dirs(raw_dir: Path) -> list[Path]:
    """The `TileN` folders under `raw_dir` (or under `raw_dir/Train`), sorted by N."""
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir():
        raise FileNotFoundError(
            f"raw data folder {raw_dir} does not exist: unzip the contest's Train/ folder "
            f"there, or make a synthetic one with "
            f"`python -m scripts.make_synthetic --out {raw_dir}`"
        )
    for folder in (raw_dir, raw_dir / "Train"):
        tiles = [p for p in folder.iterdir() if p.is_dir() and _TILE_NAME.fullmatch(p.name)]
        if tiles:
            return sorted(tiles, key=lambda p: tile_number(p.name))
        if not (raw_dir / "Train").is_dir():
            break
    raise FileNotFoundError(
        f"no TileN folders in {raw_dir} (nor in {raw_dir / 'Train'}): expected the contest's "
        f"Train/Tile1 … Tile60 layout"
    )


def _header(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of a single-page TIFF, checking that its pixel data is all there."""
    with tifffile.TiffFile(path) as tif:
        if len(tif.pages) != 1:
            raise _RasterError(f"has {len(tif.pages)} pages, expected a single-band raster")
        page = tif.pages[0]
        end = max(
            (o + n for o, n in zip(page.dataoffsets, page.databytecounts, strict=True)), default=0
        )
        size = path.stat().st_size
        if end > size:
            raise _RasterError(f"truncated: pixel data ends at byte {end}, file has {size} bytes")
        return tuple(page.shape), np.dtype(page.dtype)


def _read_ground_truth(path: Path, problems: list[tuple[str, str]]) -> np.ndarray | None:
    try:
        labels = tifffile.imread(path)
    except Exception as error:  # noqa: BLE001 - any decoder error means a corrupt file
        problems.append((path.name, f"not a readable TIFF ({error})"))
        return None
    if labels.shape != (LABEL_GRID, LABEL_GRID):
        problems.append((path.name, f"shape {labels.shape}, expected ({LABEL_GRID}, {LABEL_GRID})"))
        return None
    bad = np.unique(labels[(labels < 1) | (labels > N_CLASSES)])
    if bad.size:
        problems.append((path.name, f"labels {bad.tolist()} outside 1..{N_CLASSES}"))
        return None
    return labels.astype(np.int64)


def _sensor_layout(
    spec: SensorSpec, found: dict[tuple[dt.date, str], str], problems: list[tuple[str, str]]
) -> tuple[tuple[dt.date, ...], tuple[tuple[str, ...], ...]]:
    """Chronological dates and the files[t][b] grid in natural band order; note gaps."""
    dates = tuple(sorted({date for date, _ in found}))
    for date in dates:
        for band in spec.bands:
            if (date, band) not in found:
                problems.append((spec.file_name(date, band), f"missing {spec.name} band file"))
    if len(dates) != spec.n_dates:
        listed = ", ".join(d.isoformat() for d in dates) or "none"
        problems.append(
            (f"{spec.name} files", f"{len(dates)} dates found ({listed}), expected {spec.n_dates}")
        )
    grid = tuple(
        tuple(found.get((date, band), spec.file_name(date, band)) for band in spec.bands)
        for date in dates
    )
    return dates, grid


def inspect_tile(tile_dir: Path, require_labels: bool = True) -> TileInventory:
    """Validate a tile folder from names and TIFF headers; `TileError` lists every problem."""
    tile_dir = Path(tile_dir)
    if not tile_dir.is_dir():
        raise TileError(tile_dir, [(str(tile_dir), "tile folder does not exist")])
    problems: list[tuple[str, str]] = []
    found: dict[str, dict[tuple[dt.date, str], str]] = {spec.name: {} for spec in SENSORS}
    specs = {spec.name: spec for spec in SENSORS}
    headers: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
    for path in sorted(tile_dir.iterdir()):
        if path.suffix.lower() not in {".tif", ".tiff"} or path.name == GROUND_TRUTH_FILE:
            continue
        try:
            parsed = identify(path.name)
        except ValueError as error:
            problems.append((path.name, f"date in the file name does not parse ({error})"))
            continue
        if parsed is None or parsed[2] not in parsed[0].bands:
            problems.append(
                (
                    path.name,
                    "unknown raster: not a VIIRS, Sentinel-1, Sentinel-2 or "
                    "Landsat 8 band of the contest; remove it from the tile folder",
                )
            )
            continue
        spec, date, band = parsed
        found[spec.name][(date, band)] = path.name
        try:
            headers[path.name] = _header(path)
        except _RasterError as error:
            problems.append((path.name, str(error)))
        except Exception as error:  # noqa: BLE001 - tifffile raises many types on bad files
            problems.append((path.name, f"not a readable TIFF ({error})"))
    dates, files = {}, {}
    for name, per_file in found.items():
        dates[name], files[name] = _sensor_layout(specs[name], per_file, problems)
    shapes = Counter(shape for shape, _ in headers.values())
    shape = shapes.most_common(1)[0][0] if shapes else (0, 0)
    for file_name, (file_shape, dtype) in headers.items():
        spec = identify(file_name)[0]  # type: ignore[index]
        if file_shape != shape:
            problems.append((file_name, f"shape {file_shape}, but the tile's rasters are {shape}"))
        if dtype != spec.dtype:
            problems.append((file_name, f"dtype {dtype}, expected {spec.dtype} for {spec.name}"))
    if shapes and (len(shape) != 2 or shape[0] != shape[1] or shape[0] % LABEL_GRID):
        problems.append(("rasters", f"shape {shape} is not a square multiple of {LABEL_GRID}"))
    labels_path = tile_dir / GROUND_TRUTH_FILE
    labels = None
    if labels_path.is_file():
        labels = _read_ground_truth(labels_path, problems)
    elif require_labels:
        problems.append((GROUND_TRUTH_FILE, "missing ground-truth file"))
    if problems:
        raise TileError(tile_dir, problems)
    return TileInventory(tile_dir, (shape[0], shape[1]), files, dates, labels)


def _fill_no_data(
    sensor: str, stack: np.ndarray, files: tuple[tuple[str, ...], ...], tile: Path
) -> np.ndarray:
    """Fill the stack's no-data pixels (`src.esd_data.nodata`), warning once per file with
    how many there were and why; return where, per date, a band had none."""
    filled = fill_no_data(sensor, stack, SENSORS_BY_NAME[sensor].bands)
    counts = filled.counts
    rule = NO_DATA[sensor]
    for t, b in zip(*np.nonzero(counts.sum(axis=0)), strict=True):
        fill, non_finite = (int(c) for c in counts[:, t, b])
        reasons = [
            *([f"{fill} hold {rule.describe()}"] if fill else []),
            *([f"{non_finite} are not finite"] if non_finite else []),
        ]
        name = f"{tile.name}/{files[t][b]}"
        message = (
            f"{name}: {fill + non_finite} of {stack[t, b].size} pixels treated as no data "
            f"({'; '.join(reasons)}) and filled with the median of the others"
        )
        warnings.warn(NoDataWarning(message, name, fill, non_finite, rule.product), stacklevel=3)
    return filled.missing


def read_tile(tile_dir: Path, require_labels: bool = True) -> RawTile:
    """Validate and read a tile: per sensor (time, band, H, W) arrays and the (16, 16) labels."""
    inventory = inspect_tile(tile_dir, require_labels)
    return read_inventory(inventory)


def read_inventory(inventory: TileInventory) -> RawTile:
    """Read the pixels of an already validated tile."""
    tile_dir = inventory.tile_dir
    stacks = {}
    for spec in SENSORS:
        grid = inventory.files[spec.name]
        data = np.empty((len(grid), len(spec.bands), *inventory.shape), dtype=spec.dtype)
        for t, row in enumerate(grid):
            for b, name in enumerate(row):
                try:
                    with tifffile.TiffFile(tile_dir / name) as tif:
                        tif.asarray(out=data[t, b])
                except Exception as error:
                    raise TileError(
                        tile_dir, [(name, f"pixel data unreadable ({error})")]
                    ) from error
        missing = _fill_no_data(spec.name, data, grid, tile_dir)
        stacks[spec.name] = SensorStack(
            spec.name, data, inventory.dates[spec.name], spec.bands, grid, missing
        )
    return RawTile(tile_dir.name, stacks, inventory.labels)
