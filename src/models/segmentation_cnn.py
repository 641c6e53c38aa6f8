"""A plain encoder-only CNN that pools full-resolution pixels down to the label grid.

Each encoder is `depth` × (conv `kernel_size`, "same" padding → BatchNorm → ReLU) followed
by `MaxPool2d(pool_size)`. Every encoder has the same width, `embedding_size` channels
(constant width, no doubling: the parameter count stays small and predictable, and the
network is a baseline). After len(pool_sizes) encoders the map is prod(pool_sizes) times
smaller than the input, so prod(pool_sizes) must equal the label cell size `cell_px` (e.g.
5·5·2 = 50 at full resolution); a 1×1 conv head then maps the features to class logits per
label cell.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from src.models.checks import check_input_size, check_positive_int


def default_pool_sizes(cell_px: int) -> list[int]:
    """Prime factors of `cell_px`, largest first.

    50 → [5, 5, 2], 10 → [5, 2], 4 → [2, 2], 1 → [] (no pooling).
    """
    if isinstance(cell_px, bool) or not isinstance(cell_px, int) or cell_px < 1:
        raise ValueError(f"cell_px must be a positive integer, got {cell_px!r}")
    factors: list[int] = []
    remaining = cell_px
    divisor = 2
    while divisor * divisor <= remaining:
        while remaining % divisor == 0:
            factors.append(divisor)
            remaining //= divisor
        divisor += 1
    if remaining > 1:
        factors.append(remaining)
    return sorted(factors, reverse=True)


class SegmentationCNN(nn.Module):
    """Encoders (convs + max-pool) that reduce (B, C, H, W) to logits (B, out_channels, H/P, W/P).

    P = prod(pool_sizes) is the label cell size; H and W must be multiples of P. With
    `pool_sizes=[]` (cell_px 1) the model is a 1×1 conv (a per-pixel linear classifier).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        depth: int = 2,
        embedding_size: int = 64,
        pool_sizes: Sequence[int] = (5, 5, 2),
        kernel_size: int = 3,
    ) -> None:
        super().__init__()
        for name, value in (
            ("in_channels", in_channels),
            ("out_channels", out_channels),
            ("depth", depth),
            ("embedding_size", embedding_size),
            ("kernel_size", kernel_size),
        ):
            check_positive_int(name, value)
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd for 'same' padding, got {kernel_size}")
        pool_sizes = list(pool_sizes)
        for size in pool_sizes:
            check_positive_int("each pool size", size)

        self.pool_sizes: tuple[int, ...] = tuple(pool_sizes)
        self.cell_px: int = math.prod(pool_sizes)

        encoders: list[nn.Module] = []
        channels = in_channels
        for pool_size in pool_sizes:
            layers: list[nn.Module] = []
            for _ in range(depth):
                layers += [
                    nn.Conv2d(
                        channels, embedding_size, kernel_size, padding=kernel_size // 2, bias=False
                    ),
                    nn.BatchNorm2d(embedding_size),
                    nn.ReLU(inplace=True),
                ]
                channels = embedding_size
            layers.append(nn.MaxPool2d(pool_size))
            encoders.append(nn.Sequential(*layers))
        self.encoders = nn.Sequential(*encoders)
        self.head = nn.Conv2d(channels, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input_size(x, self.cell_px)
        return self.head(self.encoders(x))


def build_segmentation_cnn(
    in_channels: int,
    cell_px: int,
    out_channels: int,
    *,
    depth: int = 2,
    embedding_size: int = 64,
    pool_sizes: Sequence[int] | None = None,
    kernel_size: int = 3,
) -> nn.Module:
    """Build a SegmentationCNN whose pools multiply to cell_px (the registry's builder)."""
    if pool_sizes is None:
        pool_sizes = default_pool_sizes(cell_px)
    else:
        pool_sizes = list(pool_sizes)
        if math.prod(pool_sizes) != cell_px:
            raise ValueError(
                f"SegmentationCNN pool_sizes {pool_sizes} multiply to {math.prod(pool_sizes)}, "
                f"but they must multiply to the label cell size cell_px={cell_px} (each "
                f"encoder max-pools by its pool size, so the encoders together must reduce one "
                f"cell to one pixel); e.g. {default_pool_sizes(cell_px)}, or leave pool_sizes "
                "unset to get that default"
            )
    return SegmentationCNN(
        in_channels,
        out_channels,
        depth=depth,
        embedding_size=embedding_size,
        pool_sizes=pool_sizes,
        kernel_size=kernel_size,
    )
