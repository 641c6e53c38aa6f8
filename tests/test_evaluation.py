"""Restitching, scores and `python -m scripts.evaluate` on tiny synthetic data."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image
from sklearn.metrics import f1_score, jaccard_score

from scripts.evaluate import EvalConfig, evaluate
from scripts.train import ESDConfig, train
from src.esd_data.cache import prepare_dataset
from src.esd_data.dataset import ESDDataset
from src.esd_data.manifest import Manifest
from src.esd_data.preprocessing import PreprocessConfig
from src.esd_data.synthetic import generate_synthetic_dataset
from src.evaluation.restitch import restitch_logits
from src.evaluation.scores import label_scores
from src.training.checkpoints import CheckpointError

# One torch thread per process (see conftest): the same results, without OpenMP contention.
pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def checkpoint(synthetic_processed, tmp_path_factory) -> Path:
    """A one-epoch tiny UNet trained on the shared synthetic data."""
    out = tmp_path_factory.mktemp("trained")
    config = ESDConfig(
        raw_dir=None, processed_dir=synthetic_processed, max_epochs=1, num_workers=0,
        embedding_size=8, checkpoint_dir=out / "checkpoints", log_dir=out / "logs",
        wandb_mode="disabled", wandb_run_name="eval",
    )  # fmt: skip
    return Path(train(config)["last_model_path"])


def oracle_logits(dataset: ESDDataset, tile: str) -> tuple[np.ndarray, list[int], list[int]]:
    """Logits that put all weight on the true class of every window cell."""
    items = [dataset[i] for i, (t, _, _) in enumerate(dataset.index) if t == tile]
    one_hot = torch.nn.functional.one_hot(torch.stack([item["y"] for item in items]), 4)
    logits = one_hot.movedim(-1, 1).float().numpy() * 10
    return logits, [item["row"] for item in items], [item["col"] for item in items]


@pytest.mark.parametrize(("t", "stride"), [(4, None), (4, 2), (8, 3), (2, 1), (16, None)])
def test_oracle_restitches_to_the_ground_truth(synthetic_processed, t, stride):
    dataset = ESDDataset(synthetic_processed, "val", tile_size_gt=t, stride_gt=stride)
    for tile in dataset.tiles:
        logits, rows, cols = oracle_logits(dataset, tile)
        predicted = restitch_logits(logits, rows, cols, dataset.origins).argmax(axis=0) + 1
        truth = dataset.tile_labels(tile)
        np.testing.assert_array_equal(predicted, truth)
        assert label_scores(truth, predicted)["f1_class1"] == 1.0


@pytest.mark.parametrize("stride", [None, 2])
def test_corrupted_oracle_scores_what_scikit_learn_computes(synthetic_processed, stride):
    dataset = ESDDataset(synthetic_processed, "val", tile_size_gt=4, stride_gt=stride)
    tile = dataset.tiles[0]
    truth = dataset.tile_labels(tile)
    logits, rows, cols = oracle_logits(dataset, tile)
    corrupted = truth.copy()
    for row, col in [(0, 0), (5, 6), (15, 15), (7, 3)]:  # wrong class in every window
        wrong = corrupted[row, col] % 4  # label → another label, as an index 0..3
        corrupted[row, col] = wrong + 1
        for k, (r, c) in enumerate(zip(rows, cols, strict=True)):
            top, left = dataset.origins[r], dataset.origins[c]
            if top <= row < top + 4 and left <= col < left + 4:
                logits[k, :, row - top, col - left] = 0
                logits[k, wrong, row - top, col - left] = 10
    predicted = restitch_logits(logits, rows, cols, dataset.origins).argmax(axis=0) + 1
    np.testing.assert_array_equal(predicted, corrupted)
    scores = label_scores(truth, predicted)
    assert scores["f1_class1"] == pytest.approx(
        f1_score(truth.ravel() == 1, predicted.ravel() == 1)
    )
    assert scores["f1_class1"] < 1.0
    iou = jaccard_score(truth.ravel(), predicted.ravel(), labels=[1, 2, 3, 4], average=None)
    assert [scores[f"iou_class{k}"] for k in range(1, 5)] == pytest.approx(iou)


def test_restitch_refuses_uncovered_cells():
    with pytest.raises(ValueError, match="covered by no window"):
        restitch_logits(np.zeros((1, 4, 4, 4)), [0], [0], [0, 4, 8, 12])


def test_evaluate_command_writes_everything(checkpoint, synthetic_processed, tmp_path):
    results = tmp_path / "results"
    command = [
        sys.executable,
        "-m",
        "scripts.evaluate",
        "--model_path",
        str(checkpoint),
        "--processed_dir",
        str(synthetic_processed),
        "--results_dir",
        str(results),
    ]
    completed = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    val_tiles = Manifest.load(synthetic_processed).split["val"]
    assert sorted(p.stem for p in (results / "tiles").glob("*.png")) == sorted(val_tiles)
    truths, predictions = [], []
    for tile in val_tiles:
        predicted = tifffile.imread(results / "tiles" / f"{tile}_prediction.tif")
        assert predicted.shape == (16, 16) and set(np.unique(predicted)) <= {1, 2, 3, 4}
        probabilities = tifffile.imread(results / "tiles" / f"{tile}_probabilities.tif")
        assert probabilities.shape == (4, 16, 16)
        np.testing.assert_allclose(probabilities.sum(axis=0), 1.0, atol=1e-5)
        np.testing.assert_array_equal(probabilities.argmax(axis=0) + 1, predicted)
        with Image.open(results / "tiles" / f"{tile}.png") as image:
            assert image.size[0] > 2.5 * image.size[1] > 500  # four panels side by side
        truths.append(np.load(synthetic_processed / "tiles" / f"{tile}.labels.npy"))
        predictions.append(predicted)
        assert f"{tile}.png" in completed.stdout
    metrics = json.loads((results / "metrics.json").read_text())
    truth, predicted = np.concatenate(truths).ravel(), np.concatenate(predictions).ravel()
    overall = metrics["overall"]
    assert overall["f1_class1"] == pytest.approx(f1_score(truth == 1, predicted == 1))
    assert overall["accuracy"] == pytest.approx((truth == predicted).mean())
    f1 = f1_score(truth, predicted, labels=[1, 2, 3, 4], average=None, zero_division=0)
    assert [overall[f"f1_class{k}"] for k in range(1, 5)] == pytest.approx(f1)
    assert len(metrics["tiles"]) == len(val_tiles) and "f1_class1" in metrics["tiles"][0]
    with (results / "predictions.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 256 * len(val_tiles)
    first = int(val_tiles[0].removeprefix("Tile"))
    ids = {int(r["pixelId"]): int(r["predictions"]) for r in rows}
    assert ids[(first - 1) * 256 + 2 * 16 + 5] == predictions[0][2, 5]
    for name in ("confusion_matrix.png", "roc_curves.png", "classification_report.txt"):
        assert (results / name).stat().st_size > 0


def test_overlap_mode_and_default_checkpoint(checkpoint, synthetic_processed, tmp_path):
    metrics = evaluate(EvalConfig(
        checkpoint_dir=checkpoint.parents[2], processed_dir=synthetic_processed,
        results_dir=tmp_path / "out", restitch="overlap", accelerator="cpu",
    ))  # fmt: skip
    assert metrics["stride_gt"] == 2 and metrics["restitch"] == "overlap"
    assert Path(metrics["model_path"]).name.startswith("best-")
    assert 0.0 <= metrics["overall"]["f1_class1"] <= 1.0


def test_predict_split_without_ground_truth(checkpoint, synthetic_copy, tmp_path):
    for tile in ("Tile2", "Tile9"):
        (synthetic_copy / "Train" / tile / "groundTruth.tif").unlink()
    processed = tmp_path / "processed"
    prepare_dataset(synthetic_copy, processed, workers=1)
    assert Manifest.load(processed).split["predict"] == ["Tile2", "Tile9"]
    metrics = evaluate(EvalConfig(
        model_path=checkpoint, processed_dir=processed, split="predict",
        results_dir=tmp_path / "out", accelerator="cpu", fig_format="svg",
    ))  # fmt: skip
    assert "overall" not in metrics and metrics["tiles"] == [{"tile": "Tile2"}, {"tile": "Tile9"}]
    assert (tmp_path / "out" / "tiles" / "Tile9_prediction.tif").is_file()
    assert not (tmp_path / "out" / "confusion_matrix.svg").exists()
    # --fig_format: every picture in that format, none in another.
    pictures = sorted(p.name for p in (tmp_path / "out" / "tiles").glob("Tile*.*")
                      if not p.name.endswith(".tif"))  # fmt: skip
    assert pictures == ["Tile2.svg", "Tile9.svg"]
    assert (tmp_path / "out" / "tiles" / "Tile2.svg").read_text().lstrip().startswith("<?xml")
    with (tmp_path / "out" / "predictions.csv").open() as handle:
        assert len(list(csv.DictReader(handle))) == 512


def test_checkpoint_for_other_data_is_a_clear_error(checkpoint, synthetic_raw, tmp_path):
    no_projection = tmp_path / "no_projection"
    prepare_dataset(
        synthetic_raw,
        no_projection,
        workers=1,
        preprocessing=PreprocessConfig(viirs_max_projection=False),
    )
    # other preprocessing is named first: it explains the channel that is missing
    with pytest.raises(
        CheckpointError, match=r"viirs_max_projection differ\): evaluate with --raw_dir"
    ):
        evaluate(EvalConfig(model_path=checkpoint, processed_dir=no_projection))
    another_date = tmp_path / "another_date"
    raw = Path(shutil.copytree(synthetic_raw, tmp_path / "raw"))
    for path in raw.rglob("DNB_VNP46A1_A2020224.tif"):  # 2020-08-11 moved to the 17th
        path.rename(path.with_name("DNB_VNP46A1_A2020230.tif"))
    prepare_dataset(raw, another_date, workers=1)
    with pytest.raises(CheckpointError, match=r"trained on 99 channels, 1 of which .* lacks"):
        evaluate(EvalConfig(model_path=checkpoint, processed_dir=another_date))
    blurred = tmp_path / "blurred"
    prepare_dataset(
        synthetic_raw, blurred, workers=1, preprocessing=PreprocessConfig(s1_blur_sigma=2.0)
    )
    with pytest.raises(CheckpointError, match=r"other preprocessing .*s1_blur_sigma.*--raw_dir"):
        evaluate(EvalConfig(model_path=checkpoint, processed_dir=blurred))
    small_raw, small = tmp_path / "small_raw", tmp_path / "small"
    generate_synthetic_dataset(small_raw, n_tiles=3, seed=1, tile_px=32)
    prepare_dataset(small_raw, small, workers=1)
    with pytest.raises(CheckpointError, match="trained on 4 px per label cell"):
        evaluate(EvalConfig(model_path=checkpoint, processed_dir=small))


def test_missing_or_corrupt_checkpoint_is_a_clear_error(synthetic_processed, checkpoint, tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        evaluate(EvalConfig(model_path=tmp_path / "nope.ckpt", processed_dir=synthetic_processed))
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes(checkpoint.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="cannot be read"):
        evaluate(EvalConfig(model_path=broken, processed_dir=synthetic_processed))
    empty = tmp_path / "checkpoints"
    empty.mkdir()
    completed = subprocess.run(
        [sys.executable, "-m", "scripts.evaluate", "--checkpoint_dir", str(empty),
         "--processed_dir", str(synthetic_processed)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert completed.returncode == 1 and "no best-*.ckpt under" in completed.stderr
    assert shutil.which(sys.executable)


def test_run_outputs_agree_with_scikit_learn_with_a_class_absent(tmp_path):
    from sklearn.metrics import confusion_matrix, roc_auc_score

    from src.evaluation.evaluator import TilePrediction
    from src.evaluation.report import write_run_outputs

    rng = np.random.default_rng(8)
    predictions = []
    for tile in ("Tile7", "Tile20"):
        truth = rng.choice([1, 2, 3], size=(16, 16), p=[0.5, 0.3, 0.2]).astype(np.uint8)
        probabilities = rng.dirichlet(np.ones(4), size=(16, 16)).transpose(2, 0, 1)
        probabilities[truth - 1, *np.indices((16, 16))] += 0.6  # mostly right
        probabilities = (probabilities / probabilities.sum(axis=0)).astype(np.float32)
        labels = (probabilities.argmax(axis=0) + 1).astype(np.uint8)
        predictions.append(TilePrediction(tile, probabilities, labels, truth))
    assert not any((p.truth == 4).any() for p in predictions)  # class 4 absent from the truth
    metrics = write_run_outputs(tmp_path, predictions, [], {}, resamples=0, seed=0)
    truth = np.concatenate([p.truth.ravel() for p in predictions])
    predicted = np.concatenate([p.labels.ravel() for p in predictions])
    matrix = np.array(metrics["confusion_matrix"])
    np.testing.assert_array_equal(matrix, confusion_matrix(truth, predicted, labels=[1, 2, 3, 4]))
    assert matrix[0, 1] == np.sum(
        (truth == 1) & (predicted == 2)
    )  # rows: truth, columns: predicted
    assert matrix[0, 1] != matrix[1, 0]
    present = sorted(set(truth) | set(predicted))
    overall = metrics["overall"]
    expected_f1 = f1_score(truth, predicted, labels=present, average="macro", zero_division=0)
    assert overall["f1_macro"] == pytest.approx(expected_f1)
    scores = np.concatenate([p.probabilities.reshape(4, -1).T for p in predictions])
    aucs = [roc_auc_score(truth == k, scores[:, k - 1]) for k in (1, 2, 3)]
    assert [overall[f"auc_class{k}"] for k in (1, 2, 3)] == pytest.approx(aucs)
    assert overall["auc_class4"] is None and overall["auc_macro"] == pytest.approx(np.mean(aucs))
    with (tmp_path / "predictions.csv").open() as handle:
        ids = {int(r["pixelId"]): int(r["predictions"]) for r in csv.DictReader(handle)}
    for prediction, base in zip(predictions, (6 * 256, 19 * 256), strict=True):
        for row, col in np.ndindex(16, 16):
            assert ids[base + row * 16 + col] == prediction.labels[row, col]


def test_newest_best_checkpoint_across_runs_and_model_types(checkpoint, tmp_path):
    from src.evaluation.evaluator import newest_best_checkpoint

    # written in an order that neither the names nor the folders' order follow
    layout = [
        ("UNet/b/best-003-0.5000.ckpt", 300),
        ("UNet/a/best-001-0.9000.ckpt", 100),
        ("SegmentationCNN/z/best-000-0.1000.ckpt", 400),
        ("UNet/c/best-002-0.7000.ckpt", 200),
    ]
    for name, seconds in layout:
        path = tmp_path / name
        path.parent.mkdir(parents=True)
        shutil.copyfile(checkpoint, path)
        os.utime(path, (1_700_000_000 + seconds,) * 2)
    chosen, why = newest_best_checkpoint(tmp_path)
    assert chosen == tmp_path / "SegmentationCNN/z/best-000-0.1000.ckpt"
    assert "also has UNet runs" in why and "4 run(s)" in why
    unet, why_unet = newest_best_checkpoint(tmp_path, "UNet")
    assert unet == tmp_path / "UNet/b/best-003-0.5000.ckpt" and "also has" not in why_unet
    with pytest.raises(CheckpointError, match="no FCNResnetTransfer best"):
        newest_best_checkpoint(tmp_path, "FCNResnetTransfer")


def test_the_kaggle_file_is_checked_row_by_row(tmp_path):
    from src.evaluation.report import check_kaggle_csv

    path = tmp_path / "predictions.csv"
    rows = ["pixelId,predictions"] + [f"{256 * 6 + k},{1 + k % 4}" for k in range(256)]
    rows += [f"{k},2" for k in range(256)]  # Tile1's cells after Tile7's
    path.write_text("\n".join(rows) + "\n")
    line = check_kaggle_csv(path, ["Tile7", "Tile1"])
    assert "512 rows = 2 tile(s) × 256 cells" in line and "tiles Tile1, Tile7" in line
    path.write_text("\n".join(rows[:-1]) + "\n")  # a cell missing
    with pytest.raises(ValueError, match="511 rows for 2 tile"):
        check_kaggle_csv(path, ["Tile7", "Tile1"])
