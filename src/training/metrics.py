"""Epoch metrics of the segmentation module, each named for exactly what it computes.

Classes are named by their contest label (1..4), although the model predicts indices 0..3.
`f1_class1` is the contest's score: F1 of class 1 (settlements without electricity) against
all other classes, which is the per-class F1 of class 1. Averages are explicit:
`acc_overall` is the share of correct cells (micro), `*_macro` the unweighted class mean.
`auroc_macro` is the mean one-vs-rest AUROC over the classes *present* in the epoch's
targets (a class that no cell has, or that every cell has, has no AUROC and is left out,
rather than counted as 0); evaluation's `auc_macro` averages the same way.
"""

from __future__ import annotations

import warnings

import torch
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


class PresentClassesAUROC(MulticlassAUROC):
    """Macro one-vs-rest AUROC over the classes that have both positive and negative cells.

    The per-class AUROCs are torchmetrics' exact ones (no thresholds); the mean leaves out
    classes absent from (or filling) the targets, and is NaN when no class qualifies.
    """

    def __init__(self, num_classes: int, ignore_index: int | None = None) -> None:
        super().__init__(
            num_classes=num_classes, average=None, ignore_index=ignore_index, validate_args=False
        )

    def compute(self) -> torch.Tensor:
        with warnings.catch_warnings():  # "No positive samples": those classes are left out
            warnings.simplefilter("ignore", UserWarning)
            per_class = super().compute()
        target = torch.cat(self.target) if isinstance(self.target, list) else self.target
        counts = torch.bincount(target.flatten().long(), minlength=self.num_classes)
        present = (counts > 0) & (counts < counts.sum())
        if not present.any():
            return per_class.new_tensor(float("nan"))
        return per_class[present].mean()


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
    metrics["auroc_macro"] = PresentClassesAUROC(N_CLASSES, IGNORE_LABEL)
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
