"""Workers sharing one cross-validation: each unit trained exactly once, a dead worker's unit
resumed by another, the summary equal to a one-process run's, `--status` true throughout;
with file locks or through a PostgreSQL database; `--summarize` on a run with units missing;
processes sharing the folds of one permutation importance."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy

from scripts.compare import main as compare_main
from scripts.cross_validate import main as cross_validate_main
from scripts.evaluate import main as evaluate_main
from scripts.importance import main as importance_main
from scripts.report import main as report_main
from src.claims import claimed
from src.cross_validation.db_claims import TABLE, DatabaseClaims
from src.cross_validation.status import unit_states
from src.evaluation.bootstrap import scores_of_confusion
from tests.postgres_server import new_database, postgres_server

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def arguments(processed: Path, out: Path) -> list[str]:
    """2 models × 3 folds of tiny networks, the last epoch of a fixed budget (no choice)."""
    return [
        "--model_type", "SegmentationCNN", "UNet", "--folds", "3", "--selection", "last",
        "--embedding_size", "4", "--depth", "1", "--n_encoders", "1", "--max_epochs", "2",
        "--num_workers", "0", "--raw_dir", "none", "--processed_dir", str(processed),
        "--output_dir", str(out), "--name", "cv", "--tile_pictures", "none",
        "--bootstrap_resamples", "50", "--wandb_mode", "disabled",
    ]  # fmt: skip


def worker(processed: Path, out: Path, *extra: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "scripts.cross_validate", *arguments(processed, out), *extra]
    return subprocess.Popen(command, cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip


def scores(out: Path, file: str = "summary.json") -> dict[str, list]:
    """Per model, its folds' scores and its out-of-fold scores, as `out/cv/<file>` holds them."""
    summary = json.loads((out / "cv" / file).read_text())
    return {
        m["name"]: [[f["scores"] for f in m["folds"]], m["out_of_fold"]] for m in summary["models"]
    }


def epochs_trained(out: Path) -> list[int]:
    """Per unit, how many training epochs its metrics.csv logged (twice trained: more)."""
    counts = []
    for metrics in sorted(out.glob("cv/*/fold_*/logs/**/metrics.csv")):
        rows = list(csv.DictReader(metrics.open()))
        counts.append(sum(1 for r in rows if r.get("train_loss")))
    return counts


def wait_for_a_started_unit(out: Path, process: subprocess.Popen) -> Path:
    """The last.ckpt of a unit part-way through its epochs, once `process` has written one."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        started = [c for c in out.glob("cv/*/fold_*/checkpoints/**/last.ckpt")
                   if not (c.parents[3] / "result.json").is_file()]  # fmt: skip
        if started:
            return started[0]
        time.sleep(0.05)
    raise AssertionError(f"no unit started: {process.communicate()[1][-2000:]}")


def state(out: Path, model: str, fold: int) -> dict:
    """--status's row of one unit."""
    return next(r for r in unit_states(out / "cv") if (r["model"], r["unit"]) == (model, fold))


@pytest.fixture(scope="module")
def reference(synthetic_processed, tmp_path_factory) -> Path:
    """The cross-validation run by one process."""
    out = tmp_path_factory.mktemp("one")
    assert cross_validate_main(arguments(synthetic_processed, out)) == 0
    return out


@pytest.mark.slow
def test_two_workers_train_every_unit_once_and_agree_with_one_process(
    reference, synthetic_processed, tmp_path, capsys
):
    out = tmp_path / "two"
    workers = [worker(synthetic_processed, out) for _ in range(2)]  # the same command, twice
    outputs = [w.communicate(timeout=600) for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs[0][1][-2000:] + outputs[1][1][-2000:]
    assert epochs_trained(out) == [2] * 6  # every unit trained once, by one of them
    assert scores(out) == scores(reference)  # the same scores to the last digit
    assert {r["state"] for r in unit_states(out / "cv")} == {"done"}
    capsys.readouterr()
    assert cross_validate_main(["--status", str(out / "cv")]) == 0
    assert "6 done, 0 running, 0 failed, 0 waiting of 6 units; summary written" in (
        capsys.readouterr().out
    )


@pytest.mark.slow
def test_a_killed_workers_unit_is_resumed_by_another_and_the_result_is_the_same(
    reference, synthetic_processed, tmp_path
):
    out = tmp_path / "killed"
    victim = worker(synthetic_processed, out)
    wait_for_a_started_unit(out, victim)
    running = [r for r in unit_states(out / "cv") if r["state"] == "running"]
    assert running and f"process {victim.pid}" in running[0]["by"]  # --status names it
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert {r["state"] for r in unit_states(out / "cv")} <= {"done", "waiting"}  # lease lost
    assert cross_validate_main(arguments(synthetic_processed, out)) == 0  # another worker
    assert scores(out) == scores(reference)
    assert epochs_trained(out) == [2] * 6


def test_status_says_who_runs_a_unit_and_which_failed(tmp_path):
    root = tmp_path / "cv"
    root.mkdir()
    plan = {"folds": [["Tile1"], ["Tile2"]], "configuration": {"models": {"UNet": {}}}}
    (root / "folds.json").write_text(json.dumps(plan))
    (root / "UNet" / "fold_1").mkdir(parents=True)
    (root / "UNet" / "fold_1" / "failed.txt").write_text("RuntimeError: out of memory\n")
    with claimed(root / "UNet" / "fold_0") as mine:
        assert mine
        states = {r["unit"]: r for r in unit_states(root)}
        assert states[0]["state"] == "running" and f"process {os.getpid()}" in states[0]["by"]
        assert states[1] == {**states[1], "state": "failed", "error": "RuntimeError: out of memory"}
    assert unit_states(root)[0]["state"] == "waiting"  # released: nobody runs it


# --------------------------------------------------------------------------------------------
# --summarize: the finished units' summary, never taken for the complete one


def missing_one_unit(reference: Path, out: Path) -> Path:
    """A copy of the one-process cross-validation whose UNet fold 2 never ran."""
    root = out / "cv"
    shutil.copytree(reference / "cv", root)
    for written in root.glob("summary.*"):
        written.unlink()
    shutil.rmtree(root / "UNet" / "fold_2")
    return root


def pooled_f1(fold_dirs: list[Path]) -> float:
    """Class-1 F1 of the held-out tiles' confusion matrices that the folds' own evaluations
    recorded, summed."""
    evaluations = [json.loads((f / "predictions" / "metrics.json").read_text()) for f in fold_dirs]
    matrices = [np.array(tile["confusion_matrix"]) for e in evaluations for tile in e["tiles"]]
    return float(scores_of_confusion(np.sum(matrices, axis=0))["f1_class1"])


@pytest.mark.slow
def test_summarize_names_the_missing_unit_and_only_completion_writes_the_summary(
    reference, synthetic_processed, tmp_path, capsys
):
    root = missing_one_unit(reference, tmp_path)
    capsys.readouterr()
    assert cross_validate_main(["--summarize", str(root)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("PARTIAL: 1 of 6 units missing (UNet fold 2): ")
    partial = json.loads((root / "partial_summary.json").read_text())
    assert [(m["model"], m["fold"]) for m in partial["missing"]] == [("UNet", 2)]
    assert not (root / "summary.json").exists()  # readers of summary.json find none
    models = {m["name"]: m for m in partial["models"]}
    unet = models["UNet"]
    assert [f["fold"] for f in unet["folds"]] == [0, 1]
    folds = [root / "UNet" / f"fold_{k}" for k in (0, 1)]
    assert unet["out_of_fold"]["f1_class1"] == pooled_f1(folds)
    assert unet["mean"]["f1_class1"] == np.mean([f["scores"]["f1_class1"] for f in unet["folds"]])
    complete_model = scores(reference)["SegmentationCNN"]  # every unit finished: the same scores
    assert scores(tmp_path, "partial_summary.json")["SegmentationCNN"] == complete_model
    assert partial["pairs"] == []  # UNet scored fewer tiles: no pair
    # The readers of a cross-validation refuse it in one line.
    for command, argv in [(compare_main, ["--runs", str(root), str(reference / "cv")]),
                          (report_main, [str(root)]),
                          (evaluate_main, ["--cv_dir", str(root / "UNet")])]:  # fmt: skip
        assert command(argv) == 1
        error = capsys.readouterr().err.strip()
        assert len(error.splitlines()) == 1 and ("finished" in error), error
    # Completing the run writes the complete summary and removes the partial one.
    assert cross_validate_main(arguments(synthetic_processed, tmp_path)) == 0
    assert not list(root.glob("partial_summary.*")) and scores(tmp_path) == scores(reference)
    complete = (root / "summary.json").read_text()
    (root / "summary.json").unlink()
    assert cross_validate_main(["--summarize", str(root)]) == 0  # every unit done:
    assert (root / "summary.json").read_text() == complete  # what completion writes


# --------------------------------------------------------------------------------------------
# Claims through PostgreSQL


@pytest.fixture(scope="module")
def postgres_url():
    with postgres_server() as url:
        yield url


@pytest.fixture
def database(postgres_url, request) -> str:
    """A database of its own for each test."""
    return new_database(postgres_url, request.node.name.lower()[:60])


def leases(database: str) -> list[tuple]:
    engine = sqlalchemy.create_engine(database)
    with engine.connect() as connection:
        rows = connection.execute(sqlalchemy.text(f"SELECT unit, owner, heartbeat FROM {TABLE}"))
        return [tuple(row) for row in rows]


def set_lease(database: str, unit: str, owner: str, age_s: float) -> None:
    """Insert or overwrite a lease whose heartbeat is `age_s` seconds old."""
    engine = sqlalchemy.create_engine(database)
    with engine.begin() as connection:
        connection.execute(sqlalchemy.text(
            f"INSERT INTO {TABLE} (unit, owner, token, heartbeat) VALUES (:unit, :owner, 'x', "
            f"now() - make_interval(secs => :age)) ON CONFLICT (unit) DO UPDATE SET "
            f"owner = EXCLUDED.owner, token = 'x', heartbeat = EXCLUDED.heartbeat"
        ), {"unit": unit, "owner": owner, "age": age_s})  # fmt: skip


def test_a_lease_is_renewed_while_held_lost_when_stale_and_its_loss_noticed(database, tmp_path):
    unit = tmp_path / "cv" / "UNet" / "fold_0"
    mine, other = (DatabaseClaims(database, "cv/abc", lease_s=1.0) for _ in range(2))
    with mine.claimed(unit) as held:
        assert held
        time.sleep(1.5)  # longer than the lease: the heartbeat renews it
        with other.claimed(unit) as taken:
            assert not taken
        assert f"process {os.getpid()}" in other.holder(unit)
        assert not mine.lost(unit)
        set_lease(database, other.key(unit), "process 1 on gone", age_s=0.5)  # fresh
        with other.claimed(unit) as taken:
            assert not taken  # a lease younger than the timeout is alive
        set_lease(database, other.key(unit), "process 1 on gone", age_s=1.5)  # a stalled holder
        assert other.holder(unit) is None  # lapsed: nobody runs it
        with other.claimed(unit) as taken:
            assert taken  # taken over
            deadline = time.monotonic() + 5
            while not mine.lost(unit) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert mine.lost(unit)  # the first holder learns it at its next heartbeat
    assert leases(database) == []  # released


@pytest.mark.slow
def test_two_workers_claiming_through_postgresql_train_every_unit_once(
    reference, synthetic_processed, database, tmp_path, capsys
):
    out = tmp_path / "pg"
    storage = ["--storage", database]
    workers = [worker(synthetic_processed, out, *storage) for _ in range(2)]
    outputs = [w.communicate(timeout=600) for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs[0][1][-2000:] + outputs[1][1][-2000:]
    assert epochs_trained(out) == [2] * 6  # every unit trained once, by one of them
    assert scores(out) == scores(reference)  # the same scores to the last digit
    assert not list(out.glob("cv/*/fold_*/.claim")) and leases(database) == []
    capsys.readouterr()  # a worker without --storage is refused before it claims anything
    assert cross_validate_main(arguments(synthetic_processed, out)) == 1
    assert "give every worker the same" in capsys.readouterr().err


@pytest.mark.slow
def test_a_dead_workers_lease_is_taken_over_once_stale_and_its_unit_resumed(
    reference, synthetic_processed, database, tmp_path
):
    out, lease = tmp_path / "dead", 4.0
    storage = ["--storage", database, "--lease_s", str(lease)]
    victim = worker(synthetic_processed, out, *storage)
    started = wait_for_a_started_unit(out, victim)
    unit = started.parents[3]  # <cv>/<model>/fold_<k>
    model, fold = unit.parent.name, int(unit.name.removeprefix("fold_"))
    running = state(out, model, fold)  # --status, from the database
    assert running["state"] == "running" and f"process {victim.pid}" in running["by"]
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    # A dead worker's lease outlives it until the timeout: running, for now.
    assert state(out, model, fold)["state"] == "running"
    ((key, _, last_beat),) = leases(database)
    # A lease a worker on another machine left an hour ago, before it started UNet fold 2.
    prefix = key.rsplit("/", 2)[0]
    set_lease(database, f"{prefix}/UNet/fold_2", "process 1 on elsewhere since 09:00:00", 3600)
    assert state(out, "UNet", 2)["state"] == "waiting"  # stale: nobody runs it
    assert cross_validate_main(arguments(synthetic_processed, out) + storage) == 0
    assert scores(out) == scores(reference)
    assert epochs_trained(out) == [2] * 6  # resumed from its last.ckpt, not trained again
    taken_over = (unit / "data" / "manifest.json").stat().st_mtime  # written as it (re)starts
    assert taken_over >= last_beat.timestamp() + lease  # not before the lease lapsed
    assert leases(database) == []


# --------------------------------------------------------------------------------------------
# Permutation importance of a cross-validation's folds, shared by processes


@pytest.mark.slow
def test_importance_processes_compute_each_fold_once_and_agree_with_one(reference, tmp_path):
    flags = ["--cv_dir", str(reference / "cv" / "UNet"), "--grouping", "sensor", "--repeats",
             "2", "--bootstrap_resamples", "50"]  # fmt: skip
    assert importance_main([*flags, "--results_dir", str(tmp_path / "one")]) == 0
    command = [sys.executable, "-m", "scripts.importance", *flags, "--results_dir",
               str(tmp_path / "shared")]  # fmt: skip
    processes = [subprocess.Popen(command, cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(2)]  # fmt: skip
    outputs = [p.communicate(timeout=300) for p in processes]
    assert [p.returncode for p in processes] == [0, 0], [err[-2000:] for _, err in outputs]
    computed = [line.split(" (")[0] for out, _ in outputs for line in out.splitlines()
                if " computed by process " in line]  # fmt: skip
    assert sorted(computed) == ["part 1 of 3", "part 2 of 3", "part 3 of 3"]  # each once
    one, shared = (json.loads((tmp_path / d / "importance.json").read_text())
                   for d in ("one", "shared"))  # fmt: skip
    assert shared == one  # the same numbers to the last digit
