"""`SweepConfig`: the options of `scripts.train_sweeps` (no heavy imports, so `--help` is fast)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from src.cli import check_field_types, config_field

Backend = Literal["auto", "wandb", "optuna"]


@dataclass
class SweepConfig:
    """Run a hyper-parameter sweep of scripts.train from a W&B-format sweep file."""

    sweep_file: Path | None = config_field(None, "sweep YAML in W&B's format (required)")
    count: int | None = config_field(
        None, "trials to run in this call (None: until run_cap, the grid's end or Ctrl-C)"
    )
    backend: Backend = config_field(
        "auto", "wandb, optuna, or auto (wandb when logged in and reachable, else optuna)"
    )
    storage: str | None = config_field(
        None, "Optuna storage URL (None: sqlite:///<output_dir>/study.db)"
    )
    study_name: str | None = config_field(
        None, "Optuna study / W&B sweep name (None: the file's `name`, else its stem)"
    )
    output_dir: Path | None = config_field(
        None, "results, trial checkpoints and logs (None: sweeps/<study_name>)"
    )
    sampler_seed: int = config_field(0, "seed of the random and bayes (TPE) samplers")
    max_failures: int = config_field(3, "stop after this many failed trials in a row")

    def __post_init__(self) -> None:
        check_field_types(self)
        problems = []
        if self.sweep_file is None:
            problems.append("--sweep_file is required")
        else:
            self.sweep_file = Path(self.sweep_file)
        if self.output_dir is not None:
            self.output_dir = Path(self.output_dir)
        if self.count is not None and self.count < 1:
            problems.append(f"--count must be at least 1, got {self.count}")
        if self.max_failures < 1:
            problems.append(f"--max_failures must be at least 1, got {self.max_failures}")
        if self.storage is not None and not self.storage.strip():
            problems.append("--storage must be a database URL, e.g. sqlite:///study.db")
        if problems:
            raise ValueError("; ".join(problems))
