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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from src.cli import add_config_arguments, build_parser, config_field, parse_values
from src.sweeps.optuna_backend import OptunaRun, SweepError, run_optuna
from src.sweeps.results import records_from_study, records_from_wandb, write_results
from src.sweeps.spec import SweepSpec, SweepSpecError, load_sweep_file
from src.sweeps.wandb_backend import choose_backend, read_trials, run_wandb
from src.training.config import ESDConfig

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


# --------------------------------------------------------------------------------------------
# command line


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
    try:
        options = SweepConfig(**sweep_values)
        base = ESDConfig(**training_values)
    except (TypeError, ValueError) as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")
        raise  # unreachable: parser.exit raises SystemExit
    return options, base, set(training_values)


# --------------------------------------------------------------------------------------------
# the sweep


def trial_base(base: ESDConfig, explicit: set[str], output_dir: Path, backend: str) -> ESDConfig:
    """`base` with the trials' defaults: checkpoints and logs in `output_dir`, W&B offline
    (online under the W&B backend), unless given explicitly."""
    defaults: dict[str, Any] = {
        "checkpoint_dir": output_dir / "checkpoints",
        "log_dir": output_dir / "logs",
        "wandb_mode": "online" if backend == "wandb" else "offline",
    }
    if backend == "wandb":
        explicit = explicit - {"wandb_mode"}  # trials log to the agent's W&B run
    return dataclasses.replace(base, **{k: v for k, v in defaults.items() if k not in explicit})


def default_storage(output_dir: Path) -> str:
    return f"sqlite:///{(output_dir / 'study.db').resolve()}"


def _records(backend: str, spec: SweepSpec, output_dir: Path, run: OptunaRun) -> list[Any]:
    if backend == "wandb":
        return records_from_wandb(read_trials(output_dir), spec)
    import optuna

    try:
        study = optuna.load_study(study_name=run.study_name, storage=run.storage)
    except KeyError:  # the study was never created
        return []
    return records_from_study(study, spec)


def run_sweep(options: SweepConfig, base: ESDConfig, explicit: set[str]) -> int:
    """Validate the sweep file, run the trials, write the results; the exit status."""
    try:
        spec = load_sweep_file(options.sweep_file, base)  # type: ignore[arg-type]
    except SweepSpecError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    study_name = options.study_name or spec.name or options.sweep_file.stem  # type: ignore[union-attr]
    output_dir = options.output_dir or Path("sweeps") / study_name
    try:
        backend, why = choose_backend(options.backend)
    except SweepError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"backend: {backend} ({why})")
    for name in sorted(explicit & set(spec.parameters)):
        print(f"note: --{name} is replaced by the sweep's parameter {name}")
    base = trial_base(base, explicit, output_dir, backend)
    output_dir.mkdir(parents=True, exist_ok=True)
    run = OptunaRun(
        storage=options.storage or default_storage(output_dir),
        study_name=study_name,
        count=options.count,
        seed=options.sampler_seed,
        max_failures=options.max_failures,
    )
    interrupted = False
    try:
        if backend == "wandb":
            run_wandb(spec, base, output_dir, study_name, options.count, options.max_failures)
        else:
            run_optuna(spec, base, run)
    except SweepError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        interrupted = True
        print("\ninterrupted: writing the results of the finished trials", file=sys.stderr)
    records = _records(backend, spec, output_dir, run)
    written = write_results(output_dir, records, spec, study_name)
    if interrupted:
        return 130
    return 0 if "best_config" in written else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line and run the sweep."""
    options, base, explicit = parse_arguments(argv)
    return run_sweep(options, base, explicit)


if __name__ == "__main__":
    sys.exit(main())
