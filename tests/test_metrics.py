"""The epoch metrics (src/training/metrics.py) against confusion counts and scikit-learn's AUROC.

tests/test_training.py checks F1, IoU, per-class accuracy and the AUROC of two classes; here
every computed value (precision, recall and each macro average too), the logged names, and
the AUROC's rule for classes that are absent from, or fill, the targets.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from src.training.metrics import (
    CONTEST_METRIC,
    PresentClassesAUROC,
    logged_metric_names,
    segmentation_metrics,
)

CLASSES = 4
PER_CLASS = ("acc", "iou", "f1", "precision", "recall")


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else 0.0


def reference(truth: np.ndarray, predicted: np.ndarray, prefix: str) -> dict[str, float]:
    """Per-class and macro scores from confusion counts; indices 0..3 are classes 1..4."""
    expected = {f"{prefix}acc_overall": float(np.mean(truth == predicted))}
    per_class: dict[str, list[float]] = {name: [] for name in PER_CLASS}
    for k in range(CLASSES):
        tp = int(np.sum((truth == k) & (predicted == k)))
        fp = int(np.sum((truth != k) & (predicted == k)))
        fn = int(np.sum((truth == k) & (predicted != k)))
        per_class["acc"].append(_ratio(tp, tp + fn))  # per-class accuracy is the recall
        per_class["iou"].append(_ratio(tp, tp + fp + fn))
        per_class["f1"].append(_ratio(2 * tp, 2 * tp + fp + fn))
        per_class["precision"].append(_ratio(tp, tp + fp))
        per_class["recall"].append(_ratio(tp, tp + fn))
    for name, values in per_class.items():
        expected[f"{prefix}{name}_macro"] = float(np.mean(values))
        for k, value in enumerate(values):
            expected[f"{prefix}{name}_class{k + 1}"] = value
    return expected


def random_batches(seed: int, n: int = 48):
    assert n > 5
    generator = torch.Generator().manual_seed(seed)
    probabilities = torch.rand(n, CLASSES, 3, 5, generator=generator).softmax(dim=1)
    target = torch.randint(0, CLASSES, (n, 3, 5), generator=generator)
    target[0, 0] = -1  # ignored cells
    target[5, :, 2] = -1
    return probabilities, target


def test_every_metric_equals_the_confusion_counts():
    probabilities, target = random_batches(0)
    metrics = segmentation_metrics("train_")
    for start in range(0, len(target), 16):  # accumulated over batches, as in an epoch
        metrics.update(probabilities[start : start + 16], target[start : start + 16])
    values = {key: value.item() for key, value in metrics.compute().items()}
    keep = target.flatten() != -1
    truth = target.flatten()[keep].numpy()
    predicted = probabilities.argmax(dim=1).flatten()[keep].numpy()
    expected = reference(truth, predicted, "train_")
    scores = probabilities.movedim(1, -1).reshape(-1, CLASSES)[keep].numpy()
    expected["train_auroc_macro"] = float(
        np.mean([roc_auc_score(truth == k, scores[:, k]) for k in range(CLASSES)])
    )
    assert set(values) == set(expected)
    for key, value in expected.items():
        assert values[key] == pytest.approx(value, abs=1e-5), key
    assert values[f"train_{CONTEST_METRIC}"] == pytest.approx(expected["train_f1_class1"])


def test_logged_names_are_exactly_the_computed_ones_per_stage():
    expected = set()
    for stage in ("train", "val", "test"):
        expected |= {f"{stage}_loss", f"{stage}_acc_overall", f"{stage}_auroc_macro"}
        for name in PER_CLASS:
            expected.add(f"{stage}_{name}_macro")
            expected |= {f"{stage}_{name}_class{k}" for k in range(1, CLASSES + 1)}
    assert logged_metric_names() == expected
    probabilities, target = random_batches(1, n=6)
    metrics = segmentation_metrics("val_")
    metrics.update(probabilities, target)
    computed = set(metrics.compute()) | {"val_loss"}
    assert computed == {name for name in expected if name.startswith("val_")}
    assert CONTEST_METRIC == "f1_class1"


def _auroc(probabilities: torch.Tensor, target: torch.Tensor) -> float:
    metric = PresentClassesAUROC(CLASSES, ignore_index=-1)
    half = len(target) // 2
    metric.update(probabilities[:half], target[:half])  # two updates: a list of states
    metric.update(probabilities[half:], target[half:])
    return metric.compute().item()


def test_auroc_leaves_out_absent_classes_and_ignored_cells():
    probabilities, target = random_batches(2)
    target = torch.where(target == 3, torch.ones_like(target), target)  # class 4 absent
    keep = target.flatten() != -1
    truth = target.flatten()[keep].numpy()
    scores = probabilities.movedim(1, -1).reshape(-1, CLASSES)[keep].numpy()
    expected = np.mean([roc_auc_score(truth == k, scores[:, k]) for k in (0, 1, 2)])
    assert _auroc(probabilities, target) == pytest.approx(expected, abs=1e-6)


def test_auroc_of_a_single_class_filling_the_targets_is_nan():
    probabilities, target = random_batches(3, n=8)
    filled = torch.where(target == -1, target, torch.full_like(target, 2))
    assert math.isnan(_auroc(probabilities, filled))
    # One cell of another class makes both classes qualify.
    filled[1, 1, 1] = 0
    keep = filled.flatten() != -1
    truth = filled.flatten()[keep].numpy()
    scores = probabilities.movedim(1, -1).reshape(-1, CLASSES)[keep].numpy()
    expected = np.mean([roc_auc_score(truth == k, scores[:, k]) for k in (0, 2)])
    assert _auroc(probabilities, filled) == pytest.approx(expected, abs=1e-6)


def test_auroc_without_an_ignore_index():
    probabilities, target = random_batches(4, n=10)
    target = target.clamp(min=0)
    metric = PresentClassesAUROC(CLASSES)
    metric.update(probabilities, target)
    truth = target.flatten().numpy()
    scores = probabilities.movedim(1, -1).reshape(-1, CLASSES).numpy()
    expected = np.mean([roc_auc_score(truth == k, scores[:, k]) for k in range(CLASSES)])
    assert metric.compute().item() == pytest.approx(expected, abs=1e-6)


def test_each_epoch_counts_only_its_own_cells_and_warns_of_nothing():
    # The training module's cycle: update over the epoch's batches, compute, reset.
    metrics = segmentation_metrics("val_")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for epoch in range(3):
            probabilities, target = random_batches(10 + epoch)
            for start in range(0, len(target), 12):
                metrics.update(probabilities[start : start + 12], target[start : start + 12])
            values = {key: value.item() for key, value in metrics.compute().items()}
            metrics.reset()
            keep = target.flatten() != -1
            truth = target.flatten()[keep].numpy()
            predicted = probabilities.argmax(dim=1).flatten()[keep].numpy()
            for key, value in reference(truth, predicted, "val_").items():
                assert values[key] == pytest.approx(value, abs=1e-5), (epoch, key)
