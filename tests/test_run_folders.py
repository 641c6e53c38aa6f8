"""Runs never overwrite, corrupt or lose each other: run names, status, interrupts, atomic
checkpoints, full and read-only disks, checks before work."""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from scripts.evaluate import main as evaluate_main
from scripts.train import main as train_main
from src.atomic import OutputError, atomic_path
from src.esd_data.manifest import Manifest
from src.esd_data.preparation import PrepareRequest, preparation_lock, prepare_requested
from src.evaluation.config import EvalConfig
from src.evaluation.evaluate import evaluate
from src.training.checkpoint_io import AtomicCheckpointIO
from src.training.config import ESDConfig
from src.training.run_folder import RunFolderError, claim_run, read_status
from src.training.train import train

ROOT = Path(__file__).resolve().parents[1]
# One torch thread per process (see conftest): the same results, without OpenMP contention.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny(tmp_path: Path, processed: Path, **overrides) -> ESDConfig:
    values = {
        "raw_dir": None, "processed_dir": processed, "model_type": "SegmentationCNN",
        "embedding_size": 4, "depth": 1, "max_epochs": 1, "num_workers": 0,
        "wandb_mode": "disabled", "wandb_run_name": "rs",
        "checkpoint_dir": tmp_path / "ck", "log_dir": tmp_path / "logs",
    }  # fmt: skip
    return ESDConfig(**{**values, **overrides})


def files(folder: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in Path(folder).rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def finished_run(synthetic_processed, tmp_path_factory) -> tuple[Path, dict]:
    """One finished 1-epoch run named `rs` (read-only for the tests)."""
    tmp_path = tmp_path_factory.mktemp("run")
    return tmp_path, train(tiny(tmp_path, synthetic_processed))


def test_a_taken_run_name_is_refused_before_any_work(finished_run, synthetic_processed):
    tmp_path, _ = finished_run
    before = files(tmp_path)
    assert read_status(tmp_path / "logs" / "SegmentationCNN" / "rs")["status"] == "finished"
    with pytest.raises(RunFolderError, match=r"run name rs is taken.*--resume"):
        train(tiny(tmp_path, synthetic_processed, learning_rate=0.5))
    assert files(tmp_path) == before
    # A process training a run holds it: a second one on the same name fails at once.
    other = tmp_path / "other"
    log_folder = other / "logs" / "SegmentationCNN" / "rs"
    with claim_run(log_folder, other / "ck" / "SegmentationCNN" / "rs", resuming=False):
        started = time.perf_counter()
        with pytest.raises(RunFolderError, match="being trained by another process"):
            train(tiny(other, synthetic_processed))
        assert time.perf_counter() - started < 30  # refused, not queued behind the lock
    assert not (other / "ck").exists()


def test_a_checkpoint_whose_weights_do_not_fit_is_refused_and_harms_no_run(
    finished_run, synthetic_processed, tmp_path
):
    run_dir, results = finished_run
    swapped = tmp_path / "swapped.ckpt"
    checkpoint = torch.load(results["last_model_path"], weights_only=True)
    name = next(iter(checkpoint["state_dict"]))
    checkpoint["state_dict"][name] = torch.zeros(3, 3)  # another model's weights
    torch.save(checkpoint, swapped)
    before = files(run_dir)
    assert train_main(["--resume", str(swapped), "--processed_dir", str(synthetic_processed),
                       "--raw_dir", "none"]) == 1  # fmt: skip
    assert files(run_dir) == before  # the finished run's status.json still says finished


def test_one_batch_is_one_batch_and_fast_dev_run_finishes(synthetic_processed, tmp_path, capsys):
    results = train(tiny(tmp_path, synthetic_processed, limit_train_batches=1, max_epochs=2))
    assert torch.load(results["last_model_path"], weights_only=True)["global_step"] == 2
    common = ["--raw_dir", "none", "--processed_dir", str(synthetic_processed), "--model_type",
              "SegmentationCNN", "--embedding_size", "4", "--depth", "1", "--num_workers", "0",
              "--wandb_mode", "disabled", "--log_dir", str(tmp_path / "fdr")]  # fmt: skip
    assert train_main([*common, "--fast_dev_run"]) == 0
    assert "--fast_dev_run ran one training and one validation batch" in capsys.readouterr().out
    assert not (tmp_path / "fdr").exists()


def test_a_killed_checkpoint_rewrite_leaves_the_previous_one(tmp_path, monkeypatch):
    """The temporary file of a save lies beside its checkpoint: a kill in the middle of
    writing (here an exception after half the bytes) leaves the previous file whole, and no
    leftovers (Lightning's own save writes in the system's temporary folder and moves the file
    over, a copy across file systems)."""
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"epoch": 1, "weights": torch.ones(4)}, path)

    class Killed(BaseException):
        pass

    def dies(obj, handle):
        handle.write(b"half a checkpoint")
        raise Killed

    monkeypatch.setattr(torch, "save", dies)
    with pytest.raises(Killed):
        io.save_checkpoint({"epoch": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def _mount_tmpfs(folder: Path, options: str) -> bool:
    folder.mkdir(parents=True, exist_ok=True)
    command = ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)]
    return subprocess.run(command, capture_output=True).returncode == 0


def test_a_full_disk_is_one_line_and_leaves_nothing_half_written(
    finished_run, synthetic_processed, tmp_path, capsys
):
    full = tmp_path / "full"
    if not _mount_tmpfs(full, "size=64k"):
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        big = atomic_path(full / "big.bin")
        with (
            pytest.raises(OutputError, match=rf"no space left in {full}.*MiB free"),
            big as temporary,
        ):
            temporary.write_bytes(b"x" * 200_000)
        assert list(full.iterdir()) == []
        raw = tmp_path / "raw"
        from src.esd_data.synthetic import generate_synthetic_dataset

        generate_synthetic_dataset(raw, n_tiles=2, seed=0, tile_px=64)
        result = subprocess.run(
            [sys.executable, "-m", "scripts.prepare", "--raw_dir", str(raw), "--processed_dir",
             str(full / "processed"), "--workers", "1"],
            capture_output=True, text=True, cwd=ROOT,
        )  # fmt: skip
        assert result.returncode == 1, result.stderr
        assert "Traceback" not in result.stderr and f"no space left in {full}" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        assert not (full / "processed" / "manifest.json").exists()
        # Training and evaluating into it: exit 1, one line, no 0-byte or temporary file.
        common = ["--raw_dir", "none", "--processed_dir", str(synthetic_processed),
                  "--model_type", "SegmentationCNN", "--embedding_size", "4", "--depth", "1",
                  "--num_workers", "0", "--wandb_mode", "disabled",
                  "--max_epochs", "1"]  # fmt: skip
        capsys.readouterr()
        assert train_main([*common, "--checkpoint_dir", str(full / "ck"),
                           "--log_dir", str(tmp_path / "logs")]) == 1  # fmt: skip
        assert f"no space left in {full}" in capsys.readouterr().err
        _, results = finished_run
        assert evaluate_main(["--model_path", results["last_model_path"], "--results_dir",
                              str(full / "eval"), "--accelerator", "cpu"]) == 1  # fmt: skip
        assert f"no space left in {full}" in capsys.readouterr().err
        leftovers = [p for p in full.rglob("*") if p.is_file() and not p.name.endswith(".lock")]
        assert all(p.stat().st_size > 0 and ".tmp" not in p.name for p in leftovers), leftovers
        assert not list(full.rglob("*.staging"))
    finally:
        subprocess.run(["umount", str(full)], check=False)


def test_a_read_only_output_folder_is_refused_before_any_epoch(synthetic_processed, tmp_path):
    folder = tmp_path / "ro"
    if os.geteuid() == 0:
        if not _mount_tmpfs(folder, "ro,size=64k"):
            pytest.skip("cannot mount a read-only tmpfs here")
    else:
        folder.mkdir(mode=0o500)
    try:
        started = time.perf_counter()
        with pytest.raises(OutputError, match=f"{folder}.* not writable"):
            train(tiny(tmp_path, synthetic_processed, checkpoint_dir=folder / "ck"))
        assert time.perf_counter() - started < 10  # before the data or the Trainer
        assert not (tmp_path / "logs").exists()
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", str(folder)], check=False)


def test_a_results_folder_that_cannot_take_a_new_evaluation_keeps_the_old_one(
    finished_run, tmp_path, monkeypatch
):
    _, results = finished_run
    out = tmp_path / "out"
    config = EvalConfig(model_path=[Path(results["last_model_path"])], results_dir=out,
                        accelerator="cpu")  # fmt: skip
    evaluate(config, log=lambda _: None)
    before = files(out)
    import src.evaluation.evaluate as module

    def full_disk(*args, **kwargs):  # the tiles are written, then the disk is full
        raise OutputError(f"no space left in {tmp_path}")

    monkeypatch.setattr(module, "write_run_outputs", full_disk)
    with pytest.raises(OutputError):
        evaluate(config, log=lambda _: None)
    assert files(out) == before  # the earlier evaluation whole, its tiles listed and present
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no staging folder left


def _train_process(tmp_path: Path, processed: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "scripts.train", "--raw_dir", "none", "--processed_dir",
         str(processed), "--model_type", "SegmentationCNN", "--embedding_size", "4", "--depth",
         "1", "--num_workers", "0", "--wandb_mode", "disabled", "--max_epochs", "200",
         "--checkpoint_dir", str(tmp_path / "ck"), "--log_dir", str(tmp_path / "logs"),
         "--wandb_run_name", "rs", *extra],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _wait_for(condition, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.2)


@pytest.mark.slow
def test_status_interrupts_and_resume(synthetic_processed, tmp_path):
    log_folder = tmp_path / "logs" / "SegmentationCNN" / "rs"
    last = tmp_path / "ck" / "SegmentationCNN" / "rs" / "last.ckpt"
    process = _train_process(tmp_path, synthetic_processed)
    _wait_for(last.is_file)
    status = read_status(log_folder)
    assert status["status"] == "running" and status["pid"] == process.pid
    assert status["epochs_completed"] >= 1  # counted as epochs complete, not only at the end
    lock = (synthetic_processed / ".prepare.lock").open("a")  # the training holds it shared
    with lock as handle, pytest.raises(BlockingIOError):
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    process.kill()
    process.communicate()
    killed = read_status(log_folder)
    assert killed["status"] == "killed" and killed["epochs_completed"] >= 1

    # Resumed (it says the run was killed), then Ctrl-C: exit 130, `interrupted`, and the
    # command it prints resumes the run to its end, with no row of metrics.csv twice.
    resumed = subprocess.Popen(
        [sys.executable, "-m", "scripts.train", "--resume", str(last), "--max_epochs", "200"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    epochs = torch.load(last, weights_only=True)["epoch"]
    _wait_for(lambda: torch.load(last, weights_only=True)["epoch"] > epochs)
    resumed.send_signal(signal.SIGINT)
    stdout, stderr = resumed.communicate(timeout=120)
    assert resumed.returncode == 130, stderr
    assert "(it was killed)" in stdout
    assert read_status(log_folder)["status"] == "interrupted"
    (hint,) = [line for line in stderr.splitlines() if "resume with:" in line]
    command = hint.split("resume with: ")[1].split()
    assert command[:4] == ["python", "-m", "scripts.train", "--resume"]
    done = torch.load(last, weights_only=True)["epoch"]
    assert train_main([*command[3:], "--max_epochs", str(done + 2)]) == 0
    assert read_status(log_folder)["status"] == "finished"
    rows = (log_folder / "metrics.csv").read_text().splitlines()
    assert len(rows) == len(set(rows)) and len(rows) > done + 2


def test_a_preparation_waits_for_the_readers_of_a_folder(synthetic_processed, tmp_path):
    processed = Path(shutil.copytree(synthetic_processed, tmp_path / "processed"))
    tiles = {p: p.read_bytes() for p in (processed / "tiles").glob("*.npy")}
    lines: list[str] = []
    raw = Path(Manifest.load(processed).raw_dir)
    request = PrepareRequest(preprocessing={"s1_blur_sigma": 2.0})
    with preparation_lock(processed, shared=True):  # what a training holds while it runs
        worker = threading.Thread(
            target=lambda: prepare_requested(raw, processed, request, 1, log=lines.append)
        )
        worker.start()
        _wait_for(lambda: bool(lines), timeout=60)
        time.sleep(0.5)
        assert "waiting" in lines[-1]
        assert {p: p.read_bytes() for p in tiles} == tiles  # nothing changed under the reader
    worker.join(timeout=120)
    assert Manifest.load(processed).preprocessing["s1_blur_sigma"] == 2.0


def test_a_raw_folder_of_another_cell_size_is_refused_before_any_file(finished_run, tmp_path):
    from src.esd_data.synthetic import generate_synthetic_dataset

    _, results = finished_run
    raw = tmp_path / "raw"
    generate_synthetic_dataset(raw, n_tiles=1, seed=3, tile_px=32)  # 2 px cells, not 4
    cache, out = tmp_path / "cache", tmp_path / "out"
    assert evaluate_main(["--model_path", results["last_model_path"], "--raw_dir", str(raw),
                          "--cache_dir", str(cache), "--results_dir", str(out)]) == 1  # fmt: skip
    assert not cache.exists() and not out.exists()


def test_option_errors_are_one_line_with_the_closest_name(tmp_path, capsys):
    from src.cli import parse_config

    path = tmp_path / "bad.yaml"
    path.write_text("learnig_rate: 0.1\nmax_epochs: many\n")
    for argv in (["--config", str(path)], ["--learnig_rate", "3"]):
        with pytest.raises(SystemExit) as exit_status:
            parse_config(ESDConfig, argv)
        assert exit_status.value.code == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "learning_rate?" in err and "usage:" not in err
    path.write_text("learnig_rate: 0.1\nmax_epochs: many\n")
    with pytest.raises(SystemExit):
        parse_config(ESDConfig, ["--config", str(path)])
    both = capsys.readouterr().err
    assert "'learnig_rate'" in both and "max_epochs: 'many' must be a whole number" in both


SWEEP = {"method": "random", "metric": {"name": "val_f1_class1", "goal": "maximize"},
         "parameters": {"learning_rate": {"min": 0.001, "max": 0.1}}}  # fmt: skip


def _scoring_train(after=None):
    calls = []

    def train(config, extra_callbacks=None):
        calls.append(config.learning_rate)
        if after is not None:
            after(len(calls))
        return {"best_model_path": "b.ckpt", "best_model_score": 0.5, "val_f1_class1": 0.5}

    return train, calls


def test_a_torn_journal_record_is_cut_and_the_count_completed(tmp_path, capsys):
    from src.sweeps.optuna_backend import OptunaRun, run_optuna
    from src.sweeps.spec import parse_sweep_spec

    spec, journal = parse_sweep_spec(SWEEP), tmp_path / "study.journal"
    run = OptunaRun(storage=str(journal), study_name="s", count=1, output_dir=tmp_path)
    train, calls = _scoring_train()
    run_optuna(spec, ESDConfig(wandb_mode="disabled"), run, train=train, log=lambda _: None)
    with journal.open("ab") as handle:
        handle.write(b'{"op_code": 5, "worker_id": "x", "trial_id": 1, "val')  # a worker died
    run.count = 3
    study = run_optuna(spec, ESDConfig(wandb_mode="disabled"), run, train=train,
                       log=lambda _: None)  # fmt: skip
    assert "last record was torn" in capsys.readouterr().out
    assert len(calls) == 3 and len(study.get_trials()) == 3
    assert all(line.endswith("}") for line in journal.read_text().splitlines())


def test_a_storage_corrupted_mid_sweep_is_one_line_and_keeps_the_finished_trials(tmp_path):
    from src.sweeps.optuna_backend import OptunaRun, run_optuna
    from src.sweeps.results import TABLE_FILE
    from src.sweeps.spec import parse_sweep_spec
    from src.sweeps.study import SweepError

    database = tmp_path / "study.db"

    def corrupt(calls: int) -> None:
        if calls == 2:
            database.write_bytes(b"not a database" * 100)

    train, _ = _scoring_train(corrupt)
    run = OptunaRun(storage=f"sqlite:///{database}", study_name="s", count=3, output_dir=tmp_path)
    with pytest.raises(SweepError, match=rf"storage sqlite:///{database} failed") as error:
        run_optuna(parse_sweep_spec(SWEEP), ESDConfig(wandb_mode="disabled"), run, train=train,
                   log=lambda _: None)  # fmt: skip
    assert "\n" not in str(error.value)
    rows = (tmp_path / TABLE_FILE).read_text().splitlines()
    assert len(rows) == 2 and ",COMPLETE," in rows[1]  # trial 0, written as it finished


def test_too_few_labelled_tiles_warn_at_prepare_and_stop_training_before_it_starts(tmp_path):
    from src.esd_data.cache import SmallSplitWarning, prepare_dataset
    from src.esd_data.synthetic import generate_synthetic_dataset

    raw, processed = tmp_path / "raw", tmp_path / "processed"
    generate_synthetic_dataset(raw, n_tiles=1, seed=0, tile_px=64)
    with pytest.warns(SmallSplitWarning, match=r"1 labelled tile.*no validation tile"):
        prepare_dataset(raw, processed, val_fraction=0.2, workers=1)
    with pytest.raises(ValueError, match=r"no validation tiles.*--limit_val_batches 0"):
        train(tiny(tmp_path, processed))
    assert not (tmp_path / "logs").exists() and not (tmp_path / "ck").exists()
    results = train(tiny(tmp_path, processed, limit_val_batches=0))  # a fixed budget
    assert Path(results["last_model_path"]).is_file() and results["best_model_path"] == ""


def test_a_run_name_no_folder_can_hold_is_an_option_error(capsys):
    from src.cli import parse_config

    for name in ("a/b", "..", "x" * 300):
        with pytest.raises(SystemExit) as exit_status:
            parse_config(ESDConfig, ["--wandb_run_name", name])
        assert exit_status.value.code == 2 and "cannot name a folder" in capsys.readouterr().err


def test_bad_raw_data_given_to_evaluate_is_one_line(finished_run, tmp_path, capsys):
    from src.esd_data.synthetic import generate_synthetic_dataset

    _, results = finished_run
    raw = tmp_path / "raw"
    (tile,) = generate_synthetic_dataset(raw, n_tiles=1, seed=4, tile_px=64)
    damaged = sorted(tile.glob("S2*.tif"))[0] if list(tile.glob("S2*.tif")) else sorted(
        tile.glob("*.tif"))[1]  # fmt: skip
    damaged.write_bytes(damaged.read_bytes()[:100])
    assert evaluate_main(["--model_path", results["last_model_path"], "--raw_dir", str(raw),
                          "--cache_dir", str(tmp_path / "cache"),
                          "--results_dir", str(tmp_path / "out")]) == 1  # fmt: skip
    err = capsys.readouterr().err
    # The message (a line per problem of each tile, as scripts.prepare gives it), no traceback.
    assert err.startswith("error: tile Tile1") and damaged.name in err and "Traceback" not in err


def test_a_stop_signal_whose_interrupt_python_swallowed_still_stops_the_training(
    synthetic_processed, tmp_path
):
    """Python ignores an exception raised where the signal handler may run (a weakref
    callback, `__del__`): the training stops at its next batch all the same."""
    from src.training.signals import stop_on_signals
    from src.training.train import TrainingInterrupted

    with stop_on_signals():
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)  # the handler raises here
        except KeyboardInterrupt:
            pass  # as "Exception ignored in: <weakref callback>" does
        with pytest.raises(TrainingInterrupted):
            train(tiny(tmp_path, synthetic_processed, max_epochs=50))
    status = read_status(tmp_path / "logs" / "SegmentationCNN" / "rs")
    assert status["status"] == "interrupted" and status["epochs_completed"] == 0


def test_a_command_that_trains_in_its_own_folder_says_to_run_it_again_when_stopped(capsys):
    from src.training.signals import INTERRUPTED_RERUN, run_resumable

    def stopped() -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(1)  # the handler raises here

    assert run_resumable(stopped, (ValueError,)) == 128 + signal.SIGTERM
    assert capsys.readouterr().err.strip() == INTERRUPTED_RERUN
    assert run_resumable(lambda: int("x"), (ValueError,)) == 1
    assert capsys.readouterr().err.startswith("error: invalid literal")
    assert run_resumable(lambda: {"done": True}, (ValueError,)) == {"done": True}
