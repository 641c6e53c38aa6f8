"""`python -m scripts.train` as users run it: each model, logs, checkpoints, W&B offline, DDP."""

from __future__ import annotations

import csv
import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from scripts.train import ESDConfig
from src.esd_data.dataset import ESDDataset
from src.esd_data.manifest import Manifest
from src.training.metrics import segmentation_metrics
from src.training.module import ESDSegmentation

ROOT = Path(__file__).resolve().parents[1]
# One torch thread per process (see conftest): the same results, without OpenMP contention.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def train_arguments(tmp_path: Path, *flags: str) -> list[str]:
    return [
        "--checkpoint_dir", str(tmp_path / "checkpoints"),
        "--log_dir", str(tmp_path / "logs"),
        "--num_workers", "0", "--batch_size", "8", "--max_epochs", "1",
        "--wandb_run_name", "cli",
        *flags,
    ]  # fmt: skip


def run_train(tmp_path: Path, *flags: str, timeout: int = 600) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "scripts.train", *train_arguments(tmp_path, *flags)]
    environment = {**os.environ, "WANDB_MODE": "offline", "WANDB_API_KEY": ""}
    return subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=environment
    )


@pytest.fixture
def train_main(monkeypatch, capsys):
    """The train command's own main, in this process, with run_train's arguments and
    environment: (exit status, stdout, stderr). It parses and trains exactly as the command
    does, without the seconds of a second interpreter start and its imports; tests keep a
    real subprocess where the process itself is what they check."""
    from scripts.train import main

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_API_KEY", "")

    def call(tmp_path: Path, *flags: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main(train_arguments(tmp_path, *flags))
        out, err = capsys.readouterr()
        return code, out, err

    return call


MODEL_FLAGS = {
    "SegmentationCNN": ["--embedding_size", "8"],
    "UNet": ["--embedding_size", "8", "--n_encoders", "1"],
    # 52 M parameters: one training and one validation batch (a count, as Lightning reads 1).
    "FCNResnetTransfer": ["--limit_train_batches", "1", "--limit_val_batches", "1"],
    "TemporalFusion": ["--tf_width", "8", "--temporal", "attention"],
    "SMP": [
        "--smp_arch",
        "unetplusplus",
        "--smp_encoder",
        "resnet18",
        "--limit_train_batches",
        "4",
    ],
}


@pytest.mark.slow
@pytest.mark.parametrize("model_type", list(MODEL_FLAGS))
def test_each_model_trains_from_the_command_line(
    model_type, synthetic_raw, synthetic_processed, tmp_path, train_main
):
    # The first model prepares raw tiles and logs to W&B offline (both are the same code for
    # every model) as a real `python -m scripts.train` subprocess; the others train on the
    # prepared folder without W&B through the command's main in this process (the same
    # parsing of their flags and the same training: a subprocess and a W&B service start
    # per model would only add seconds).
    first = model_type == next(iter(MODEL_FLAGS))
    data = (
        ["--raw_dir", str(synthetic_raw), "--processed_dir", str(tmp_path / "processed")]
        if first
        else ["--raw_dir", "none", "--processed_dir", str(synthetic_processed)]
    )
    flags = (
        f"--model_type={model_type}",
        *data,
        "--wandb_mode", "offline" if first else "disabled",
        *MODEL_FLAGS[model_type],
    )  # fmt: skip
    if first:
        result = run_train(tmp_path, *flags)
        code, out, err = result.returncode, result.stdout, result.stderr
    else:
        code, out, err = train_main(tmp_path, *flags)
    assert code == 0, err[-3000:]
    assert re.search(r"val: f1_class1 \d\.\d{4}", out)
    run = tmp_path / "checkpoints" / model_type / "cli"
    assert (run / "last.ckpt").is_file()
    assert len(list(run.glob("best-000-*.ckpt"))) == 1
    with (tmp_path / "logs" / model_type / "cli" / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert any(row.get("val_f1_class1") for row in rows)
    assert {"val_iou_macro", "train_loss", "val_auroc_macro"} <= set(rows[0])
    wandb_runs = list((tmp_path / "logs" / "wandb").glob("offline-run-*"))
    assert len(wandb_runs) == (1 if first else 0)
    records = b"".join(p.read_bytes() for run in wandb_runs for p in run.glob("*.wandb"))
    for key in (b"val_f1_class1", b"val_loss", b"train_iou_class2") if first else ():
        assert key in records
    # The evaluation command's own main, in this process (a second interpreter start per
    # model would only add time; the train command above ran as a real subprocess).
    from scripts.evaluate import main as evaluate_main

    assert evaluate_main(["--model_path", str(run / "last.ckpt"), "--results_dir",
                          str(tmp_path / "evaluation"), "--accelerator", "cpu"]) == 0  # fmt: skip
    tiles = tmp_path / "evaluation" / "tiles"
    val = sorted(p.stem for p in tiles.glob("*.png") if "_" not in p.stem)
    processed = tmp_path / "processed" if first else synthetic_processed
    expected = sorted(Manifest.load(processed).split["val"])
    assert val == expected and len(list(tiles.glob("*_prediction.tif"))) == len(expected)
    assert (tmp_path / "evaluation" / "metrics.json").is_file()
    attention = sorted(p.name for p in tiles.glob("*_attention.png"))
    assert attention == (
        [f"{t}_attention.png" for t in val] if model_type == "TemporalFusion" else []
    )


def test_help_lists_every_config_field():
    result = subprocess.run(
        [sys.executable, "-m", "scripts.train", "--help"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0
    for field in dataclasses.fields(ESDConfig):
        assert f"--{field.name}" in result.stdout


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--tile_size_gt", "3"], "tile_size_gt=3 must divide"),
        (["--model_type", "ResNet9000"], "unknown model_type 'ResNet9000'"),
        (["--resume", "nowhere/last.ckpt"], "resume checkpoint nowhere/last.ckpt does not exist"),
        (["--bands", "{sentinel2: [B10]}"], "sentinel2 has no band 'B10'"),
        (["--bands", "{modis: null}"], "unknown sensor 'modis'"),
        (["--learning_rate", "fast"], "invalid float value: 'fast'"),
        (["--optimiser", "adam"], "unrecognized arguments: --optimiser"),
        (["--optimizer", "lbfgs"], "invalid choice: 'lbfgs'"),
        (
            ["--model_type", "FCNResnetTransfer", "--pretrained", "--weights_path", "no.pth"],
            "pretrained FCN-ResNet101 weights not found",
        ),
        (
            ["--model_type", "SMP", "--pretrained", "--weights_path", "missing_encoder.pth"],
            "--weights_path, a local file (nothing is downloaded): missing_encoder.pth",
        ),
        (["--model_type", "SMP", "--smp_arch", "unet3d"], "unknown smp architecture 'unet3d'"),
        (["--model_type", "UNet", "--pretrained"], "UNet loads no pretrained weights"),
    ],
)
def test_bad_options_fail_before_any_work(flags, message, tmp_path, capsys):
    # In this process (the command's own main): the same parsing as a subprocess, faster.
    from scripts.train import main

    processed = tmp_path / "processed"
    argv = ["--raw_dir", str(tmp_path / "raw"), "--processed_dir", str(processed),
            "--checkpoint_dir", str(tmp_path / "checkpoints"), *flags]  # fmt: skip
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err
    assert not processed.exists() and not (tmp_path / "checkpoints").exists()


def test_config_file_and_flag_precedence(synthetic_processed, tmp_path, train_main):
    config_file = tmp_path / "train.yaml"
    config_file.write_text(
        f"processed_dir: {synthetic_processed}\nraw_dir: null\nmodel_type: SegmentationCNN\n"
        "embedding_size: 4\nmax_epochs: 3\nwandb_mode: disabled\n"
    )
    code, _, err = train_main(tmp_path, "--config", str(config_file), "--max_epochs", "1")
    assert code == 0, err[-3000:]
    checkpoint = torch.load(
        tmp_path / "checkpoints" / "SegmentationCNN" / "cli" / "last.ckpt", weights_only=True
    )
    assert checkpoint["epoch"] == 0  # the flag's 1 epoch, not the file's 3
    assert checkpoint["hyper_parameters"]["model_hparams"]["embedding_size"] == 4
    assert not (tmp_path / "logs" / "wandb").exists()


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_logs_synchronised_metrics(synthetic_processed, tmp_path):
    # t=16: 3 validation subtiles (one per tile) on 2 processes, so a sampler that pads the
    # shards to equal length would score one subtile twice.
    result = run_train(
        tmp_path,
        "--processed_dir", str(synthetic_processed), "--raw_dir", "none",
        "--model_type", "SegmentationCNN", "--embedding_size", "8", "--tile_size_gt", "16",
        "--accelerator", "cpu", "--devices", "2", "--strategy", "ddp",
        "--wandb_mode", "disabled",
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "GLOBAL_RANK: 1" in result.stderr
    with (tmp_path / "logs" / "SegmentationCNN" / "cli" / "metrics.csv").open() as handle:
        logged = [r for r in csv.DictReader(handle) if r.get("val_f1_class1")][-1]
    # Each rank validated half of the tiles; synchronised metrics equal one pass over all.
    module = ESDSegmentation.load_from_checkpoint(
        tmp_path / "checkpoints" / "SegmentationCNN" / "cli" / "last.ckpt"
    ).eval()
    dataset = ESDDataset(synthetic_processed, "val", tile_size_gt=16)
    assert len(dataset) % 2 == 1
    metrics = segmentation_metrics("val_")
    with torch.no_grad():
        for start in range(0, len(dataset), 8):
            items = [dataset[i] for i in range(start, min(start + 8, len(dataset)))]
            logits = module(torch.stack([item["X"] for item in items]))
            metrics.update(logits.softmax(dim=1), torch.stack([item["y"] for item in items]))
    expected = metrics.compute()
    for key in ("val_f1_class1", "val_acc_overall", "val_iou_macro"):
        assert float(logged[key]) == pytest.approx(expected[key].item(), abs=1e-5), key


@pytest.mark.slow
def test_ranks_started_together_prepare_a_cold_cache_once(synthetic_raw, tmp_path):
    # torchrun starts both ranks at once, so both reach the preparation of the empty folder.
    processed = tmp_path / "processed"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "scripts.train", "--raw_dir", str(synthetic_raw), "--processed_dir", str(processed),
        "--model_type", "SegmentationCNN", "--embedding_size", "4", "--max_epochs", "1",
        "--num_workers", "0", "--prepare_workers", "1", "--accelerator", "cpu", "--devices", "2",
        "--strategy", "ddp", "--wandb_mode", "disabled", "--wandb_run_name", "cold",
        "--checkpoint_dir", str(tmp_path / "checkpoints"), "--log_dir", str(tmp_path / "logs"),
    ]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    # A rank that processed tiles says so (rank 0 also reports a cache it reused).
    reports = [line for line in output.splitlines() if line.startswith("data: prepared")]
    processed = [line for line in reports if "0 processed, 12 reused" not in line]
    assert len(processed) == 1 and "12 processed, 0 reused" in processed[0], reports
    assert "GLOBAL_RANK: 0" in output and "GLOBAL_RANK: 1" in output
    assert (tmp_path / "checkpoints" / "SegmentationCNN" / "cold" / "last.ckpt").is_file()


def csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
def test_resume_restores_the_run_and_is_exact_with_loader_workers(
    synthetic_processed, tmp_path, train_main, capsys
):
    # The two runs to compare with go through the command's main here; the resumed run is a
    # fresh `python -m scripts.train` process given nothing but --resume and the new length,
    # so all it knows of the run comes from the checkpoint and the run folders.
    flags = [
        "--processed_dir", str(synthetic_processed), "--raw_dir", "none",
        "--model_type", "SegmentationCNN", "--embedding_size", "4",
        "--bands", "{sentinel2: [B04, B03, B02], viirs: null}", "--wandb_mode", "disabled",
    ]  # fmt: skip
    code, _, err = train_main(tmp_path / "a", *flags, "--max_epochs", "2", "--num_workers", "2")
    assert code == 0, err[-3000:]
    code, _, err = train_main(tmp_path / "b", *flags, "--max_epochs", "1", "--num_workers", "2")
    assert code == 0, err[-3000:]
    last = tmp_path / "b" / "checkpoints" / "SegmentationCNN" / "cli" / "last.ckpt"
    resumed = subprocess.run(  # nothing but --resume and the new length
        [sys.executable, "-m", "scripts.train", "--resume", str(last), "--max_epochs", "2"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = torch.load(tmp_path / "a" / "checkpoints" / "SegmentationCNN" / "cli" / "last.ckpt",
                   weights_only=True)  # fmt: skip
    b = torch.load(last, weights_only=True)
    assert a["epoch"] == b["epoch"] == 1
    assert all(torch.equal(value, b["state_dict"][key]) for key, value in a["state_dict"].items())
    assert b["hyper_parameters"]["channels"] == a["hyper_parameters"]["channels"]
    assert len(b["hyper_parameters"]["channels"]) == 22  # 3 bands × 4 dates + 9 dates + max
    rows_a = csv_rows(tmp_path / "a" / "logs" / "SegmentationCNN" / "cli" / "metrics.csv")
    rows_b = csv_rows(tmp_path / "b" / "logs" / "SegmentationCNN" / "cli" / "metrics.csv")
    keys = ("epoch", "step", "train_loss", "val_loss", "val_f1_class1", "lr-Adam")
    assert [[r.get(k) for k in keys] for r in rows_b] == [[r.get(k) for k in keys] for r in rows_a]
    assert [p.name for p in (tmp_path / "b" / "checkpoints" / "SegmentationCNN").iterdir()] == [
        "cli"
    ]

    from scripts.train import main  # an option error: the parsing, in this process

    capsys.readouterr()
    with pytest.raises(SystemExit) as conflict:
        main(["--resume", str(last), "--model_type", "UNet"])
    assert conflict.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "--model_type 'UNet' (the run has 'SegmentationCNN')" in lines[0]
