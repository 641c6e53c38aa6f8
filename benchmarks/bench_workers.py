"""Wall time of one cross-validation run by 1 and by 2 workers on this machine:

    python -m benchmarks.bench_workers [--tiles 12 --tile_px 160 --max_epochs 4 --workers 1 2]

A 3-fold cross-validation of UNet and SegmentationCNN (6 units, `--selection last`) on the
demo's synthetic set, run afresh by `scripts.cross_validate --workers N` for each N (torch on
2 threads for one worker, on one thread each for two, so that both use the two cores); prints
the wall time of each and checks that their summaries hold the same scores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from src.esd_data.cache import prepare_dataset
from src.esd_data.synthetic import generate_synthetic_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--tiles", type=int, default=12)
    parser.add_argument("--tile_px", type=int, default=160)
    parser.add_argument("--max_epochs", type=int, default=4)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_workers_"))
    generate_synthetic_dataset(work / "raw", n_tiles=args.tiles, seed=0, tile_px=args.tile_px)
    prepare_dataset(work / "raw", work / "processed", workers=2)
    scores = {}
    for workers in args.workers:
        out = work / f"workers{workers}"
        command = [
            sys.executable, "-m", "scripts.cross_validate", "--model_type", "UNet",
            "SegmentationCNN", "--folds", "3", "--selection", "last", "--raw_dir", "none",
            "--processed_dir", str(work / "processed"), "--max_epochs", str(args.max_epochs),
            "--num_workers", "0", "--output_dir", str(out), "--name", "cv",
            "--tile_pictures", "none", "--wandb_mode", "disabled", "--workers", str(workers),
        ]  # fmt: skip
        environment = {**os.environ, "OMP_NUM_THREADS": str(max(1, 2 // workers))}
        start = time.perf_counter()
        subprocess.run(command, env=environment, check=True, capture_output=True)
        seconds = time.perf_counter() - start
        summary = json.loads((out / "cv" / "summary.json").read_text())
        scores[workers] = [m["out_of_fold"] for m in summary["models"]]
        print(f"{workers} worker(s): {seconds:.1f} s")
    print("same scores:", all(s == scores[args.workers[0]] for s in scores.values()))
    print(f"(work folder: {work})")


if __name__ == "__main__":
    main()
