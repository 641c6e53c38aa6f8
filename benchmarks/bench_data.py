"""Data-layer benchmark on copies of the real Tile1: prepare speed, bytes per tile, loader rate.

    python -m benchmarks.bench_data [--copies 4] [--real_dir ../shared/data/dfc2021/Train]

Prints seconds per 800×800 tile (1 worker, and per worker with 2 workers) and bytes on disk
per tile; then, on the device it runs on (CUDA or MPS where there is one, else the CPU), a table of
subtiles per second delivered to the model, normalised, by both data paths (loader workers +
host-to-device copy, and the device path: tiles on the device, batches cut there), without
and with augmentation (flips and rotations, noise and blur), beside what the UNet and the
FCN-ResNet101 consume (a training step, forward, loss, backward and Adam, on a ready batch),
so that it shows which of the two limits training.
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
from src.esd_data.device_data import GIB, DeviceLoader
from src.hardware import resolve_device
from src.training.losses import SegmentationLoss
from src.training.module import ESDSegmentation

NO_AUGMENT = AugmentConfig(hflip_p=0, vflip_p=0, rot90_p=0, noise_p=0, blur_p=0)
BATCH, T, CELL_PX = 8, 4, 50
MODELS = ("UNet", "FCNResnetTransfer")


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


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def path_rate(
    processed: Path, on_device: bool, augment: bool, batches: int, device: torch.device
) -> tuple[float, str]:
    """Training subtiles per second delivered to the model on `device`, normalised (and with
    augmentation: flipped and rotated, noise and blur), after one warm-up batch; and, for the
    device path, what it holds on the device.

    The loader path: 2 workers, then the host-to-device copy; the device path: the tiles
    copied to the device once (not timed), batches cut there.
    """
    module = ESDDataModule(
        processed,
        tile_size_gt=T,
        batch_size=BATCH,
        num_workers=2,
        augment=AugmentConfig() if augment else NO_AUGMENT,
        data_on_device="true" if on_device else "false",
        device=device,
    )
    module.setup("fit")
    loader = module.train_dataloader()
    held = ""
    if isinstance(loader, DeviceLoader):
        held = (
            f"{len(loader.tiles.dataset.tiles)} training tiles, {loader.tiles.nbytes / GIB:.2f} "
            f"GiB; train+val+test {module.device_bytes() / GIB:.2f} GiB"
        )
    generator = torch.Generator(device=device).manual_seed(0)
    seen, start, iterator = 0, 0.0, None
    while seen < batches:
        iterator = iterator or iter(loader)
        try:
            batch = next(iterator)
        except StopIteration:
            iterator = None
            continue
        batch["X"] = batch["X"].to(device, non_blocking=True)
        batch["y"] = batch["y"].to(device, non_blocking=True)
        batch = module.on_after_batch_transfer(batch, 0)  # normalisation
        if augment:
            batch["X"] = module.batch_augment(batch["X"], generator)  # noise and blur
        if start == 0.0:
            _sync(device)
            start = time.perf_counter()
            continue
        seen += 1
    _sync(device)
    return seen * BATCH / (time.perf_counter() - start), held


def model_rate(model_type: str, steps: int, device: torch.device, channels: int) -> float:
    """Subtiles per second that `model_type` trains on (forward, loss, backward, Adam step) on
    a ready, normalised batch on `device`, after one warm-up step."""
    torch.manual_seed(0)
    names = [f"c{i}" for i in range(channels)]
    model = ESDSegmentation(model_type, names, CELL_PX, T, scheduler="none").model.to(device)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = SegmentationLoss("ce")
    side = T * CELL_PX
    X = torch.randn(BATCH, channels, side, side, device=device)
    y = torch.randint(0, 4, (BATCH, T, T), device=device)
    start = 0.0
    for step in range(steps + 1):
        if step == 1:
            _sync(device)
            start = time.perf_counter()
        optimizer.zero_grad()
        loss_fn(model(X), y).backward()
        optimizer.step()
    _sync(device)
    return steps * BATCH / (time.perf_counter() - start)


def paths_table(processed: Path, batches: int, model_steps: int | None) -> None:
    """Both data paths and both models' consumption on this machine's device, as a table."""
    device = resolve_device("auto")
    accelerated = device.type != "cpu"
    rates: dict[tuple[str, bool], float] = {}
    held = ""
    for name in ("loader", "device"):
        for augment in (False, True):
            count = batches * (10 if name == "device" and accelerated else 1)
            rates[(name, augment)], held = path_rate(
                processed, name == "device", augment, count, device
            )
    steps = model_steps or (20 if accelerated else 2)
    channels = len(ESDDataModule(processed).manifest.channels)
    consumption = {m: model_rate(m, steps, device, channels) for m in MODELS}
    print(f"\nsubtiles/s on {device}, t={T}, {channels} channels, batch {BATCH}")
    print(f"(device path: {held}; model: {steps} timed steps)")
    print(f"{'':<46} {'no augmentation':>16} {'augmentation':>13}")
    for name, label in (
        ("loader", "data: loader workers (2) + copy + normalise"),
        ("device", "data: on the device, cut there + normalise"),
    ):
        print(f"{label:<46} {rates[(name, False)]:>16.0f} {rates[(name, True)]:>13.0f}")
    for model_type, rate in consumption.items():
        print(f"{'model: ' + model_type + ' training step':<46} {rate:>16.1f} {rate:>13.1f}")
    for model_type, rate in consumption.items():
        verdicts = []
        for name in ("loader", "device"):
            data = rates[(name, True)]
            verdicts.append(f"{name} path {'the model' if rate < data else 'the data'}")
        print(f"{model_type} with augmentation is limited by: " + ", ".join(verdicts))


def main() -> None:
    default_real = os.environ.get("ESD_REAL_DATA_DIR", "../shared/data/dfc2021/Train")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real_dir", type=Path, default=Path(default_real))
    parser.add_argument("--copies", type=int, default=8)
    parser.add_argument("--batches", type=int, default=60)
    parser.add_argument(
        "--model_steps", type=int, default=None, help="timed steps per model (20 GPU, 2 CPU)"
    )
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
        paths_table(processed, args.batches, args.model_steps)


if __name__ == "__main__":
    main()
