"""Data-layer benchmark on copies of the real Tile1: prepare speed, bytes per tile, loader rate.

    python -m benchmarks.bench_data [--copies 4] [--real_dir ../shared/data/dfc2021/Train]

Prints seconds per 800×800 tile (1 worker, and per worker with 2 workers), bytes on disk per
tile, and training-loader throughput in subtiles per second (t=4, all channels, augmentation
on, 2 loader workers), with and without the on-device noise/blur batch step.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from src.esd_data.augmentation import AugmentConfig
from src.esd_data.cache import prepare_dataset
from src.esd_data.datamodule import ESDDataModule


def make_copies(real_dir: Path, copies: int, raw: Path) -> None:
    """Copy the real Tile1 `copies` times as Tile1 … TileN."""
    for k in range(1, copies + 1):
        shutil.copytree(real_dir / "Tile1", raw / "Train" / f"Tile{k}")


def time_prepare(raw: Path, processed: Path, workers: int) -> tuple[float, float, float]:
    """(wall seconds, mean and median in-worker seconds per tile) of a cold prepare run.

    The mean includes each worker's first, slower tile; the median is the steady state.
    """
    shutil.rmtree(processed, ignore_errors=True)
    start = time.perf_counter()
    summary = prepare_dataset(raw, processed, tile_size_gt=4, val_fraction=0.25, workers=workers)
    wall = time.perf_counter() - start
    per_tile = [json.loads(p.read_text())["seconds"] for p in (processed / "tiles").glob("*.json")]
    return wall, summary.seconds_per_tile, statistics.median(per_tile)


def loader_rate(processed: Path, batches: int, on_device: bool) -> float:
    """Training subtiles per second over `batches` batches after one warm-up batch."""
    module = ESDDataModule(
        processed, tile_size_gt=4, batch_size=8, num_workers=2, augment=AugmentConfig()
    )
    module.setup("fit")
    loader = module.train_dataloader()
    seen, start, iterator = 0, 0.0, None
    while seen < batches:
        iterator = iterator or iter(loader)
        try:
            batch = next(iterator)
        except StopIteration:
            iterator = None
            continue
        batch = module.on_after_batch_transfer(batch, 0)  # normalisation (no trainer: no noise)
        if on_device:
            batch["X"] = module.batch_augment(batch["X"])
        if start == 0.0:
            start = time.perf_counter()
            continue
        seen += 1
    return seen * 8 / (time.perf_counter() - start)


def main() -> None:
    default_real = os.environ.get("ESD_REAL_DATA_DIR", "../shared/data/dfc2021/Train")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real_dir", type=Path, default=Path(default_real))
    parser.add_argument("--copies", type=int, default=8)
    parser.add_argument("--batches", type=int, default=60)
    args = parser.parse_args()
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory(prefix="esd-bench-") as scratch:
        raw, processed = Path(scratch) / "raw", Path(scratch) / "processed"
        make_copies(args.real_dir, args.copies, raw)
        one, one_mean, one_median = time_prepare(raw, processed, workers=1)
        two, two_mean, two_median = time_prepare(raw, processed, workers=2)
        tile_bytes = sum(p.stat().st_size for p in (processed / "tiles").glob("Tile1.*"))
        start = time.perf_counter()
        prepare_dataset(raw, processed, tile_size_gt=4, val_fraction=0.25, workers=2)
        cached = time.perf_counter() - start
        print(f"tiles: {args.copies} copies of {args.real_dir / 'Tile1'} (800×800, 98 rasters)")
        print(
            f"prepare, 1 worker:  {one / args.copies:.2f} s per tile (wall), "
            f"in the worker {one_mean:.2f} s per tile (mean), {one_median:.2f} s (median)"
        )
        print(
            f"prepare, 2 workers: {two / args.copies:.2f} s per tile (wall, start-up included), "
            f"in each worker {two_mean:.2f} s per tile (mean), {two_median:.2f} s (median)"
        )
        print(f"prepare, cached:    {cached:.2f} s for all tiles (no raw file read)")
        print(f"bytes on disk per tile: {tile_bytes / 1e6:.1f} MB")
        for on_device in (False, True):
            rate = loader_rate(processed, args.batches, on_device)
            step = "loader + normalise + noise/blur" if on_device else "loader + normalise"
            print(f"train {step}: {rate:.0f} subtiles/s (t=4, 99 channels, batch 8, 2 workers)")


if __name__ == "__main__":
    main()
