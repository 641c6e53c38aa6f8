"""The listing of a folder: one line per run, cross-validation and sweep, the options that
differ between those of a kind, those trained on a processed folder rebuilt since; or JSON."""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from src.held_out import OPTIMISTIC, optimistic_label
from src.run_listing.find import find
from src.run_listing.records import DataUse, Listed, short, text
from src.run_listing.runs import result_values

KINDS = {"run": "run", "cv": "cross-validation", "sweep": "sweep"}
SHOWN_OPTIONS = 12
"""At most this many differing options per kind are printed (the JSON holds all)."""


@dataclass
class Listing:
    """What `folder` holds: the entries, what differs per kind (option → value → names),
    and each entry's use of a processed folder rebuilt since."""

    folder: Path
    entries: list[Listed]
    differs: dict[str, dict[str, dict[str, list[str]]]]
    rebuilt: list[tuple[Listed, DataUse]]


def list_folder(folder: Path) -> Listing:
    """The listing of `folder`; FileNotFoundError when it is not a folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"{folder} {'does not exist' if not folder.exists() else 'is not a folder'}"
        )
    entries = find(folder)
    differs = {}
    for kind in KINDS:
        found = differing([e for e in entries if e.kind == kind])
        if found:
            differs[kind] = found
    rebuilt = [(e, use) for e in entries for use in _distinct(e.data) if use.rebuilt]
    return Listing(folder, entries, differs, rebuilt)


def _comparable(entry: Listed) -> dict[str, Any] | None:
    """The options of an entry that are compared: a run's result options, a
    cross-validation's or a sweep's configuration as listed."""
    if entry.config is None:
        return None
    return result_values(entry.config) if entry.kind == "run" else entry.config


def differing(entries: list[Listed]) -> dict[str, dict[str, list[str]]]:
    """For entries of one kind: each option whose value is not the same for all of them →
    its values, each with the names of the entries that have it (in the order listed)."""
    labels = _labels(entries)
    configs = {labels[id(e)]: c for e in entries if (c := _comparable(e)) is not None}
    if len(configs) < 2:
        return {}
    result = {}
    for name in sorted({name for config in configs.values() for name in config}):
        values: dict[str, list[str]] = {}
        for label, config in configs.items():
            values.setdefault(text(config.get(name, "unset")), []).append(label)
        if len(values) > 1:
            result[name] = values
    return result


def _labels(entries: list[Listed]) -> dict[int, str]:
    """Each entry's short name: its name, or its path where names repeat."""
    names = Counter(e.name for e in entries)
    return {id(e): e.name if names[e.name] == 1 else str(e.path) for e in entries}


def _distinct(uses: list[DataUse]) -> list[DataUse]:
    """One use per processed folder and fingerprint (a sweep's trials share theirs)."""
    seen: dict[tuple[str, str | None], DataUse] = {}
    for use in uses:
        seen.setdefault((use.processed_dir, use.fingerprint), use)
    return list(seen.values())


def _where(path: Path | str, folder: Path) -> str:
    """`path` relative to the listed folder when inside it."""
    try:
        relative = Path(path).relative_to(folder)
    except ValueError:
        return str(path)
    return str(path) if relative == Path() else str(relative)


def _score_text(score: dict[str, Any] | None) -> str:
    """'best val_f1_class1 0.5674 OPTIMISTIC (epoch 3)'."""
    if not score:
        return ""
    shown = f"{score['name']} {score['value']:.4f}{optimistic_label(score['optimistic'])}"
    if "epoch" in score:
        return f"{shown} (epoch {score['epoch']})"
    if "trial" in score:
        return f"{shown} (trial {score['trial']})"
    return f"{shown} ({score['model']})" if score.get("model") else shown


def format_listing(listing: Listing) -> str:
    """One line per entry, then the options that differ per kind, then the rebuilt folders."""
    entries, folder = listing.entries, listing.folder
    if not entries:
        return f"no runs, cross-validations or sweeps under {folder}"
    counts = Counter(e.kind for e in entries)
    found = [f"{counts[k]} {KINDS[k]}{'s' if counts[k] > 1 else ''}" for k in KINDS if counts[k]]
    lines = [f"{folder if folder != Path() else Path.cwd()}: " + ", ".join(found)]
    rows = [(e.kind, _where(e.path, folder), e.status, _score_text(e.score)) for e in entries]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        lines.append(("  " + "  ".join([*cells, row[3]])).rstrip())
    lines += _differs_lines(listing.differs)
    if listing.rebuilt:
        lines.append("rebuilt since:")
        lines += [f"  {_rebuilt_text(entry, use, folder)}" for entry, use in listing.rebuilt]
    if any(e.score and e.score["optimistic"] for e in entries):
        lines.append(f"{OPTIMISTIC}: the tiles of that score chose the model (its epoch or its "
                     f"trial): score it on held-out tiles")  # fmt: skip
    return "\n".join(lines)


def _differs_lines(differs: dict[str, dict[str, dict[str, list[str]]]]) -> list[str]:
    """'differs:', then per kind 'learning_rate: 0.05 (a, c) | 0.01 (b)' lines."""
    lines = ["differs:"] if differs else []
    for kind, options in differs.items():
        lines.append(f"  between the {KINDS[kind]}s:")
        for name, values in list(options.items())[:SHOWN_OPTIONS]:
            shown = [f"{short(value, 40)} ({_names(labels)})" for value, labels in values.items()]
            lines.append(f"    {name}: " + " | ".join(shown))
        if len(options) > SHOWN_OPTIONS:
            lines.append(f"    … {len(options) - SHOWN_OPTIONS} more (--json lists them all)")
    return lines


def _names(labels: list[str]) -> str:
    return ", ".join(labels[:3]) + (f", +{len(labels) - 3} more" if len(labels) > 3 else "")


def _rebuilt_text(entry: Listed, use: DataUse, folder: Path) -> str:
    now = "its manifest is gone" if use.current is None else f"now {use.current[:8]}"
    if use.shared_changed:
        now = "the shared cache its tiles are in was prepared again"
    return (f"{entry.kind} {_where(entry.path, folder)}: trained on "
            f"{_where(use.processed_dir, folder.resolve())} (fingerprint "
            f"{str(use.fingerprint)[:8]}), since rebuilt ({now})")  # fmt: skip


def listing_json(listing: Listing) -> dict[str, Any]:
    """The listing as plain JSON types (every differing option, whole fingerprints)."""
    entries = [
        {"kind": e.kind, "name": e.name, "path": str(e.path), "status": e.status,
         "counts": e.counts, "score": e.score,
         "data": [{**dataclasses.asdict(u), "rebuilt": u.rebuilt} for u in _distinct(e.data)]}
        for e in listing.entries
    ]  # fmt: skip
    rebuilt = [{"kind": e.kind, "name": e.name, "path": str(e.path), **dataclasses.asdict(u)}
               for e, u in listing.rebuilt]  # fmt: skip
    return {"folder": str(listing.folder), "entries": entries, "differs": listing.differs,
            "rebuilt": rebuilt}  # fmt: skip
