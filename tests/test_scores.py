"""`label_scores` (src/evaluation/scores.py) against confusion counts made with plain loops."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from src.evaluation.scores import label_scores

LABELS = (1, 2, 3, 4)  # DATA.md: labels 1..4
NAMES = ("iou", "f1", "precision", "recall")


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else 0.0  # the documented zero for 0/0


def reference_scores(truth: np.ndarray, prediction: np.ndarray) -> dict[str, float]:
    truth, prediction = truth.ravel().tolist(), prediction.ravel().tolist()
    pairs = list(zip(truth, prediction, strict=True))
    expected = {"accuracy": sum(t == p for t, p in pairs) / len(pairs)}
    for label in LABELS:
        tp = sum(t == label and p == label for t, p in pairs)
        fp = sum(t != label and p == label for t, p in pairs)
        fn = sum(t == label and p != label for t, p in pairs)
        expected[f"iou_class{label}"] = _ratio(tp, tp + fp + fn)
        expected[f"f1_class{label}"] = _ratio(2 * tp, 2 * tp + fp + fn)
        expected[f"precision_class{label}"] = _ratio(tp, tp + fp)
        expected[f"recall_class{label}"] = _ratio(tp, tp + fn)
    present = [label for label in LABELS if label in truth or label in prediction]
    for name in NAMES:
        values = [expected[f"{name}_class{label}"] for label in present]
        expected[f"{name}_macro"] = sum(values) / len(values)
    return expected


def assert_scores(truth: np.ndarray, prediction: np.ndarray) -> dict[str, float]:
    scores = label_scores(truth, prediction)
    expected = reference_scores(truth, prediction)
    assert set(scores) == set(expected)
    for key, value in expected.items():
        assert isinstance(scores[key], float), key
        assert scores[key] == pytest.approx(value, abs=1e-12), key
    return scores


def test_a_class_only_in_the_truth_and_one_only_in_the_prediction():
    # Class 3 is never predicted (precision 0/0 → 0), class 4 never true (recall 0/0 → 0).
    truth = np.array([[1, 1, 2, 3], [3, 2, 1, 2], [1, 3, 2, 2], [1, 1, 1, 2]])
    prediction = np.array([[1, 2, 2, 1], [4, 2, 1, 1], [1, 4, 2, 2], [2, 1, 1, 4]])
    scores = assert_scores(truth, prediction)
    assert scores["precision_class3"] == 0.0 and scores["recall_class4"] == 0.0
    assert scores["f1_class3"] == 0.0 and scores["iou_class4"] == 0.0


def test_macro_averages_leave_out_classes_absent_from_both_maps():
    truth = np.array([1, 1, 2, 2, 2, 1, 1, 2])
    prediction = np.array([1, 2, 2, 2, 1, 1, 1, 2])
    scores = assert_scores(truth, prediction)  # classes 3 and 4 absent: macro over 1 and 2
    assert scores["f1_macro"] == pytest.approx((scores["f1_class1"] + scores["f1_class2"]) / 2)
    assert scores["f1_class3"] == scores["f1_class4"] == 0.0
    # The contest's score is the F1 of class 1 against the rest: 2·3 / (2·3 + 1 + 1).
    assert scores["f1_class1"] == pytest.approx(0.75)
    assert scores["accuracy"] == pytest.approx(6 / 8)


def test_a_perfect_map_of_one_class():
    truth = np.full((16, 16), 2)
    scores = assert_scores(truth, truth.copy())
    assert scores["accuracy"] == scores["f1_class2"] == scores["f1_macro"] == 1.0
    assert scores["iou_macro"] == scores["precision_macro"] == scores["recall_macro"] == 1.0


@settings(max_examples=60, deadline=None, database=None)
@given(
    cells=st.lists(st.tuples(st.integers(1, 4), st.integers(1, 4)), min_size=1, max_size=80),
)
def test_random_maps_match_the_confusion_counts(cells):
    truth = np.array([t for t, _ in cells])
    prediction = np.array([p for _, p in cells])
    assert_scores(truth, prediction)
