"""Build and reuse the processed cache: one float16 (C, H, W) .npy per parent tile + manifest.

A tile is rebuilt only when its fingerprint changes: the names, sizes and modification times
of its raw files, the preprocessing parameters and the cache format, so a cache hit opens no
raw file. Each tile's arrays are written atomically and its record (`TileN.json`, holding the
fingerprint and per-channel statistics) is written last, so an interrupted run never leaves a
tile that a later run trusts. A cached tile is reused only when its image file is still the
recorded one (a sample of it, or every pixel with `verify="full"`); a file swapped or changed
by hand is rebuilt, with a warning naming it. The manifest is removed before any change and
written last.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import multiprocessing
import time
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from src.atomic import remove_temporaries, write_json, write_npy
from src.esd_data.manifest import (
    FORMAT_VERSION,
    MANIFEST_FILE,
    Manifest,
    TileRecord,
    pixel_digest,
    sample_digest,
)
from src.esd_data.nodata import NO_DATA_RULES
from src.esd_data.preprocessing import CappedWarning, PreprocessConfig, preprocess_tile
from src.esd_data.reader import (
    NoDataWarning,
    TileError,
    TileInventory,
    find_tile_dirs,
    inspect_tile,
    read_inventory,
    tile_number,
)
from src.esd_data.sensors import GROUND_TRUTH_FILE, LABEL_GRID, identify
from src.esd_data.split import check_fractions, split_tiles
from src.esd_data.subtiles import check_tile_size_gt
from src.progress import progress_disabled

TILES_FOLDER = "tiles"
STORAGE_DTYPE = np.float16


class PreprocessWarning(UserWarning):
    """Something preprocessing changed in a tile's values (values capped to the cache's
    float16 range), named with the file."""


class PrepareError(RuntimeError):
    """Raw data that cannot be prepared; the message lists every problem of every tile."""


class MissingLabelsWarning(UserWarning):
    """Tiles of a labelled folder without `groundTruth.tif` (they go to the predict split)."""


class SmallSplitWarning(UserWarning):
    """Too few labelled tiles for the splits asked for (training will say what to do)."""


class ChangedTileWarning(UserWarning):
    """A cached tile file that is not the one its record describes (rebuilt from raw)."""


@dataclass(frozen=True)
class TileStats:
    """Per-channel count, mean and sum of squared deviations of one tile (Chan et al. merge)."""

    count: int
    mean: np.ndarray
    m2: np.ndarray

    @classmethod
    def from_record(cls, record: dict) -> TileStats:
        """The statistics stored in a cached tile's record."""
        return cls(record["count"], np.array(record["mean"]), np.array(record["m2"]))

    @staticmethod
    def merge(parts: list[TileStats]) -> tuple[np.ndarray, np.ndarray]:
        """Pooled (mean, std) over tiles; a constant channel gets std 1 so it normalises to 0."""
        count, mean, m2 = 0, np.zeros_like(parts[0].mean), np.zeros_like(parts[0].m2)
        for part in parts:
            total = count + part.count
            delta = part.mean - mean
            mean = mean + delta * part.count / total
            m2 = m2 + part.m2 + delta**2 * count * part.count / total
            count = total
        std = np.sqrt(m2 / count)
        return mean, np.where(std <= 1e-8, 1.0, std)  # a NaN stays NaN: training refuses it


@dataclass(frozen=True)
class PrepareSummary:
    """What `prepare_dataset` did."""

    manifest: Manifest
    rebuilt: list[str]
    reused: list[str]
    bytes_written: int
    seconds: float
    seconds_per_tile: float | None
    """Mean time one worker spent on one rebuilt tile (read, preprocess, write)."""

    def __str__(self) -> str:
        splits = ", ".join(f"{k} {len(v)}" for k, v in self.manifest.split.items() if v)
        mib = self.bytes_written / 2**20
        return (
            f"prepared {len(self.rebuilt) + len(self.reused)} tiles ({splits}); "
            f"{len(self.rebuilt)} processed, {len(self.reused)} reused from cache; "
            f"{mib:.1f} MiB written in {self.seconds:.1f} s"
            + (
                f" ({self.seconds_per_tile:.2f} s per tile per worker); "
                if self.seconds_per_tile
                else "; "
            )
            + f"{len(self.manifest.channels)} channels, {self.manifest.tile_shape[0]} px tiles, "
            f"{self.manifest.cell_px} px per label cell, "
            f"{self.manifest.preprocessing.get('recipe', 'course')} recipe"
            + (", validity channels" if self.manifest.preprocessing.get("valid_masks") else "")
        )


def tile_fingerprint(tile_dir: Path, preprocessing: PreprocessConfig) -> str:
    """Hash of the tile's file names, sizes and mtimes, the parameters, the format and the
    no-data rules (a tile cached under older ones is rebuilt)."""
    entries = sorted(
        (p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in tile_dir.iterdir() if p.is_file()
    )
    payload = json.dumps([FORMAT_VERSION, NO_DATA_RULES, preprocessing.to_dict(), entries])
    return hashlib.sha256(payload.encode()).hexdigest()


def _paths(processed_dir: Path, tile_id: str) -> tuple[Path, Path, Path]:
    folder = processed_dir / TILES_FOLDER
    return folder / f"{tile_id}.npy", folder / f"{tile_id}.labels.npy", folder / f"{tile_id}.json"


def read_tile_stats(processed_dir: Path, tile_id: str) -> TileStats:
    """The per-channel statistics that preparation recorded for one cached tile."""
    _, _, record_path = _paths(Path(processed_dir), tile_id)
    return TileStats.from_record(json.loads(record_path.read_text()))


def _load_record(processed_dir: Path, tile_id: str, fingerprint: str, verify: str) -> dict | None:
    """A tile's cached record when it matches `fingerprint` and its arrays are the recorded
    ones (`verify`: "sample" reads a sample of the image file, "full" hashes every pixel)."""
    image, labels, record_path = _paths(processed_dir, tile_id)
    try:
        record = json.loads(record_path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if record.get("fingerprint") != fingerprint or not image.is_file():
        return None
    if record["has_labels"] and not labels.is_file():
        return None
    if image.stat().st_size != record["image_bytes"] or sample_digest(image) != record.get(
        "sample_sha256"
    ) or (verify == "full" and pixel_digest(image) != record["sha256"]):  # fmt: skip
        warnings.warn(
            f"{image} is not the file its record {record_path} describes (replaced or changed "
            f"since it was prepared): rebuilding {tile_id}",
            ChangedTileWarning,
            stacklevel=3,
        )
        return None
    return record


def _channel_moments(stack: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and sum of squared deviations, in float64 (torch: 2× numpy's speed)."""
    flat = torch.from_numpy(stack).view(stack.shape[0], -1)
    means, m2 = np.empty(len(flat)), np.empty(len(flat))
    for channel, values in enumerate(flat):
        values = values.double()
        means[channel] = values.mean().item()
        m2[channel] = (values - means[channel]).square().sum().item()
    return means, m2


def _check_finite(stored: np.ndarray, channels: list[str], tile_dir: Path) -> None:
    """TileError naming the channels that preprocessing left non-finite (nothing non-finite
    is ever cached: a model would train on it)."""
    finite = np.isfinite(stored).all(axis=(1, 2))
    if not finite.all():
        raise TileError(tile_dir, [
            (channels[k], "not finite after preprocessing (NaN or inf in the cache)")
            for k in np.flatnonzero(~finite)
        ])  # fmt: skip


def process_tile(
    inventory: TileInventory, processed_dir: Path, preprocessing: PreprocessConfig, fingerprint: str
) -> tuple[dict, list[str]]:
    """Read, preprocess and store one validated tile; return its record and any warnings."""
    start = time.perf_counter()
    tile_dir = inventory.tile_dir
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        raw = read_inventory(inventory)
        stored, channels = preprocess_tile(raw, preprocessing, dtype=STORAGE_DTYPE)
    _check_finite(stored, channels, tile_dir)
    labels_grid = raw.ground_truth
    del raw  # free the raw rasters before writing
    means, m2 = _channel_moments(stored)
    content = hashlib.sha256(memoryview(stored).cast("B")).hexdigest()
    image, labels, record_path = _paths(processed_dir, tile_dir.name)
    write_npy(image, stored)
    if labels_grid is not None:
        write_npy(labels, labels_grid.astype(np.uint8))
    record = {
        "fingerprint": fingerprint,
        "channels": channels,
        "shape": list(stored.shape),
        "image_bytes": image.stat().st_size,
        "sha256": content,
        "sample_sha256": sample_digest(image),
        "has_labels": labels_grid is not None,
        "count": int(stored.shape[1] * stored.shape[2]),
        "mean": means.tolist(),
        "m2": m2.tolist(),
        "seconds": round(time.perf_counter() - start, 3),
    }
    messages = [w.message for w in caught]
    no_data = [m for m in messages if isinstance(m, NoDataWarning)]
    if no_data:
        record["no_data"] = {
            w.file: {"fill": w.fill, "non_finite": w.non_finite, "product": w.product}
            for w in no_data
        }
    capped = [m for m in messages if isinstance(m, CappedWarning)]
    if capped:
        record["capped"] = {f"{tile_dir.name}/{w.file}": w.count for w in capped}
    write_json(record_path, record)
    recorded = (NoDataWarning, CappedWarning)
    return record, [f"{tile_dir.name}: {m}" for m in messages if not isinstance(m, recorded)]


def _check_all(tile_dirs: list[Path]) -> dict[Path, TileInventory]:
    """Validate tiles from their headers before any is processed; one error for all problems."""
    inventories, errors = {}, []
    for tile_dir in tile_dirs:
        try:
            inventories[tile_dir] = inspect_tile(tile_dir, require_labels=False)
        except TileError as error:
            errors.append(str(error))
    if errors:
        raise PrepareError("\n".join(errors))
    return inventories


Jobs = dict[Path, tuple[TileInventory, str]]
"""Tile folder → (its validated inventory, its fingerprint)."""


def _results(jobs: Jobs, processed_dir: Path, preprocessing: PreprocessConfig, workers: int):
    """Yield (tile folder, result or TileError) as tiles finish, in worker processes when > 1."""
    if workers <= 1 or len(jobs) <= 1:
        for tile_dir, (inventory, fingerprint) in jobs.items():
            try:
                yield tile_dir, process_tile(inventory, processed_dir, preprocessing, fingerprint)
            except TileError as error:
                yield tile_dir, error
        return
    # Not "fork": a child forked from a process whose torch thread pool has run (a training
    # script, a test session) can deadlock in its first torch operation. The forkserver
    # imports this module once and forks clean workers from it.
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([__name__])
    else:
        context = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(
        min(workers, len(jobs)), mp_context=context, initializer=torch.set_num_threads,
        initargs=(1,),  # one thread per worker process: the processes are the parallelism
    )  # fmt: skip
    with pool:
        futures = {
            pool.submit(
                process_tile, inventory, processed_dir, preprocessing, fingerprint
            ): tile_dir
            for tile_dir, (inventory, fingerprint) in jobs.items()
        }
        for future in as_completed(futures):
            try:
                yield futures[future], future.result()
            except TileError as error:
                yield futures[future], error


def _run_tiles(
    jobs: Jobs, processed_dir: Path, preprocessing: PreprocessConfig, workers: int
) -> dict[str, dict]:
    """Process the stale tiles with a progress bar; PrepareError lists every tile that failed."""
    records: dict[str, dict] = {}
    errors: list[str] = []
    bar = tqdm(total=len(jobs), desc="preparing tiles", unit="tile",
               disable=progress_disabled(not jobs))  # fmt: skip
    with bar:
        for tile_dir, result in _results(jobs, processed_dir, preprocessing, workers):
            bar.update()
            if isinstance(result, TileError):
                errors.append(str(result))
                continue
            record, messages = result
            records[tile_dir.name] = record
            for message in messages:
                warnings.warn(message, PreprocessWarning, stacklevel=3)
    if errors:
        raise PrepareError("\n".join(errors))
    summary = no_data_summary(records)
    if summary:
        warnings.warn(summary, NoDataWarning, stacklevel=3)
    capped = {f: n for record in records.values() for f, n in record.get("capped", {}).items()}
    if capped:
        worst = sorted(capped, key=lambda f: -capped[f])
        warnings.warn(
            f"{sum(capped.values())} pixel(s) in {len(capped)} file(s) above 65504, the float16 "
            f"cache's maximum, stored as 65504 (most in {', '.join(worst[:3])}; each file's "
            f"count in tiles/<tile>.json)",
            PreprocessWarning,
            stacklevel=3,
        )
    return records


def filled_pixels(processed_dir: Path, manifest: Manifest, channels: set[str]) -> int:
    """How many no-data pixels preparation filled in the named `channels` of the folder's
    labelled tiles (from their records)."""
    total = 0
    for tile in manifest.labelled_tiles():
        record_path = Path(processed_dir) / Path(manifest.tiles[tile].image).with_suffix(".json")
        try:
            record = json.loads(record_path.read_text())
        except (OSError, ValueError):
            continue
        for file, counts in record.get("no_data", {}).items():
            spec, date, band = identify(file.rsplit("/", 1)[-1]) or (None, None, None)
            if spec is not None and f"{spec.name}/{date.isoformat()}/{band}" in channels:
                total += counts["fill"] + counts["non_finite"]
    return total


def no_data_summary(records: dict[str, dict]) -> str:
    """One line over the tiles just prepared: the no-data pixels filled, by product, with the
    files holding the most ('' when there were none); per file in each tile's record."""
    per_file = {
        file: counts
        for record in records.values()
        for file, counts in record.get("no_data", {}).items()
    }
    if not per_file:
        return ""
    by_product: dict[str, int] = {}
    for counts in per_file.values():
        label = counts["product"] + (" (NaN/inf)" if counts["non_finite"] else "")
        by_product[label] = by_product.get(label, 0) + counts["fill"] + counts["non_finite"]
    worst = sorted(per_file, key=lambda f: -(per_file[f]["fill"] + per_file[f]["non_finite"]))
    tiles = len({file.split("/")[0] for file in per_file})
    return (
        f"no data filled with each raster's median in {len(per_file)} file(s) of {tiles} "
        f"tile(s): "
        + ", ".join(f"{count} pixel(s) of {what}" for what, count in by_product.items())
        + f" (most in {', '.join(worst[:3])}; each file's count in tiles/<tile>.json)"
    )


def prepare_dataset(
    raw_dir: Path,
    processed_dir: Path,
    tile_size_gt: int = 4,
    seed: int = 0,
    val_fraction: float = 0.2,
    test_fraction: float = 0.0,
    workers: int = 2,
    preprocessing: PreprocessConfig | None = None,
    purpose: str = "training",
    verify: str = "sample",
    reuse_only: bool = False,
) -> PrepareSummary | None:
    """Validate, preprocess and cache every tile of `raw_dir`, split them, write the manifest.

    Tiles without `groundTruth.tif` go to the `predict` split (with a MissingLabelsWarning
    naming them when other tiles have labels). With `purpose="evaluation"` nothing is split:
    every tile, labelled or not, is in `predict` (for `scripts.evaluate --raw_dir`). Raises
    PrepareError (every problem of every tile) or FileNotFoundError before anything is
    written for bad raw data. `verify` is how a cached tile is checked before it is reused:
    "sample" (a sample of its file) or "full" (every pixel hashed). With `reuse_only`, None
    instead of any change to the folder (the cache is not current).
    """
    start = time.perf_counter()
    preprocessing = preprocessing or PreprocessConfig()
    check_tile_size_gt(tile_size_gt)
    check_fractions(val_fraction, test_fraction)  # before anything of the folder changes
    raw_dir, processed_dir = Path(raw_dir), Path(processed_dir)
    tile_dirs = find_tile_dirs(raw_dir)
    fingerprints = {d: tile_fingerprint(d, preprocessing) for d in tile_dirs}
    records = {
        d.name: _load_record(processed_dir, d.name, fp, verify) for d, fp in fingerprints.items()
    }
    stale = {d: fp for d, fp in fingerprints.items() if records[d.name] is None}
    overall = hashlib.sha256(
        json.dumps(
            [sorted(fingerprints.values()), seed, val_fraction, test_fraction, purpose]
        ).encode()
    ).hexdigest()
    manifest_path = processed_dir / MANIFEST_FILE
    try:
        previous = Manifest.load(processed_dir) if manifest_path.is_file() else None
    except (ValueError, TypeError, KeyError):
        previous = None
    if previous is not None and previous.inputs == overall and not stale:
        if previous.tile_size_gt != tile_size_gt and reuse_only:
            return None
        if previous.tile_size_gt != tile_size_gt:
            previous = _replace_tile_size(previous, tile_size_gt, processed_dir)
        return PrepareSummary(previous, [], list(records), 0, time.perf_counter() - start, None)

    if reuse_only:
        return None
    manifest_path.unlink(missing_ok=True)  # stale from here on: never trusted again
    inventories = _check_all(list(stale))
    tiles_folder = processed_dir / TILES_FOLDER
    tiles_folder.mkdir(parents=True, exist_ok=True)
    remove_temporaries(tiles_folder)
    jobs = {tile_dir: (inventories[tile_dir], fp) for tile_dir, fp in stale.items()}
    fresh = _run_tiles(jobs, processed_dir, preprocessing, workers)
    records.update(fresh)
    _remove_orphans(tiles_folder, set(records))

    manifest = _build_manifest(
        raw_dir,
        records,
        fingerprints,
        overall,
        seed,
        val_fraction,
        test_fraction,
        tile_size_gt,
        preprocessing,
        purpose,
    )
    manifest.save(processed_dir)
    return PrepareSummary(
        manifest,
        sorted(fresh, key=tile_number),
        [d.name for d in tile_dirs if d not in stale],
        sum(record["image_bytes"] for record in fresh.values()),
        time.perf_counter() - start,
        float(np.mean([record["seconds"] for record in fresh.values()])) if fresh else None,
    )


def _replace_tile_size(manifest: Manifest, tile_size_gt: int, processed_dir: Path) -> Manifest:
    updated = dataclasses.replace(manifest, tile_size_gt=tile_size_gt).sealed()
    updated.save(processed_dir)
    return updated


def _remove_orphans(tiles_folder: Path, keep: set[str]) -> None:
    """Delete cached tiles whose raw folder no longer exists."""
    for path in tiles_folder.iterdir():
        if path.name.split(".")[0] not in keep:
            path.unlink()


def _build_manifest(
    raw_dir: Path,
    records: dict[str, dict],
    fingerprints: dict[Path, str],
    overall: str,
    seed: int,
    val_fraction: float,
    test_fraction: float,
    tile_size_gt: int,
    preprocessing: PreprocessConfig,
    purpose: str,
) -> Manifest:
    channels = next(iter(records.values()))["channels"]
    shapes = {tuple(r["shape"]) for r in records.values()}
    if len(shapes) != 1 or any(r["channels"] != channels for r in records.values()):
        raise PrepareError(
            f"tiles of {raw_dir} differ in size or channels ({sorted(shapes)}): every tile of a "
            f"data set must have the same raster size and dates"
        )
    labelled = [name for name, r in records.items() if r["has_labels"]]
    unlabelled = sorted(set(records) - set(labelled), key=tile_number)
    if purpose == "evaluation":
        split = {"train": [], "val": [], "test": [], "predict": sorted(records, key=tile_number)}
        statistics_tiles = split["predict"]
    else:
        if not labelled:
            raise PrepareError(
                f"no tile of {raw_dir} has a groundTruth.tif: nothing to train on (to predict "
                f"unlabelled tiles, use `python -m scripts.evaluate --model_path CKPT "
                f"--raw_dir {raw_dir}`)"
            )
        if unlabelled:
            warnings.warn(
                f"{len(unlabelled)} tile(s) of {raw_dir} have no {GROUND_TRUTH_FILE} and go "
                f"to the predict split, not to training or validation: {', '.join(unlabelled)}",
                MissingLabelsWarning,
                stacklevel=3,
            )
        split = split_tiles(labelled, seed, val_fraction, test_fraction)
        split["predict"] = unlabelled
        if val_fraction > 0 and not split["val"]:
            warnings.warn(
                f"{raw_dir} has {len(labelled)} labelled tile(s): val_fraction {val_fraction} "
                f"leaves no validation tile, so training on it needs --limit_val_batches 0 (a "
                f"fixed budget) or more labelled tiles",
                SmallSplitWarning,
                stacklevel=3,
            )
        statistics_tiles = split["train"]
    mean, std = TileStats.merge([TileStats.from_record(records[t]) for t in statistics_tiles])
    _, height, width = shapes.pop()
    tiles = {}
    for tile_dir, fingerprint in fingerprints.items():
        image, labels, _ = _paths(Path(), tile_dir.name)
        has_labels = records[tile_dir.name]["has_labels"]
        tiles[tile_dir.name] = TileRecord(
            image.as_posix(),
            labels.as_posix() if has_labels else None,
            fingerprint,
            records[tile_dir.name]["image_bytes"],
            records[tile_dir.name]["sha256"],
            records[tile_dir.name]["sample_sha256"],
        )
    return Manifest(
        raw_dir=str(raw_dir),
        seed=seed,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        split=split,
        channels=channels,
        preprocessing=preprocessing.to_dict(),
        tile_shape=(height, width),
        cell_px=height // LABEL_GRID,
        tile_size_gt=tile_size_gt,
        mean=mean.tolist(),
        std=std.tolist(),
        inputs=overall,
        tiles=tiles,
        purpose=purpose,
    ).sealed()
