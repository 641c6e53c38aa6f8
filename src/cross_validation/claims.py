"""Claims on a cross-validation's units, so that any number of worker processes share one run.

A unit (one fold of one model, repetition and seed) is trained by the process that holds its
claim: an exclusive `flock` on `<unit>/.claim`, beside a line saying who holds it (process,
host, since when). The operating system releases the lock of a process that dies, so a dead
worker's claim is a lease it loses: the next worker claims the unit and resumes it from its
`last.ckpt`. A finished unit has its `result.json` and is never trained again. This needs a
file system whose locks hold between the processes (one machine, or a cluster's shared disk
with working `flock`); elsewhere `--storage` claims them through PostgreSQL instead
(`src.cross_validation.db_claims`, the same interface). `open_claims` chooses, and records the
choice in the cross-validation's folder so that every worker and `--status` make the same.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import socket
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from src.atomic import write_json

CLAIM_FILE = ".claim"
FAILED_FILE = "failed.txt"
"""Written into a unit that failed (its error), removed when a worker claims it again."""
STORAGE_FILE = "claims.json"
"""Written into a cross-validation whose workers claim units through a database: its URL
(without a password) and lease."""


def owner_line() -> str:
    """Who this process is, as a claim records it."""
    return f"process {os.getpid()} on {socket.gethostname()} since {dt.datetime.now():%H:%M:%S}"


@contextlib.contextmanager
def claimed(unit_dir: Path) -> Iterator[bool]:
    """Try to claim a unit: yields True while this process holds it, False when another does
    (never waits)."""
    unit_dir.mkdir(parents=True, exist_ok=True)
    with (unit_dir / CLAIM_FILE).open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        handle.truncate(0)
        handle.write(owner_line())
        handle.flush()
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def holder(unit_dir: Path) -> str | None:
    """Who holds the unit's claim now (None: nobody)."""
    path = unit_dir / CLAIM_FILE
    if not path.is_file():
        return None
    with path.open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            return handle.read().strip() or "another process"
        fcntl.flock(handle, fcntl.LOCK_UN)
        return None


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive `flock` on `path` (waits for it)."""
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class Claims(Protocol):
    """How the workers of one cross-validation share its units."""

    def claimed(self, unit_dir: Path) -> AbstractContextManager[bool]: ...

    def holder(self, unit_dir: Path) -> str | None: ...

    def lost(self, unit_dir: Path) -> bool: ...

    def turn(self) -> AbstractContextManager[None]: ...


@dataclass(frozen=True)
class FileClaims:
    """Claims through `flock` on each unit's folder; the shared outputs written in turn under
    `<root>/.summary.lock`."""

    root: Path

    def claimed(self, unit_dir: Path) -> AbstractContextManager[bool]:
        return claimed(unit_dir)

    def holder(self, unit_dir: Path) -> str | None:
        return holder(unit_dir)

    def lost(self, unit_dir: Path) -> bool:
        return False  # a live process keeps its lock

    def turn(self) -> AbstractContextManager[None]:
        return locked(self.root / ".summary.lock")


def open_claims(root: Path, plan: dict[str, Any], storage: str | None, lease_s: float,
                worker: bool) -> Claims:  # fmt: skip
    """The claims of the cross-validation in `root`: through the database at `storage`, or,
    without it, the one its folder records (`--status`; a worker records its own), or file
    locks; leases of `lease_s`, or of the recorded lease. ValueError in one line when a
    worker's choice is not the recorded one, or when the recorded URL hides a password that
    `storage` must give."""
    path = root / STORAGE_FILE
    recorded = json.loads(path.read_text()) if path.is_file() else None
    if storage is None and recorded is None:
        return FileClaims(root)
    from src.cross_validation.db_claims import DatabaseClaims, shown_url

    wanted = None if storage is None else {"storage": shown_url(storage), "lease_s": lease_s}
    if worker and recorded is None:
        write_json(path, wanted)
    elif worker and wanted != recorded:
        given = "file locks" if wanted is None else f"--storage {wanted['storage']}"
        raise ValueError(
            f"{root}'s workers claim units through --storage {recorded['storage']} with "
            f"--lease_s {recorded['lease_s']:g}, not {given}"
            + ("" if wanted is None else f" --lease_s {lease_s:g}")
            + ": give every worker the same"
        )
    if recorded is not None:
        lease_s = recorded["lease_s"]
    if storage is None:
        storage = recorded["storage"]
        if "***" in storage:
            raise ValueError(
                f"{root}'s workers claim units through {storage}: pass that --storage with "
                f"its password"
            )
    return DatabaseClaims(storage, f"{root.name}/{plan['configuration_hash'][:16]}", lease_s)
