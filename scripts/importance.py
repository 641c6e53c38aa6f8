"""Permutation importance: `python -m scripts.importance --model_path CKPT | --cv_dir DIR`.

Permutes each group of channels (by sensor, by sensor and date, by band across dates) between
the held-out subtiles and records the drop of class-1 F1 and macro F1; writes
`importance.json`, `importance.csv` and one bar chart per grouping. The same command started
several times shares the parts (a cross-validation's folds) between the processes.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as `python scripts/NAME.py`, not `python -m scripts.NAME`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src.cli import parse_config
from src.evaluation.config import ImportanceConfig
from src.progress import set_progress


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ImportanceConfig, compute, print the tables and where the files are."""
    config = parse_config(ImportanceConfig, argv)
    set_progress(config.progress)
    from src.evaluation.importance import format_importance, permutation_importance
    from src.training.checkpoints import CheckpointError

    try:
        result = permutation_importance(config)
    except (CheckpointError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(format_importance(result))
    folder = Path(result["results_dir"])
    charts = [str(folder / f"importance_{g}.{config.fig_format}") for g in result["groupings"]]
    print(f"wrote {folder / 'importance.json'}, {folder / 'importance.csv'}, {', '.join(charts)}")
    return 0


if __name__ == "__main__":
    from src.shutdown import finish

    sys.exit(finish(main()))
