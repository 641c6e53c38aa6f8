"""A sweep's results: the trial table (text and CSV), the best config as YAML, and a plot.

Both backends describe their trials as `TrialRecord`s; `write_results` writes, under the
output folder, `trials.csv` (sorted best first), `best_config.yaml` (ESDConfig fields only,
plain YAML, accepted by `python -m scripts.train --config`) and `sweep.png` (the metric per
trial and each swept parameter against the metric). Every file is written under a temporary
name and renamed.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from src.atomic import atomic_path
from src.cli import plain
from src.held_out import OPTIMISTIC
from src.sweeps.spec import RUN_FIELDS, Parameter, SweepSpec
from src.sweeps.study import ERROR, INTERRUPTED, RETRY_OF, SURPLUS, not_counted
from src.training.config import ESDConfig
from src.visualization.figure_output import figure_dpi, figure_file

TABLE_FILE = "trials.csv"
BEST_CONFIG_FILE = "best_config.yaml"
PLOT_FILE = "sweep.png"
STATE_ORDER = {"COMPLETE": 0, "PRUNED": 1, "RUNNING": 2, "INTERRUPTED": 3, "FAIL": 4}


@dataclass
class TrialRecord:
    """One trial, whichever backend ran it. `value` is the final metric of a complete trial,
    else the last value reported before it stopped (None if none)."""

    number: int
    state: str
    value: float | None
    params: dict[str, Any]
    config: dict[str, Any] | None = None
    run_name: str | None = None
    epochs: int | None = None
    duration_s: float | None = None
    error: str | None = None
    test_scores: dict[str, float] | None = None
    """The trial's checkpoint on the held-out test tiles (never used to choose it)."""
    fold_scores: list[float] | None = None
    """A cross-validated trial's fold scores (`--objective cv`): its value is their mean."""


CV_METRIC = "cv_mean_f1_class1"
"""What a cross-validated trial's value is called in the tables (not its `val_` metric)."""


def metric_name(records: list[TrialRecord], spec: SweepSpec) -> str:
    """The trials' value, named for what it is: the spec's metric, or the mean class-1 F1 of
    the folds of cross-validated trials."""
    return CV_METRIC if any(r.fold_scores for r in records) else spec.metric


def _finite(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def records_from_study(study: Any, spec: SweepSpec) -> list[TrialRecord]:
    """TrialRecords of an Optuna study's trials (queued ones left out)."""
    rerun = {t.user_attrs[RETRY_OF]: t.number for t in study.trials if RETRY_OF in t.user_attrs}
    records = []
    for trial in study.trials:
        state = trial.state.name
        if state == "WAITING" or trial.user_attrs.get(SURPLUS):  # queued, or never run
            continue
        config = trial.user_attrs.get("config")
        if config is not None:
            params = {name: config.get(name) for name in spec.swept}
        else:
            params = {
                name: spec.swept[name].decode(value)
                if spec.swept[name].distribution == "categorical"
                else value
                for name, value in trial.params.items()
                if name in spec.swept
            }
        intermediate = trial.intermediate_values
        value = trial.value if state == "COMPLETE" else None
        if value is None and intermediate:
            value = intermediate[max(intermediate)]
        error = trial.user_attrs.get(ERROR)
        again = rerun.get(trial.number)
        if trial.user_attrs.get(INTERRUPTED):
            state = "INTERRUPTED"  # Optuna records it as failed; it was stopped, not broken
            error = f"re-run as trial {again}" if again is not None else None
        elif state == "FAIL" and not_counted(trial):
            error = "its worker process died" + (f"; re-run as trial {again}" if again else "")
        records.append(
            TrialRecord(
                number=trial.number,
                state=state,
                value=_finite(value),
                params=params,
                config=config,
                run_name=trial.user_attrs.get("run_name"),
                epochs=trial.user_attrs.get("epochs", len(intermediate) or None),
                duration_s=trial.duration.total_seconds() if trial.duration else None,
                error=error,
                test_scores=trial.user_attrs.get("test_scores"),
                fold_scores=trial.user_attrs.get("fold_scores"),
            )
        )
    return records


def records_from_wandb(rows: Iterable[dict[str, Any]], spec: SweepSpec) -> list[TrialRecord]:
    """TrialRecords of the W&B backend's trial file (numbered in the order they finished)."""
    records = []
    for number, row in enumerate(rows):
        config = row.get("config")
        intermediate = row.get("intermediate") or []
        value = row.get("value")
        if value is None and intermediate:
            value = intermediate[-1]
        records.append(
            TrialRecord(
                number=number,
                state=str(row.get("state", "FAIL")),
                value=_finite(value),
                params={name: (config or {}).get(name) for name in spec.swept},
                config=config,
                run_name=row.get("run_name"),
                epochs=row.get("epochs"),
                duration_s=row.get("duration_s"),
                error=row.get("error"),
            )
        )
    return records


def sort_records(records: Iterable[TrialRecord], goal: str) -> list[TrialRecord]:
    """Complete trials best first, then pruned, running and failed ones (each best first)."""
    sign = -1.0 if goal == "maximize" else 1.0

    def key(record: TrialRecord) -> tuple[int, int, float, int]:
        missing = record.value is None
        value = 0.0 if missing else sign * record.value  # type: ignore[operator]
        return STATE_ORDER.get(record.state, len(STATE_ORDER)), int(missing), value, record.number

    return sorted(records, key=key)


def best_record(records: Iterable[TrialRecord], goal: str) -> TrialRecord | None:
    """The best complete trial with a config, or None."""
    complete = [r for r in records if r.state == "COMPLETE" and r.value is not None and r.config]
    return sort_records(complete, goal)[0] if complete else None


def _cell(value: Any, width: int | None = None) -> str:
    """A table cell: floats with 4 significant digits when `width` is set (else in full)."""
    if value is None:
        text = ""
    elif isinstance(value, float):
        text = f"{value:.4g}" if width is not None else repr(value)
    elif isinstance(value, (dict, list)):
        text = json.dumps(value)
    else:
        text = str(value)
    if width is not None and len(text) > width:
        text = text[: width - 1] + "…"
    return text


def _rows(records: list[TrialRecord], metric: str, names: list[str]) -> list[dict[str, Any]]:
    rows = []
    for rank, record in enumerate(records, start=1):
        row = {
            "rank": rank,
            "trial": record.number,
            "state": record.state,
            metric: record.value,
            "epochs": record.epochs,
            "duration_s": None if record.duration_s is None else round(record.duration_s, 1),
        }
        row.update({name: record.params.get(name) for name in names})
        row.update(run_name=record.run_name, error=record.error)
        rows.append(row)
    return rows


def format_table(records: list[TrialRecord], spec: SweepSpec) -> str:
    """The trials as an aligned text table, in the order given."""
    names, metric = list(spec.swept), metric_name(records, spec)
    rows = _rows(records, metric, names)
    columns = ["rank", "trial", "state", metric, "epochs", "duration_s", *names]
    cells = [[_cell(row[c], 24) for c in columns] for row in rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(line.rstrip() for line in lines)


def write_table(path: Path, records: list[TrialRecord], spec: SweepSpec) -> None:
    """The trials as CSV, in the order given (lists and mappings as JSON)."""
    names, metric = list(spec.swept), metric_name(records, spec)
    rows = _rows(records, metric, names)
    columns = ["rank", "trial", "state", metric, "epochs", "duration_s", *names]
    columns += ["run_name", "error"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: "" if row[c] is None else _cell(row[c]) for c in columns})
    with atomic_path(path) as temporary:
        temporary.write_text(buffer.getvalue())


def best_config_values(record: TrialRecord, study: str = "") -> dict[str, Any]:
    """The trial's ESDConfig fields as plain YAML types, without where-it-ran fields, and
    `chosen_on`: the tiles whose scores chose it among the trials (see `chosen_on`)."""
    fields = [f.name for f in dataclasses.fields(ESDConfig)]
    config = record.config or {}
    values = {
        name: plain(config[name]) for name in fields if name in config and name not in RUN_FIELDS
    }
    chooser = chosen_on(record, study)
    if chooser:
        values["chosen_on"] = chooser
    return values


def chosen_on(record: TrialRecord, study: str) -> dict[str, Any] | None:
    """What chose this configuration among the trials, and on which tiles of the processed
    folder (name → pixel hash): its val tiles (`--objective val`), every labelled tile of
    the folds (`--objective cv`). A model trained with it scores them OPTIMISTIC (the held-out
    ledger reads this from its configuration). None when the folder cannot be read."""
    from src.esd_data.manifest import Manifest

    processed = (record.config or {}).get("processed_dir")
    try:
        manifest = Manifest.load(Path(processed))
    except (OSError, TypeError, ValueError):
        return None
    splits = ("train", "val") if record.fold_scores else ("val",)
    objective = "cv" if record.fold_scores else "val"
    return {
        "by": f"the sweep {study} (objective {objective}, trial {record.number})",
        "tiles": {t: manifest.tiles[t].sha256 for s in splits for t in manifest.split[s]},
        "raw_dir": str(Path(manifest.raw_dir).resolve()),
    }


def write_best_config(path: Path, record: TrialRecord, spec: SweepSpec, study: str,
                      metric: str) -> None:  # fmt: skip
    """The best trial's config as YAML for `python -m scripts.train --config PATH`."""
    header = (
        f"# Best trial of sweep {study}: {record.run_name or record.number} "
        f"({metric} = {record.value:.6g}, goal {spec.goal}; {OPTIMISTIC}: it chose the "
        f"trial).\n"
        + (
            "# Held-out test scores of its checkpoint: "
            + ", ".join(f"{k} = {v:.6g}" for k, v in sorted(record.test_scores.items()))
            + "\n"
            if record.test_scores
            else ""
        )
        + f"# Retrain with: python -m scripts.train --config {path}\n"
    )
    body = yaml.safe_dump(best_config_values(record, study), sort_keys=False, allow_unicode=True)
    with atomic_path(path) as temporary:
        temporary.write_text(header + body)


# --------------------------------------------------------------------------------------------
# plot

_STYLE = {
    "COMPLETE": {"marker": "o", "color": "tab:blue"},
    "PRUNED": {"marker": "x", "color": "tab:orange"},
    "FAIL": {"marker": "v", "color": "tab:red"},
    "INTERRUPTED": {"marker": "s", "color": "tab:purple"},
    "RUNNING": {"marker": ".", "color": "tab:gray"},
}


def _scatter(axes: Any, records: list[TrialRecord], x: Callable[[TrialRecord], Any]) -> None:
    for state, style in _STYLE.items():
        chosen = [r for r in records if r.state == state and r.value is not None]
        if chosen:
            label = state.lower() if state != "PRUNED" else "pruned (last value)"
            axes.scatter([x(r) for r in chosen], [r.value for r in chosen], label=label, **style)


def _label(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(plain(value))


def _category_position(name: str, labels: list[str]) -> Callable[[TrialRecord], float]:
    """x of a trial on a categorical axis: its choice's index, jittered so points overlap less."""
    position = {label: i for i, label in enumerate(labels)}

    def where(record: TrialRecord) -> float:
        jitter = ((record.number * 0.618034) % 1.0 - 0.5) * 0.3
        return position.get(_label(record.params.get(name)), math.nan) + jitter

    return where


def plot_sweep(records: list[TrialRecord], spec: SweepSpec) -> Figure:
    """The metric per trial (with the running best) and each swept parameter against it."""
    swept: dict[str, Parameter] = spec.swept
    panels = 1 + len(swept)
    columns = min(3, panels)
    rows = math.ceil(panels / columns)
    figure = Figure(figsize=(4.6 * columns, 3.6 * rows), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    ordered = sorted(records, key=lambda r: r.number)

    first = axes[0]
    _scatter(first, ordered, lambda r: r.number)
    best: list[tuple[int, float]] = []
    for record in ordered:
        if record.state == "COMPLETE" and record.value is not None:
            better = max if spec.goal == "maximize" else min
            value = record.value if not best else better(best[-1][1], record.value)
            best.append((record.number, value))
    if best:
        first.step(*zip(*best, strict=True), where="post", color="tab:green", label="best so far")
    first.xaxis.set_major_locator(MaxNLocator(integer=True))
    first.set_xlabel("trial")
    first.set_ylabel(spec.metric)
    first.set_title(f"{spec.metric} per trial ({spec.goal})")
    if any(r.value is not None for r in records):
        first.legend(fontsize="small")

    for axis, (name, parameter) in zip(axes[1:], swept.items(), strict=False):
        if parameter.is_range:
            _scatter(axis, ordered, lambda r, n=name: r.params.get(n))
            if parameter.distribution == "log_uniform_values":
                axis.set_xscale("log")
        else:
            labels = [_label(v) for v in parameter.values]
            _scatter(axis, ordered, _category_position(name, labels))
            axis.set_xticks(range(len(labels)), [_cell(v, 16) for v in labels])
            axis.set_xlim(-0.5, len(labels) - 0.5)
        axis.set_xlabel(name)
        axis.set_ylabel(spec.metric)
    for axis in axes[panels:]:
        axis.set_visible(False)
    return figure


def save_figure(figure: Figure, path: Path) -> None:
    """Write a figure under a temporary name, then rename it: in the format of its suffix, at
    the chosen dpi (`--dpi`)."""
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format=Path(path).suffix[1:] or "png", dpi=figure_dpi())


# --------------------------------------------------------------------------------------------


def write_results(
    output_dir: Path,
    records: list[TrialRecord],
    spec: SweepSpec,
    study: str,
    log: Callable[[str], None] = print,
) -> dict[str, Path]:
    """Print the table and write the CSV, best-config YAML and plot; the paths written."""
    output_dir = Path(output_dir)
    ordered = sort_records(records, spec.goal)
    written: dict[str, Path] = {}
    if not ordered:
        log("no finished trials: nothing to report")
        return written
    log(format_table(ordered, spec))
    written["table"] = output_dir / TABLE_FILE
    write_table(written["table"], ordered, spec)
    best = best_record(ordered, spec.goal)
    if best is None:
        log("no complete trial: no best config")
    else:
        written["best_config"] = output_dir / BEST_CONFIG_FILE
        metric = metric_name(ordered, spec)
        write_best_config(written["best_config"], best, spec, study, metric)
        log(
            f"best: {best.run_name or best.number} with {metric} = {best.value:.4g} "
            f"{OPTIMISTIC} (the value chose it among the trials: score it on held-out tiles)"
        )
        if best.test_scores:
            log(
                "its checkpoint on the test tiles (held out, used by no choice): "
                + ", ".join(f"{k} = {v:.4g}" for k, v in sorted(best.test_scores.items()))
                + f"; the {spec.metric} above chose it among the trials, so it is optimistic"
            )
    written["plot"] = figure_file(output_dir / PLOT_FILE)
    save_figure(plot_sweep(ordered, spec), written["plot"])
    for kind, path in written.items():
        log(f"{kind}: {path}")
    return written
