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

    sweep_file: Path | None = config_field(
        None, "sweep YAML in W&B's format (required, except with --report)"
    )
    count: int | None = config_field(
        None,
        "total trials of the study, over every call and worker (None: until run_cap, the "
        "grid's end or Ctrl-C)",
    )
    workers: int = config_field(
        1, "worker processes on this machine, each running trials of the same study"
    )
    backend: Backend = config_field(
        "auto", "wandb, optuna, or auto (wandb when logged in and reachable, else optuna)"
    )
    storage: str | None = config_field(
        None,
        "Optuna storage: a journal file (journal:PATH or PATH.journal) or a database URL "
        "(sqlite:///…, postgresql://user@host/db); the same one on several machines joins one "
        "study (None: <output_dir>/study.journal, or an existing <output_dir>/study.db)",
    )
    study_name: str | None = config_field(
        None, "Optuna study / W&B sweep name (None: the file's `name`, else its stem)"
    )
    output_dir: Path | None = config_field(
        None, "results, trial checkpoints and logs (None: sweeps/<study_name>)"
    )
    sampler_seed: int = config_field(0, "seed of the random and bayes (TPE) samplers")
    max_failures: int = config_field(3, "stop after this many failed trials in a row")
    objective: Literal["val", "cv"] = config_field(
        "val",
        "score a trial by its validation split (val) or by the mean f1_class1 of a K-fold "
        "cross-validation (cv, pruned after each fold)",
    )
    folds: int = config_field(3, "folds of --objective cv")
    selection: Literal["inner", "last", "outer"] = config_field(
        "inner",
        "how the folds of --objective cv choose their checkpoints: inner (an inner split of "
        "each fold's training tiles), last (the last epoch) or outer (optimistic)",
    )
    heartbeat_s: int = config_field(
        30, "database storages: a trial whose worker is silent for 3× this long is failed"
    )
    report: bool = config_field(
        False, "write and print the results of --storage/--study_name (or output_dir) now"
    )

    def __post_init__(self) -> None:
        check_field_types(self)
        problems = []
        if self.sweep_file is None and not self.report:
            problems.append("--sweep_file is required")
        elif self.sweep_file is not None:
            self.sweep_file = Path(self.sweep_file)
        if self.report and self.sweep_file is None and self.study_name is None:
            problems.append("--report needs --study_name (or the --sweep_file that names it)")
        for name in ("workers", "folds", "heartbeat_s"):
            if getattr(self, name) < 1:
                problems.append(f"--{name} must be at least 1, got {getattr(self, name)}")
        if self.output_dir is not None:
            self.output_dir = Path(self.output_dir)
        if self.count is not None and self.count < 1:
            problems.append(f"--count must be at least 1, got {self.count}")
        if self.max_failures < 1:
            problems.append(f"--max_failures must be at least 1, got {self.max_failures}")
        if self.storage is not None and not self.storage.strip():
            problems.append("--storage must be a journal file or a database URL")
        if problems:
            raise ValueError("; ".join(problems))
