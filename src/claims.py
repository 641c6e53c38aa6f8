"""Claims through file locks, so that any number of processes share units of work.

A unit (a cross-validation's fold, a part of a permutation importance, a self-training or a
refit) is worked on by the process that holds its claim: an exclusive `flock` on
`<unit>/.claim`, beside a line saying who holds it (process, host, since when). The operating
system releases the lock of a process that dies, so a dead worker's claim is a lease it loses:
the next process claims the unit and resumes it. This needs a file system whose locks hold
between the processes (one machine, or a cluster's shared disk with working `flock`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

CLAIM_FILE = ".claim"


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
def held(folder: Path) -> Iterator[None]:
    """Hold a command's folder for the whole command; ValueError naming who holds it when
    another process does (never waits)."""
    with claimed(folder) as mine:
        if not mine:
            raise ValueError(
                f"{folder} is being worked on by {holder(folder) or 'another process'}: wait "
                f"for it to finish, or give another --name"
            )
        yield


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive `flock` on `path` (waits for it)."""
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


WAIT_S = 2.0
"""How often a process looks again at the units other processes hold."""


class Waiting:
    """Pauses a process whose pending units are all held by others (saying so once)."""

    def __init__(self, log: Callable[[str], None], what: str) -> None:
        self.log, self.what, self.said = log, what, False

    def pause(self, held: int, pending: int) -> None:
        """Sleep `WAIT_S` when every one of the `pending` units is among the `held` ones."""
        if held and held == pending:
            if not self.said:
                self.log(f"waiting for {held} {self.what}")
                self.said = True
            time.sleep(WAIT_S)
