"""Argument and input checks shared by the models."""

from __future__ import annotations

import re
from importlib import metadata
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


TIMM_FLOOR = (1, 0, 26)
"""The oldest timm Galileo runs on: 1.0.16 brought the patch-embedding resampler and the
block it uses, and up to 1.0.25 a block given a boolean attention mask added it to the
scores instead of applying it when attention was not fused (parity drifted to 7.6e-3)."""


def timm_problem() -> str | None:
    """One line when the installed timm is older than `TIMM_FLOOR` (or missing)."""
    wanted = ".".join(map(str, TIMM_FLOOR))
    try:
        installed = metadata.version("timm")
    except metadata.PackageNotFoundError:
        installed = "none"
    numbers = tuple(int(n) for n in re.findall(r"\d+", installed)[:3])
    if numbers < TIMM_FLOOR:
        return (
            f"Galileo needs timm {wanted} or newer (installed: {installed}): pip install "
            f"'timm>={wanted},<2'"
        )
    return None
