"""Evaluate a checkpoint on whole tiles: `python -m scripts.evaluate [--model_path CKPT]`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python scripts/NAME.py`, not `python -m scripts.NAME`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src.cli import parse_config
from src.evaluation.config import EvalConfig
from src.progress import set_progress

__all__ = ["EvalConfig", "evaluate", "main"]

RUN_FILES = (
    "metrics.json",
    "predictions.csv",
    "confusion_matrix.{fig}",
    "roc_curves.{fig}",
    "classification_report.txt",
)


def evaluate(config: EvalConfig) -> dict[str, Any]:
    """`src.evaluation.evaluate.evaluate`: predict, restitch, write; the metrics (see there)."""
    from src.evaluation.evaluate import evaluate as run

    return run(config)


def main(argv: list[str] | None = None) -> int:
    """Parse EvalConfig, evaluate, print the table and where the files are."""
    config = parse_config(EvalConfig, argv)
    set_progress(config.progress)
    from src.esd_data.cache import PrepareError
    from src.esd_data.reader import TileError
    from src.evaluation.report import format_table
    from src.training.checkpoints import CheckpointError
    from src.training.signals import StopSignal, stop_on_signals

    with stop_on_signals():
        try:
            metrics = evaluate(config)
        except KeyboardInterrupt:
            print("interrupted: no result was written (an earlier one is left whole)",
                  file=sys.stderr)  # fmt: skip
            return StopSignal.exit_status()
        except (CheckpointError, FileNotFoundError, ValueError, PrepareError, TileError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
    results_dir = Path(metrics["results_dir"])
    print(format_table(metrics))
    from src.evaluation.report import KAGGLE_FILE, check_kaggle_csv

    try:
        kaggle = check_kaggle_csv(results_dir / KAGGLE_FILE, metrics["tiles_predicted"])
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    tiles = results_dir / "tiles"
    print(
        f"wrote {len(metrics['tiles'])} tile(s) to {tiles}/ (PNG, prediction and probability TIFF)"
    )
    for tile in metrics["tiles"]:
        names = [f"{tile['tile']}.{config.fig_format}", f"{tile['tile']}_prediction.tif"]
        if "date_weights" in tile:
            names.append(f"{tile['tile']}_attention.{config.fig_format}")
        print("  " + "  ".join(str(tiles / name) for name in names))
    for name in RUN_FILES:
        path = results_dir / name.format(fig=config.fig_format)
        if path.exists():
            print(f"  {path}")
    print(kaggle)  # the file to submit, named last
    return 0


if __name__ == "__main__":
    from src.shutdown import finish

    sys.exit(finish(main()))
