"""What the paper-ready results cost, on the demo's synthetic set (12 tiles of 160 px):

    python -m benchmarks.bench_paper [--tiles 12 --tile_px 160 --max_epochs 8]

1. a 5-fold cross-validation of UNet (`--selection last`), then permutation importance by
   sensor on its folds' held-out tiles (`scripts.importance --cv_dir`): wall time and table;
2. `--ablate sensors` with 3 folds (every sensor left out, every sensor alone): wall time and
   the leaderboard's paired differences against the full model;
3. the HTML report of each cross-validation: its size in bytes.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from benchmarks.bench_honest import synthetic_unet
from src.cross_validation.config import CVConfig
from src.cross_validation.run import cross_validate
from src.evaluation.comparison import format_pairs
from src.evaluation.config import ImportanceConfig
from src.evaluation.html_report import write_report
from src.evaluation.importance import format_importance, permutation_importance


def timed(what: str, work):
    start = time.perf_counter()
    result = work()
    print(f"{what}: {time.perf_counter() - start:.1f} s")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--tiles", type=int, default=12)
    parser.add_argument("--tile_px", type=int, default=160)
    parser.add_argument("--max_epochs", type=int, default=8)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_paper_"))
    base = synthetic_unet(work, args.tiles, args.tile_px, args.max_epochs)
    quiet = lambda _: None  # noqa: E731
    five = CVConfig(folds=5, model_type=["UNet"], selection="last", output_dir=work / "cv")
    run = timed("5-fold CV of UNet", lambda: cross_validate(five, base, log=quiet))
    root = Path(run["root"])
    importance = timed(
        "permutation importance by sensor (5 repeats) on the 5 folds' held-out tiles",
        lambda: permutation_importance(
            ImportanceConfig(cv_dir=root / "UNet", grouping=["sensor"], repeats=5), log=quiet
        ),
    )
    print(format_importance(importance))
    report = write_report([root])
    print(f"report of the 5-fold CV: {report.stat().st_size} bytes")
    three = CVConfig(folds=3, model_type=["UNet"], selection="last", ablate="sensors",
                     output_dir=work / "cv")  # fmt: skip
    ablation = timed("--ablate sensors, 3 folds (9 variants)",
                     lambda: cross_validate(three, base, log=quiet))  # fmt: skip
    print(format_pairs(ablation["pairs"]))
    report = write_report([Path(ablation["root"])])
    print(f"report of the ablation: {report.stat().st_size} bytes")
    print(f"(work folder: {work})")


if __name__ == "__main__":
    main()
