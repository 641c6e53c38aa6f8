"""A U-Net whose per-pixel logits are average-pooled to the label grid.

Structure (E = embedding_size, N = n_encoders):

* stem: double conv (3×3 conv → BatchNorm → ReLU, twice), C → E channels, full resolution;
* N down steps: 2×2 max-pool then double conv, doubling the width (E·2^k channels);
* N up steps: 2×2 transposed conv halving the width, concatenation with the skip map of the
  same level, double conv back to that level's width;
* 1×1 conv head to out_channels, then `avg_pool2d(kernel = stride = cell_px)` to the label grid.

Any input size H, W ≥ 1 works (e.g. 40 or 200, not just multiples of 2^N): the max-pools use
ceil mode, so a map never shrinks to zero, and each upsampled map is cropped or zero-padded
(centred) to the size of its skip map before concatenation. H and W must be multiples of
cell_px so that each label cell averages exactly its own pixels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from src.models.checks import check_input_size, check_positive_int


class DoubleConv(nn.Sequential):
    """(3×3 conv, same padding → BatchNorm → ReLU) × 2."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class Down(nn.Sequential):
    """2×2 max-pool (ceil mode) then a double conv."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.MaxPool2d(2, ceil_mode=True),
            DoubleConv(in_channels, out_channels),
        )


def _match_size(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Centre-crop or zero-pad the last two dimensions of `x` to (height, width)."""
    d_h = height - x.shape[-2]
    d_w = width - x.shape[-1]
    if d_h == 0 and d_w == 0:
        return x
    # F.pad accepts negative amounts, which crop.
    return F.pad(x, [d_w // 2, d_w - d_w // 2, d_h // 2, d_h - d_h // 2])


class Up(nn.Module):
    """2×2 transposed conv (halving the width), skip concatenation, double conv."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, in_channels // 2, kernel_size=2, stride=2)
        self.conv = DoubleConv(in_channels // 2 + out_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = _match_size(self.up(x), skip.shape[-2], skip.shape[-1])
        return self.conv(torch.cat([skip, x], dim=1))


class UNet(nn.Module):
    """U-Net: (B, C, H, W) → logits (B, out_channels, H / cell_px, W / cell_px)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        n_encoders: int = 2,
        embedding_size: int = 32,
        cell_px: int = 50,
    ) -> None:
        super().__init__()
        for name, value in (
            ("in_channels", in_channels),
            ("out_channels", out_channels),
            ("n_encoders", n_encoders),
            ("embedding_size", embedding_size),
            ("cell_px", cell_px),
        ):
            check_positive_int(name, value)
        self.cell_px = cell_px
        widths = [embedding_size * 2**level for level in range(n_encoders + 1)]
        self.stem = DoubleConv(in_channels, widths[0])
        self.downs = nn.ModuleList(Down(widths[k], widths[k + 1]) for k in range(n_encoders))
        self.ups = nn.ModuleList(Up(widths[k + 1], widths[k]) for k in reversed(range(n_encoders)))
        self.head = nn.Conv2d(widths[0], out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input_size(x, self.cell_px)
        x = self.stem(x)
        skips = [x]
        for down in self.downs:
            x = down(x)
            skips.append(x)
        skips.pop()  # the bottleneck output is not a skip connection
        for up in self.ups:
            x = up(x, skips.pop())
        return F.avg_pool2d(self.head(x), kernel_size=self.cell_px)


def build_unet(
    in_channels: int,
    cell_px: int,
    out_channels: int,
    *,
    n_encoders: int = 2,
    embedding_size: int = 32,
) -> nn.Module:
    """Build a UNet (the registry's builder)."""
    return UNet(
        in_channels,
        out_channels,
        n_encoders=n_encoders,
        embedding_size=embedding_size,
        cell_px=cell_px,
    )
