"""Hyper-parameter sweeps of scripts.train from a W&B-format sweep file, on W&B or Optuna.

    python -m scripts.train_sweeps --sweep_file sweeps.yml --count 20 [--backend optuna] \\
        --processed_dir data/processed --max_epochs 10          # fixed training options

Each trial trains `ESDConfig` defaults ← `--config` YAML ← training flags ← the trial's
sampled parameters, named `trial-<number>`, with checkpoints and logs under `--output_dir`
(default `sweeps/<study_name>/`). At the end, and on Ctrl-C, the trials are printed best
first and written as `trials.csv`, the best trial's config as `best_config.yaml` (for
`python -m scripts.train --config`) and a plot as `sweep.png`. Exit status: 0 done, 1 the
backend cannot run or no trial completed, 2 bad options or sweep file, 130 interrupted.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python scripts/NAME.py`, not `python -m scripts.NAME`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src.cli import add_config_arguments, build_parser, construct, parse_values
from src.progress import set_progress
from src.sweeps.config import SweepConfig
from src.training.config import ESDConfig


def build_sweep_parser() -> argparse.ArgumentParser:
    """SweepConfig's flags, then every ESDConfig field as an optional fixed override."""
    parser = build_parser(SweepConfig)
    add_config_arguments(
        parser,
        ESDConfig,
        "training options",
        "fixed for every trial (the sweep's parameters override them); `--config` may hold "
        "these and the sweep options above",
    )
    return parser


_Options = dataclasses.make_dataclass(
    "_Options",
    [(f.name, Any) for cls in (SweepConfig, ESDConfig) for f in dataclasses.fields(cls)],
)


def parse_arguments(
    argv: Sequence[str] | None = None,
) -> tuple[SweepConfig, ESDConfig, set[str]]:
    """(sweep options, the trials' base ESDConfig, the ESDConfig fields given explicitly).

    Bad values exit with status 2 and the dataclasses' validation messages.
    """
    parser = build_sweep_parser()
    values = parse_values(parser, _Options, argv)
    sweep_fields = {f.name for f in dataclasses.fields(SweepConfig)}
    sweep_values = {k: v for k, v in values.items() if k in sweep_fields}
    training_values = {k: v for k, v in values.items() if k not in sweep_fields}
    options = construct(parser, SweepConfig, sweep_values)
    return options, construct(parser, ESDConfig, training_values), set(training_values)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line and run the sweep."""
    options, base, explicit = parse_arguments(argv)
    set_progress(base.progress)
    from src.sweeps.run import run_sweep
    from src.visualization.figure_output import figure_output

    with figure_output(base):
        return run_sweep(options, base, explicit)


if __name__ == "__main__":
    from src.shutdown import finish

    sys.exit(finish(main()))
