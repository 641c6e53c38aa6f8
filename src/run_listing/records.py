"""What is listed of a run, cross-validation or sweep, and the data it trained on."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from src.esd_data.manifest import Manifest


@dataclass
class DataUse:
    """A processed folder something trained on, with the manifest fingerprint it trained on
    (None: unknown), the folder's fingerprint now (None: its manifest is gone or damaged) and,
    for a view of another folder's tiles (a fold's, a refit's, a student's data), whether
    those tiles are no longer the ones it records (that folder was prepared again)."""

    processed_dir: str
    fingerprint: str | None
    current: str | None = None
    shared_changed: bool = False

    @property
    def rebuilt(self) -> bool:
        """Whether the folder changed since (a known fingerprint that is no longer its own, or
        a view whose shared tiles changed)."""
        known = self.fingerprint is not None
        return self.shared_changed or (known and self.fingerprint != self.current)


def _load(processed_dir: str | Path) -> Manifest | None:
    try:
        return Manifest.load(Path(processed_dir))
    except (OSError, ValueError):
        return None


def current_fingerprint(processed_dir: str | Path) -> str | None:
    """The fingerprint of the folder's manifest now (None: gone or damaged)."""
    manifest = _load(processed_dir)
    return None if manifest is None else manifest.fingerprint


def _shared_changed(manifest: Manifest | None, folder: Path) -> bool:
    """Whether a view's tiles, in another folder, are no longer the recorded files (a sample
    of each is read; a folder of its own tiles is checked by its fingerprint instead)."""
    if manifest is None or not any(Path(r.image).is_absolute() for r in manifest.tiles.values()):
        return False
    try:
        manifest.check_files(folder)
    except ValueError:
        return True
    return False


def data_use(processed_dir: str | Path, fingerprint: str | None) -> DataUse:
    """The use of a processed folder (its absolute path) with the folder's state now."""
    folder = Path(processed_dir).resolve()
    manifest = _load(folder)
    current = None if manifest is None else manifest.fingerprint
    return DataUse(str(folder), fingerprint, current, _shared_changed(manifest, folder))


@dataclass
class Listed:
    """One run, cross-validation or sweep: its status, its main score (`name`, `value`,
    `optimistic` and where it comes from), its configuration and the data it trained on."""

    kind: str
    name: str
    path: Path
    status: str
    score: dict[str, Any] | None = None
    config: dict[str, Any] | None = None
    data: list[DataUse] = field(default_factory=list)
    counts: dict[str, int] | None = None


def unreadable(kind: str, name: str, path: Path, error: Exception) -> Listed:
    """An entry whose records cannot be read, saying why."""
    return Listed(kind, name, path, f"unreadable ({short(str(error), 70)})")


def short(text: str, width: int) -> str:
    """`text` on one line, cut to `width` characters."""
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def text(value: Any) -> str:
    """An option's value as shown and compared: mappings and lists as compact JSON."""
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    return str(value)
