"""Sweeps with several worker processes on one study: journal file, PostgreSQL, CV objective.

Every trial trains a tiny SegmentationCNN for one or two epochs on the shared synthetic set;
every study is a real Optuna study in a journal file or a real PostgreSQL server.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml

from src.sweeps.study import WORKER, WORKER_DIED, open_storage
from tests.postgres_server import postgres_server

ROOT = Path(__file__).resolve().parents[1]
# One torch thread per process (see conftest): the same results, without OpenMP contention.
pytestmark = pytest.mark.usefixtures("one_torch_thread")
ENV = {**os.environ, "WANDB_MODE": "offline", "WANDB_API_KEY": "", "OMP_NUM_THREADS": "1"}


def sweep_file(path: Path, method: str, rates: list[float], epochs: int = 1, **extra) -> Path:
    spec = {
        "name": path.stem,
        "method": method,
        "metric": {"name": "val_f1_class1", "goal": "maximize"},
        "parameters": {
            "model_type": {"value": "SegmentationCNN"},
            "embedding_size": {"value": 4},
            "depth": {"value": 1},
            "max_epochs": {"value": epochs},
            "learning_rate": {"values": rates},
            "batch_size": {"values": [8, 16]} if method == "grid" else {"value": 16},
        },
        **extra,
    }
    path.write_text(yaml.safe_dump(spec))
    return path


def sweep_command(sweep: Path, out: Path, processed: Path, *flags: str) -> list[str]:
    return [
        sys.executable, "-m", "scripts.train_sweeps", "--sweep_file", str(sweep),
        "--backend", "optuna", "--output_dir", str(out), "--processed_dir", str(processed),
        "--raw_dir", "none", "--num_workers", "0", "--wandb_mode", "disabled", *flags,
    ]  # fmt: skip


def sweeps_main(command: list[str], monkeypatch: pytest.MonkeyPatch) -> int:
    """`command` (a sweep_command) through the command's main in this process, in ENV: the
    same parsing and sweep without a second interpreter start and its imports (with
    --workers, the workers it starts are processes of their own either way)."""
    from scripts.train_sweeps import main

    assert command[:3] == [sys.executable, "-m", "scripts.train_sweeps"]
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    return main(command[3:])


def study_of(storage: str, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=open_storage(storage))


def complete(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]


@pytest.mark.slow
def test_two_workers_share_a_grid_and_a_total(synthetic_processed, tmp_path, monkeypatch):
    # The command's main in this process; its two workers are processes of their own.
    grid = sweep_file(tmp_path / "grid.yml", "grid", [0.001, 0.002, 0.003])  # 3 × 2 points
    command = sweep_command(grid, tmp_path / "grid", synthetic_processed, "--workers", "2")
    assert sweeps_main(command, monkeypatch) == 0
    study = study_of(str(tmp_path / "grid" / "study.journal"), "grid")
    points = [(t.params["learning_rate"], t.params["batch_size"]) for t in complete(study)]
    assert len(points) == 6 and len(set(points)) == 6  # every point once, none twice
    assert len({t.user_attrs[WORKER]["pid"] for t in complete(study)}) == 2  # both worked

    total = sweep_file(tmp_path / "total.yml", "random", [0.001, 0.002, 0.003, 0.004])
    command = sweep_command(total, tmp_path / "total", synthetic_processed, "--workers", "2")
    assert sweeps_main([*command, "--count", "3"], monkeypatch) == 0
    study = study_of(str(tmp_path / "total" / "study.journal"), "total")
    assert len(complete(study)) == 3  # the total, never exceeded by the two workers together
    with (tmp_path / "total" / "trials.csv").open() as handle:
        assert len(list(csv.DictReader(handle))) == 3


@pytest.mark.slow
def test_a_killed_worker_is_recorded_and_a_new_call_finishes(
    synthetic_processed, tmp_path, monkeypatch
):
    sweep = sweep_file(tmp_path / "kill.yml", "random", [0.001, 0.002, 0.003], epochs=3)
    out = tmp_path / "kill"
    command = [*sweep_command(sweep, out, synthetic_processed, "--workers", "2"), "--count", "4"]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=ENV)  # fmt: skip
    journal = str(out / "study.journal")
    victim, deadline = None, time.monotonic() + 300
    while victim is None and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.5)
        if Path(journal).is_file():
            trials = study_of(journal, "kill").trials
            running = [t for t in trials if t.state.name == "RUNNING" and WORKER in t.user_attrs]
            if running:
                victim = running[0]
    assert victim is not None, process.communicate()[1][-3000:]
    os.kill(victim.user_attrs[WORKER]["pid"], signal.SIGKILL)  # one worker dies mid-trial
    process.communicate(timeout=600)
    study = study_of(journal, "kill")
    died = study.trials[victim.number]
    assert died.state == optuna.trial.TrialState.FAIL and died.user_attrs[WORKER_DIED]
    assert len(complete(study)) >= 1  # the other worker went on
    # A new call (the command's main in this process) finishes the count if the survivor
    # could not.
    assert sweeps_main(command, monkeypatch) == 0
    assert len(complete(study_of(journal, "kill"))) == 4
    with (out / "trials.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert any("its worker process died" in row["error"] for row in rows)


@pytest.mark.slow
def test_cross_validated_objective_is_the_mean_of_its_folds(
    synthetic_processed, tmp_path, monkeypatch
):
    # One worker: the sweep command's main in this process.
    sweep = sweep_file(tmp_path / "cv.yml", "random", [0.002, 0.003])
    out = tmp_path / "cv"
    command = sweep_command(sweep, out, synthetic_processed, "--objective", "cv", "--folds", "2")
    assert sweeps_main([*command, "--count", "2"], monkeypatch) == 0
    trials = complete(study_of(str(out / "study.journal"), "cv"))
    assert len(trials) == 2
    for trial in trials:
        folds = trial.user_attrs["fold_scores"]
        assert len(folds) == 2 and trial.value == pytest.approx(sum(folds) / 2)
        assert sorted(trial.intermediate_values) == [1, 2]  # reported after each fold
        assert trial.user_attrs["epochs"] >= 1  # the folds' median epoch, not empty


# --------------------------------------------------------------------------------------------
# PostgreSQL


@pytest.fixture(scope="module")
def postgres_url():
    """A PostgreSQL server on a local socket for this module (skipped where none can start)."""
    with postgres_server() as url:
        yield url


@pytest.mark.slow
def test_two_workers_on_a_postgresql_study(
    postgres_url, synthetic_processed, tmp_path, monkeypatch
):
    sweep = sweep_file(tmp_path / "pg.yml", "random", [0.001, 0.002, 0.003])
    out = tmp_path / "pg"
    flags = ("--workers", "2", "--count", "3", "--storage", postgres_url)
    assert sweeps_main(sweep_command(sweep, out, synthetic_processed, *flags), monkeypatch) == 0
    study = study_of(postgres_url, "pg")
    assert len(complete(study)) == 3
    assert len({t.user_attrs[WORKER]["pid"] for t in complete(study)}) == 2
    written = (out / "trials.csv").read_text()
    (out / "trials.csv").unlink()
    report = [sys.executable, "-m", "scripts.train_sweeps", "--report", "--storage",
              postgres_url, "--study_name", "pg", "--output_dir", str(out)]  # fmt: skip
    assert sweeps_main(report, monkeypatch) == 0  # a new reader of the database, in this process
    assert (out / "trials.csv").read_text() == written  # the database holds the results


def test_a_trial_admitted_beyond_the_total_is_refused_and_marked():
    """The race guard: trials asked by several workers at once never exceed the total."""
    from src.sweeps.optuna_backend import _admit, _SurplusTrialError
    from src.sweeps.study import SURPLUS

    study = optuna.create_study()
    first, second, third = study.ask(), study.ask(), study.ask()  # all running at once
    _admit(study, first, limit=2)
    _admit(study, second, limit=2)
    with pytest.raises(_SurplusTrialError):
        _admit(study, third, limit=2)
    assert third.user_attrs.get(SURPLUS) is True and SURPLUS not in second.user_attrs
    _admit(study, study.ask(), limit=None)  # no total: always admitted
