"""Where a cross-validation stands: every unit done, running (who, since when), failed or
waiting, read from its folder (and, where its workers claim units through a database, from
that database) while any number of workers run it (`--status DIR`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from src.cross_validation.claims import FAILED_FILE, open_claims
from src.cross_validation.summary import PARTIAL_STEM
from src.evaluation.cv_record import FOLD_RESULT_FILE, FOLDS_FILE, SUMMARY_FILE, read_json

STATES = ("done", "running", "failed", "waiting")


def unit_states(
    root: Path, storage: str | None = None, lease_s: float = 0.0
) -> list[dict[str, Any]]:
    """One row per model and unit: its state and what is known of it (who holds it: through
    the claims its folder records, or `storage` with leases of `lease_s`)."""
    if not (root / FOLDS_FILE).is_file():
        raise ValueError(
            f"{root} is not a cross-validation's folder (no {FOLDS_FILE}): pass "
            f"<output_dir>/<name> of python -m scripts.cross_validate"
        )
    plan = read_json(root / FOLDS_FILE)
    claims = open_claims(root, plan, storage, lease_s, worker=False)
    rows = []
    for model in plan["configuration"]["models"]:
        for index, heldout in enumerate(plan["folds"]):
            unit = root / model / f"fold_{index}"
            row: dict[str, Any] = {"model": model, "unit": index, "tiles": heldout}
            owner = claims.holder(unit)
            if (unit / FOLD_RESULT_FILE).is_file():
                result = read_json(unit / FOLD_RESULT_FILE)
                row.update(state="done", f1_class1=result["scores"]["f1_class1"],
                           epoch=result["selected_epoch"])  # fmt: skip
            elif owner is not None:
                row.update(state="running", by=owner)
            elif (unit / FAILED_FILE).is_file():
                row.update(state="failed", error=(unit / FAILED_FILE).read_text().strip())
            else:
                row.update(state="waiting")
            rows.append(row)
    return rows


def format_status(root: Path, storage: str | None = None, lease_s: float = 0.0) -> str:
    """The units by state, one line each, and the totals."""
    rows = unit_states(root, storage, lease_s)
    lines = [f"cross-validation {root}:"]
    for row in rows:
        detail = {
            "done": lambda r: f"f1_class1 {r['f1_class1']:.4f} at epoch {r['epoch']}",
            "running": lambda r: f"by {r['by']}",
            "failed": lambda r: r["error"],
            "waiting": lambda r: "",
        }[row["state"]](row)
        lines.append(f"  {row['model']} fold {row['unit']:<3} {row['state']:<8} {detail}")
    counts = {state: sum(r["state"] == state for r in rows) for state in STATES}
    summary = (
        "written" if (root / SUMMARY_FILE).is_file()
        else f"not yet ({PARTIAL_STEM}.json of the finished units)"
        if (root / f"{PARTIAL_STEM}.json").is_file()
        else "not yet"
    )  # fmt: skip
    lines.append(
        ", ".join(f"{counts[s]} {s}" for s in STATES) + f" of {len(rows)} units; summary {summary}"
    )
    return "\n".join(lines)
