"""A run's folders are its own: one process at a time, never a finished run overwritten, and a
`status.json` that can be trusted.

`claim_run` takes an exclusive lock in the run's log folder for as long as the training runs
(a second process on the same run name fails at once) and refuses a run name whose folders
already hold a run, unless the training resumes it. `write_status` records `running` (with
host and process id) from the start and `finished`, `failed` or `interrupted` at the end;
`read_status` reports a `running` run whose process is gone as `killed`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from src.atomic import write_json
from src.training.config import ESDConfig

STATUS_FILE = "status.json"
LOCK_FILE = ".run.lock"


class RunFolderError(ValueError):
    """A run name whose folders are taken (by a finished run or a running process)."""


def run_log_dir(log_dir: Path, model_type: str, run_name: str) -> Path:
    """Where the run's `metrics.csv` and `status.json` go (the CSV logger's folder)."""
    return Path(log_dir) / model_type / run_name


def _holds_a_run(log_folder: Path, checkpoint_folder: Path) -> str | None:
    if (log_folder / STATUS_FILE).is_file() or (log_folder / "metrics.csv").is_file():
        status = read_status(log_folder)
        return f"a {status.get('status', 'previous')} run in {log_folder}"
    if checkpoint_folder.is_dir() and any(checkpoint_folder.glob("*.ckpt")):
        return f"checkpoints in {checkpoint_folder}"
    return None


@contextlib.contextmanager
def claim_run(log_folder: Path, checkpoint_folder: Path, resuming: bool) -> Iterator[None]:
    """Hold the run's lock; RunFolderError, before anything is written, when another process
    trains this run or (unless `resuming`) its folders already hold a run."""
    log_folder = Path(log_folder)
    made = [f for f in (log_folder, *log_folder.parents) if not f.exists()]
    log_folder.mkdir(parents=True, exist_ok=True)
    handle = (log_folder / LOCK_FILE).open("a+")

    def release(failed: bool) -> None:
        handle.close()
        if failed and made and [p.name for p in log_folder.iterdir()] == [LOCK_FILE]:
            (log_folder / LOCK_FILE).unlink()  # a run that wrote nothing leaves no folder
            for folder in made:  # deepest first
                with contextlib.suppress(OSError):
                    folder.rmdir()

    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            status = read_status(log_folder)
            owner = f" (process {status['pid']} on {status['host']})" if "pid" in status else ""
            raise RunFolderError(
                f"run {log_folder.name} is being trained by another process{owner}: choose "
                f"another --wandb_run_name"
            ) from None
        taken = None if resuming else _holds_a_run(log_folder, checkpoint_folder)
        if taken:
            raise RunFolderError(
                f"run name {log_folder.name} is taken ({taken}): choose another "
                f"--wandb_run_name, continue it with --resume "
                f"{checkpoint_folder / 'last.ckpt'}, or delete its folders"
            )
    except RunFolderError:
        release(failed=True)
        raise
    try:
        yield
    except BaseException:
        release(failed=True)
        raise
    release(failed=False)


def write_status(log_folder: Path, status: str, **details: Any) -> None:
    """`status.json`: the status, this process's host and id, and `details`."""
    record = {"status": status, "host": socket.gethostname(), "pid": os.getpid(), **details}
    write_json(Path(log_folder) / STATUS_FILE, record)


def process_alive(pid: int) -> bool:
    """Whether a process with this id exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_status(log_folder: Path) -> dict[str, Any]:
    """The run's `status.json` ({} when there is none); a run that says `running` but whose
    process on this host is gone is reported as `killed`."""
    path = Path(log_folder) / STATUS_FILE
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    if (
        record.get("status") == "running"
        and record.get("host") == socket.gethostname()
        and not process_alive(int(record.get("pid", 0)))
    ):
        record["status"] = "killed"
    return record


def run_inside(base: ESDConfig, folder: Path, run_name: str, **changes: Any) -> ESDConfig:
    """`base` as run `run_name` of a command's own folder (a cross-validation's unit, a
    self-training's round, a refit): its data view in `folder/data`, its checkpoints and logs
    beside it, resumed from its `last.ckpt` when one is there, else started afresh (a run
    stopped before its first epoch leaves nothing to resume; its folders go), no W&B run unless
    one was asked for. The caller holds `folder` (no other process trains in it)."""
    folder = Path(folder)
    last = folder / "checkpoints" / base.model_type / run_name / "last.ckpt"
    if not last.is_file():
        for name in ("logs", "checkpoints"):
            shutil.rmtree(folder / name, ignore_errors=True)
    return dataclasses.replace(
        base,
        raw_dir=None,
        processed_dir=folder / "data",
        checkpoint_dir=folder / "checkpoints",
        log_dir=folder / "logs",
        wandb_run_name=run_name,
        wandb_id=None,
        wandb_mode="disabled" if base.wandb_mode == "auto" else base.wandb_mode,
        resume=last if last.is_file() else None,
        **changes,
    )
