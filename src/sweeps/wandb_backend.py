"""Run a sweep file as a W&B sweep: `wandb.sweep`, then `wandb.agent` calling `train()`.

W&B needs a login and its server. Both are checked first, without waiting on the network for
long (the reachability check has a short timeout in a daemon thread), so that a sweep without
them fails within seconds with a message that points to `--backend optuna`.

Each trial's outcome is appended to `<output_dir>/wandb_trials.jsonl`, from which the result
table is built (W&B keeps the full history in the project).
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from src.cli import config_values
from src.sweeps.optuna_backend import MetricTracker, TrainFunction
from src.sweeps.spec import SweepSpec, trial_config
from src.sweeps.study import SweepError
from src.training.config import ESDConfig
from src.training.loggers import wandb_logged_in

DEFAULT_BASE_URL = "https://api.wandb.ai"
REACHABLE_TIMEOUT_S = 5.0
TRIALS_FILE = "wandb_trials.jsonl"
USE_OPTUNA = (
    "run the sweep locally instead with `--backend optuna` (same sweep file, results in a "
    "SQLite study)"
)


def wandb_base_url() -> str:
    return os.environ.get("WANDB_BASE_URL") or DEFAULT_BASE_URL


def server_reachable(url: str | None = None, timeout: float = REACHABLE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the W&B server opens within `timeout` seconds.

    Name resolution has no timeout of its own, so the attempt runs in a daemon thread that is
    abandoned when it takes too long.
    """
    parts = urllib.parse.urlsplit(url or wandb_base_url())
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    outcome: list[bool] = []

    def connect() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                outcome.append(True)
        except OSError:
            outcome.append(False)

    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(outcome and outcome[0])


def wandb_unavailable() -> str | None:
    """Why the W&B backend cannot run now (None when it can). Uses the network for ≤ 5 s."""
    if os.environ.get("WANDB_MODE") in ("offline", "disabled", "dryrun"):
        return f"WANDB_MODE={os.environ['WANDB_MODE']}: W&B sweeps need the W&B server"
    if not wandb_logged_in():
        return "not logged in to W&B (no WANDB_API_KEY, no `wandb login`)"
    if not server_reachable():
        return f"the W&B server {wandb_base_url()} cannot be reached"
    return None


def choose_backend(requested: str) -> tuple[str, str]:
    """(backend, why) for `auto`, `wandb` or `optuna`; `wandb` unavailable raises SweepError."""
    if requested == "optuna":
        return "optuna", "--backend optuna"
    problem = wandb_unavailable()
    if requested == "wandb":
        if problem:
            raise SweepError(f"--backend wandb: {problem}; {USE_OPTUNA}")
        return "wandb", "--backend wandb"
    if problem:
        return "optuna", f"auto: {problem}"
    return "wandb", "auto: logged in to W&B and its server is reachable"


def read_trials(output_dir: Path) -> list[dict[str, Any]]:
    """The trial records that earlier W&B agents of this output folder wrote."""
    path = Path(output_dir) / TRIALS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _append_trial(output_dir: Path, record: dict[str, Any]) -> None:
    path = Path(output_dir) / TRIALS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        handle.write(json.dumps(record) + "\n")


def run_wandb(
    spec: SweepSpec,
    base: ESDConfig,
    output_dir: Path,
    study_name: str,
    count: int | None,
    max_failures: int = 3,
    workers: int = 1,
    log: Callable[[str], None] = print,
) -> str:
    """Create the W&B sweep and run its trials with `workers` agents (in this process for one,
    else in as many processes, splitting `count`); the sweep id."""
    import wandb

    problem = wandb_unavailable()
    if problem:
        raise SweepError(f"--backend wandb: {problem}; {USE_OPTUNA}")
    project = spec.project or base.wandb_project
    base = dataclasses.replace(base, wandb_mode="online", wandb_project=project)
    sweep = {**spec.raw, "name": study_name}
    try:
        sweep_id = wandb.sweep(sweep, entity=spec.entity, project=project)
    except Exception as error:  # any API error: a message, not a traceback
        raise SweepError(f"W&B refused the sweep: {error}; {USE_OPTUNA}") from error
    log(f"wandb: sweep {sweep_id} in project {project}, {workers} agent(s)")
    if workers == 1:
        run_agent(sweep_id, spec, base, output_dir, count, max_failures)
        return sweep_id
    # `count` split exactly: the agents together never run more than the sweep's total.
    shares = [None] * workers if count is None else [
        count // workers + (index < count % workers) for index in range(workers)
    ]  # fmt: skip
    context = multiprocessing.get_context("spawn")
    agents = [
        context.Process(
            target=run_agent, args=(sweep_id, spec, base, output_dir, share, max_failures)
        )
        for share in shares
        if share != 0
    ]
    for agent in agents:
        agent.start()
    for agent in agents:
        agent.join()
    return sweep_id


def run_agent(
    sweep_id: str,
    spec: SweepSpec,
    base: ESDConfig,
    output_dir: Path,
    count: int | None,
    max_failures: int = 3,
    train: TrainFunction | None = None,
) -> None:
    """One W&B agent of the sweep: each run it gets trains `trial-<run id>` in this process."""
    import wandb

    if train is None:
        from src.training.train import train

    def function() -> None:
        run = wandb.init(project=base.wandb_project, entity=spec.entity, dir=str(base.log_dir))
        name = f"trial-{run.id}"
        run.name = name
        tracker = MetricTracker(spec.metric)
        record: dict[str, Any] = {"number": run.id, "run_name": name, "wandb_id": run.id}
        started = time.monotonic()
        try:
            values = {k: v for k, v in dict(run.config).items() if k in spec.parameters}
            config = trial_config(base, values, name)
            record["config"] = config_values(config)
            results = train(config, extra_callbacks=[tracker])
            value = results.get(spec.metric)
            record.update(
                state="COMPLETE" if value is not None else "FAIL",
                value=None if value is None else float(value),
                best_model_path=results.get("best_model_path"),
                best_model_score=results.get("best_model_score"),
            )
        except Exception as error:
            record.update(state="FAIL", error=f"{type(error).__name__}: {error}")
            raise
        finally:
            record.update(
                epochs=len(tracker.values),
                duration_s=time.monotonic() - started,
                intermediate=tracker.values,
            )
            if record.get("state") is None:  # interrupted
                record["state"] = "INTERRUPTED"
            _append_trial(output_dir, record)

    wandb.agent(
        sweep_id,
        function=function,
        entity=spec.entity,
        project=base.wandb_project,
        count=count,
        max_consecutive_failed_runs=max_failures,
    )
