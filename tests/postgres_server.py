"""A throwaway PostgreSQL server on a local socket, for the tests of workers that share a
study or a cross-validation through a database (skipped where none can start)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


def _server_binaries() -> tuple[Path, Path] | None:
    for folder in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (folder / "initdb").is_file() and (folder / "pg_ctl").is_file():
            return folder / "initdb", folder / "pg_ctl"
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    return (Path(initdb), Path(pg_ctl)) if initdb and pg_ctl else None


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """Start a server, yield the SQLAlchemy URL of its database `esd`, stop and remove it
    (pytest.skip where there is no server or it cannot start)."""
    binaries = _server_binaries()
    if binaries is None:
        pytest.skip("no PostgreSQL server here (Debian's postgresql package; .ci/run installs it)")
    pytest.importorskip("psycopg2", reason="psycopg2 is not installed")
    initdb, pg_ctl = binaries
    root = Path(tempfile.mkdtemp(prefix="esd-postgres-"))
    as_postgres: list[str] = []
    if os.geteuid() == 0:  # the server refuses to run as root
        as_postgres = ["runuser", "-u", "postgres", "--"]
        shutil.chown(root, "postgres")
    root.chmod(0o755)
    data, log = root / "data", root / "server.log"
    started = subprocess.run(
        [*as_postgres, str(initdb), "-D", str(data), "-A", "trust", "-U", "postgres"],
        capture_output=True, text=True,
    )  # fmt: skip
    if started.returncode == 0:
        started = subprocess.run(
            [*as_postgres, str(pg_ctl), "-D", str(data), "-l", str(log), "-w", "-o",
             f"-k {root} -c listen_addresses=''", "start"],
            capture_output=True, text=True,
        )  # fmt: skip
    if started.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"PostgreSQL could not start here: {started.stderr.strip()[-300:]}")
    try:
        yield new_database(f"postgresql+psycopg2://postgres@/postgres?host={root}", "esd")
    finally:
        subprocess.run([*as_postgres, str(pg_ctl), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True)  # fmt: skip
        shutil.rmtree(root, ignore_errors=True)


def new_database(url: str, name: str) -> str:
    """Create the database `name` on the server of `url`; its URL."""
    import psycopg2

    host = url.split("host=")[1]
    connection = psycopg2.connect(dbname="postgres", user="postgres", host=host)
    connection.autocommit = True
    connection.cursor().execute(f"CREATE DATABASE {name}")
    connection.close()
    return f"postgresql+psycopg2://postgres@/{name}?host={host}"
