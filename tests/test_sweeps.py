"""Sweeps: the sweep file's validation, Optuna studies on SQLite, pruning, results, W&B errors.

Trials train tiny models for one to three epochs on the prepared synthetic set, without
loader workers and without W&B; every study is a real Optuna study in a SQLite file.
"""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
import yaml

from scripts.train import ESDConfig
from scripts.train_sweeps import main, parse_arguments
from src.cli import parse_config
from src.sweeps.optuna_backend import (
    OptunaRun,
    make_sampler,
    open_study,
    run_optuna,
    suggest,
)
from src.sweeps.spec import SweepSpecError, load_sweep_file, parse_sweep_spec
from src.sweeps.study import open_storage
from src.sweeps.wandb_backend import choose_backend

ROOT = Path(__file__).resolve().parents[1]
# One torch thread per process (see conftest): the same results, without OpenMP contention.
pytestmark = pytest.mark.usefixtures("one_torch_thread")
TINY_SWEEP = ROOT / "sweeps_tiny.yml"

optuna.logging.set_verbosity(optuna.logging.WARNING)


def training_flags(processed: Path) -> list[str]:
    """Fixed training options of every test trial: synthetic data, no workers, no W&B."""
    return [
        "--processed_dir", str(processed), "--raw_dir", "none",
        "--num_workers", "0", "--wandb_mode", "disabled",
    ]  # fmt: skip


def write_sweep(path: Path, spec: dict) -> Path:
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def tiny_parameters(**overrides) -> dict:
    parameters = {
        "model_type": {"value": "SegmentationCNN"},
        "embedding_size": {"value": 4},
        "depth": {"value": 1},
        "max_epochs": {"value": 1},
        "batch_size": {"value": 16},
    }
    parameters.update(overrides)
    return parameters


def test_shipped_sweep_files_are_valid():
    for name in ("sweeps.yml", "sweeps_tiny.yml"):
        spec = load_sweep_file(ROOT / name, ESDConfig())
        assert spec.metric == "val_f1_class1"
        assert "learning_rate" in spec.swept
    default = load_sweep_file(ROOT / "sweeps.yml")
    assert default.method == "bayes"
    assert default.early_terminate is not None
    assert {"model_type", "batch_size", "embedding_size", "loss"} <= set(default.swept)


# --------------------------------------------------------------------------------------------
# the command line, as users run it


def run_sweeps(*flags: str, env: dict | None = None, timeout: int = 300):
    return subprocess.run(
        [sys.executable, "-m", "scripts.train_sweeps", *flags],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env or {**os.environ, "WANDB_MODE": "offline", "WANDB_API_KEY": ""},
    )


@pytest.mark.slow  # a command-line run and a second call of its main
def test_tiny_sweep_runs_writes_results_and_resumes(synthetic_processed, tmp_path, monkeypatch):
    out = tmp_path / "sweep"
    flags = [
        "--sweep_file", str(TINY_SWEEP), "--backend", "optuna", "--output_dir", str(out),
        *training_flags(synthetic_processed),
    ]  # fmt: skip
    first = run_sweeps(*flags, "--count", "3")
    assert first.returncode == 0, first.stderr[-3000:]
    assert "backend: optuna" in first.stdout

    with (out / "trials.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [row["state"] for row in rows] == ["COMPLETE"] * 3
    scores = [float(row["val_f1_class1"]) for row in rows]
    assert scores == sorted(scores, reverse=True)  # best first
    assert {row["run_name"] for row in rows} == {"trial-0", "trial-1", "trial-2"}
    for row in rows:
        assert (out / "checkpoints" / row["model_type"] / row["run_name"] / "last.ckpt").is_file()
    assert (out / "sweep.png").stat().st_size > 10_000

    best = out / "best_config.yaml"
    values = yaml.safe_load(best.read_text())
    assert "wandb_run_name" not in values and "checkpoint_dir" not in values
    assert values["max_epochs"] == 1 and values["processed_dir"] == str(synthetic_processed)
    config = parse_config(ESDConfig, ["--config", str(best)])  # what scripts.train accepts
    assert config.learning_rate == pytest.approx(float(rows[0]["learning_rate"]))
    assert config.model_type == rows[0]["model_type"]

    # The second call through the command's main in this process (one interpreter start
    # less): it knows the first call's trials only from the study's journal file.
    from scripts.train_sweeps import main

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_API_KEY", "")
    assert main([*flags, "--count", "5"]) == 0  # the study's total: 2 more
    study = optuna.load_study(study_name="tiny", storage=open_storage(str(out / "study.journal")))
    assert len(study.trials) == 5
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    first_params = [t.params for t in study.trials[:3]]
    assert all(t.params not in first_params for t in study.trials[3:])  # new samples
    for trial in study.trials:
        assert trial.user_attrs["config"]["wandb_run_name"] == f"trial-{trial.number}"
        assert trial.user_attrs["config"]["learning_rate"] == trial.params["learning_rate"]
    with (out / "trials.csv").open() as handle:
        assert len(list(csv.DictReader(handle))) == 5


def test_wandb_backend_without_login_fails_fast(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "NETRC"))}
    env.update(HOME=str(home), WANDB_API_KEY="", WANDB_CONFIG_DIR=str(home / ".config"))
    started = time.monotonic()
    result = run_sweeps(
        "--sweep_file", str(TINY_SWEEP), "--backend", "wandb",
        "--output_dir", str(tmp_path / "out"),
        env=env, timeout=60,
    )  # fmt: skip
    assert time.monotonic() - started < 60
    assert result.returncode != 0
    assert "--backend optuna" in result.stderr
    assert "not logged in" in result.stderr
    assert not (tmp_path / "out").exists()


def test_auto_backend_falls_back_to_optuna_when_wandb_is_offline(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    backend, why = choose_backend("auto")
    assert backend == "optuna"
    assert "WANDB_MODE=offline" in why


def test_config_file_and_flags_set_sweep_and_training_options(tmp_path):
    config = tmp_path / "base.yaml"
    config.write_text("count: 4\nlearning_rate: 0.01\nmax_epochs: 7\nbackend: optuna\n")
    options, base, explicit = parse_arguments(
        ["--config", str(config), "--sweep_file", "s.yml", "--max_epochs", "2"]
    )
    assert (options.count, options.backend, options.sweep_file) == (4, "optuna", Path("s.yml"))
    assert (base.learning_rate, base.max_epochs) == (0.01, 2)
    assert explicit == {"learning_rate", "max_epochs"}
    with pytest.raises(SystemExit) as exit_info:
        parse_arguments(["--max_epochs", "2"])  # no --sweep_file
    assert exit_info.value.code == 2


# --------------------------------------------------------------------------------------------
# validation before anything runs


def test_bad_sweep_file_fails_with_every_problem_before_training(tmp_path, capsys):
    sweep = write_sweep(
        tmp_path / "bad.yml",
        {
            "method": "bayes",
            "metric": {"name": "val_f1", "goal": "maximize"},
            "parameters": {
                "learning_rat": {"values": [0.1]},
                "learning_rate": {"min": 0.1, "max": 0.01},
                "model_type": {"values": ["UNet", "ResNet"]},
            },
            "sweeep": 1,
        },
    )
    out = tmp_path / "out"
    status = main(["--sweep_file", str(sweep), "--output_dir", str(out), "--backend", "optuna"])
    error = capsys.readouterr().err
    assert status == 2
    assert "5 problems" in error
    for text in (
        "parameters.learning_rat: not an ESDConfig field (did you mean learning_rate?)",
        "parameters.learning_rate: min 0.1 > max 0.01",
        "'ResNet' is rejected by ESDConfig: unknown model_type",
        "metric.name: 'val_f1' is not a metric that training logs",
        "unknown key 'sweeep'",
    ):
        assert text in error
    assert not out.exists()  # no storage, no checkpoints, no logs


def spec_with(**changes) -> dict:
    spec = {
        "method": "random",
        "metric": {"name": "val_loss", "goal": "minimize"},
        "parameters": {"learning_rate": {"values": [0.1, 0.01]}},
    }
    spec.update(changes)
    return spec


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"method": "hyperopt"}, "method: 'hyperopt' must be one of grid, random, bayes"),
        ({"metric": {"name": "val_loss", "goal": "up"}}, "metric.goal: 'up' must be maximize"),
        ({"metric": {"name": "val_loss"}}, "metric.goal: None must be maximize"),
        (
            {"parameters": {"learning_rate": {"distribution": "log_uniform_values", "min": 0}}},
            "a range needs both `min` and `max`",
        ),
        (
            {
                "parameters": {
                    "learning_rate": {"distribution": "log_uniform_values", "min": 0, "max": 1}
                }
            },
            "log_uniform_values needs min > 0",
        ),
        (
            {"parameters": {"learning_rate": {"distribution": "normal", "min": 0, "max": 1}}},
            "unknown distribution 'normal'",
        ),
        ({"parameters": {"learning_rate": {"values": []}}}, "must be a non-empty list"),
        ({"parameters": {"learning_rate": {"value": -1.0}}}, "learning_rate must be positive"),
        ({"parameters": {"loss": {"values": ["ce", "focal"]}}}, "'focal' must be one of"),
        ({"parameters": {"batch_size": {"min": 2.0, "max": 8.0}}}, "is an integer: use"),
        ({"parameters": {"batch_size": {"values": [8, "16"]}}}, "'16' must be a whole number"),
        ({"parameters": {"learning_rate": {"min": "1e-4", "max": 0.1}}}, "write 0.0001"),
        ({"parameters": {"wandb_run_name": {"values": ["a", "b"]}}}, "cannot be swept"),
        (
            {"method": "grid", "parameters": {"learning_rate": {"min": 0.001, "max": 0.1}}},
            "method grid needs `values`",
        ),
        (
            {"early_terminate": {"type": "hyperband", "min_iter": 10}},
            "min_iter 10 exceeds the 5 epoch(s)",
        ),
        ({"early_terminate": {"type": "median"}}, "must be hyperband"),
        ({"run_cap": -3}, "run_cap: must be a positive integer"),
        ({"program": "train.py"}, "program: not supported"),
    ],
)
def test_each_kind_of_problem_is_reported(changes, message):
    with pytest.raises(SweepSpecError) as error:
        parse_sweep_spec(spec_with(**changes), ESDConfig())
    assert message in str(error.value)


# --------------------------------------------------------------------------------------------
# the Optuna mapping


def test_grid_runs_every_combination_exactly_once(synthetic_processed, tmp_path, capsys):
    grid = {
        "method": "grid",
        "metric": {"name": "val_f1_class1", "goal": "maximize"},
        "parameters": tiny_parameters(
            model_type={"values": ["SegmentationCNN", "UNet"]},
            learning_rate={"values": [0.001, 0.003]},
            n_encoders={"value": 1},
        ),
    }
    sweep = write_sweep(tmp_path / "grid.yml", grid)
    out = tmp_path / "grid"
    flags = ["--sweep_file", str(sweep), "--output_dir", str(out), "--backend", "optuna"]
    assert main([*flags, *training_flags(synthetic_processed)]) == 0
    study = optuna.load_study(study_name="grid", storage=open_storage(str(out / "study.journal")))
    combinations = {(t.params["model_type"], t.params["learning_rate"]) for t in study.trials}
    assert len(study.trials) == 4
    assert combinations == {(m, r) for m in ("SegmentationCNN", "UNet") for r in (0.001, 0.003)}
    capsys.readouterr()
    assert main([*flags, *training_flags(synthetic_processed), "--count", "3"]) == 0
    assert "nothing to run (the grid is done" in capsys.readouterr().out
    assert len(optuna.load_study(study_name="grid", storage=study._storage).trials) == 4


SAMPLED = {
    "method": "random",
    "metric": {"name": "val_loss", "goal": "minimize"},
    "parameters": {
        "learning_rate": {"distribution": "log_uniform_values", "min": 1.0e-5, "max": 1.0e-1},
        "weight_decay": {"distribution": "uniform", "min": 0.0, "max": 0.1},
        "batch_size": {"distribution": "int_uniform", "min": 2, "max": 64},
        "fp_penalty": {"distribution": "q_uniform", "min": 0.0, "max": 1.0, "q": 0.25},
        "bands": {"values": [None, {"sentinel2": ["B04", "B03", "B02"]}]},
        "max_epochs": {"value": 3},
    },
}


@pytest.mark.parametrize(("method", "trials"), [("random", 400), ("bayes", 150)])
def test_samplers_stay_in_range_and_sample_log_scales_evenly(method, trials):
    spec = parse_sweep_spec({**SAMPLED, "method": method}, ESDConfig())
    study = optuna.create_study(sampler=make_sampler(spec, seed=0))
    sampled = []

    def objective(trial: optuna.Trial) -> float:
        values = suggest(trial, spec.parameters)
        sampled.append(values)
        return float(trial.number % 7)  # training-free, unrelated to the parameters

    study.optimize(objective, n_trials=trials)
    rates = [v["learning_rate"] for v in sampled]
    assert all(1e-5 <= r <= 1e-1 for r in rates)
    assert all(0.0 <= v["weight_decay"] <= 0.1 for v in sampled)
    assert all(isinstance(v["batch_size"], int) and 2 <= v["batch_size"] <= 64 for v in sampled)
    assert {v["fp_penalty"] for v in sampled} <= {0.0, 0.25, 0.5, 0.75, 1.0}
    assert {v["max_epochs"] for v in sampled} == {3}
    assert {str(v["bands"]) for v in sampled} == {"None", "{'sentinel2': ['B04', 'B03', 'B02']}"}
    distributions = study.trials[-1].distributions
    assert distributions["learning_rate"].log and not distributions["weight_decay"].log
    assert isinstance(distributions["batch_size"], optuna.distributions.IntDistribution)
    assert distributions["fp_penalty"].step == 0.25
    # Log-uniform: samples cover every decade, and half of them lie below the geometric
    # midpoint 1e-3 (a linear scale would put ~1 % there). TPE exploits the objective's
    # noise, so for bayes only a clear share is required.
    assert {math.floor(math.log10(r)) for r in rates} >= {-5, -4, -3, -2}
    below = sum(r < 1e-3 for r in rates) / len(rates)
    assert (0.4 < below < 0.6) if method == "random" else below > 0.1, below


@pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning")  # the ask/tell prefill
def test_hyperband_prunes_a_poor_trial_and_the_sweep_goes_on(synthetic_processed, tmp_path):
    spec = parse_sweep_spec(
        {
            "method": "random",
            "metric": {"name": "val_loss", "goal": "minimize"},
            "parameters": tiny_parameters(
                max_epochs={"value": 3}, learning_rate={"values": [0.001, 0.002]}
            ),
            "early_terminate": {"type": "hyperband", "min_iter": 1, "eta": 3},
        }
    )
    base = ESDConfig(
        raw_dir=None,
        processed_dir=synthetic_processed,
        num_workers=0,
        wandb_mode="disabled",
        checkpoint_dir=tmp_path / "checkpoints",
        log_dir=tmp_path / "logs",
    )
    # --count is the study's total: the 8 trials below and 2 new ones
    run = OptunaRun(storage=f"sqlite:///{tmp_path / 'study.db'}", study_name="prune", count=10)
    # Earlier trials reached a validation loss of 0 at every epoch: any real trial is worse.
    study = open_study(spec, run, max_epochs=3)
    for _ in range(8):
        trial = study.ask()
        for epoch in (1, 2, 3):
            trial.report(0.0, epoch)
            assert not trial.should_prune()
        study.tell(trial, 0.0)
    study = run_optuna(spec, base, run, log=lambda _: None)
    new = study.trials[8:]
    assert len(new) == 2  # the second trial ran after the first was pruned
    assert [t.state for t in new] == [optuna.trial.TrialState.PRUNED] * 2
    for trial in new:
        assert 1 <= len(trial.intermediate_values) <= 3
        assert all(v > 0 for v in trial.intermediate_values.values())
        assert trial.user_attrs["epochs"] == len(trial.intermediate_values)


def scripted_train(values: dict[float, float], failing: set[float] = frozenset()):
    """A stand-in for train(): the metric each learning rate gives (no training), so that the
    ranking is known in advance; rates in `failing` raise as a broken trial would."""

    def train(config, extra_callbacks=None):
        if config.learning_rate in failing:
            raise RuntimeError("diverged")
        return {
            "val_loss": values[config.learning_rate],
            "best_model_path": "",
            "best_model_score": 0,
        }

    return train


def minimise_spec(**extra) -> dict:
    return {
        "method": "grid",
        "metric": {"name": "val_loss", "goal": "minimize"},
        "parameters": tiny_parameters(learning_rate={"values": [0.001, 0.002, 0.003, 0.004]}),
        **extra,
    }


def test_minimised_metric_ranks_picks_and_plots_the_smallest(tmp_path):
    from src.sweeps.results import plot_sweep, records_from_study, write_results

    spec = parse_sweep_spec(minimise_spec(), ESDConfig())
    losses = {0.001: 0.7, 0.002: 0.2, 0.003: 0.9, 0.004: 0.4}
    run = OptunaRun(storage=f"sqlite:///{tmp_path / 'study.db'}", study_name="min")
    study = run_optuna(spec, ESDConfig(), run, train=scripted_train(losses), log=lambda _: None)
    records = records_from_study(study, spec)
    written = write_results(tmp_path, records, spec, "min", log=lambda _: None)
    with written["table"].open() as handle:
        rows = list(csv.DictReader(handle))
    assert [float(r["val_loss"]) for r in rows] == [0.2, 0.4, 0.7, 0.9]  # smallest first
    assert yaml.safe_load(written["best_config"].read_text())["learning_rate"] == 0.002
    axes = plot_sweep(records, spec).axes[0]
    best_line = next(line for line in axes.get_lines() if line.get_label() == "best so far")
    in_order = [losses[r.params["learning_rate"]] for r in sorted(records, key=lambda r: r.number)]
    assert list(best_line.get_ydata()) == list(np.minimum.accumulate(in_order))


def test_run_cap_bounds_the_study_over_calls(tmp_path, capsys):
    spec = parse_sweep_spec(minimise_spec(run_cap=3), ESDConfig())
    losses = {0.001: 0.7, 0.002: 0.2, 0.003: 0.9, 0.004: 0.4}
    run = OptunaRun(storage=f"sqlite:///{tmp_path / 'study.db'}", study_name="cap", count=10)
    study = run_optuna(spec, ESDConfig(), run, train=scripted_train(losses))

    def run_trials() -> list:  # the grid's fourth point stays queued
        return [t for t in study.trials if t.state != optuna.trial.TrialState.WAITING]

    assert len(run_trials()) == 3
    study = run_optuna(spec, ESDConfig(), run, train=scripted_train(losses))
    assert len(run_trials()) == 3 and "nothing to run (run_cap 3" in capsys.readouterr().out


def test_repeated_failures_stop_the_sweep(tmp_path, capsys):
    spec = parse_sweep_spec(
        {**minimise_spec(), "method": "random", "parameters": tiny_parameters(
            learning_rate={"values": [0.001, 0.002, 0.003, 0.004]})},
        ESDConfig(),
    )  # fmt: skip
    losses = dict.fromkeys((0.001, 0.002, 0.003, 0.004), 0.5)
    run = OptunaRun(
        storage=f"sqlite:///{tmp_path / 'study.db'}", study_name="fail", count=10, max_failures=2
    )
    broken = scripted_train(losses, failing={0.001, 0.002, 0.003, 0.004})
    study = run_optuna(spec, ESDConfig(), run, train=broken)
    states = [t.state for t in study.trials]
    assert states == [optuna.trial.TrialState.FAIL] * 2
    assert all("diverged" in t.user_attrs["error"] for t in study.trials)
    assert "stopped: 2 trials in a row failed" in capsys.readouterr().out
