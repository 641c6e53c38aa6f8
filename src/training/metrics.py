"""Epoch metrics of the segmentation module, each named for exactly what it computes.

Classes are named by their contest label (1..4), although the model predicts indices 0..3.
`f1_class1` is the contest's score: F1 of class 1 (settlements without electricity) against
all other classes, which is the per-class F1 of class 1. Averages are explicit:
`acc_overall` is the share of correct cells (micro), `*_macro` the unweighted class mean.
"""

from __future__ import annotations

from torchmetrics import ClasswiseWrapper, MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassAUROC,
    MulticlassF1Score,
    MulticlassJaccardIndex,
    MulticlassPrecision,
    MulticlassRecall,
)

from src.esd_data.dataset import IGNORE_LABEL
from src.esd_data.sensors import N_CLASSES

CONTEST_METRIC = "f1_class1"
CLASS_LABELS = [f"class{k}" for k in range(1, N_CLASSES + 1)]

_PER_CLASS = {
    "acc": MulticlassAccuracy,
    "iou": MulticlassJaccardIndex,
    "f1": MulticlassF1Score,
    "precision": MulticlassPrecision,
    "recall": MulticlassRecall,
}


def segmentation_metrics(prefix: str) -> MetricCollection:
    """All metrics, logged as `{prefix}acc_overall`, `{prefix}f1_class1`, `{prefix}iou_macro`, …

    Update with (probabilities (N, 4, …), targets (N, …) in 0..3, −1 ignored).
    """
    common = {"num_classes": N_CLASSES, "ignore_index": IGNORE_LABEL, "validate_args": False}
    metrics = {"acc_overall": MulticlassAccuracy(average="micro", **common)}
    for name, metric in _PER_CLASS.items():
        metrics[f"{name}_macro"] = metric(average="macro", **common)
        metrics[f"{name}_per_class"] = ClasswiseWrapper(
            metric(average=None, **common), labels=CLASS_LABELS, prefix=f"{name}_"
        )
    metrics["auroc_macro"] = MulticlassAUROC(average="macro", **common)
    return MetricCollection(metrics, prefix=prefix, compute_groups=False)


def logged_metric_names() -> set[str]:
    """Every epoch metric that `ESDSegmentation` logs (`train_*`, `val_*`, `test_*`)."""
    names = set()
    for stage in ("train", "val", "test"):
        collection = segmentation_metrics(f"{stage}_")
        names.add(f"{stage}_loss")
        for key, metric in collection.items(keep_base=False):
            if isinstance(metric, ClasswiseWrapper):
                base = key.removesuffix("per_class")
                names.update(f"{base}{label}" for label in CLASS_LABELS)
            else:
                names.add(key)
    return names
