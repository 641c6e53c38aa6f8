"""Cross-validations (their `folds.json`, units and summary) and sweeps (their Optuna study)."""

from __future__ import annotations

import csv
import socket
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

from src.evaluation.cv_record import FOLDS_FILE, SUMMARY_FILE, read_json
from src.held_out import record_is_optimistic
from src.run_listing.records import DataUse, Listed, data_use, text, unreadable
from src.run_listing.runs import result_values
from src.training.run_folder import process_alive

JOURNAL_FILE = "study.journal"
LEGACY_STUDY_FILE = "study.db"
TABLE_FILE = "trials.csv"
"""`src.sweeps.results.TABLE_FILE` (not imported here: that module brings torch and
matplotlib, which a listing without sweeps does without)."""


def cross_validation(root: Path) -> Listed:
    """A cross-validation: its units by state, its headline score once finished, its models'
    configurations and the processed folder its folds were cut from."""
    from src.cross_validation.status import STATES, unit_states

    try:
        plan = read_json(root / FOLDS_FILE)
        rows = unit_states(root)
    except (ValueError, KeyError, TypeError) as error:
        return unreadable("cv", root.name, root, error)
    counts = Counter(row["state"] for row in rows)
    status = ", ".join(f"{counts[s]} {s}" for s in STATES if counts[s]) + f" of {len(rows)} units"
    finished = counts["done"] == len(rows) and (root / SUMMARY_FILE).is_file()
    return Listed(
        kind="cv",
        name=root.name,
        path=root,
        status=status,
        score=_cv_score(root) if finished else None,
        config=_cv_config(plan),
        data=[data_use(plan["processed_dir"], plan.get("data_fingerprint"))],
        counts={s: counts[s] for s in STATES},
    )


def _cv_score(root: Path) -> dict[str, Any] | None:
    """The leaderboard's first model: its pooled out-of-fold class-1 F1 and its label."""
    try:
        best = read_json(root / SUMMARY_FILE)["models"][0]
        value = best["out_of_fold"]["f1_class1"]
    except (ValueError, KeyError, IndexError, TypeError):
        return None
    return {"name": "pooled OOF f1_class1", "value": value, "model": best.get("name"),
            "optimistic": record_is_optimistic(best)}  # fmt: skip


def _cv_config(plan: dict[str, Any]) -> dict[str, Any]:
    """The models, the protocol and the training options of a cross-validation (an option
    its models set differently reads `A / B`)."""
    models = plan.get("configuration", {}).get("models", {})
    identities = list(models.values())
    config: dict[str, Any] = {"models": " + ".join(models)}
    if identities:
        config.update(identities[0].get("protocol", {}))
    options = sorted({name for m in identities for name in m.get("training", {})})
    for name in options:
        values = {text(m.get("training", {}).get(name, "unset")) for m in identities}
        config[name] = " / ".join(sorted(values))
    return config


def is_sweep(folder: Path) -> bool:
    """Whether `folder` holds a sweep: its Optuna study, or the results table of one."""
    return any((folder / name).is_file() for name in (JOURNAL_FILE, LEGACY_STUDY_FILE, TABLE_FILE))


def _open_studies(folder: Path) -> list[Any]:
    """The Optuna studies stored in the sweep's folder, opened for reading only (a journal's
    torn last record is left as it is: a worker may be writing it)."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    from src.sweeps.study import open_storage

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if (folder / JOURNAL_FILE).is_file():
            storage = JournalStorage(JournalFileBackend(str(folder / JOURNAL_FILE)))
        else:
            storage = open_storage(f"sqlite:///{(folder / LEGACY_STUDY_FILE).resolve()}")
        names = optuna.get_all_study_names(storage)
        return [optuna.load_study(study_name=name, storage=storage) for name in names]


def sweeps(folder: Path, members: list[Listed]) -> list[Listed]:
    """One entry per study of the sweep's folder; `members` (the runs and cross-validations
    of its trials) tell the data its trials trained on."""
    if not (folder / JOURNAL_FILE).is_file() and not (folder / LEGACY_STUDY_FILE).is_file():
        return [_results_only(folder)]
    try:
        studies = _open_studies(folder)
    except Exception as error:  # noqa: BLE001 any storage error: say it, list the rest
        return [unreadable("sweep", folder.name, folder, error)]
    data = [use for member in members for use in member.data]
    return [_sweep(folder, study, data) for study in studies]


def _sweep(folder: Path, study: Any, data: list[DataUse]) -> Listed:
    """A study: its trials by state, its best trial, its search and fixed options."""
    from src.sweeps.results import STATE_ORDER, best_record, metric_name, records_from_study
    from src.sweeps.spec import SweepSpecError, parse_sweep_spec

    try:
        spec = parse_sweep_spec(study.user_attrs["sweep"], source=f"study {study.study_name}")
    except (KeyError, SweepSpecError) as error:
        return unreadable("sweep", study.study_name, folder, error)
    records = records_from_study(study, spec)
    lost = _lost_trials(study)
    states = Counter("KILLED" if r.number in lost else r.state for r in records)
    status = ", ".join(f"{states[s]} {s.lower()}" for s in [*STATE_ORDER, "KILLED"] if states[s])
    best = best_record(records, spec.goal)
    score = None
    if best is not None:
        score = {"name": f"best {metric_name(records, spec)}", "value": best.value,
                 "trial": best.number, "optimistic": True}  # fmt: skip
    return Listed(
        kind="sweep",
        name=study.study_name,
        path=folder,
        status=f"{status} of {len(records)} trials" if records else "no trials yet",
        score=score,
        config=_sweep_config(spec, best or next((r for r in records if r.config), None)),
        data=data,
        counts={s.lower(): n for s, n in states.items()},
    )


def _results_only(folder: Path) -> Listed:
    """A sweep whose study is not in its folder (`--storage` elsewhere, or gone): its trials
    by state and its best trial, from its results table (`trials.csv`, best first)."""
    try:
        with (folder / TABLE_FILE).open(newline="") as handle:
            reader = csv.DictReader(handle)
            metric = (reader.fieldnames or ["", "", "", "value"])[3]
            rows = list(reader)
    except (OSError, csv.Error, IndexError) as error:
        return unreadable("sweep", folder.name, folder, error)
    states = Counter(row.get("state", "") for row in rows)
    status = ", ".join(f"{n} {s.lower()}" for s, n in states.items())
    best = rows[0] if rows and rows[0].get("state") == "COMPLETE" and rows[0].get(metric) else None
    score = None if best is None else {"name": f"best {metric}", "value": float(best[metric]),
                                       "trial": best.get("trial"), "optimistic": True}  # fmt: skip
    return Listed("sweep", folder.name, folder,
                  f"{status} of {len(rows)} trials ({TABLE_FILE} only: its study is elsewhere)",
                  score=score, counts={s.lower(): n for s, n in states.items()})  # fmt: skip


def _lost_trials(study: Any) -> set[int]:
    """Running trials whose worker process on this host is gone (read here, not failed)."""
    from optuna.trial import TrialState

    from src.sweeps.study import WORKER

    host, lost = socket.gethostname(), set()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = trial.user_attrs.get(WORKER)
        if owner and owner.get("host") == host and not process_alive(int(owner["pid"])):
            lost.add(trial.number)
    return lost


def _sweep_config(spec: Any, record: Any) -> dict[str, Any]:
    """What a sweep searches (method, metric, swept options) and what it keeps fixed (the
    result options of its trials that are not swept)."""
    config: dict[str, Any] = {
        "method": spec.method,
        "metric": f"{spec.metric} ({spec.goal})",
        "swept": ", ".join(sorted(spec.swept)),
    }
    if record is not None and record.config:
        fixed = result_values(record.config)
        config.update({k: v for k, v in fixed.items() if k not in spec.swept})
    return config
