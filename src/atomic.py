"""Write files so that a reader never sees a half-written one: temporary name, then rename."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

OUTPUT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}
"""Write failures that mean "this folder cannot take the output", not a bug."""


class OutputError(ValueError):
    """An output that cannot be written: its folder is full, read-only or not ours (one line)."""


def _free_space(folder: Path) -> str:
    for candidate in (folder, *folder.parents):
        if candidate.exists():
            return f"{shutil.disk_usage(candidate).free / 2**20:.1f} MiB free"
    return "free space unknown"


def is_output_error(error: OSError) -> bool:
    """Whether a failed write means the folder cannot take it (full, read-only, not ours);
    numpy reports a short write as "N requested and M written", without an errno."""
    return error.errno in OUTPUT_ERRNOS or (
        error.errno is None and "requested and" in str(error) and "written" in str(error)
    )


def output_error(error: OSError, target: Path, what: str = "") -> OutputError:
    """The one-line OutputError for a failed write of `target` (`what` it was)."""
    folder = Path(target).parent
    writing = f"writing {what or Path(target).name}"
    if error.errno in (errno.ENOSPC, errno.EDQUOT) or error.errno is None:
        return OutputError(
            f"no space left in {folder} ({_free_space(folder)}) while {writing}: free space "
            f"there or choose another folder; nothing half-written was left"
        )
    return OutputError(
        f"{folder} is not writable ({os.strerror(error.errno or 0)}) while {writing}: choose a "
        f"folder you can write to"
    )


def check_writable(folder: Path, what: str) -> None:
    """OutputError unless files can be created in `folder` (or, where it does not exist yet,
    in the nearest folder above it, which it would be made in), before any work and without
    making a folder; `what` says what goes there (e.g. "checkpoints")."""
    folder = Path(folder).absolute()
    existing = next(c for c in (folder, *folder.parents) if c.exists())
    if not existing.is_dir():
        raise OutputError(f"{existing} is a file, so {folder} cannot hold the {what}")
    probe = existing / f".write-check-{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        if error.errno not in OUTPUT_ERRNOS:
            raise
        raise output_error(error, folder / "…", f"the {what}") from None


@contextlib.contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside `target`; on success rename it to `target`, else delete it.

    A full or read-only folder raises OutputError naming it (the temporary file removed)."""
    target = Path(target)
    temporary = target.with_name(f".{target.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        yield temporary
        temporary.replace(target)
    except OSError as error:
        if not is_output_error(error):
            raise
        raise output_error(error, target) from None
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


@contextlib.contextmanager
def replaced_folder(target: Path) -> Iterator[Path]:
    """Yield an empty staging folder beside `target`; when the block succeeds it takes the
    place of `target` (whose earlier content is removed only then), else it is removed and
    `target` stays whole. A full or read-only disk raises OutputError naming the folder."""
    target = Path(target)
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    staging = target.with_name(f".{target.name}.{tag}.staging")
    old = target.with_name(f".{target.name}.{tag}.old")
    try:
        staging.mkdir(parents=True)
        yield staging
        if target.exists():
            target.rename(old)
        staging.rename(target)
    except OSError as error:
        if not is_output_error(error):
            raise
        raise output_error(error, target / "…", f"the results in {target}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
