"""How far training seeds alone move a score, beside the gap between two models:

    python -m benchmarks.bench_seeds [--seeds 5 --folds 3 --tiles 12 --tile_px 160 --max_epochs 8]

One `scripts.cross_validate --model_type UNet SegmentationCNN --seeds S` on the demo's
synthetic set (the same folds trained S times with training seeds 0 … S−1; `--selection last`,
so no validation choice adds its own noise): prints each seed's out-of-fold class-1 F1 of each
model (the seed's partition of the tiles), their spread (min–max and std over the seeds), the
pooled UNet − SegmentationCNN gap with its paired interval over tiles, the fold-level test over
all S × K trainings and the verdict; the wall time. A gap smaller than one model's seed spread
is no evidence of a better model, which is why verdicts need the retraining that `--seeds`
adds.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.bench_honest import synthetic_unet
from src.cross_validation.config import CVConfig
from src.cross_validation.run import cross_validate
from src.evaluation.comparison import format_pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--tiles", type=int, default=12)
    parser.add_argument("--tile_px", type=int, default=160)
    parser.add_argument("--max_epochs", type=int, default=8)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_seeds_"))
    base = synthetic_unet(work, args.tiles, args.tile_px, args.max_epochs)
    cv = CVConfig(folds=args.folds, seeds=args.seeds, model_type=["UNet", "SegmentationCNN"],
                  selection="last", output_dir=work / "cv", tile_pictures="none")  # fmt: skip
    start = time.perf_counter()
    run = cross_validate(cv, base, log=lambda _: None)
    seconds = time.perf_counter() - start
    print(f"{args.folds}-fold CV × {args.seeds} seeds of UNet and SegmentationCNN on "
          f"{args.tiles} synthetic {args.tile_px}-px tiles, {args.max_epochs} epochs: "
          f"{seconds:.1f} s")  # fmt: skip
    for model in run["models"]:
        per_seed = np.array([partition["f1_class1"] for partition in model["out_of_fold_repeats"]])
        interval = (model.get("out_of_fold_interval") or {}).get("f1_class1")
        shown = "" if interval is None else f" [{interval[0]:.4f}, {interval[1]:.4f}]"
        print(
            f"{model['name']}: out-of-fold f1_class1 per seed "
            + " ".join(f"{v:.4f}" for v in per_seed)
            + f"; spread {per_seed.min():.4f}–{per_seed.max():.4f} "
            f"({per_seed.max() - per_seed.min():.4f}), std {per_seed.std(ddof=1):.4f}; "
            f"pooled over the seeds {model['out_of_fold']['f1_class1']:.4f}{shown}"
        )
    print(format_pairs(run["pairs"]))
    print(f"(work folder: {work})")


if __name__ == "__main__":
    main()
