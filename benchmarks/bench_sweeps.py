"""Wall time of a 4-trial sweep with 1 and with 2 worker processes on this machine.

    python -m benchmarks.bench_sweeps [--trials 4] [--epochs 3] [--out benchmarks/.sweeps]

The demo's synthetic tiles (12 tiles of 160 px) are made and prepared once; each sweep is a
fresh study of `--trials` UNet trials (random learning rates, `--epochs` epochs each, no
loader workers) run by `python -m scripts.train_sweeps --workers N`, timed from start to
exit (the workers' start-up included).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from src.esd_data.cache import prepare_dataset
from src.esd_data.synthetic import generate_synthetic_dataset


def sweep_file(path: Path, epochs: int) -> Path:
    spec = {
        "name": "bench",
        "method": "random",
        "metric": {"name": "val_f1_class1", "goal": "maximize"},
        "parameters": {
            "model_type": {"value": "UNet"},
            "embedding_size": {"value": 16},
            "max_epochs": {"value": epochs},
            "learning_rate": {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-2},
        },
    }
    path.write_text(yaml.safe_dump(spec))
    return path


def timed_sweep(sweep: Path, processed: Path, out: Path, workers: int, trials: int) -> float:
    command = [
        sys.executable, "-m", "scripts.train_sweeps", "--sweep_file", str(sweep),
        "--backend", "optuna", "--output_dir", str(out), "--processed_dir", str(processed),
        "--raw_dir", "none", "--num_workers", "0", "--wandb_mode", "disabled",
        "--workers", str(workers), "--count", str(trials),
    ]  # fmt: skip
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/.sweeps"))
    args = parser.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    raw, processed = args.out / "raw", args.out / "processed"
    generate_synthetic_dataset(raw, n_tiles=12, seed=0, tile_px=160)
    prepare_dataset(raw, processed, workers=1)
    sweep = sweep_file(args.out / "bench.yml", args.epochs)
    print(f"{args.trials} UNet trials of {args.epochs} epochs on 12 synthetic 160-px tiles")
    seconds = {}
    for workers in (1, 2):
        seconds[workers] = timed_sweep(sweep, processed, args.out / f"w{workers}", workers,
                                       args.trials)  # fmt: skip
        print(f"{workers} worker(s): {seconds[workers]:.1f} s")
    print(f"speed-up with 2 workers: {seconds[1] / seconds[2]:.2f}×")


if __name__ == "__main__":
    main()
