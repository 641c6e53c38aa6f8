"""The contest's decision: a threshold on the class-1 probability, chosen on tiles not scored.

The contest scores class 1 against the rest by F1, and the arg-max of four probabilities is
not the F1-optimal decision for a minority class: calling a cell class 1 from a lower
probability trades precision for recall. `class1_threshold` finds the threshold θ that
maximises class-1 F1 over the cells of the selection tiles, exactly: sorted by class-1
probability, the F1 of calling the k most probable cells class 1 is 2·TP(k) / (P + k), so every
distinct probability is a candidate and the best one is found in one pass (`brute_force_f1`
in the tests checks it against a plain loop). A cell is then class 1 when its class-1
probability is at least θ, else the most probable of classes 2–4. The tiles that chose θ are
recorded, and the held-out ledger makes them OPTIMISTIC wherever they are scored.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

DECISIONS = ("argmax", "class1_threshold")


def best_class1_threshold(
    probabilities: Sequence[np.ndarray], truths: Sequence[np.ndarray]
) -> tuple[float, float]:
    """(θ, the class-1 F1 it gives) over the pooled cells of tiles' (4, …) probabilities and
    their labels 1..4; θ = 1.0 (and F1 0) when no cell is class 1."""
    p1 = np.concatenate([np.asarray(p)[0].ravel() for p in probabilities]).astype(np.float64)
    positive = np.concatenate([np.asarray(t).ravel() == 1 for t in truths])
    if not positive.any():
        return 1.0, 0.0
    order = np.argsort(-p1, kind="stable")
    sorted_p, hits = p1[order], np.cumsum(positive[order])
    # a threshold can only fall between distinct probabilities: the last of each run of ties
    last = np.r_[sorted_p[1:] != sorted_p[:-1], True]
    called = np.arange(1, len(p1) + 1)
    f1 = np.where(last, 2 * hits / (positive.sum() + called), -1.0)
    best = int(np.argmax(f1))
    return float(sorted_p[best]), float(f1[best])


def decide(probabilities: np.ndarray, threshold: float | None) -> np.ndarray:
    """Labels 1..4 of (4, …) probabilities: the arg-max (`threshold` None), or class 1 where
    its probability reaches `threshold` and else the most probable of classes 2–4."""
    if threshold is None:
        return (probabilities.argmax(axis=0) + 1).astype(np.uint8)
    others = probabilities[1:].argmax(axis=0) + 2
    return np.where(probabilities[0] >= threshold, 1, others).astype(np.uint8)


def cross_fitted(
    probabilities: dict[str, np.ndarray], truths: dict[str, np.ndarray], folds: list[list[str]]
) -> tuple[dict[str, np.ndarray], list[float]]:
    """Out-of-fold labels under the threshold decision, each fold's tiles labelled with the
    threshold chosen on the other folds' out-of-fold predictions (never on its own tiles), and
    each fold's threshold; `folds` is one partition of the tiles of `probabilities`."""
    labels, thresholds = {}, []
    for fold in folds:
        others = [t for t in probabilities if t not in set(fold)]
        threshold, _ = best_class1_threshold([probabilities[t] for t in others],
                                             [truths[t] for t in others])  # fmt: skip
        thresholds.append(threshold)
        labels.update({t: decide(probabilities[t], threshold) for t in fold})
    return labels, thresholds
