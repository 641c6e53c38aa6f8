"""Refit and submit: a cross-validated model trained again on every labelled tile for the
epochs its folds chose, the class-1 threshold its out-of-fold predictions chose, and a
checked Kaggle file per unlabelled folder. Real cross-validation and training, tiny tiles."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile

from scripts.submit import main as submit_main
from src.cross_validation.config import CVConfig
from src.cross_validation.run import cross_validate
from src.esd_data.manifest import Manifest
from src.esd_data.synthetic import generate_synthetic_dataset
from src.evaluation.decision import decide
from src.submission.config import SubmitConfig
from src.submission.refit import refit_and_submit, refit_epochs
from src.training.checkpoints import read_checkpoint
from tests.shared_runs import tiny
from tests.test_decision import brute_force

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def submitted(synthetic_processed, tmp_path_factory) -> dict:
    """A 3-fold cross-validation (inner selection, contest decision), its refit, and the
    predictions of a contest-like folder of two unlabelled tiles."""
    root = tmp_path_factory.mktemp("submit")
    cv = CVConfig(folds=3, model_type=["SegmentationCNN"], decision="class1_threshold",
                  output_dir=root / "cv", name="c", tile_pictures="none",
                  bootstrap_resamples=20)  # fmt: skip
    cross_validate(cv, tiny(synthetic_processed, root, max_epochs=3), log=lambda _: 0)
    contest = root / "Val"
    generate_synthetic_dataset(contest, n_tiles=1, seed=5, tile_px=64, unlabelled=2)
    shutil.rmtree(contest / "Train" / "Tile1")
    config = SubmitConfig(cv_dir=root / "cv" / "c" / "SegmentationCNN", unlabelled=[contest],
                          output_dir=root / "out", accelerator="cpu")  # fmt: skip
    record = refit_and_submit(config, log=lambda _: None)
    return {"root": root, "config": config, "record": record, "contest": contest}


def test_a_refit_trains_for_the_median_of_the_epochs_the_folds_chose():
    assert refit_epochs([0, 2, 5]) == 3  # epoch 2 is the third
    assert refit_epochs([1, 4]) == 4  # a median of 2.5 rounds up
    assert refit_epochs([7]) == 8


@pytest.mark.slow
def test_the_refit_trains_every_labelled_tile_for_the_folds_median_epochs(
    submitted, synthetic_processed
):
    record = submitted["record"]
    model_dir = submitted["root"] / "cv" / "c" / "SegmentationCNN"
    chosen = [json.loads((model_dir / f"fold_{k}" / "result.json").read_text())["selected_epoch"]
              for k in range(3)]  # fmt: skip
    assert record["epochs"] == refit_epochs(chosen)
    checkpoint = read_checkpoint(Path(record["checkpoint"]))
    assert checkpoint["epoch"] == record["epochs"] - 1  # the last epoch (0-based)
    split = checkpoint["esd_data_identity"]["split"]
    manifest = Manifest.load(synthetic_processed)
    labelled = manifest.split["train"] + manifest.split["val"] + manifest.split["test"]
    assert sorted(split["train"]) == sorted(labelled) and split["val"] == split["test"] == []


@pytest.mark.slow
def test_the_kaggle_file_uses_the_threshold_of_the_out_of_fold_predictions(
    submitted, synthetic_processed
):
    entry = submitted["record"]["submissions"][str(submitted["contest"])]
    threshold = entry["threshold"]
    assert entry["decision"] == "class1_threshold"  # the cross-validation's
    manifest = Manifest.load(synthetic_processed)
    oof = submitted["root"] / "cv" / "c" / "SegmentationCNN" / "oof" / "tiles"
    files = sorted(oof.glob("*_probabilities.tif"))
    probabilities = [tifffile.imread(f) for f in files]
    truths = [np.load(synthetic_processed / manifest.tiles[f.name.split("_")[0]].labels)
              for f in files]  # fmt: skip
    positive = np.concatenate([t.ravel() == 1 for t in truths])
    called = np.concatenate([p[0].ravel() >= threshold for p in probabilities])
    f1 = 2 * (positive & called).sum() / (positive.sum() + called.sum())
    assert f1 == pytest.approx(brute_force(probabilities, truths))
    with Path(entry["csv"]).open(newline="") as handle:
        rows = list(csv.reader(handle))[1:]
    assert sorted(int(r[0]) for r in rows) == list(range(256, 768))  # Tile2 and Tile3
    tiles = Path(entry["csv"]).parent / "tiles"
    for number in (2, 3):
        p = tifffile.imread(tiles / f"Tile{number}_probabilities.tif")
        labels = {int(r[0]): int(r[1]) for r in rows}
        got = np.array([labels[(number - 1) * 256 + k] for k in range(256)]).reshape(16, 16)
        np.testing.assert_array_equal(got, decide(p, threshold))


@pytest.mark.slow
def test_a_refit_is_reused_other_options_are_refused_and_the_command_names_the_file(
    submitted, capsys
):
    config = submitted["config"]
    checkpoint = Path(submitted["record"]["checkpoint"])
    before = checkpoint.stat().st_mtime_ns
    args = ["--cv_dir", str(config.cv_dir), "--unlabelled", str(submitted["contest"]),
            "--output_dir", str(config.output_dir), "--accelerator", "cpu"]  # fmt: skip
    assert submit_main(args) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last == f"submit: {submitted['record']['submissions'][str(submitted['contest'])]['csv']}"
    assert checkpoint.stat().st_mtime_ns == before  # not trained again
    assert submit_main([*args, "--epochs", "7"]) == 1
    assert "holds another refit (epochs" in capsys.readouterr().err
    # another decision predicts again with the same refit
    assert submit_main([*args, "--decision", "argmax", "--name", "c-SegmentationCNN"]) == 0
    assert "[argmax: argmax]" in capsys.readouterr().out
    assert checkpoint.stat().st_mtime_ns == before
    # the refit trained further since (a changed file) is not taken for the recorded one
    original = checkpoint.read_bytes()
    try:
        checkpoint.write_bytes(original + b"\0")
        assert submit_main(args) == 1
        assert "changed since it was trained" in capsys.readouterr().err
    finally:
        checkpoint.write_bytes(original)
    raw = Path(Manifest.load(submitted["root"] / "out" / "c-SegmentationCNN" / "data").raw_dir)
    assert submit_main([*args[:2], "--unlabelled", str(raw), *args[4:]]) == 1
    assert "raw folder of the labelled tiles" in capsys.readouterr().err


@pytest.mark.slow
def test_a_cross_validation_whose_folder_was_prepared_again_is_not_refit(synthetic_raw, tmp_path):
    from src.esd_data.cache import prepare_dataset
    from src.esd_data.preprocessing import PreprocessConfig

    processed = tmp_path / "processed"
    prepare_dataset(synthetic_raw, processed, val_fraction=0.25, workers=1)
    cv = CVConfig(folds=2, model_type=["SegmentationCNN"], selection="last", name="c",
                  output_dir=tmp_path / "cv", tile_pictures="none",
                  bootstrap_resamples=20)  # fmt: skip
    cross_validate(cv, tiny(processed, tmp_path, max_epochs=1), log=lambda _: 0)
    prepare_dataset(synthetic_raw, processed, val_fraction=0.25, workers=1,
                    preprocessing=PreprocessConfig(s1_blur_sigma=2.0))  # fmt: skip
    config = SubmitConfig(cv_dir=tmp_path / "cv" / "c" / "SegmentationCNN",
                          unlabelled=[tmp_path], output_dir=tmp_path / "out")  # fmt: skip
    with pytest.raises(ValueError, match="was prepared again since the cross-validation"):
        refit_and_submit(config, log=lambda _: None)
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").rglob("*.ckpt"))
