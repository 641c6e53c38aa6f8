"""Segmentation losses on label-grid logits: cross-entropy, soft Dice, their sum, FP penalty."""

from __future__ import annotations

import typing

import torch
import torch.nn.functional as F
from torch import nn

from src.esd_data.dataset import IGNORE_LABEL
from src.training.config import LossName

LOSS_NAMES: tuple[str, ...] = typing.get_args(LossName)


def cell_weights(target: torch.Tensor, sample_weight: torch.Tensor | None) -> torch.Tensor:
    """Each cell's weight in the loss: 0 where labelled −1, else its subtile's weight (1
    without `sample_weight`, a (B,) tensor)."""
    valid = (target != IGNORE_LABEL).float()
    if sample_weight is None:
        return valid
    return valid * sample_weight.to(valid).view(-1, *[1] * (target.ndim - 1))


def soft_dice_loss(
    logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """1 − mean over classes of the soft Dice coefficient; cells labelled −1 are ignored, and
    `weight` (B, t, t; `cell_weights`) scales each cell's part."""
    valid = (cell_weights(target, None) if weight is None else weight).unsqueeze(1)
    probabilities = logits.softmax(dim=1) * valid
    one_hot = F.one_hot(target.clamp(min=0), logits.shape[1]).movedim(-1, 1) * valid
    dims = (0, *range(2, logits.ndim))
    intersection = (probabilities * one_hot).sum(dims)
    total = probabilities.sum(dims) + one_hot.sum(dims)
    return 1.0 - ((2 * intersection + eps) / (total + eps)).mean()


class SegmentationLoss(nn.Module):
    """`ce_weight`·CE + `dice_weight`·Dice (per `name`) + `fp_penalty`·(class-1 false positives).

    The false-positive term is the mean predicted probability of class 1 (index 0) on cells
    whose true class is another one: it discourages calling unlit land a settlement.
    """

    def __init__(
        self,
        name: LossName = "ce",
        class_weights: list[float] | None = None,
        ce_weight: float = 1.0,
        dice_weight: float = 1.0,
        fp_penalty: float = 0.0,
    ) -> None:
        super().__init__()
        if name not in LOSS_NAMES:
            raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(LOSS_NAMES)}")
        self.name = name
        terms = name.split("+")  # "ce", "dice" or "ce+dice" ("ce" in "dice" is True)
        self.ce_weight = ce_weight if "ce" in terms else 0.0
        self.dice_weight = dice_weight if "dice" in terms else 0.0
        self.fp_penalty = fp_penalty
        weights = None if class_weights is None else torch.tensor(class_weights, dtype=torch.float)
        self.register_buffer("class_weights", weights)

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, sample_weight: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The scalar loss for logits (B, 4, t, t) and targets (B, t, t) in 0..3 (−1 ignored),
        each term a weighted mean over cells: `sample_weight` (B,) scales a subtile's cells
        (pseudo-labelled ones), and a batch without a labelled cell costs 0."""
        weight = cell_weights(target, sample_weight)
        loss = logits.new_zeros(())
        if self.ce_weight:
            per_cell = F.cross_entropy(
                logits, target, weight=self.class_weights, ignore_index=IGNORE_LABEL,
                reduction="none",
            )  # fmt: skip
            if self.class_weights is not None:  # the mean PyTorch takes: over class weights
                weight_sum = (self.class_weights[target.clamp(min=0)] * weight).sum()
            else:
                weight_sum = weight.sum()
            loss = loss + self.ce_weight * _ratio((per_cell * weight).sum(), weight_sum)
        if self.dice_weight:
            loss = loss + self.dice_weight * soft_dice_loss(logits, target, weight=weight)
        if self.fp_penalty:
            others = weight * (target != 0)
            fp = (logits.softmax(dim=1)[:, 0] * others).sum()
            loss = loss + self.fp_penalty * _ratio(fp, others.sum())
        return loss


def _ratio(total: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """total / weight, 0 (with the graph kept) where nothing carries weight."""
    return total / weight if weight > 0 else total * 0.0
