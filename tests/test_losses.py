"""`soft_dice_loss` and `SegmentationLoss` (src/training/losses.py) against numpy references.

The references below are written from the docstrings: cross-entropy as the (class-weighted)
mean of −log p(true class) over labelled cells, soft Dice as 1 − the mean over classes of
(2·Σ p·onehot + eps) / (Σ p + Σ onehot + eps) over labelled cells, the false-positive term as
the mean probability of class index 0 over labelled cells of the other classes. Shapes are
all different (batch 3, classes 4, 2×5 cells) so that a wrong axis cannot pass unnoticed.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from src.training.losses import LOSS_NAMES, SegmentationLoss, soft_dice_loss

IGNORE = -1  # unlabelled cells (tiles without ground truth)


def _probabilities(logits: np.ndarray) -> np.ndarray:
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


def ref_cross_entropy(logits: np.ndarray, target: np.ndarray, weights=None) -> float:
    p = _probabilities(logits)
    numerator = denominator = 0.0
    for index in np.ndindex(target.shape):
        k = int(target[index])
        if k == IGNORE:
            continue
        w = 1.0 if weights is None else weights[k]
        numerator += w * -np.log(p[(index[0], k, *index[1:])])
        denominator += w
    return numerator / denominator


def ref_dice(logits: np.ndarray, target: np.ndarray, eps: float = 1.0) -> float:
    p = _probabilities(logits)
    classes = logits.shape[1]
    coefficients = []
    for k in range(classes):
        intersection = total = 0.0
        for index in np.ndindex(target.shape):
            t = int(target[index])
            if t == IGNORE:
                continue
            pk = p[(index[0], k, *index[1:])]
            hot = 1.0 if t == k else 0.0
            intersection += pk * hot
            total += pk + hot
        coefficients.append((2 * intersection + eps) / (total + eps))
    return 1.0 - float(np.mean(coefficients))


def ref_false_positives(logits: np.ndarray, target: np.ndarray) -> float:
    p = _probabilities(logits)
    values = [
        p[(index[0], 0, *index[1:])]
        for index in np.ndindex(target.shape)
        if int(target[index]) not in (0, IGNORE)
    ]
    return float(np.mean(values))


def example(seed: int = 0, shape=(3, 2, 5)) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (B, 4, H, W) of float64 and targets in 0..3 with a few ignored cells."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=2.0, size=(shape[0], 4, *shape[1:]))
    target = rng.integers(0, 4, size=shape)
    target.flat[[1, target.size // 2, target.size - 1]] = IGNORE
    return torch.from_numpy(logits), torch.from_numpy(target)


def test_loss_names():
    assert LOSS_NAMES == ("ce", "dice", "ce+dice")


def test_soft_dice_equals_the_reference():
    logits, target = example(1)
    value = soft_dice_loss(logits, target)
    assert value.shape == ()
    assert value.item() == pytest.approx(ref_dice(logits.numpy(), target.numpy()), rel=1e-12)
    half = soft_dice_loss(logits, target, eps=0.25).item()
    assert half == pytest.approx(ref_dice(logits.numpy(), target.numpy(), eps=0.25), rel=1e-12)
    # Other layouts: (B, C, L) and (B, C, H, W) with a batch of one.
    for shape in [(2, 7), (1, 3, 3)]:
        logits, target = example(2, shape)
        expected = ref_dice(logits.numpy(), target.numpy())
        assert soft_dice_loss(logits, target).item() == pytest.approx(expected, rel=1e-12)


def test_soft_dice_of_a_confident_right_answer_is_near_zero():
    target = torch.tensor([[[0, 1, 2], [3, 0, 1]]])
    logits = torch.nn.functional.one_hot(target, 4).movedim(-1, 1).double() * 40
    assert soft_dice_loss(logits, target, eps=0.0).item() == pytest.approx(0.0, abs=1e-12)
    # Ignored cells count for nothing, whatever their logits say.
    masked = target.clone()
    masked[0, 0, 0] = IGNORE
    wrong = logits.clone()
    wrong[0, :, 0, 0] = torch.tensor([0.0, 0.0, 0.0, 40.0], dtype=torch.float64)
    assert soft_dice_loss(wrong, masked).item() == pytest.approx(
        soft_dice_loss(logits, masked).item(), abs=1e-12
    )


def test_cross_entropy_alone_is_the_plain_mean_over_labelled_cells():
    logits, target = example(3)
    expected = ref_cross_entropy(logits.numpy(), target.numpy())
    assert SegmentationLoss("ce")(logits, target).item() == pytest.approx(expected, rel=1e-12)
    assert SegmentationLoss()(logits, target).item() == pytest.approx(expected, rel=1e-12)


def test_dice_alone_has_no_cross_entropy_term():
    # A real bug found by mutation testing: `"ce" in "dice"` is True, so "dice" once also
    # added the cross-entropy.
    logits, target = example(4)
    expected = ref_dice(logits.numpy(), target.numpy())
    loss = SegmentationLoss("dice", ce_weight=5.0)
    assert loss(logits, target).item() == pytest.approx(expected, rel=1e-12)


def test_ce_plus_dice_weights_each_term_and_the_false_positive_penalty():
    logits, target = example(5)
    x, t = logits.numpy(), target.numpy()
    ce, dice, fp = ref_cross_entropy(x, t), ref_dice(x, t), ref_false_positives(x, t)
    default = SegmentationLoss("ce+dice")(logits, target).item()
    assert default == pytest.approx(ce + dice, rel=1e-12)
    weighted = SegmentationLoss("ce+dice", None, 0.7, 1.9, 0.4)(logits, target).item()
    assert weighted == pytest.approx(0.7 * ce + 1.9 * dice + 0.4 * fp, rel=1e-12)
    weights = [0.5, 2.0, 1.0, 4.0]
    with_weights = SegmentationLoss("ce+dice", weights, 0.3, 2.0).double()(logits, target).item()
    expected = 0.3 * ref_cross_entropy(x, t, weights) + 2.0 * dice
    assert with_weights == pytest.approx(expected, rel=1e-12)


def test_false_positive_penalty_alone_and_without_other_classes():
    logits, target = example(6)
    ce = ref_cross_entropy(logits.numpy(), target.numpy())
    fp = ref_false_positives(logits.numpy(), target.numpy())
    value = SegmentationLoss("ce", fp_penalty=3.0)(logits, target).item()
    assert value == pytest.approx(ce + 3.0 * fp, rel=1e-12)
    # Only class-1 (index 0) and ignored cells: no false positive possible, no penalty.
    only_first = torch.where(target == IGNORE, target, torch.zeros_like(target))
    plain = ref_cross_entropy(logits.numpy(), only_first.numpy())
    penalised = SegmentationLoss("ce", fp_penalty=3.0)(logits, only_first)
    assert torch.isfinite(penalised)
    assert penalised.item() == pytest.approx(plain, rel=1e-12)


def test_class_weights_are_a_float_buffer_that_follows_the_module():
    loss = SegmentationLoss("ce", class_weights=[1, 2, 3, 4])
    assert loss.class_weights.dtype == torch.float32
    assert loss.class_weights.tolist() == [1.0, 2.0, 3.0, 4.0]
    assert "class_weights" in dict(loss.named_buffers())
    assert SegmentationLoss("ce").class_weights is None
    loss = loss.double()
    assert loss.class_weights.dtype == torch.float64


def test_unknown_loss_name_is_refused():
    with pytest.raises(ValueError, match=r"unknown loss 'focal'; choose one of ce, dice, ce\+dice"):
        SegmentationLoss("focal")


def test_gradients_flow_through_every_term():
    logits, target = example(7)
    logits = logits.clone().requires_grad_(True)
    SegmentationLoss("ce+dice", fp_penalty=1.0)(logits, target).backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    ignored = (target == IGNORE).unsqueeze(1).expand_as(logits)
    assert (logits.grad[ignored] == 0).all()  # unlabelled cells get no gradient
    assert (logits.grad[~ignored] != 0).any()


def test_pseudo_labelled_subtiles_weigh_what_they_are_given_in_every_term():
    logits, target = example(11)
    weight = torch.tensor([1.0, 0.25, 1.0])  # the second subtile's cells are pseudo-labels
    loss = SegmentationLoss("ce", class_weights=[1.0, 2.0, 1.0, 0.5]).double()
    # a cell of weight w counts as w cells: repeat the subtiles in proportion (×4 and ×1)
    repeated = [0] * 4 + [1] + [2] * 4
    expected = ref_cross_entropy(logits[repeated].numpy(), target[repeated].numpy(),
                                 [1.0, 2.0, 1.0, 0.5])  # fmt: skip
    assert loss(logits, target, weight).item() == pytest.approx(expected, rel=1e-5)
    both = SegmentationLoss("ce+dice", fp_penalty=0.5)
    ones = torch.ones(3)
    assert both(logits, target, ones).item() == pytest.approx(both(logits, target).item())
    assert both(logits, target, weight).item() != pytest.approx(both(logits, target).item())


def test_a_batch_without_a_labelled_cell_costs_nothing_and_trains_nothing():
    logits, _ = example(5)
    logits = logits.clone().requires_grad_(True)
    unlabelled = torch.full((logits.shape[0], *logits.shape[2:]), IGNORE)
    value = SegmentationLoss("ce+dice", fp_penalty=1.0)(logits, unlabelled)
    value.backward()
    assert value.item() == 0.0 and (logits.grad == 0).all()
