"""Argument and input checks shared by the models."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def check_positive_int(name: str, value: object) -> None:
    """ValueError unless `value` is an int ≥ 1 (bools rejected)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def check_input_size(x: torch.Tensor, cell_px: int) -> None:
    """ValueError unless the input's height and width are multiples of the label cell size."""
    height, width = x.shape[-2:]
    if height % cell_px or width % cell_px:
        raise ValueError(
            f"input size {height}×{width} is not a multiple of the label cell size "
            f"cell_px={cell_px}"
        )
