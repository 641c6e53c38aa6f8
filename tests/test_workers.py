"""Workers sharing one cross-validation: each unit trained exactly once, a dead worker's unit
resumed by another, the summary equal to a one-process run's, `--status` true throughout."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scripts.cross_validate import main as cross_validate_main
from src.cross_validation.claims import claimed
from src.cross_validation.status import unit_states

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


def worker(processed: Path, out: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "scripts.cross_validate", *arguments(processed, out)]
    return subprocess.Popen(command, cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip


def scores(out: Path) -> dict[str, list]:
    summary = json.loads((out / "cv" / "summary.json").read_text())
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
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and victim.poll() is None:
        started = [c for c in out.glob("cv/*/fold_*/checkpoints/**/last.ckpt")
                   if not (c.parents[3] / "result.json").is_file()]  # fmt: skip
        if started:  # a unit part-way through its epochs
            break
        time.sleep(0.05)
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
