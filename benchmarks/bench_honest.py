"""What honest numbers cost: the three fold-selection rules, and the tile-file checks.

    python -m benchmarks.bench_honest cv [--tiles 12 --tile_px 160 --folds 5 --max_epochs 8]
    python -m benchmarks.bench_honest check [--tiles 60 --tile_px 800 --workers 2]

`cv` runs a K-fold cross-validation of UNet on a synthetic set (the demo's by default) with
`--selection inner`, `last` and `outer`, and prints each rule's mean ± std and out-of-fold
class-1 F1 and its wall time (`outer` is optimistic: its epoch is chosen on the scored tiles).

`check` prepares a synthetic set of 800-px tiles and times what checking the tile files adds
to starting a training or an evaluation: the cheap check (size and a 256 KiB sample of each
file, what `scripts.train` and `scripts.evaluate` do) and the full hash of every pixel (what
`scripts.prepare` does), each as a whole folder, twice (the second with the files in the
page cache).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from src.cross_validation.config import CVConfig
from src.cross_validation.run import cross_validate
from src.esd_data.cache import prepare_dataset
from src.esd_data.manifest import Manifest
from src.esd_data.preprocessing import PreprocessConfig
from src.esd_data.synthetic import generate_synthetic_dataset
from src.training.config import ESDConfig


def synthetic_unet(
    work: Path,
    tiles: int,
    tile_px: int,
    max_epochs: int,
    preprocessing: PreprocessConfig | None = None,
) -> ESDConfig:
    """A prepared synthetic set under `work` and the UNet training options on it."""
    raw, processed = work / "raw", work / "processed"
    generate_synthetic_dataset(raw, n_tiles=tiles, seed=0, tile_px=tile_px)
    prepare_dataset(raw, processed, workers=2, preprocessing=preprocessing)
    return ESDConfig(
        raw_dir=None, processed_dir=processed, model_type="UNet", max_epochs=max_epochs,
        num_workers=0, wandb_mode="disabled",
    )  # fmt: skip


def bench_cv(args: argparse.Namespace, work: Path) -> None:
    base = synthetic_unet(work, args.tiles, args.tile_px, args.max_epochs)
    rows = []
    for selection in ("inner", "last", "outer"):
        cv = CVConfig(folds=args.folds, model_type=["UNet"], selection=selection,
                      output_dir=work / "cv")  # fmt: skip
        start = time.perf_counter()
        summary = cross_validate(cv, base, log=lambda _: None)["models"][0]
        seconds = time.perf_counter() - start
        epochs = [f["selected_epoch"] for f in summary["folds"]]
        rows.append((selection, summary, seconds, epochs))
    print(f"{args.folds}-fold CV of UNet, {args.tiles} synthetic {args.tile_px}-px tiles, "
          f"{args.max_epochs} epochs, f1_class1:")  # fmt: skip
    print(f"{'selection':<10}{'mean ± std':>18}{'OOF':>9}{'wall s':>9}  epochs chosen")
    for selection, summary, seconds, epochs in rows:
        mean, std = summary["mean"]["f1_class1"], summary["std"]["f1_class1"]
        oof = summary["out_of_fold"]["f1_class1"]
        flag = "  (optimistic)" if summary["optimistic"] else ""
        print(f"{selection:<10}{mean:>10.4f} ± {std:.4f}{oof:>9.4f}{seconds:>9.1f}  {epochs}{flag}")


def bench_check(args: argparse.Namespace, work: Path) -> None:
    raw, processed = work / "raw", work / "processed"
    start = time.perf_counter()
    generate_synthetic_dataset(raw, n_tiles=args.tiles, seed=0, tile_px=args.tile_px)
    prepare_dataset(raw, processed, workers=args.workers)
    print(f"made and prepared {args.tiles} {args.tile_px}-px tiles in "
          f"{time.perf_counter() - start:.0f} s")  # fmt: skip
    manifest = Manifest.load(processed)
    size = sum((processed / r.image).stat().st_size for r in manifest.tiles.values()) / 2**30
    print(f"{len(manifest.tiles)} tile files, {size:.2f} GiB")
    for label, full in (("cheap check (size + 256 KiB sample)", False), ("full hash", True)):
        for attempt in (1, 2):
            start = time.perf_counter()
            manifest.check_files(processed, full=full)
            print(f"{label}, run {attempt}: {time.perf_counter() - start:.3f} s")
    for verify in ("sample", "full"):
        start = time.perf_counter()
        prepare_dataset(raw, processed, workers=args.workers, verify=verify)
        print(f"prepare reusing the cache, verify={verify}: {time.perf_counter() - start:.3f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=("cv", "check"))
    parser.add_argument("--tiles", type=int)
    parser.add_argument("--tile_px", type=int)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--max_epochs", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--work_dir", type=Path, default=None, help="default: a temporary folder")
    args = parser.parse_args()
    defaults = {"cv": (12, 160), "check": (60, 800)}[args.part]
    args.tiles = args.tiles or defaults[0]
    args.tile_px = args.tile_px or defaults[1]
    with tempfile.TemporaryDirectory(dir=args.work_dir) as work:
        (bench_cv if args.part == "cv" else bench_check)(args, Path(work))


if __name__ == "__main__":
    main()
