"""`python -m scripts.runs [DIR]`: the runs, cross-validations and sweeps under a folder, their
status and score, what differs between their configurations, which processed folders were
rebuilt since they trained."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import socket
import subprocess
from pathlib import Path

import lightning as L
import pytest

from scripts.runs import main
from src.cross_validation.claims import FAILED_FILE
from src.cross_validation.config import CVConfig
from src.cross_validation.run import cross_validate
from src.esd_data.cache import prepare_dataset
from src.esd_data.folds import fold_manifest
from src.esd_data.manifest import Manifest
from src.esd_data.preprocessing import PreprocessConfig
from src.evaluation.cv_record import FOLD_RESULT_FILE, SUMMARY_FILE
from src.run_listing import studies
from src.run_listing.records import data_use
from src.sweeps import results
from src.sweeps.optuna_backend import OptunaRun, run_optuna
from src.sweeps.spec import parse_sweep_spec
from src.training.run_folder import write_status
from src.training.train import train
from tests.shared_runs import tiny

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SWEEP = {"method": "grid", "metric": {"name": "val_f1_class1", "goal": "maximize"},
         "parameters": {"learning_rate": {"values": [0.05, 0.01]}}}  # fmt: skip


class FailInSecondEpoch(L.Callback):
    def on_train_epoch_start(self, trainer, module):
        if trainer.current_epoch == 1:
            raise RuntimeError("disk on fire")


@pytest.fixture(scope="module")
def layout(synthetic_raw: Path, synthetic_processed: Path, tmp_path_factory) -> Path:
    """A project folder: runs a (lr 0.05) and b (lr 0.01) finished, c (lr 0.05, 2 epochs)
    failed in its second epoch, a 2-fold cross-validation and a 2-trial sweep, all on
    data/keep except b, on data/rebuilt, which is prepared again afterwards (another split)."""
    root = tmp_path_factory.mktemp("project")
    keep, rebuilt = root / "data" / "keep", root / "data" / "rebuilt"
    for folder in (keep, rebuilt):
        shutil.copytree(synthetic_processed, folder)

    def config(processed: Path, **options):
        fixed = {"max_epochs": 1, "embedding_size": 4, "checkpoint_dir": root / "checkpoints"}
        return tiny(processed, root, **{**fixed, **options})

    train(config(keep, wandb_run_name="a"), summary=False)
    train(config(rebuilt, wandb_run_name="b", learning_rate=0.01), summary=False)
    with pytest.raises(RuntimeError, match="disk on fire"):
        train(config(keep, wandb_run_name="c", max_epochs=2), [FailInSecondEpoch()], summary=False)
    cv = CVConfig(folds=2, model_type=["SegmentationCNN"], selection="last", output_dir=root / "cv",
                  tile_pictures="none", bootstrap_resamples=20)  # fmt: skip
    cross_validate(cv, config(keep), log=lambda _: None)
    out = root / "sweeps" / "s"
    run = OptunaRun(storage=str(out / "study.journal"), study_name="s", count=2, output_dir=out)
    base = tiny(keep, out, max_epochs=1, embedding_size=4, checkpoint_dir=out / "checkpoints")
    run_optuna(parse_sweep_spec(SWEEP), base, run, log=lambda _: None)
    before = Manifest.load(rebuilt).fingerprint
    prepare_dataset(synthetic_raw, rebuilt, tile_size_gt=4, val_fraction=0.5, workers=1)
    assert Manifest.load(rebuilt).fingerprint != before
    return root


def listing(folder: Path, capsys, *flags: str) -> tuple[int, str]:
    status = main([str(folder), *flags])
    return status, capsys.readouterr().out


def rows(out: str, kind: str) -> list[str]:
    """The listing's lines of one kind (those after the first line, before the blocks)."""
    lines = out.splitlines()[1:]
    end = next((i for i, line in enumerate(lines) if not line.startswith("  ")), len(lines))
    return [line for line in lines[:end] if line.split()[0] == kind]


@pytest.fixture(scope="module")
def listed(layout: Path) -> dict:
    """The JSON listing of the project folder."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main([str(layout), "--json"]) == 0
    return json.loads(out.getvalue())


def entry(listed: dict, kind: str, name: str) -> dict:
    (found,) = [e for e in listed["entries"] if e["kind"] == kind and e["name"] == name]
    return found


def test_every_run_cv_and_sweep_is_listed_once_with_its_status_and_score(layout, capsys):
    status, out = listing(layout, capsys)
    assert status == 0
    lines = out.splitlines()
    assert lines[0] == f"{layout}: 3 runs, 1 cross-validation, 1 sweep"
    runs = rows(out, "run")
    # the folds of the cross-validation and the trials of the sweep are theirs, not runs
    assert [line.split()[1] for line in runs] == [f"logs/SegmentationCNN/{n}" for n in "abc"]
    assert "finished, 1 epoch" in runs[0]
    assert "best val_f1_class1 0." in runs[0] and "OPTIMISTIC (epoch 0)" in runs[0]
    assert "failed after 1 epoch (RuntimeError: disk on fire)" in runs[2]
    (cv,) = rows(out, "cv")
    summary = json.loads(next((layout / "cv").glob(f"*/{SUMMARY_FILE}")).read_text())
    pooled = summary["models"][0]["out_of_fold"]["f1_class1"]
    assert "2 done of 2 units" in cv
    assert f"pooled OOF f1_class1 {pooled:.4f} (SegmentationCNN)" in cv
    assert "OPTIMISTIC" not in cv  # --selection last: no tile chose the folds' epochs
    (sweep,) = rows(out, "sweep")
    assert "sweeps/s" in sweep and "2 complete of 2 trials" in sweep
    assert "best val_f1_class1 0." in sweep and "OPTIMISTIC (trial" in sweep


def test_differs_names_the_differing_options_with_their_runs_and_no_equal_one(listed, layout,
                                                                              capsys):  # fmt: skip
    runs = listed["differs"]["run"]
    assert runs["learning_rate"] == {"0.05": ["a", "c"], "0.01": ["b"]}
    assert runs["max_epochs"] == {"1": ["a", "b"], "2": ["c"]}
    assert set(runs) == {"learning_rate", "max_epochs"}  # model, width, batch size… are equal
    assert "cv" not in listed["differs"]  # one cross-validation: nothing to compare
    _, out = listing(layout, capsys)
    assert "    learning_rate: 0.05 (a, c) | 0.01 (b)" in out.splitlines()


def test_only_a_run_whose_processed_folder_was_rebuilt_is_listed_as_rebuilt(listed, layout,
                                                                           capsys):  # fmt: skip
    rebuilt = layout / "data" / "rebuilt"
    assert [(r["kind"], r["name"]) for r in listed["rebuilt"]] == [("run", "b")]
    (use,) = listed["rebuilt"]
    assert use["processed_dir"] == str(rebuilt.resolve())
    assert use["current"] == Manifest.load(rebuilt).fingerprint != use["fingerprint"]
    for kind, name in (("run", "a"), ("run", "c"), ("sweep", "s")):
        assert [d["rebuilt"] for d in entry(listed, kind, name)["data"]] == [False]
    (cv,) = [e for e in listed["entries"] if e["kind"] == "cv"]
    assert [d["rebuilt"] for d in cv["data"]] == [False]
    _, out = listing(layout, capsys)
    lines = out.splitlines()
    below = lines[lines.index("rebuilt since:") + 1 :]
    assert below[0].startswith("  run logs/SegmentationCNN/b: trained on data/rebuilt")
    assert not any("SegmentationCNN/a" in line or "cv/" in line for line in below)


def test_a_cross_validation_counts_its_units_by_state(layout, tmp_path, capsys):
    (original,) = (layout / "cv").iterdir()
    root = Path(shutil.copytree(original, tmp_path / original.name))
    (root / "SegmentationCNN" / "fold_1" / FOLD_RESULT_FILE).unlink()
    status, out = listing(root, capsys)
    assert status == 0
    (line,) = rows(out, "cv")
    assert "1 done, 1 waiting of 2 units" in line
    assert "pooled OOF" not in line  # not finished: no headline score
    (root / "SegmentationCNN" / "fold_1" / FAILED_FILE).write_text("ValueError: broken\n")
    _, out = listing(root, capsys)
    assert "1 done, 1 failed of 2 units" in out


def test_one_kind_of_folder_lists_what_it_holds_and_bad_folders_say_so(layout, tmp_path, capsys):
    status, out = listing(layout / "logs", capsys)
    assert status == 0
    assert out.splitlines()[0].endswith(": 3 runs")
    assert "rebuilt since:" in out  # the run's checkpoints are found from its configuration
    status, out = listing(layout / "sweeps" / "s", capsys)
    assert out.splitlines()[0].endswith(": 1 sweep") and "2 complete of 2 trials" in out
    best = rows(out, "sweep")[0].split("best val_f1_class1 ")[1].split()[0]
    # a sweep whose study is stored elsewhere (--storage): its results table
    assert studies.TABLE_FILE == results.TABLE_FILE
    (tmp_path / "elsewhere").mkdir()
    shutil.copy(layout / "sweeps" / "s" / results.TABLE_FILE, tmp_path / "elsewhere")
    _, out = listing(tmp_path / "elsewhere", capsys)
    (row,) = rows(out, "sweep")
    assert "2 complete of 2 trials (trials.csv only" in row
    assert f"best val_f1_class1 {best} OPTIMISTIC" in row
    (tmp_path / "empty").mkdir()
    status, out = listing(tmp_path / "empty", capsys)
    assert status == 0
    assert out == f"no runs, cross-validations or sweeps under {tmp_path / 'empty'}\n"
    status = main([str(tmp_path / "missing")])
    captured = capsys.readouterr()
    assert status == 2 and captured.out == ""
    assert captured.err == f"error: {tmp_path / 'missing'} does not exist\n"


def test_a_running_run_says_where_and_one_whose_process_is_gone_is_killed(layout, tmp_path,
                                                                          capsys):  # fmt: skip
    log = tmp_path / "logs" / "SegmentationCNN" / "r"
    shutil.copytree(layout / "logs" / "SegmentationCNN" / "a", log)
    write_status(log, "running", epochs_completed=1)
    _, out = listing(tmp_path, capsys)
    (row,) = rows(out, "run")
    assert f"running on {socket.gethostname()} (process {os.getpid()}), 1 epoch done" in row
    gone = subprocess.Popen(["true"])
    gone.wait()
    write_status(log, "running", pid=gone.pid, epochs_completed=1)
    _, out = listing(tmp_path, capsys)
    (row,) = rows(out, "run")
    assert "killed after 1 epoch" in row


def test_a_view_whose_shared_tiles_were_prepared_again_is_listed_as_rebuilt(
    synthetic_raw, tmp_path
):
    """A fold's, a refit's or a student's data is a view of another folder's tiles: its own
    manifest never changes, so the tiles themselves say whether that folder was rebuilt."""
    shared = tmp_path / "shared"
    manifest = prepare_dataset(synthetic_raw, shared, val_fraction=0.25, workers=1).manifest
    tiles = list(manifest.tiles)
    fold_manifest(manifest, shared, tiles[:6], tiles[6:9], tiles[9:]).save(tmp_path / "view")
    trained_on = Manifest.load(tmp_path / "view").fingerprint
    assert not data_use(tmp_path / "view", trained_on).rebuilt
    prepare_dataset(synthetic_raw, shared, val_fraction=0.25, workers=1,
                    preprocessing=PreprocessConfig(s1_blur_sigma=2.0))  # fmt: skip
    use = data_use(tmp_path / "view", trained_on)
    assert use.current == trained_on and use.shared_changed and use.rebuilt
    assert not data_use(shared, Manifest.load(shared).fingerprint).rebuilt  # its own: current
