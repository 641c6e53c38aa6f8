"""Refit and submit: `python -m scripts.submit --cv_dir cv/NAME/UNet --unlabelled Val Test`.

Trains the cross-validated model once more on every labelled tile, for the epochs its folds
chose (and with the class-1 threshold its out-of-fold predictions chose, when the
cross-validation used `--decision class1_threshold`), predicts each unlabelled folder and
writes its Kaggle file, checked; the files are named on the last line.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as `python scripts/NAME.py`, not `python -m scripts.NAME`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src.cli import parse_config
from src.submission.config import SubmitConfig


def main(argv: Sequence[str] | None = None) -> int:
    """Refit, predict, check; print each folder's Kaggle file and name them last."""
    config = parse_config(SubmitConfig, argv)
    from src.submission.refit import refit_and_submit
    from src.training.checkpoints import CheckpointError
    from src.training.signals import run_resumable

    record = run_resumable(
        lambda: refit_and_submit(config), (CheckpointError, FileNotFoundError, ValueError)
    )
    if isinstance(record, int):
        return record
    decision = record["decision"]
    for folder, entry in record["submissions"].items():
        rule = f"class 1 where p ≥ {entry['threshold']:.4f}" if "threshold" in entry else "argmax"
        print(f"{folder}: {entry['check']} [{decision}: {rule}]")
    print("submit: " + " ".join(entry["csv"] for entry in record["submissions"].values()))
    return 0


if __name__ == "__main__":
    from src.shutdown import finish

    sys.exit(finish(main()))
