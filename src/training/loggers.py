"""Experiment loggers: always a CSV log on disk, plus W&B online, offline or not at all."""

from __future__ import annotations

import csv
import netrc
import os
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from src.atomic import atomic_path
from src.training.config import WandbMode


def wandb_logged_in() -> bool:
    """Whether a W&B API key is configured (WANDB_API_KEY or ~/.netrc); no network is used."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc().authenticators(host or "api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def resolve_wandb_mode(mode: WandbMode) -> str:
    """`online` only when logged in (else `offline`, with a note); `auto` picks the same way."""
    if mode in ("offline", "disabled"):
        return mode
    if wandb_logged_in() and os.environ.get("WANDB_MODE") != "offline":
        return "online"
    if mode == "online":
        print(
            "W&B: not logged in (run `wandb login`), logging offline instead; upload later "
            "with `wandb sync`",
            file=sys.stderr,
        )
    return "offline"


class _ContinuingWriter(ExperimentWriter):
    """An experiment writer that continues an existing `metrics.csv` instead of deleting it.

    Rows of epochs after `last_epoch` (logged by a run that stopped before it could save its
    next checkpoint) are dropped, and so are rows without an epoch (the learning rate, logged
    as an epoch starts) at steps after the last kept epoch's, so the resumed run's rows follow
    on without duplicates.
    """

    def __init__(self, log_dir: str, last_epoch: int) -> None:
        self.last_epoch = last_epoch
        super().__init__(log_dir=log_dir)

    def _check_log_dir_exists(self) -> None:
        path = Path(self.metrics_file_path)
        if not path.is_file():
            return
        with path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            header = list(reader.fieldnames or [])
            rows = list(reader)
        done = [row for row in rows if 0 <= _epoch(row) <= self.last_epoch]
        limit = max((_step(row) for row in done), default=-1.0)
        rows = [
            row
            for row in rows
            if 0 <= _epoch(row) <= self.last_epoch or (_epoch(row) < 0 and _step(row) <= limit)
        ]
        with atomic_path(path) as temporary, temporary.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=header)
            writer.writeheader()
            writer.writerows(rows)
        self.metrics_keys = header


def _epoch(row: dict[str, str]) -> float:
    value = row.get("epoch") or ""
    return float(value) if value else -1.0


def _step(row: dict[str, str]) -> float:
    value = row.get("step") or ""
    return float(value) if value else -1.0


class RunCSVLogger(CSVLogger):
    """`CSVLogger` at `log_dir/<model_type>/<run_name>/`; with `continue_after_epoch`, a
    resumed run appends to the run's `metrics.csv` after that (last completed) epoch."""

    def __init__(self, *args: Any, continue_after_epoch: int | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.continue_after_epoch = continue_after_epoch

    @property
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None and self.continue_after_epoch is not None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ContinuingWriter(self.log_dir, self.continue_after_epoch)
        return super().experiment


def build_loggers(
    log_dir: Path,
    model_type: str,
    run_name: str,
    wandb_mode: WandbMode,
    wandb_project: str,
    continue_after_epoch: int | None = None,
    wandb_id: str | None = None,
) -> list[Logger]:
    """A CSV logger (`log_dir/<model_type>/<run_name>/metrics.csv`) and, unless disabled, W&B.

    W&B offline runs go to `log_dir/wandb/offline-run-*` (upload them with `wandb sync`).
    A resumed run (`continue_after_epoch`, the checkpoint's epoch) appends to its CSV log and
    continues the W&B run `wandb_id`. The hyper-parameters reach both from the module.
    """
    loggers: list[Logger] = [
        RunCSVLogger(
            log_dir, name=model_type, version=run_name, continue_after_epoch=continue_after_epoch
        )
    ]
    mode = resolve_wandb_mode(wandb_mode)
    if mode == "disabled":
        return loggers
    Path(log_dir).mkdir(parents=True, exist_ok=True)
    import wandb

    logger = WandbLogger(
        project=wandb_project,
        name=run_name,
        save_dir=str(log_dir),
        offline=mode == "offline",
        id=wandb_id,
        resume="allow" if wandb_id else None,
        settings=wandb.Settings(mode=mode, init_timeout=60, silent=True),
    )
    # WandbLogger always passes `anonymous` (None here), which wandb now warns about.
    if logger._wandb_init.get("anonymous") is None:
        logger._wandb_init.pop("anonymous", None)
    loggers.append(logger)
    return loggers
