"""Claims on a cross-validation's units through PostgreSQL (`--storage`), for workers on
machines whose shared disk cannot be trusted with `flock`.

A claim is a lease: a row of `esd_cv_leases` (the unit's key, who holds it: process, host and
since when, and the database's time of its last heartbeat). The worker that inserts the row
trains the unit and renews the heartbeat from a thread every quarter of the lease; a row whose
heartbeat is older than the lease (`--lease_s`) belongs to a worker that died or was cut off,
and the next worker takes it over and resumes the unit from its `last.ckpt`, as with file
locks. A worker that finds its own lease taken over stops training that unit (`lost`). Every
time is the server's, so the machines' clocks do not matter.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import sqlalchemy
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from src.claims import owner_line

TABLE = "esd_cv_leases"
_CREATE = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    unit TEXT PRIMARY KEY, owner TEXT NOT NULL, token TEXT NOT NULL,
    heartbeat TIMESTAMPTZ NOT NULL DEFAULT now())"""
_STALE = "heartbeat < now() - make_interval(secs => :lease)"
_CLAIM = f"""
INSERT INTO {TABLE} AS t (unit, owner, token) VALUES (:unit, :owner, :token)
ON CONFLICT (unit) DO UPDATE SET owner = EXCLUDED.owner, token = EXCLUDED.token, heartbeat = now()
WHERE t.{_STALE} RETURNING t.token"""
_RENEW = f"UPDATE {TABLE} SET heartbeat = now() WHERE unit = :unit AND token = :token"
_RELEASE = f"DELETE FROM {TABLE} WHERE unit = :unit AND token = :token"
_HOLDER = f"""
SELECT owner, extract(epoch FROM now() - heartbeat) FROM {TABLE}
WHERE unit = :unit AND NOT {_STALE}"""


class StorageError(ValueError):
    """The database of `--storage` cannot be reached or refused a statement."""


def _lock_key(name: str) -> int:
    """A PostgreSQL advisory lock's 64-bit key for `name`."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


class DatabaseClaims:
    """The units of the cross-validation `prefix` (its folder's name and configuration hash),
    claimed through the database at `url` with leases of `lease_s` seconds."""

    def __init__(self, url: str, prefix: str, lease_s: float) -> None:
        self.prefix, self.lease_s, self.shown = prefix, lease_s, shown_url(url)
        try:
            self.engine = sqlalchemy.create_engine(url, pool_pre_ping=True)
        except (SQLAlchemyError, ImportError) as error:
            raise StorageError(f"cannot open --storage {self.shown}: {_reason(error)}") from None
        # one worker creates the table
        self._execute(f"SELECT pg_advisory_xact_lock({_lock_key(TABLE)}); {_CREATE}")
        self._lost: dict[Path, threading.Event] = {}

    def key(self, unit_dir: Path) -> str:
        """The unit's row: `<cross-validation>/<model>/fold_<k>`."""
        return f"{self.prefix}/{unit_dir.parent.name}/{unit_dir.name}"

    def _execute(self, sql: str, **values: Any) -> tuple[list[Any], int]:
        """(the rows `sql` returns, the rows it changed), in a transaction of its own;
        StorageError in one line when the database cannot run it."""
        try:
            with self.engine.begin() as connection:
                result = connection.execute(text(sql), {"lease": self.lease_s, **values})
                return (list(result) if result.returns_rows else []), result.rowcount
        except SQLAlchemyError as error:
            raise StorageError(f"--storage {self.shown}: {_reason(error)}") from None

    @contextlib.contextmanager
    def claimed(self, unit_dir: Path) -> Iterator[bool]:
        """Try to claim a unit: yields True while this process holds its lease (renewed by a
        thread), False when another worker's lease on it is alive (never waits)."""
        unit, token = self.key(unit_dir), uuid.uuid4().hex
        rows, _ = self._execute(_CLAIM, unit=unit, owner=owner_line(), token=token)
        if not rows:
            yield False
            return
        lost, stop = threading.Event(), threading.Event()
        self._lost[unit_dir] = lost
        beat = threading.Thread(target=self._heartbeat, args=(unit, token, lost, stop),
                                name=f"lease {unit}", daemon=True)  # fmt: skip
        beat.start()
        try:
            yield True
        finally:
            stop.set()
            beat.join()
            self._lost.pop(unit_dir, None)
            with contextlib.suppress(StorageError):  # unreachable: the lease lapses
                self._execute(_RELEASE, unit=unit, token=token)

    def _heartbeat(self, unit: str, token: str, lost: threading.Event,
                   stop: threading.Event) -> None:  # fmt: skip
        """Renew the lease every quarter of it until `stop`; set `lost` when another worker
        has taken it over (a database out of reach is tried again at the next beat)."""
        while not stop.wait(self.lease_s / 4):
            try:
                _, renewed = self._execute(_RENEW, unit=unit, token=token)
            except StorageError:
                continue
            if not renewed:
                lost.set()
                return

    def lost(self, unit_dir: Path) -> bool:
        """Whether this process's lease on the unit was taken over by another worker."""
        event = self._lost.get(unit_dir)
        return event is not None and event.is_set()

    def holder(self, unit_dir: Path) -> str | None:
        """Who holds a live lease on the unit, and how long ago it was renewed (None: nobody,
        or a lease that has lapsed)."""
        rows, _ = self._execute(_HOLDER, unit=self.key(unit_dir))
        return f"{rows[0][0]} (lease renewed {float(rows[0][1]):.0f} s ago)" if rows else None

    @contextlib.contextmanager
    def turn(self) -> Iterator[None]:
        """Hold the cross-validation's advisory lock (workers write the shared outputs in
        turn; the server releases it when a worker's connection dies)."""
        with self.engine.connect() as connection:
            connection.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _lock_key(self.prefix)})
            connection.commit()
            try:
                yield
            finally:
                connection.execute(text("SELECT pg_advisory_unlock(:k)"),
                                   {"k": _lock_key(self.prefix)})  # fmt: skip
                connection.commit()


def shown_url(url: str) -> str:
    """`url` without its password."""
    try:
        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except sqlalchemy.exc.ArgumentError:
        return url


def _reason(error: BaseException) -> str:
    return str(getattr(error, "orig", None) or error).strip().splitlines()[0]
