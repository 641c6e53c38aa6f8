"""The files a cross-validation leaves, as both sides read them: `folds.json` and each fold's
`result.json`.

`src.cross_validation` writes them; evaluation (`--cv_dir`) reads which checkpoint each fold
chose through `read_fold_checkpoints`, without importing the layer above it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FOLDS_FILE = "folds.json"
"""Written into a cross-validation's folder: its folds, seed, test tiles, data and configuration."""
SUMMARY_FILE = "summary.json"
"""Written into a cross-validation's folder when every fold has finished: the leaderboard."""
FOLD_RESULT_FILE = "result.json"
"""Written into a fold's folder when the fold has finished: its scores and chosen checkpoint."""


class CVRecordError(ValueError):
    """A cross-validation folder that cannot be read (unfinished, mixed or not one at all)."""


def read_json(path: Path) -> dict[str, Any]:
    """A cross-validation record, with a one-line error for a damaged file."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise CVRecordError(f"{path} cannot be read ({error}): run the fold again") from None


def cv_root_and_models(cv_dir: Path) -> tuple[Path, list[Path]]:
    """(the cross-validation's folder, the model folders `cv_dir` names): all of them for
    the cross-validation's own folder, one for a model's folder in it."""
    if (cv_dir / FOLDS_FILE).is_file():
        return cv_dir, sorted(d for d in cv_dir.iterdir() if (d / "fold_0").is_dir())
    if (cv_dir.parent / FOLDS_FILE).is_file():
        return cv_dir.parent, [cv_dir]
    raise CVRecordError(
        f"--cv_dir {cv_dir} is not the folder of a cross-validation (no {FOLDS_FILE} in it or "
        f"above it): pass <output_dir>/<name> or <output_dir>/<name>/<model_type> of "
        f"python -m scripts.cross_validate"
    )


@dataclass(frozen=True)
class FoldRecord:
    """A finished fold: its folder, the checkpoint it chose and its `result.json`."""

    folder: Path
    checkpoint: Path
    result: dict[str, Any]

    @property
    def scored_split(self) -> str:
        """The split of the fold's data view that holds its held-out tiles."""
        return "val" if self.result.get("selection", "outer") == "outer" else "test"


def read_fold_records(cv_dir: Path) -> list[FoldRecord]:
    """Every finished fold of one model of `cv_dir` (see `cv_root_and_models`);
    CVRecordError naming the folds that have not finished, or when `cv_dir` holds several
    models."""
    root, models = cv_root_and_models(cv_dir)
    if len(models) > 1:
        raise CVRecordError(
            f"--cv_dir {cv_dir} holds the folds of {len(models)} models "
            f"({', '.join(m.name for m in models)}): choose one, e.g. "
            f"--cv_dir {cv_dir / models[0].name}"
        )
    n_folds = len(read_json(root / FOLDS_FILE)["folds"])
    results = [model / f"fold_{k}" / FOLD_RESULT_FILE for model in models for k in range(n_folds)]
    unfinished = [str(result.parent) for result in results if not result.is_file()]
    if unfinished or not results:
        raise CVRecordError(
            f"fold(s) {', '.join(unfinished) or 'all'} of --cv_dir {cv_dir} have not finished "
            f"(no {FOLD_RESULT_FILE}): run python -m scripts.cross_validate again to complete them"
        )
    records = []
    for path in results:
        result = read_json(path)
        # The file the fold recorded, found under the fold's own folder (which may have moved).
        recorded = Path(result["checkpoint"])
        checkpoint = next((path.parent / "checkpoints").rglob(recorded.name), recorded)
        records.append(FoldRecord(path.parent, checkpoint, result))
    return records


def read_plan(cv_dir: Path) -> dict[str, Any]:
    """The `folds.json` of the cross-validation `cv_dir` belongs to (see `cv_root_and_models`)."""
    root, _ = cv_root_and_models(cv_dir)
    return read_json(root / FOLDS_FILE)


def check_cv_data(plan: dict[str, Any], manifest_fingerprint: str, use: str) -> None:
    """CVRecordError when the cross-validation's processed folder was prepared again since its
    folds were cut (its manifest is another): what it chose (`use`) was chosen on other data."""
    if plan.get("data_fingerprint") not in (None, manifest_fingerprint):
        raise CVRecordError(
            f"{plan['processed_dir']} was prepared again since the cross-validation cut its "
            f"folds (its manifest is another): {use} were chosen on other data; run the "
            f"cross-validation again"
        )


def enclosing_plan(checkpoint: Path) -> dict[str, Any] | None:
    """The `folds.json` of the cross-validation a fold's checkpoint belongs to
    (`<cv>/<model>/fold_<k>/checkpoints/<model type>/fold_<k>/<file>`), None for another."""
    folder = Path(checkpoint).resolve().parents
    if len(folder) > 5 and folder[3].name.startswith("fold_"):
        plan = folder[5] / FOLDS_FILE
        if plan.is_file():
            return read_json(plan)
    return None


HYPERPARAMETERS_CHOSEN = "hyperparameters_chosen_by"
"""Key of `folds.json` (and the summary's plan) naming what chose among configurations by
this cross-validation's scores (a sweep with `--objective cv`): its labelled tiles then chose
the configuration of every fold's model."""
