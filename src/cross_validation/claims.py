"""How the workers of a cross-validation share its units: file locks (`src.claims`) or, with
`--storage`, leases in PostgreSQL (`src.cross_validation.db_claims`, the same interface).

A unit (one fold of one model, repetition and seed) is trained by the worker that holds its
claim; a dead worker's claim is lost and the next worker resumes the unit from its
`last.ckpt`; a finished unit has its `result.json` and is never trained again. `open_claims`
chooses, and records the choice in the cross-validation's folder so that every worker and
`--status` make the same.
"""

from __future__ import annotations

import json
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from src.atomic import write_json
from src.claims import claimed, holder, locked

FAILED_FILE = "failed.txt"
"""Written into a unit that failed (its error), removed when a worker claims it again."""
STORAGE_FILE = "claims.json"
"""Written into a cross-validation whose workers claim units through a database: its URL
(without a password) and lease."""


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
