"""A sweep's results (src/sweeps/results.py): records, order, table, CSV, best config, plot.

The trial records come from real Optuna studies in temporary SQLite files (and from rows as
the W&B backend writes them); the expected tables, files and plot contents are written out
here from the documented rules (best first within COMPLETE, PRUNED, RUNNING, FAIL; floats
with 4 significant digits in the text table and in full in the CSV; the best complete trial
with a config; one panel per swept parameter), never by calling the module a second time.
"""

from __future__ import annotations

import csv
import json
import math
import struct
from pathlib import Path

import numpy as np
import optuna
import pytest
import yaml
from matplotlib.colors import to_rgba
from matplotlib.markers import MarkerStyle
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from src.sweeps.results import (
    BEST_CONFIG_FILE,
    PLOT_FILE,
    TABLE_FILE,
    TrialRecord,
    best_config_values,
    best_record,
    format_table,
    plot_sweep,
    records_from_study,
    records_from_wandb,
    save_figure,
    sort_records,
    write_best_config,
    write_results,
    write_table,
)
from src.sweeps.spec import SweepSpec, parse_sweep_spec
from src.sweeps.study import ERROR, RETRY_OF, SURPLUS, WORKER_DIED

METRIC = "val_f1_class1"
LONG = [2, 2, 2, 2, 2, 2, 2, 2, 2]  # its JSON text is longer than a table or tick cell


def make_spec(goal: str = "maximize", **parameters):
    """A sweep spec parsed from YAML text, as a sweep file is read."""
    parameters = parameters or {
        "model_type": {"values": ["UNet", "SegmentationCNN"]},
        "learning_rate": {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-2},
        "max_epochs": {"value": 2},  # fixed: not swept
    }
    data = {"method": "random", "metric": {"name": METRIC, "goal": goal}, "parameters": parameters}
    return parse_sweep_spec(yaml.safe_load(yaml.safe_dump(data, sort_keys=False)))


def read(text: str) -> str:
    """`text` as read back from a file (the W&B backend's trials): equal, not the same object."""
    return json.loads(json.dumps(text))


def record(number, state, value, config=True, **params):
    config_values = {"model_type": "UNet", "learning_rate": 1e-3, **params} if config else None
    return TrialRecord(number, read(state), value, params, config=config_values)


# --- records from the W&B backend's rows ----------------------------------------------------


def test_records_from_wandb_rows():
    spec = make_spec()
    rows = [
        {
            "number": "3",
            "state": "COMPLETE",
            "value": 0.5,
            "config": {"model_type": "UNet", "learning_rate": 0.01, "seed": 2},
            "run_name": "trial-3",
            "epochs": 2,
            "duration_s": 10.5,
            "intermediate": [0.3, 0.5],
            "error": None,
        },
        {"number": 4, "intermediate": [0.2, 0.1], "error": "interrupted"},
        {"number": 5, "state": "COMPLETE", "value": float("nan"), "config": {}},
        {"number": 6, "state": "PRUNED", "value": None, "intermediate": [float("inf")]},
        {"number": 7, "state": "RUNNING", "value": -float("inf"), "intermediate": [0.7]},
    ]
    records = records_from_wandb(rows, spec)
    assert [r.number for r in records] == [0, 1, 2, 3, 4]  # in the order they finished
    first = records[0]
    assert first == TrialRecord(
        number=0,
        state="COMPLETE",
        value=0.5,
        params={"model_type": "UNet", "learning_rate": 0.01},
        config=rows[0]["config"],
        run_name="trial-3",
        epochs=2,
        duration_s=10.5,
        error=None,
    )
    second = records[1]
    assert (second.state, second.value, second.error) == ("FAIL", 0.1, "interrupted")
    assert second.params == {"model_type": None, "learning_rate": None}
    assert second.config is None and second.epochs is None and second.duration_s is None
    assert records[2].value is None  # NaN is no value
    assert records[3].value is None  # nor is inf, even the last reported one
    assert records[4].value is None  # a given value is not replaced by the intermediate ones


# --- order and best ------------------------------------------------------------------------


def test_sort_order_by_state_then_value_then_number():
    records = [
        record(0, "FAIL", 0.99),
        record(1, "CRASHED", 0.98),  # an unknown state goes last
        record(2, "RUNNING", 0.97),
        record(3, "PRUNED", 0.96),
        record(4, "COMPLETE", 0.2),
        record(5, "COMPLETE", None),  # no value: after those with one
        record(6, "COMPLETE", 0.7),
        record(7, "PRUNED", None),
        record(8, "COMPLETE", 0.7),  # a tie: by number
        record(9, "COMPLETE", None),
        record(10, "FAIL", None),
        record(11, "PRUNED", 0.1),
        record(12, "RUNNING", 0.5),
        record(13, "CRASHED", None),
        record(14, "FAIL", 0.2),
        record(15, "COMPLETE", -0.5),
        record(16, "INTERRUPTED", 0.999),  # stopped: between running and failed trials
        record(17, "INTERRUPTED", 0.05),
    ]
    order = [r.number for r in sort_records(records, read("maximize"))]  # goals are read too
    assert order == [6, 8, 4, 15, 5, 9, 3, 11, 7, 2, 12, 16, 17, 0, 14, 10, 1, 13]
    order = [r.number for r in sort_records(records, read("minimize"))]
    assert order == [15, 4, 6, 8, 5, 9, 11, 3, 7, 12, 2, 17, 16, 14, 0, 10, 1, 13]


def test_best_record_is_the_best_complete_trial_with_a_config():
    records = [
        record(0, "PRUNED", 0.99),
        record(1, "COMPLETE", 0.95, config=False),  # no config: cannot be retrained
        record(2, "COMPLETE", 0.6),
        record(3, "COMPLETE", 0.8),
        record(4, "COMPLETE", None),
        record(5, "COMPLETE", 0.3),
        record(6, "ABORTED", 0.99),  # not complete: an unknown state
        record(7, "COMPLETED", 0.01),
    ]
    assert best_record(records, "maximize").number == 3
    assert best_record(records, "minimize").number == 5
    assert best_record(records[:2], "maximize") is None
    assert best_record(records[6:], "maximize") is None  # no complete trial at all
    assert best_record([], "maximize") is None


# --- the table and the CSV -----------------------------------------------------------------


def table_records() -> list[TrialRecord]:
    return [
        TrialRecord(
            0,
            "COMPLETE",
            0.61234567,
            {"model_type": "UNet", "learning_rate": 0.001, "pool_sizes": LONG},
            config={"model_type": "UNet"},
            run_name="trial-0",
            epochs=2,
            duration_s=12.345,
        ),
        TrialRecord(
            1,
            "PRUNED",
            0.4,
            {"model_type": "SegmentationCNN", "learning_rate": 0.00051234, "pool_sizes": [4]},
            epochs=1,
            duration_s=3.06,
        ),
        TrialRecord(
            2,
            "FAIL",
            None,
            {"model_type": "UNet", "learning_rate": None, "pool_sizes": None},
            run_name="trial-2",
            error="RuntimeError: boom",
        ),
    ]


TABLE_SPEC = {
    "model_type": {"values": ["UNet", "SegmentationCNN"]},
    "learning_rate": {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-2},
    "pool_sizes": {"values": [LONG, [4]]},
}


def test_format_table_aligns_rounded_cells():
    spec = make_spec(**TABLE_SPEC)
    text = format_table(table_records(), spec)
    long = json.dumps(LONG)  # 27 characters: cut to 23 and an ellipsis
    assert len(long) > 24
    expected = [
        "rank  trial  state     val_f1_class1  epochs  duration_s  model_type       "
        "learning_rate  pool_sizes",
        "1     0      COMPLETE  0.6123         2       12.3        UNet             "
        f"0.001          {long[:23]}…",
        "2     1      PRUNED    0.4            1       3.1         SegmentationCNN  "
        "0.0005123      [4]",
        "3     2      FAIL                                         UNet",
    ]
    assert text.split("\n") == expected


def test_a_cell_of_exactly_the_width_is_kept_whole():
    spec = make_spec(**TABLE_SPEC)
    exact, longer = "M" * 24, "N" * 25
    records = [
        TrialRecord(0, "COMPLETE", 0.5, {"model_type": exact, "learning_rate": 0.001}),
        TrialRecord(1, "COMPLETE", 0.4, {"model_type": longer, "learning_rate": 0.001}),
    ]
    lines = format_table(records, spec).split("\n")
    assert f" {exact}  " in lines[1]
    assert f" {'N' * 23}…  " in lines[2] and longer not in lines[2]


def test_write_table_keeps_full_values(tmp_path):
    spec = make_spec(**TABLE_SPEC)
    path = tmp_path / "out" / TABLE_FILE
    write_table(path, table_records(), spec)
    text = path.read_text()
    assert "\r" not in text
    assert text.splitlines()[0] == (
        "rank,trial,state,val_f1_class1,epochs,duration_s,model_type,learning_rate,pool_sizes,"
        "run_name,error"
    )
    with path.open() as handle:
        rows = list(csv.DictReader(handle))
    assert rows[0] == {
        "rank": "1",
        "trial": "0",
        "state": "COMPLETE",
        METRIC: "0.61234567",
        "epochs": "2",
        "duration_s": "12.3",
        "model_type": "UNet",
        "learning_rate": "0.001",
        "pool_sizes": json.dumps(LONG),
        "run_name": "trial-0",
        "error": "",
    }
    assert rows[1]["learning_rate"] == "0.00051234" and rows[1]["duration_s"] == "3.1"
    assert rows[1]["pool_sizes"] == "[4]" and rows[1]["run_name"] == ""
    assert rows[2][METRIC] == "" and rows[2]["error"] == "RuntimeError: boom"
    assert [p.name for p in path.parent.iterdir()] == [TABLE_FILE]  # no temporary file left


# --- the best config -----------------------------------------------------------------------


def best_trial(run_name: str | None = "trial-7") -> TrialRecord:
    config = {
        "model_type": "SegmentationCNN",
        "learning_rate": 0.003,
        "pool_sizes": (2, 2),
        "processed_dir": Path("données/processed"),  # written as it is, not escaped
        "bands": {"sentinel2": ("B04", "B03")},
        "checkpoint_dir": "sweeps/s/checkpoints",  # where it ran: left out
        "log_dir": "sweeps/s/logs",
        "wandb_run_name": "trial-7",
        "wandb_mode": "disabled",
        "resume": None,
        "not_a_field": 3,  # not an ESDConfig field: left out
    }
    return TrialRecord(7, "COMPLETE", 0.87654321, {}, config=config, run_name=run_name)


def test_best_config_values_are_plain_esdconfig_fields_in_field_order():
    values = best_config_values(best_trial())
    assert values == {
        "processed_dir": "données/processed",
        "bands": {"sentinel2": ["B04", "B03"]},
        "model_type": "SegmentationCNN",
        "pool_sizes": [2, 2],
        "learning_rate": 0.003,
    }
    assert list(values) == ["processed_dir", "bands", "model_type", "pool_sizes", "learning_rate"]
    assert best_config_values(TrialRecord(1, "COMPLETE", 0.5, {})) == {}


def test_best_config_file_has_a_header_and_plain_yaml(tmp_path):
    spec = make_spec()
    path = tmp_path / BEST_CONFIG_FILE
    write_best_config(path, best_trial(), spec, "mystudy", METRIC)
    lines = path.read_text().splitlines()
    assert lines[:2] == [
        f"# Best trial of sweep mystudy: trial-7 ({METRIC} = 0.876543, goal maximize; "
        f"OPTIMISTIC: it chose the trial).",
        f"# Retrain with: python -m scripts.train --config {path}",  # the path as given
    ]
    assert yaml.safe_load(path.read_text()) == best_config_values(best_trial())
    assert lines[2] == "processed_dir: données/processed"  # in field order, not sorted
    write_best_config(path, best_trial(run_name=None), make_spec("minimize"), "other", METRIC)
    assert path.read_text().splitlines()[0] == (
        f"# Best trial of sweep other: 7 ({METRIC} = 0.876543, goal minimize; OPTIMISTIC: it "
        f"chose the trial)."
    )


# --- the plot ------------------------------------------------------------------------------

STATE_STYLE = {
    "COMPLETE": ("o", "tab:blue", "complete"),
    "PRUNED": ("x", "tab:orange", "pruned (last value)"),
    "FAIL": ("v", "tab:red", "fail"),
    "INTERRUPTED": ("s", "tab:purple", "interrupted"),
    "RUNNING": (".", "tab:gray", "running"),
}


def scatter_points(axis) -> dict[str, np.ndarray]:
    """label → (n, 2) points of each scatter of an axis."""
    return {c.get_label(): np.asarray(c.get_offsets()) for c in axis.collections}


def assert_style(axis) -> None:
    for collection in axis.collections:
        marker, color, _ = next(s for s in STATE_STYLE.values() if s[2] == collection.get_label())
        style = MarkerStyle(marker)
        expected = style.get_path().transformed(style.get_transform())
        np.testing.assert_allclose(collection.get_paths()[0].vertices, expected.vertices)
        np.testing.assert_allclose(collection.get_facecolor()[0], to_rgba(color))


def plot_records() -> list[TrialRecord]:
    records = [
        TrialRecord(3, "COMPLETE", 0.5, {"model_type": "UNet", "learning_rate": 0.002}),
        TrialRecord(0, "COMPLETE", 0.6, {"model_type": "SegmentationCNN", "learning_rate": 1e-4}),
        TrialRecord(1, "PRUNED", 0.3, {"model_type": "UNet", "learning_rate": 0.005}),
        TrialRecord(2, "FAIL", None, {"model_type": "UNet", "learning_rate": 0.001}),
        TrialRecord(4, "COMPLETE", 0.8, {"model_type": "SegmentationCNN", "learning_rate": 0.01}),
        TrialRecord(5, "RUNNING", 0.2, {"model_type": "Other", "learning_rate": 0.003}),
        TrialRecord(6, "FAIL", 0.1, {"model_type": "UNet", "learning_rate": 0.0003}),
        TrialRecord(7, "INTERRUPTED", 0.4, {"model_type": "UNet", "learning_rate": 0.0002}),
        TrialRecord(8, "ABORTED", 0.95, {"model_type": "UNet", "learning_rate": 0.0004}),  # unknown
    ]
    for r in records:
        r.state = read(r.state)
    return records


def jitter(number: int) -> float:
    """The documented offset of a categorical point: a golden-ratio sequence within ±0.15."""
    return ((number * 0.618034) % 1.0 - 0.5) * 0.3


def test_plot_of_the_metric_per_trial_with_the_running_best():
    spec = make_spec()
    figure = plot_sweep(plot_records(), spec)
    assert tuple(figure.get_size_inches()) == pytest.approx((3 * 4.6, 1 * 3.6))
    first, *_ = figure.axes
    assert len(figure.axes) == 3
    assert all(axis.get_visible() for axis in figure.axes)
    assert first.get_title() == f"{METRIC} per trial (maximize)"
    assert (first.get_xlabel(), first.get_ylabel()) == ("trial", METRIC)
    points = scatter_points(first)
    assert set(points) == {"complete", "pruned (last value)", "running", "fail", "interrupted"}
    np.testing.assert_allclose(points["complete"], [[0, 0.6], [3, 0.5], [4, 0.8]])
    np.testing.assert_allclose(points["pruned (last value)"], [[1, 0.3]])
    np.testing.assert_allclose(points["fail"], [[6, 0.1]])  # trial 2 has no value
    np.testing.assert_allclose(points["running"], [[5, 0.2]])
    np.testing.assert_allclose(points["interrupted"], [[7, 0.4]])
    assert_style(first)
    (line,) = first.get_lines()
    assert line.get_label() == "best so far" and line.get_drawstyle() == "steps-post"
    np.testing.assert_allclose(line.get_xdata(), [0, 3, 4])
    np.testing.assert_allclose(line.get_ydata(), [0.6, 0.6, 0.8])
    assert to_rgba(line.get_color()) == to_rgba("tab:green")
    legend = [text.get_text() for text in first.get_legend().get_texts()]
    states = ["complete", "pruned (last value)", "fail", "interrupted", "running"]
    assert legend == [*states, "best so far"]
    ticks = first.get_xticks()
    assert np.array_equal(ticks, np.round(ticks)) and len(ticks) >= 3  # whole trial numbers

    minimize = plot_sweep(plot_records(), make_spec("minimize")).axes[0]
    assert minimize.get_title() == f"{METRIC} per trial (minimize)"
    (line,) = minimize.get_lines()
    np.testing.assert_allclose(line.get_ydata(), [0.6, 0.5, 0.5])


def test_plot_panels_of_categorical_and_range_parameters():
    spec = make_spec()
    _, model, rate = plot_sweep(plot_records(), spec).axes
    # categorical: the choice's index plus the trial's jitter; an unknown choice has no x
    assert (model.get_xlabel(), model.get_ylabel()) == ("model_type", METRIC)
    points = scatter_points(model)
    np.testing.assert_allclose(
        points["complete"], [[1 + jitter(0), 0.6], [jitter(3), 0.5], [1 + jitter(4), 0.8]]
    )
    np.testing.assert_allclose(points["pruned (last value)"], [[jitter(1), 0.3]])
    assert np.isnan(points["running"][0, 0])
    assert [t.get_text() for t in model.get_xticklabels()] == ["UNet", "SegmentationCNN"]
    np.testing.assert_allclose(model.get_xticks(), [0, 1])
    assert model.get_xlim() == pytest.approx((-0.5, 1.5))
    assert all(abs(jitter(n)) <= 0.15 for n in range(50))
    assert len({round(jitter(n), 9) for n in range(50)}) == 50
    assert_style(model)
    # a log-uniform range: the value itself on a log axis
    assert (rate.get_xlabel(), rate.get_ylabel(), rate.get_xscale()) == (
        "learning_rate",
        METRIC,
        "log",
    )
    np.testing.assert_allclose(
        scatter_points(rate)["complete"], [[1e-4, 0.6], [0.002, 0.5], [0.01, 0.8]]
    )


def test_plot_layout_hides_the_unused_panels_and_labels_long_choices():
    spec = make_spec(
        model_type={"values": ["UNet", "SegmentationCNN"]},
        learning_rate={"distribution": "uniform", "min": 1e-4, "max": 1e-2},
        pool_sizes={"values": [LONG, [4], [10, 2, 3, 4, 5]]},  # the last: 16 characters
        embedding_size={"distribution": "int_uniform", "min": 4, "max": 16},
    )
    records = [
        TrialRecord(
            0,
            "COMPLETE",
            0.5,
            {"model_type": "UNet", "learning_rate": 0.002, "pool_sizes": [4], "embedding_size": 8},
        ),
        TrialRecord(
            1,
            "COMPLETE",
            0.7,
            {"model_type": "UNet", "learning_rate": 0.004, "pool_sizes": LONG, "embedding_size": 4},
        ),
    ]
    figure = plot_sweep(records, spec)
    assert tuple(figure.get_size_inches()) == pytest.approx((3 * 4.6, 2 * 3.6))
    axes = figure.axes
    assert len(axes) == 6
    assert [axis.get_visible() for axis in axes] == [True] * 5 + [False]
    assert [axis.get_xlabel() for axis in axes[1:5]] == [
        "model_type",
        "learning_rate",
        "pool_sizes",
        "embedding_size",
    ]
    assert axes[2].get_xscale() == "linear" and axes[4].get_xscale() == "linear"
    labels = [t.get_text() for t in axes[3].get_xticklabels()]
    assert labels == [json.dumps(LONG)[:15] + "…", "[4]", "[10, 2, 3, 4, 5]"]
    np.testing.assert_allclose(
        scatter_points(axes[3])["complete"], [[1 + jitter(0), 0.5], [jitter(1), 0.7]]
    )
    np.testing.assert_allclose(scatter_points(axes[4])["complete"], [[8, 0.5], [4, 0.7]])


@pytest.mark.parametrize(
    ("swept", "size", "visible"),
    [(1, (2 * 4.6, 3.6), [True, True]), (3, (3 * 4.6, 2 * 3.6), [True] * 4 + [False] * 2)],
)
def test_one_panel_per_swept_parameter(swept, size, visible):
    names = ["learning_rate", "weight_decay", "dice_weight"][:swept]
    spec = make_spec(**{n: {"distribution": "uniform", "min": 0.001, "max": 0.01} for n in names})
    records = [TrialRecord(0, "COMPLETE", 0.5, dict.fromkeys(names, 0.005))]
    figure = plot_sweep(records, spec)
    assert tuple(figure.get_size_inches()) == pytest.approx(size)
    assert [axis.get_visible() for axis in figure.axes] == visible
    assert [axis.get_xlabel() for axis in figure.axes[1 : 1 + swept]] == names


def test_plot_without_swept_parameters_or_values():
    spec = SweepSpec("random", METRIC, "maximize", {})
    records = [TrialRecord(0, "FAIL", None, {}), TrialRecord(1, "RUNNING", None, {})]
    figure = plot_sweep(records, spec)
    assert len(figure.axes) == 1
    assert tuple(figure.get_size_inches()) == pytest.approx((4.6, 3.6))
    first = figure.axes[0]
    assert len(first.collections) == 0 and len(first.get_lines()) == 0
    assert first.get_legend() is None


def png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", header[16:24])


def test_save_figure_writes_a_png_at_the_chosen_dpi(tmp_path):
    from src.visualization.figure_output import FigureOptions, figure_output

    spec = SweepSpec("random", METRIC, "maximize", {})
    figure = plot_sweep([TrialRecord(0, "COMPLETE", 0.5, {})], spec)
    path = tmp_path / PLOT_FILE
    save_figure(figure, path)
    assert png_size(path) == (506, 396)  # 4.6 × 3.6 inches at the default 110 dpi
    with figure_output(FigureOptions(dpi=50)):  # --dpi 50
        save_figure(figure, path)
    assert png_size(path) == (230, 180)
    assert [p.name for p in tmp_path.iterdir()] == [PLOT_FILE]


# --- write_results -------------------------------------------------------------------------


def test_write_results_prints_and_writes_everything(tmp_path):
    spec = make_spec()
    records = [
        TrialRecord(0, "PRUNED", 0.9, {"model_type": "UNet", "learning_rate": 0.001}),
        TrialRecord(
            1,
            "COMPLETE",
            0.612345,
            {"model_type": "UNet", "learning_rate": 0.002},
            config={"model_type": "UNet", "learning_rate": 0.002, "log_dir": "x"},
            run_name="trial-1",
        ),
    ]
    messages: list[str] = []
    written = write_results(tmp_path / "out", records, spec, "mystudy", log=messages.append)
    out = tmp_path / "out"
    assert written == {
        "table": out / TABLE_FILE,
        "best_config": out / BEST_CONFIG_FILE,
        "plot": out / PLOT_FILE,
    }
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [TABLE_FILE, BEST_CONFIG_FILE, PLOT_FILE]
    )
    assert messages[0].splitlines()[1].startswith("1     1      COMPLETE")  # best first
    assert messages[1:] == [
        f"best: trial-1 with {METRIC} = 0.6123 OPTIMISTIC (the value chose it among the "
        f"trials: score it on held-out tiles)",
        f"table: {out / TABLE_FILE}",
        f"best_config: {out / BEST_CONFIG_FILE}",
        f"plot: {out / PLOT_FILE}",
    ]
    with (out / TABLE_FILE).open() as handle:
        assert [row["trial"] for row in csv.DictReader(handle)] == ["1", "0"]
    assert yaml.safe_load((out / BEST_CONFIG_FILE).read_text()) == {
        "model_type": "UNet",
        "learning_rate": 0.002,
    }


def test_write_results_without_a_complete_trial_or_without_trials(tmp_path):
    spec = make_spec()
    messages: list[str] = []
    records = [TrialRecord(4, "FAIL", None, {"model_type": "UNet", "learning_rate": 0.001})]
    written = write_results(tmp_path, records, spec, "s", log=messages.append)
    assert set(written) == {"table", "plot"}
    assert messages[1] == "no complete trial: no best config"
    assert not (tmp_path / BEST_CONFIG_FILE).exists()
    messages.clear()
    assert write_results(tmp_path / "empty", [], spec, "s", log=messages.append) == {}
    assert messages == ["no finished trials: nothing to report"]
    assert not (tmp_path / "empty").exists()


def test_best_record_number_when_unnamed(tmp_path):
    spec = make_spec()
    records = [
        TrialRecord(
            9, "COMPLETE", 0.25, {"model_type": "UNet", "learning_rate": 0.001}, {"seed": 1}
        )
    ]
    messages: list[str] = []
    write_results(tmp_path, records, spec, "s", log=messages.append)
    assert any(m.startswith(f"best: 9 with {METRIC} = 0.25 OPTIMISTIC") for m in messages)
    assert math.isclose(yaml.safe_load((tmp_path / BEST_CONFIG_FILE).read_text())["seed"], 1)


def test_categorical_distribution_of_the_parsed_spec():
    # The test data above rely on how the spec stores choices (a guard for this file).
    spec = make_spec(**TABLE_SPEC)
    assert spec.swept["pool_sizes"].choices == (json.dumps(LONG), "[4]")
    assert CategoricalDistribution(["[4]"]).choices == ("[4]",)


# --- records from an Optuna study (last: a SQLite study takes a second or two) -------------


@pytest.fixture
def study(tmp_path: Path) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(
        storage=f"sqlite:///{tmp_path / 'study.db'}", study_name="s", direction="maximize"
    )


SWEPT = {
    "model_type": {"values": ["UNet", "SegmentationCNN"]},
    "pool_sizes": {"values": [[2, 2], [4]]},
    "learning_rate": {"distribution": "uniform", "min": 0.0001, "max": 0.01},
}


def _ask(study: optuna.Study, model: str, pools: str, rate: float) -> optuna.Trial:
    """A trial that samples these values (enqueued), as the sweep's objective would."""
    values = {"model_type": model, "pool_sizes": pools, "learning_rate": rate, "not_swept": 0.5}
    study.enqueue_trial(values)
    trial = study.ask()
    trial.suggest_categorical("model_type", ["UNet", "SegmentationCNN"])
    trial.suggest_categorical("pool_sizes", ["[2, 2]", "[4]"])
    trial.suggest_float("learning_rate", 0.0001, 0.01)
    trial.suggest_float("not_swept", 0.0, 1.0)
    return trial


def test_records_from_a_study_in_every_state(study):
    spec = make_spec(**SWEPT)
    config = {"model_type": "UNet", "pool_sizes": [4], "learning_rate": 0.002, "seed": 1}
    # 0: complete, with the config that training saw
    trial = _ask(study, "SegmentationCNN", "[2, 2]", 0.005)  # the config wins over params
    trial.set_user_attr("config", config)
    trial.set_user_attr("run_name", "trial-0")
    trial.set_user_attr("epochs", 2)
    trial.report(0.2, 1)
    study.tell(trial, 0.75)
    # 1: pruned: its value is the last reported step's (reported out of order here)
    trial = _ask(study, "SegmentationCNN", "[2, 2]", 0.005)
    trial.report(0.4, 3)
    trial.report(0.3, 1)
    study.tell(trial, state=TrialState.PRUNED)
    # 2: failed without config: parameters decoded from Optuna's choices
    trial = _ask(study, "UNet", "[4]", 0.0003)
    trial.set_user_attr("error", "RuntimeError: boom")
    study.tell(trial, state=TrialState.FAIL)
    # 3: interrupted and re-run as 4; 5: interrupted, not re-run
    trial = _ask(study, "UNet", "[2, 2]", 0.001)
    trial.set_user_attr("interrupted", True)
    study.tell(trial, state=TrialState.FAIL)
    study.enqueue_trial({"learning_rate": 0.001}, user_attrs={"retry_of": 3})
    trial = study.ask()
    trial.suggest_float("learning_rate", 0.0001, 0.01)
    study.tell(trial, 0.5)
    trial = study.ask()
    trial.set_user_attr("interrupted", True)
    study.tell(trial, state=TrialState.FAIL)
    # 6: its worker died (failed without an error), re-run as 7; 8: its worker died too
    study.tell(study.ask(), state=TrialState.FAIL)
    study.enqueue_trial({}, user_attrs={RETRY_OF: 6})
    study.tell(study.ask(), 0.3)
    trial = study.ask()
    trial.set_user_attr(WORKER_DIED, True)
    trial.set_user_attr(ERROR, "SystemExit: 1")
    study.tell(trial, state=TrialState.FAIL)
    # 9: a surplus trial, never run (left out)
    trial = study.ask()
    trial.set_user_attr(SURPLUS, True)
    study.tell(trial, state=TrialState.FAIL)
    # 10: still running, one value reported; 11: waiting (left out); 12: added after it
    trial = study.ask()
    trial.report(0.1, 0)
    study.enqueue_trial({"learning_rate": 0.002})
    study.add_trial(
        create_trial(
            state=TrialState.COMPLETE,
            value=0.9,
            params={"learning_rate": 0.004},
            distributions={"learning_rate": FloatDistribution(0.0001, 0.01)},
        )
    )
    records = records_from_study(study, spec)
    assert [r.number for r in records] == [0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 12]
    by_number = {r.number: r for r in records}
    first = by_number[0]
    assert (first.state, first.value, first.run_name, first.epochs) == (
        "COMPLETE",
        0.75,
        "trial-0",
        2,
    )
    assert first.params == {"model_type": "UNet", "pool_sizes": [4], "learning_rate": 0.002}
    assert first.config == config and first.error is None
    assert isinstance(first.duration_s, float) and first.duration_s >= 0
    pruned = by_number[1]
    assert (pruned.state, pruned.value, pruned.epochs) == ("PRUNED", 0.4, 2)
    assert pruned.params == {
        "model_type": "SegmentationCNN",
        "pool_sizes": [2, 2],
        "learning_rate": 0.005,
    }
    failed = by_number[2]
    assert (failed.state, failed.value, failed.epochs) == ("FAIL", None, None)
    assert failed.params == {"model_type": "UNet", "pool_sizes": [4], "learning_rate": 0.0003}
    assert failed.error == "RuntimeError: boom" and failed.config is None
    # Optuna records an interrupted trial as failed; it was stopped, not broken.
    assert (by_number[3].state, by_number[3].error) == ("INTERRUPTED", "re-run as trial 4")
    assert by_number[4].params == {"learning_rate": 0.001} and by_number[4].value == 0.5
    assert (by_number[4].state, by_number[4].error) == ("COMPLETE", None)
    assert (by_number[5].state, by_number[5].error) == ("INTERRUPTED", None)
    assert by_number[5].params == {}
    assert (by_number[6].state, by_number[6].error) == (
        "FAIL",
        "its worker process died; re-run as trial 7",
    )
    assert (by_number[7].value, by_number[7].error) == (0.3, None)
    assert (by_number[8].state, by_number[8].error) == ("FAIL", "its worker process died")
    running = by_number[10]
    assert (running.state, running.value, running.epochs, running.duration_s) == (
        "RUNNING",
        0.1,
        1,
        None,
    )
    assert by_number[12].value == 0.9 and by_number[12].state == "COMPLETE"
