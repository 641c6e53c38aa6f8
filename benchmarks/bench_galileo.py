"""Galileo on the demo's synthetic set (12 tiles of 160 px, physical-units recipe):

    python -m benchmarks.bench_galileo --weights DIR [--tiles 12 --tile_px 160 --max_epochs 8]

A 3-fold cross-validation (`--selection last`, the same folds for every model) of Galileo
from random weights beside UNet, then of Galileo from the pretrained nano encoder in DIR
(`config.json`, `encoder.pt`, `normalization.json`) on monthly composites (the default) and on
the acquisition dates (`galileo_time="acquisition"`); the wall time of each, the leaderboard
with 95 % intervals over tiles and the paired differences (bootstrap over tiles, per-fold
differences with the corrected t-test) of every pair.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
from pathlib import Path

from benchmarks.bench_honest import synthetic_unet
from benchmarks.bench_paper import timed
from src.cross_validation.config import CVConfig
from src.cross_validation.run import cross_validate
from src.esd_data.preprocessing import PreprocessConfig
from src.evaluation.comparison import (
    compare_runs,
    format_leaderboard,
    format_pairs,
    load_scored_runs,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--weights", type=Path, default=os.environ.get("ESD_GALILEO_DIR"))
    parser.add_argument("--tiles", type=int, default=12)
    parser.add_argument("--tile_px", type=int, default=160)
    parser.add_argument("--max_epochs", type=int, default=8)
    args = parser.parse_args()
    if args.weights is None:
        parser.error("--weights DIR (or ESD_GALILEO_DIR) must name the Galileo nano folder")
    work = Path(tempfile.mkdtemp(prefix="bench_galileo_"))
    physical = PreprocessConfig(recipe="physical")
    base = synthetic_unet(work, args.tiles, args.tile_px, args.max_epochs, physical)
    quiet = lambda _: None  # noqa: E731
    roots = []
    for name, models, options in (
        ("random", ["Galileo", "UNet"], {}),
        ("pretrained", ["Galileo"], {"pretrained": True, "weights_path": args.weights}),
        (
            "pretrained-acquisition",
            ["Galileo"],
            {"pretrained": True, "weights_path": args.weights, "galileo_time": "acquisition"},
        ),
    ):
        config = dataclasses.replace(base, model_type=models[0], **options)
        cv = CVConfig(folds=3, model_type=models, selection="last", name=name,
                      output_dir=work / "cv", tile_pictures="none")  # fmt: skip
        run = timed(f"3-fold CV of {' and '.join(models)} ({name} Galileo)",
                    lambda cv=cv, config=config: cross_validate(cv, config, log=quiet))  # fmt: skip
        roots.append(Path(run["root"]))
    runs = [run for root in roots for run in load_scored_runs(root)]
    print(format_leaderboard(runs))
    print(format_pairs(compare_runs(runs, resamples=1000, seed=0)))
    print(f"(work folder: {work})")


if __name__ == "__main__":
    main()
