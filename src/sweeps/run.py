"""Run a sweep: validate the file, choose the backend, run the trials, write the results."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from src.sweeps.config import SweepConfig
from src.sweeps.optuna_backend import OptunaRun, SweepError, run_optuna
from src.sweeps.results import records_from_study, records_from_wandb, write_results
from src.sweeps.spec import SweepSpec, SweepSpecError, load_sweep_file
from src.sweeps.wandb_backend import choose_backend, read_trials, run_wandb
from src.training.config import ESDConfig


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


class _Stop:
    """The signal (SIGINT or SIGTERM) that asked the sweep to stop, if any."""

    signum: int | None = None


@contextlib.contextmanager
def stop_on_signals() -> Iterator[type[_Stop]]:
    """Turn the first SIGINT or SIGTERM into a KeyboardInterrupt in the main thread.

    Lightning stops a trial's training gracefully on it (SIGTERM handlers compose with
    Lightning's own), the trial is recorded as interrupted, and the results are written; the
    exit status is then 128 + the signal's number (130, 143).
    """
    _Stop.signum = None

    def stop(signum: int, frame: object) -> None:
        if _Stop.signum is None:
            _Stop.signum = signum
            raise KeyboardInterrupt

    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    handlers = logging.getLogger("optuna").handlers  # records of optuna.* loggers end here
    for handler in handlers:
        handler.addFilter(_quiet_when_stopped)
    try:
        yield _Stop
    finally:
        for handler in handlers:
            handler.removeFilter(_quiet_when_stopped)
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _quiet_when_stopped(record: logging.LogRecord) -> bool:
    """Drop Optuna's traceback of the trial that a requested stop interrupted."""
    return _Stop.signum is None or record.levelno < logging.WARNING


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
    with stop_on_signals() as stop:
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
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # results are written once, whatever comes
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        records = _records(backend, spec, output_dir, run)
        written = write_results(output_dir, records, spec, study_name)
    if interrupted:
        signum = stop.signum or signal.SIGINT
        stopped = [r.number for r in records if r.state == "INTERRUPTED"]
        print(
            f"stopped by {signal.Signals(signum).name}: "
            + (f"trial {', '.join(map(str, stopped))} marked interrupted; " if stopped else "")
            + f"results of the finished trials in {output_dir}",
            file=sys.stderr,
        )
        return 128 + signum
    return 0 if "best_config" in written else 1
