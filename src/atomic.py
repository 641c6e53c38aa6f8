"""Write files so that a reader never sees a half-written one: temporary name, then rename."""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np


@contextlib.contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside `target`; on success rename it to `target`, else delete it."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield temporary
        temporary.replace(target)
    finally:
        temporary.unlink(missing_ok=True)


def write_json(target: Path, data: Any) -> None:
    """Atomically write `data` as indented JSON."""
    with atomic_path(target) as temporary:
        temporary.write_text(json.dumps(data, indent=1) + "\n")


def write_npy(target: Path, array: np.ndarray) -> None:
    """Atomically write `array` as a .npy file (loadable with mmap_mode='r')."""
    with atomic_path(target) as temporary, temporary.open("wb") as handle:
        np.save(handle, array, allow_pickle=False)


def remove_temporaries(folder: Path) -> None:
    """Delete temporary files that an interrupted atomic write left in `folder`."""
    for leftover in Path(folder).glob(".*.tmp"):
        leftover.unlink(missing_ok=True)
