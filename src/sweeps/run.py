"""Run a sweep: validate the file, choose the backend, run the trials, write the results."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import multiprocessing
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from src.shutdown import finish
from src.sweeps.config import SweepConfig
from src.sweeps.optuna_backend import OptunaRun, open_study, run_optuna
from src.sweeps.results import (
    TABLE_FILE,
    records_from_study,
    records_from_wandb,
    write_results,
)
from src.sweeps.spec import SweepSpec, SweepSpecError, load_sweep_file, parse_sweep_spec
from src.sweeps.study import SweepError, is_journal, open_storage, reap_dead_workers
from src.sweeps.wandb_backend import choose_backend, read_trials, run_wandb
from src.training.config import ESDConfig
from src.training.signals import StopSignal
from src.training.signals import stop_on_signals as stop_signals


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
    """`<output_dir>/study.journal` (several processes may share it), or the SQLite study an
    earlier version made there."""
    legacy = output_dir / "study.db"
    if legacy.is_file():
        return f"sqlite:///{legacy.resolve()}"
    return str((output_dir / "study.journal").resolve())


def _load_study(storage: str, study_name: str, heartbeat_s: int) -> Any:
    import optuna

    try:
        return optuna.load_study(study_name=study_name, storage=open_storage(storage, heartbeat_s))
    except KeyError:  # the study was never created
        return None


def _records(backend: str, spec: SweepSpec, output_dir: Path, run: OptunaRun) -> list[Any]:
    if backend == "wandb":
        return records_from_wandb(read_trials(output_dir), spec)
    study = _load_study(run.storage, run.study_name, run.heartbeat_s)
    return [] if study is None else records_from_study(study, spec)


def _results_without_study(output_dir: Path, storage: str, given: str | None) -> bool:
    """Whether the output folder holds a results table while its default journal is gone."""
    if given is not None or not is_journal(storage):
        return False
    journal = Path(storage.removeprefix("journal:"))
    return (output_dir / TABLE_FILE).is_file() and not journal.is_file()


def report(options: SweepConfig) -> int:
    """Write and print the results of a study as they are now (while its sweep runs, too)."""
    spec = load_sweep_file(options.sweep_file) if options.sweep_file else None
    study_name = options.study_name or (spec.name if spec else None) or options.sweep_file.stem  # type: ignore[union-attr]
    output_dir = options.output_dir or Path("sweeps") / study_name
    storage = options.storage or default_storage(output_dir)
    study = _load_study(storage, study_name, options.heartbeat_s)
    if study is None:
        print(f"error: no study {study_name!r} in {storage}", file=sys.stderr)
        return 1
    if spec is None:
        spec = parse_sweep_spec(study.user_attrs["sweep"], source=f"study {study_name}")
    reap_dead_workers(study)
    write_results(output_dir, records_from_study(study, spec), spec, study_name)
    return 0


def run_workers(spec: SweepSpec, base: ESDConfig, run: OptunaRun, workers: int) -> None:
    """Run `workers` processes of `run_optuna` on the study (created here first, so that a
    grid is queued once); on Ctrl-C or SIGTERM, pass the signal on and wait for them."""
    open_study(spec, run, spec.max_epochs(base))
    context = multiprocessing.get_context("spawn")
    # Each worker's torch gets its share of the cores: more threads than cores make the
    # OpenMP threads of the workers spin against each other (many times slower).
    threads = max(1, (os.cpu_count() or 1) // workers)
    processes = [
        context.Process(
            target=_worker,
            args=(spec, base, dataclasses.replace(run, worker=index), threads),
            name=f"sweep-worker-{index}",
        )
        for index in range(workers)
    ]
    for process in processes:
        process.start()
    try:
        for process in processes:
            process.join()
    except KeyboardInterrupt:
        for process in processes:
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, StopSignal.signum or signal.SIGINT)
        for process in processes:
            process.join()
        raise
    finally:
        study = _load_study(run.storage, run.study_name, run.heartbeat_s)
        if study is not None:
            for number in reap_dead_workers(study):
                print(f"optuna: trial {number} lost its worker process: marked failed")
    for process in processes:
        if process.exitcode not in (0, None):
            print(f"optuna: {process.name} exited with status {process.exitcode}", file=sys.stderr)


def _worker(spec: SweepSpec, base: ESDConfig, run: OptunaRun, threads: int) -> None:
    """One worker process: run trials until the study's totals are reached."""
    import torch

    torch.set_num_threads(threads)
    prefix = f"[worker {run.worker}] "
    with stop_on_signals():
        try:
            run_optuna(spec, base, run, log=lambda line: print(prefix + line, flush=True))
        except KeyboardInterrupt:
            sys.exit(StopSignal.exit_status())
        finally:
            finish()  # the process ends here: no collection of what it imported


@contextlib.contextmanager
def stop_on_signals() -> Iterator[type[StopSignal]]:
    """`src.training.signals.stop_on_signals`, with Optuna's traceback of the trial that the
    stop interrupted left out; the trial is recorded as interrupted and the results written."""
    handlers = logging.getLogger("optuna").handlers  # records of optuna.* loggers end here
    for handler in handlers:
        handler.addFilter(_quiet_when_stopped)
    try:
        with stop_signals() as stop:
            yield stop
    finally:
        for handler in handlers:
            handler.removeFilter(_quiet_when_stopped)


def _quiet_when_stopped(record: logging.LogRecord) -> bool:
    """Drop Optuna's traceback of the trial that a requested stop interrupted."""
    return StopSignal.signum is None or record.levelno < logging.WARNING


def run_sweep(options: SweepConfig, base: ESDConfig, explicit: set[str]) -> int:
    """Validate the sweep file, run the trials, write the results; the exit status."""
    if options.report:
        try:
            return report(options)
        except (SweepError, SweepSpecError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
    try:
        spec = load_sweep_file(options.sweep_file, base)  # type: ignore[arg-type]
    except SweepSpecError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if options.objective == "cv" and spec.metric != "val_f1_class1":
        print(
            f"error: --objective cv scores a trial by its cross-validated f1_class1: set the "
            f"sweep's metric to val_f1_class1, not {spec.metric}",
            file=sys.stderr,
        )
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
    if options.objective == "cv" and backend == "wandb":
        print(
            "error: --objective cv runs on the Optuna backend: add --backend optuna",
            file=sys.stderr,
        )
        return 2
    storage = options.storage or default_storage(output_dir)
    if backend == "optuna" and _results_without_study(output_dir, storage, options.storage):
        print(
            f"error: {output_dir} holds the results of a sweep ({TABLE_FILE}) whose study "
            f"{storage} is gone: a new study there would mix with them; choose another "
            f"--study_name or --output_dir, or delete {output_dir}",
            file=sys.stderr,
        )
        return 1
    run = OptunaRun(
        storage=storage,
        study_name=study_name,
        count=options.count,
        seed=options.sampler_seed,
        max_failures=options.max_failures,
        heartbeat_s=options.heartbeat_s,
        objective=options.objective,
        folds=options.folds,
        selection=options.selection,
        output_dir=output_dir,
    )
    interrupted = False
    with stop_on_signals() as stop:
        try:
            if backend == "wandb":
                run_wandb(
                    spec,
                    base,
                    output_dir,
                    study_name,
                    options.count,
                    options.max_failures,
                    options.workers,
                )
            elif options.workers > 1:
                run_workers(spec, base, run, options.workers)
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
