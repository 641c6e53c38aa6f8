"""The command lines as users meet them: one-line errors, help, option meanings, stopping."""

from __future__ import annotations

import csv
import dataclasses
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from src.cli import parse_config
from src.training.config import ESDConfig

ROOT = Path(__file__).resolve().parents[1]
# One torch thread per process (see conftest): the same results, without OpenMP contention.
pytestmark = pytest.mark.usefixtures("one_torch_thread")
SCRIPTS = ("train", "evaluate", "train_sweeps", "prepare", "make_synthetic")


def run(*command: str, timeout: int = 300, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_API_KEY": ""}
    return subprocess.run(
        [sys.executable, *command], cwd=ROOT, capture_output=True, text=True,
        timeout=timeout, env=env, **kwargs,
    )  # fmt: skip


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_yaml_values_of_the_wrong_type_are_named_with_the_fix(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("learning_rate: 1e-3\nmax_epochs: three\nbatch_size: 4.5\n")
    result = run("-m", "scripts.train", "--config", str(config))
    assert result.returncode == 2
    assert_one_line_error(
        result,
        "learning_rate: '1e-3' must be a number (YAML reads 1e-3 as text: write 0.001)",
        "max_epochs: 'three' must be a whole number",
        "batch_size: 4.5 must be a whole number",
    )
    with pytest.raises(ValueError, match=r"batch_size: 4\.5 must be a whole number"):
        ESDConfig(batch_size=4.5)  # the same check for Python callers


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_missing_accelerator_is_one_line_naming_what_exists(synthetic_processed, tmp_path):
    result = run(
        "-m", "scripts.train", "--raw_dir", "none", "--processed_dir", str(synthetic_processed),
        "--accelerator", "gpu", "--checkpoint_dir", str(tmp_path / "ck"),
        "--log_dir", str(tmp_path / "logs"), "--wandb_mode", "disabled",
    )  # fmt: skip
    assert_one_line_error(result, "--accelerator gpu", "available: cpu")
    assert not (tmp_path / "ck").exists()
    result = run("-m", "scripts.evaluate", "--model_path", str(tmp_path / "x.ckpt"),
                 "--accelerator", "cuda")  # fmt: skip
    assert_one_line_error(result, "x.ckpt does not exist")


def test_every_script_runs_as_a_file_and_answers_help_without_torch():
    for name in SCRIPTS:
        result = run(f"scripts/{name}.py", "--help")
        assert result.returncode == 0 and "usage:" in result.stdout, result.stderr[-2000:]
        assert not re.search(r"\(default[^)]*\)[^\n]*\(default", result.stdout), name
        imports = run("-X", "importtime", "-m", f"scripts.{name}", "--help")
        imported = {line.split("|")[-1].strip() for line in imports.stderr.splitlines()}
        assert not {"torch", "lightning", "wandb", "optuna"} & imported, name


def test_limit_batches_means_the_same_from_flags_and_yaml(tmp_path):
    from src.training.train import build_trainer, run_identity

    path = tmp_path / "limits.yaml"
    path.write_text("limit_val_batches: 1.0\nlimit_train_batches: 1\n")
    from_yaml = parse_config(ESDConfig, ["--config", str(path)])
    from_flags = parse_config(
        ESDConfig, ["--limit_val_batches", "1.0", "--limit_train_batches", "1"]
    )
    trainers = []
    for config in (from_yaml, from_flags):
        quiet = dataclasses.replace(config, wandb_mode="disabled", log_dir=tmp_path)
        trainers.append(build_trainer(run_identity(quiet)))
    assert [t.limit_val_batches for t in trainers] == [1.0, 1.0]  # a fraction: all batches
    assert all(isinstance(t.limit_val_batches, float) for t in trainers)
    assert [t.limit_train_batches for t in trainers] == [1, 1]  # a count: one batch, as Lightning
    assert all(isinstance(t.limit_train_batches, int) for t in trainers)
    with pytest.raises(SystemExit) as exit_status:
        parse_config(ESDConfig, ["--limit_train_batches", "3.5"])
    assert exit_status.value.code == 2


def test_training_output_is_short(synthetic_raw, tmp_path):
    result = run(
        "-m", "scripts.train", "--raw_dir", str(synthetic_raw),
        "--processed_dir", str(tmp_path / "processed"), "--max_epochs", "2",
        "--checkpoint_dir", str(tmp_path / "ck"), "--log_dir", str(tmp_path / "logs"),
        "--wandb_run_name", "short", "--num_workers", "0",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    text = (result.stdout + result.stderr).replace("\r", "\n")
    lines = [line for line in text.splitlines() if line.strip() and "it/s" not in line]
    assert len(lines) <= 40, "\n".join(lines)
    for noise in ("LeafSpec", "litlogger", "already configured", "No positive samples",
                  "val_metrics", "anonymous", "will be deleted", "exists and is not empty",
                  "Warning:"):  # fmt: skip
        assert noise not in text, noise  # (esd's own warnings say "warning: …", one line)
    assert re.search(
        r"val, last epoch \(1\), OPTIMISTIC.*\n    val: f1_class1 \d\.\d{4}  acc_overall \d\.\d{4}",
        result.stdout,
    )
    hparams = yaml.safe_load((tmp_path / "logs" / "UNet" / "short" / "hparams.yaml").read_text())
    run_config = hparams["run_config"]
    assert {
        "max_epochs": 2,
        "batch_size": 8,
        "seed": 0,
        "bands": None,
    }.items() <= run_config.items()
    status = (tmp_path / "logs" / "UNet" / "short" / "status.json").read_text()
    assert '"finished"' in status


def test_evaluation_of_an_empty_split_says_how_to_make_one(synthetic_processed, tmp_path, capsys):
    from scripts.evaluate import main as evaluate_main
    from src.training.train import train

    config = ESDConfig(
        raw_dir=None, processed_dir=synthetic_processed, max_epochs=1, num_workers=0,
        embedding_size=4, n_encoders=1, checkpoint_dir=tmp_path / "ck", log_dir=tmp_path / "l",
        wandb_mode="disabled", wandb_run_name="e",
    )  # fmt: skip
    checkpoint = train(config)["last_model_path"]
    # The evaluation command's main in this process (an exception out of it, the traceback a
    # user would see, fails the test): a second interpreter start per call only adds seconds.
    capsys.readouterr()
    assert evaluate_main(["--model_path", checkpoint, "--split", "test"]) != 0
    stderr = capsys.readouterr().err
    assert "Traceback" not in stderr
    assert "test split has no tiles" in stderr and "--test_fraction" in stderr
    assert evaluate_main(["--model_path", checkpoint, "--stride_gt", "2"]) != 0
    assert "--restitch overlap" in capsys.readouterr().err


LONG_SWEEP = {
    "name": "long",
    "method": "random",
    "metric": {"name": "val_f1_class1", "goal": "maximize"},
    "parameters": {
        "model_type": {"value": "UNet"},
        "learning_rate": {"values": [0.001, 0.002]},
        "embedding_size": {"value": 4},
        "n_encoders": {"value": 1},
        "max_epochs": {"value": 200},
        "patience": {"value": 200},  # no early stop: a trial cannot end before the signal
        "num_workers": {"value": 2},
    },
}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("signum", "objective"),
    [(signal.SIGINT, "val"), (signal.SIGTERM, "val"), (signal.SIGINT, "cv")],
)
def test_a_signal_stops_a_sweep_cleanly(signum, objective, synthetic_processed, tmp_path):
    sweep = tmp_path / "long.yml"
    sweep.write_text(yaml.safe_dump(LONG_SWEEP))
    out = tmp_path / "out"
    process = subprocess.Popen(
        [sys.executable, "-m", "scripts.train_sweeps", "--sweep_file", str(sweep),
         "--backend", "optuna", "--output_dir", str(out), "--count", "3",
         "--objective", objective, "--folds", "2",
         "--processed_dir", str(synthetic_processed), "--raw_dir", "none"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "WANDB_MODE": "offline", "WANDB_API_KEY": ""},
    )  # fmt: skip
    deadline = time.monotonic() + 240
    while (
        next(out.rglob("metrics.csv"), None) is None
        and time.monotonic() < deadline
        and process.poll() is None
    ):
        time.sleep(0.5)
    assert process.poll() is None, process.communicate()[1][-3000:]
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + signum, stderr[-3000:]
    # None of ours. Rarely (about 1 run in 30 here) a loader worker's fd-sharing thread,
    # multiprocessing's resource_sharer, prints one when the stopping process closes its socket.
    tracebacks = stderr.split("Traceback")[1:]
    assert not [t for t in tracebacks if "multiprocessing/resource_sharer.py" not in t], stderr
    assert f"stopped by {signal.Signals(signum).name}: trial 0 marked interrupted" in stderr
    with (out / "trials.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [(row["trial"], row["state"]) for row in rows] == [("0", "INTERRUPTED")]
    (status,) = out.rglob("status.json")  # the trial's run (its first fold's, with cv)
    assert '"interrupted"' in status.read_text()
