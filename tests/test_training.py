"""The training module and `train()` in-process, on tiny synthetic data on the CPU."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score, jaccard_score, recall_score

from scripts.train import ESDConfig, train
from src.esd_data.manifest import Manifest
from src.training.losses import SegmentationLoss
from src.training.metrics import segmentation_metrics
from src.training.module import ESDSegmentation


def tiny_config(tmp_path: Path, processed: Path, **overrides) -> ESDConfig:
    """A fast configuration: prepared synthetic data, small UNet, no W&B, no loader workers."""
    values = {
        "raw_dir": None,
        "processed_dir": processed,
        "max_epochs": 2,
        "num_workers": 0,
        "batch_size": 8,
        "embedding_size": 8,
        "checkpoint_dir": tmp_path / "checkpoints",
        "log_dir": tmp_path / "logs",
        "wandb_mode": "disabled",
        "wandb_run_name": "run",
    }
    values.update(overrides)
    return ESDConfig(**values)


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def epoch_rows(log_dir: Path, key: str) -> dict[int, float]:
    """The last logged value of `key` for each epoch of a CSV log."""
    rows = read_csv(next(log_dir.rglob("metrics.csv")))
    return {int(r["epoch"]): float(r[key]) for r in rows if r.get(key)}


def test_metrics_equal_scikit_learn():
    generator = torch.Generator().manual_seed(0)
    probabilities = torch.rand(40, 4, 4, 4, generator=generator).softmax(dim=1)
    target = torch.randint(0, 4, (40, 4, 4), generator=generator)
    target[0, 0, :2] = -1  # ignored cells (tiles without ground truth)
    metrics = segmentation_metrics("val_")
    for start in range(0, 40, 8):  # accumulated over batches, as in an epoch
        metrics.update(probabilities[start : start + 8], target[start : start + 8])
    values = {k: v.item() for k, v in metrics.compute().items()}
    keep = target.flatten() != -1
    truth = target.flatten()[keep].numpy()
    predicted = probabilities.argmax(dim=1).flatten()[keep].numpy()
    labels = [0, 1, 2, 3]
    f1 = f1_score(truth, predicted, labels=labels, average=None)
    iou = jaccard_score(truth, predicted, labels=labels, average=None)
    recall = recall_score(truth, predicted, labels=labels, average=None)
    for k in range(4):
        assert values[f"val_f1_class{k + 1}"] == pytest.approx(f1[k], abs=1e-6)
        assert values[f"val_iou_class{k + 1}"] == pytest.approx(iou[k], abs=1e-6)
        assert values[f"val_acc_class{k + 1}"] == pytest.approx(recall[k], abs=1e-6)
    assert values["val_acc_overall"] == pytest.approx(accuracy_score(truth, predicted), abs=1e-6)
    assert values["val_f1_macro"] == pytest.approx(f1.mean(), abs=1e-6)
    contest = f1_score(truth == 0, predicted == 0)  # class 1 against the rest
    assert values["val_f1_class1"] == pytest.approx(contest, abs=1e-6)


@pytest.mark.parametrize("loss", ["ce", "dice", "ce+dice"])
def test_losses_prefer_the_right_answer_and_ignore_unlabelled_cells(loss):
    target = torch.tensor([[[0, 1], [2, 3]]])
    right = torch.nn.functional.one_hot(target, 4).movedim(-1, 1).float() * 6
    wrong = right.roll(1, dims=1)
    criterion = SegmentationLoss(loss)
    assert criterion(right, target) < criterion(wrong, target)
    masked = target.clone()
    masked[0, 0, 0] = -1
    changed = wrong.clone()
    changed[0, :, 0, 0] = right[0, :, 0, 0]
    assert criterion(wrong, masked) == pytest.approx(criterion(changed, masked).item(), abs=1e-6)


def test_false_positive_penalty_punishes_class1_on_other_cells():
    target = torch.tensor([[[1, 1], [2, 3]]])
    says_class1 = torch.zeros(1, 4, 2, 2)
    says_class1[:, 0] = 5.0
    plain, penalised = SegmentationLoss("ce"), SegmentationLoss("ce", fp_penalty=2.0)
    difference = penalised(says_class1, target) - plain(says_class1, target)
    expected = 2.0 * says_class1.softmax(dim=1)[:, 0].mean()
    assert difference.item() == pytest.approx(expected.item(), rel=1e-5)


def test_unet_learns_clearly_better_than_a_constant_predictor(synthetic_processed, tmp_path):
    # The best constant prediction for the class-1 F1 is "everything is class 1", whose F1 is
    # 2p / (1 + p) for the class-1 share p of the validation cells; any other constant scores
    # 0. Eight epochs of a small UNet must beat it by 0.15: a clear margin that noise from
    # the tiny data (3 validation tiles) does not reach.
    manifest = Manifest.load(synthetic_processed)
    labels = np.concatenate(
        [
            np.load(synthetic_processed / manifest.tiles[t].labels).ravel()
            for t in manifest.split["val"]
        ]
    )
    share = (labels == 1).mean()
    constant_f1 = 2 * share / (1 + share)
    config = tiny_config(tmp_path, synthetic_processed, max_epochs=8, learning_rate=3e-3)
    results = train(config)
    assert results["best_model_score"] > constant_f1 + 0.15, (
        results["best_model_score"],
        constant_f1,
    )


def test_resume_continues_exactly(synthetic_processed, tmp_path):
    # Loader workers (persistent) in one run and none in the other: the result must not care.
    straight = tiny_config(tmp_path / "a", synthetic_processed, max_epochs=4, num_workers=2)
    first = tiny_config(tmp_path / "b", synthetic_processed, max_epochs=2)
    results_straight = train(straight)
    results_first = train(first)
    resumed = tiny_config(
        tmp_path / "c",
        synthetic_processed,
        max_epochs=4,
        resume=Path(results_first["last_model_path"]),
    )
    results_resumed = train(resumed)
    a = torch.load(results_straight["last_model_path"], weights_only=True)
    b = torch.load(results_resumed["last_model_path"], weights_only=True)
    assert (a["epoch"], a["global_step"]) == (b["epoch"], b["global_step"])
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    for key in ("val_f1_class1", "val_loss", "train_loss"):
        whole = epoch_rows(tmp_path / "a" / "logs", key)
        first_half = epoch_rows(tmp_path / "b" / "logs", key)
        second_half = epoch_rows(tmp_path / "c" / "logs", key)
        assert sorted(first_half) == [0, 1] and sorted(second_half) == [2, 3]
        assert whole == first_half | second_half
    assert results_straight["val_f1_class1"] == results_resumed["val_f1_class1"]


def test_class_weights_come_from_training_labels(synthetic_processed, tmp_path):
    config = tiny_config(
        tmp_path, synthetic_processed, max_epochs=1, class_weighting=True, loss="ce+dice"
    )
    results = train(config)
    module = ESDSegmentation.load_from_checkpoint(results["last_model_path"])
    manifest = Manifest.load(synthetic_processed)
    labels = np.concatenate(
        [
            np.load(synthetic_processed / manifest.tiles[t].labels).ravel()
            for t in manifest.split["train"]
        ]
    )
    counts = np.bincount(labels - 1, minlength=4)
    expected = counts.sum() / (4 * counts)
    np.testing.assert_allclose(module.hparams.class_weights, expected, rtol=1e-6)
    assert module.hparams.channels == manifest.channels and module.hparams.cell_px == 4
