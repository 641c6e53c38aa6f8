"""Every registered model with the same budget on the same synthetic split, in one table.

    python -m benchmarks.compare_models [--epochs 8] [--tiles 12] [--tile_px 160] \\
        [--models UNet TemporalFusion …] [--out benchmarks/.compare]

The synthetic tiles (the demo's: 12 tiles of 160 px, 10 px per label cell, seed 0) are made
and prepared once; each model then trains `--epochs` epochs at the same learning rate,
batch size and seed, one after the other in this process, on two CPU threads. Printed per
model: parameters, seconds per epoch (wall time of training and validation), the best
`val_f1_class1` and the best `val_iou_macro` over the epochs.
"""

from __future__ import annotations

import argparse
import csv
import shutil
import time
from pathlib import Path

import torch

from src.esd_data.cache import prepare_dataset
from src.esd_data.synthetic import generate_synthetic_dataset
from src.models.registry import MODEL_TYPES
from src.training.checkpoints import load_module
from src.training.config import ESDConfig
from src.training.train import train

MODEL_OPTIONS = {
    "SegmentationCNN": {"embedding_size": 32},
    "UNet": {"embedding_size": 32},
    "FCNResnetTransfer": {},
    "TemporalFusion": {"tf_width": 32},
    "SMP": {"smp_arch": "unet", "smp_encoder": "resnet18"},
}


def best_of(metrics_csv: Path, key: str) -> float:
    """The largest value of `key` logged in a CSV log."""
    with metrics_csv.open() as handle:
        return max(float(row[key]) for row in csv.DictReader(handle) if row.get(key))


def compare(model_type: str, processed: Path, out: Path, epochs: int) -> dict[str, float]:
    """Train one model; its parameters, seconds per epoch and best validation scores."""
    config = ESDConfig(
        raw_dir=None, processed_dir=processed, model_type=model_type, max_epochs=epochs,
        learning_rate=3e-3, batch_size=8, num_workers=0, patience=epochs, seed=0,
        checkpoint_dir=out / "checkpoints", log_dir=out / "logs", wandb_mode="disabled",
        wandb_run_name="compare", **MODEL_OPTIONS.get(model_type, {}),
    )  # fmt: skip
    started = time.perf_counter()
    results = train(config)
    seconds = time.perf_counter() - started
    module = load_module(Path(results["last_model_path"]))
    csv_path = Path(results["metrics_csv"])
    return {
        "parameters": sum(p.numel() for p in module.model.parameters()),
        "seconds_per_epoch": seconds / epochs,
        "f1_class1": best_of(csv_path, "val_f1_class1"),
        "iou_macro": best_of(csv_path, "val_iou_macro"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--tiles", type=int, default=12)
    parser.add_argument("--tile_px", type=int, default=160)
    parser.add_argument("--models", nargs="+", default=list(MODEL_TYPES))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/.compare"))
    args = parser.parse_args()
    torch.set_num_threads(2)
    shutil.rmtree(args.out, ignore_errors=True)
    raw, processed = args.out / "raw", args.out / "processed"
    generate_synthetic_dataset(raw, n_tiles=args.tiles, seed=0, tile_px=args.tile_px)
    prepare_dataset(raw, processed, workers=1)
    rows = {m: compare(m, processed, args.out / m, args.epochs) for m in args.models}
    print(
        f"\n{args.tiles} synthetic tiles of {args.tile_px} px, {args.epochs} epochs each, "
        f"batch 8, learning rate 3e-3, seed 0, CPU"
    )
    print(f"{'model':<18} {'parameters':>11} {'s/epoch':>8} {'best val_f1_class1':>19} "
          f"{'best val_iou_macro':>19}")  # fmt: skip
    for model, row in sorted(rows.items(), key=lambda item: -item[1]["f1_class1"]):
        print(
            f"{model:<18} {row['parameters'] / 1e6:>9.2f} M {row['seconds_per_epoch']:>8.1f} "
            f"{row['f1_class1']:>19.4f} {row['iou_macro']:>19.4f}"
        )


if __name__ == "__main__":
    main()
