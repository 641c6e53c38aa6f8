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
    (None: unknown) and the folder's fingerprint now (None: its manifest is gone or damaged)."""

    processed_dir: str
    fingerprint: str | None
    current: str | None = None

    @property
    def rebuilt(self) -> bool:
        """Whether the folder changed since (a known fingerprint that is no longer its own)."""
        return self.fingerprint is not None and self.fingerprint != self.current


def current_fingerprint(processed_dir: str | Path) -> str | None:
    """The fingerprint of the folder's manifest now (None: gone or damaged)."""
    try:
        return Manifest.load(Path(processed_dir)).fingerprint
    except (OSError, ValueError):
        return None


def data_use(processed_dir: str | Path, fingerprint: str | None) -> DataUse:
    """The use of a processed folder (its absolute path) with the folder's fingerprint now."""
    folder = str(Path(processed_dir).resolve())
    return DataUse(folder, fingerprint, current_fingerprint(folder))


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
