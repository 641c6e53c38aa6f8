"""Where the runs, cross-validations and sweeps under a folder are."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from src.esd_data.manifest import MANIFEST_FILE
from src.evaluation.cv_record import FOLDS_FILE
from src.run_listing.records import Listed
from src.run_listing.runs import METRICS_FILE, runs
from src.run_listing.studies import cross_validation, is_sweep, sweeps
from src.training.run_folder import STATUS_FILE

SKIPPED = frozenset({"__pycache__", "wandb", "node_modules"})
MAX_DEPTH = 6
"""How deep below the folder runs, cross-validations and sweeps are looked for."""


@dataclass
class _Found:
    logs: list[Path] = field(default_factory=list)
    checkpoints: list[Path] = field(default_factory=list)
    cvs: list[Path] = field(default_factory=list)
    sweeps: list[Path] = field(default_factory=list)


def _walk(folder: Path, depth: int, found: _Found, top: bool = False) -> None:
    """Collect what `folder` holds: a cross-validation or a sweep (not looked into, unless it
    is the `top` sweep), run log and checkpoint folders, and the same in its subfolders."""
    if (folder / FOLDS_FILE).is_file():
        found.cvs.append(folder)
        return
    if is_sweep(folder) and not top:
        found.sweeps.append(folder)
        return
    if (folder / MANIFEST_FILE).is_file():  # a processed folder: tiles, no runs
        return
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError:
        return
    names = {e.name for e in entries if e.is_file()}
    if STATUS_FILE in names or METRICS_FILE in names:
        found.logs.append(folder)
    if any(name.endswith(".ckpt") for name in names):
        found.checkpoints.append(folder)
    if depth < MAX_DEPTH:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False) and not _skipped(entry.name):
                _walk(Path(entry.path), depth + 1, found)


def _skipped(name: str) -> bool:
    return name.startswith(".") or name in SKIPPED


def _listed(found: _Found) -> list[Listed]:
    """Runs, then cross-validations, then sweeps."""
    listed = runs(found.logs, found.checkpoints)
    listed += [cross_validation(root) for root in found.cvs]
    return listed + [s for path in found.sweeps for s in sweeps(path, _members(path))]


def _members(folder: Path) -> list[Listed]:
    """The runs and cross-validations inside a sweep's folder (its trials')."""
    found = _Found()
    _walk(folder, 0, found, top=True)
    return _listed(found)


def find(folder: Path) -> list[Listed]:
    """Every run, cross-validation and sweep under `folder` (itself one of them, or a folder
    that holds some), in the order runs, cross-validations, sweeps."""
    if is_sweep(folder):
        return sweeps(folder, _members(folder))
    found = _Found()
    _walk(Path(folder), 0, found)
    return _listed(found)
