"""Scores of restitched 16×16 label maps (labels 1..4), computed with scikit-learn.

`f1_class1` is the contest's score: F1 of class 1 (settlements without electricity) against
the rest, which is the per-class F1 of class 1. Per-class scores use zero for an undefined
ratio (a class never predicted, or absent); macro averages are over the classes present in
the truth or the prediction.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, jaccard_score, precision_recall_fscore_support

from src.esd_data.sensors import N_CLASSES

LABELS = list(range(1, N_CLASSES + 1))


def label_scores(truth: np.ndarray, prediction: np.ndarray) -> dict[str, float]:
    """Accuracy and per-class (`f1_class1`, …) and macro IoU / F1 / precision / recall."""
    truth, prediction = np.ravel(truth), np.ravel(prediction)
    present = sorted(set(truth.tolist()) | set(prediction.tolist()))
    scores = {"accuracy": float(accuracy_score(truth, prediction))}
    options = {"labels": LABELS, "average": None, "zero_division": 0}
    # precision_score, recall_score and f1_score are each this one call's share of its result
    precision, recall, f1, _ = precision_recall_fscore_support(truth, prediction, **options)
    per_class = {
        "iou": jaccard_score(truth, prediction, **options),
        "f1": f1,
        "precision": precision,
        "recall": recall,
    }
    for name, values in per_class.items():
        for label, value in zip(LABELS, values, strict=True):
            scores[f"{name}_class{label}"] = float(value)
        scores[f"{name}_macro"] = float(np.mean([values[label - 1] for label in present]))
    return scores
