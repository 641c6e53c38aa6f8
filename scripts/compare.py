"""Paired comparison of runs on the same tiles: `python -m scripts.compare --runs DIR DIR …`.

Each DIR is an evaluation's results folder (`scripts.evaluate`) or a finished
cross-validation (`scripts.cross_validate`, one run per model). Prints the leaderboard with
95 % intervals over tiles and, for every pair, the paired difference of class-1 F1 (and, for
cross-validations on the same folds, the per-fold differences and a corrected t-test);
`--out FILE.json` writes it all.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as `python scripts/NAME.py`, not `python -m scripts.NAME`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src.cli import parse_config
from src.evaluation.config import CompareConfig


def main(argv: Sequence[str] | None = None) -> int:
    """Load the runs, pair them, print (and write) the comparison."""
    config = parse_config(CompareConfig, argv)
    from src.atomic import write_json
    from src.evaluation.comparison import (
        PairingError,
        compare_runs,
        distinct_names,
        format_leaderboard,
        format_pairs,
        load_scored_runs,
    )

    try:
        runs = distinct_names([run for folder in config.runs for run in load_scored_runs(folder)])
        if len(runs) < 2:
            raise PairingError(f"{len(runs)} run(s) given: a comparison needs two or more")
        names = [run.name for run in runs]
        if len(set(names)) != len(names):
            raise PairingError(f"a folder was given twice ({', '.join(names)})")
        if config.reference is not None and config.reference not in names:
            raise PairingError(f"--reference {config.reference} is none of {', '.join(names)}")
        pairs = compare_runs(
            runs, config.bootstrap_resamples, config.bootstrap_seed, config.reference
        )
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(format_leaderboard(runs))
    print(format_pairs(pairs))
    if config.out is not None:
        leaderboard = [
            {"name": r.name, "f1_class1": r.f1_class1, "interval": r.interval, "source": r.source,
             "tiles": r.tiles, "optimistic": r.optimistic}
            for r in sorted(runs, key=lambda r: -r.f1_class1)
        ]  # fmt: skip
        write_json(config.out, {"leaderboard": leaderboard, "pairs": pairs})
        print(f"wrote {config.out}")
    return 0


if __name__ == "__main__":
    from src.shutdown import finish

    sys.exit(finish(main()))
