"""Test-time augmentation: dihedral transforms of a window and their inverses on the label grid.

`none`: the window as it is; `flips`: also flipped left–right, top–bottom and both (4
views); `d4`: the 8 elements of the dihedral group (4 rotations, each with and without a
left–right flip). A model's output for a transformed window is mapped back by the inverse
transform before the views are averaged, so every view votes for the same cell.
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from dataclasses import dataclass

import torch

from src.evaluation.config import TTAMode

TTA_MODES: tuple[str, ...] = typing.get_args(TTAMode)
_ROWS, _COLS = -2, -1


@dataclass(frozen=True)
class View:
    """Rotate by `quarter_turns`·90° after flipping the columns when `flip` (on H, W axes)."""

    flip: bool
    quarter_turns: int

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The view of `x` (…, H, W)."""
        x = x.flip(_COLS) if self.flip else x
        return torch.rot90(x, self.quarter_turns, dims=(_ROWS, _COLS))

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        """Map an output (…, t, t) of the view back onto the untransformed grid."""
        y = torch.rot90(y, -self.quarter_turns, dims=(_ROWS, _COLS))
        return y.flip(_COLS) if self.flip else y


def views(mode: str) -> list[View]:
    """The views of a TTA mode; the first is always the identity."""
    if mode == "none":
        return [View(False, 0)]
    if mode == "flips":  # identity, left–right, top–bottom (= flip + half turn), both (half turn)
        return [View(False, 0), View(True, 0), View(True, 2), View(False, 2)]
    if mode == "d4":
        return [View(flip, turns) for flip in (False, True) for turns in range(4)]
    raise ValueError(f"unknown TTA mode {mode!r}; choose one of {', '.join(TTA_MODES)}")


def averaged_probabilities(
    model: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    mode: str,
    after_identity: Callable[[], None] | None = None,
) -> torch.Tensor:
    """Mean softmax probabilities (B, K, t, t) of `model` over the views of `mode`.

    `after_identity` is called right after the untransformed view's forward pass (e.g. to read
    what the model recorded about it).
    """
    total = None
    chosen = views(mode)
    for index, view in enumerate(chosen):
        probabilities = view.inverse(model(view.forward(x)).float().softmax(dim=1))
        if index == 0 and after_identity is not None:
            after_identity()
        total = probabilities if total is None else total + probabilities
    assert total is not None
    return total / len(chosen)
