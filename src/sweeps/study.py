"""The Optuna study that every worker of a sweep shares: storage, trial accounting, recovery.

Storage: a journal file (`study.journal`, what Optuna documents for several processes on
one machine, also on a shared disk) or any RDB URL (`sqlite:///…`, `postgresql://…` for a
cluster), opened with Optuna's heartbeat so that the trials of a worker that died elsewhere
are failed. Each trial records the worker that runs it (host and process id), so a trial
whose process on this host no longer exists is failed too (journal storage has no
heartbeat).

Which trials count towards `--count` and `run_cap` (the study's totals): the finished ones
and those running, except trials that a Ctrl-C/SIGTERM interrupted, whose worker died, or
that were admitted beyond the total by a race between workers (`surplus`, never run). The
first two kinds are queued again (once) so that their parameters are still tried.
"""

from __future__ import annotations

import json
import os
import socket
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from src.training.run_folder import process_alive

INTERRUPTED = "interrupted"
WORKER_DIED = "worker_died"
SURPLUS = "surplus"
WORKER = "worker"
ERROR = "error"
RETRY_OF = "retry_of"
REQUEUED = "requeued_trials"
JOURNAL_PREFIX = "journal:"


class SweepError(RuntimeError):
    """A sweep cannot start or go on (a message for the user, not a traceback)."""


def is_journal(url: str) -> bool:
    """Whether `url` names a journal file (`journal:PATH` or a path ending in .journal)."""
    return url.startswith(JOURNAL_PREFIX) or url.endswith(".journal")


def open_storage(url: str, heartbeat_s: int = 30) -> BaseStorage:
    """The storage at `url`: a journal file, or an RDB with Optuna's heartbeat."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            if is_journal(url):
                path = Path(url.removeprefix(JOURNAL_PREFIX))
                path.parent.mkdir(parents=True, exist_ok=True)
                cut_torn_record(path)
                return JournalStorage(JournalFileBackend(str(path)))
            engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None
            return RDBStorage(
                url,
                engine_kwargs=engine,
                heartbeat_interval=heartbeat_s,
                grace_period=3 * heartbeat_s,
            )
    except Exception as error:  # any driver or URL error: tell the user
        raise SweepError(f"cannot open Optuna storage {url!r}: {error}") from error


def cut_torn_record(path: Path, log: Any = print) -> None:
    """Cut a journal file's last record when it is torn (a worker died while writing it), so
    that what is appended next starts on a line of its own; says so in one line."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    data = path.read_bytes()
    end = data.rfind(b"\n", 0, len(data) - 1) + 1 if data.endswith(b"\n") else data.rfind(b"\n") + 1
    last = data[end:]
    try:
        json.loads(last)
        if data.endswith(b"\n"):
            return
    except ValueError:
        pass
    with path.open("r+b") as handle:
        handle.truncate(end)
    log(f"optuna: {path}: its last record was torn ({len(last)} bytes, a worker stopped while "
        f"writing it): cut off; the trials before it are kept")  # fmt: skip


def this_worker() -> dict[str, Any]:
    """The host and process id recorded on the trials this process runs."""
    return {"host": socket.gethostname(), "pid": os.getpid()}


def not_counted(trial: FrozenTrial) -> bool:
    """A trial that does not count towards the totals (see the module docstring)."""
    attrs = trial.user_attrs
    if attrs.get(SURPLUS):
        return True
    if trial.state != TrialState.FAIL:
        return False
    # A worker that dies (Optuna's heartbeat fails its trial elsewhere) leaves no error.
    return bool(attrs.get(INTERRUPTED) or attrs.get(WORKER_DIED) or ERROR not in attrs)


def counted_trials(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """The trials that count: finished or running, and not `not_counted`."""
    return [
        t
        for t in trials
        if (t.state.is_finished() or t.state == TrialState.RUNNING) and not not_counted(t)
    ]


def reap_dead_workers(study: optuna.Study) -> list[int]:
    """Fail the running trials whose worker process on this host has died; their numbers."""
    host = socket.gethostname()
    reaped = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = trial.user_attrs.get(WORKER)
        if not owner or owner.get("host") != host or process_alive(int(owner["pid"])):
            continue
        storage, trial_id = study._storage, trial._trial_id  # no public API to fail a trial
        storage.set_trial_user_attr(trial_id, WORKER_DIED, True)
        if storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
            reaped.append(trial.number)
    return reaped


def requeue_stopped(study: optuna.Study) -> int:
    """Queue again, once, the parameters of trials that were interrupted or lost their
    worker; how many were queued."""
    done = set(study.user_attrs.get(REQUEUED, []))
    again = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
        if not_counted(t) and not t.user_attrs.get(SURPLUS) and t.number not in done and t.params
    ]
    for trial in again:
        study.enqueue_trial(trial.params, user_attrs={RETRY_OF: trial.number})
    if again:
        study.set_user_attr(REQUEUED, sorted(done | {t.number for t in again}))
    return len(again)


def waiting_trials(study: optuna.Study) -> int:
    """Trials queued and not yet taken by a worker."""
    return len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
