"""Training augmentation, each transform with its own probability.

`FlipRotate` runs per sample in the data-loader workers and moves the image and its label
grid together; `NoiseBlur` runs on whole batches after they reach the device and changes the
image only. Both take an optional torch.Generator so that a training run is reproducible.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torchvision.transforms.v2 import functional as F


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities and strengths of the training augmentations (0 turns one off)."""

    hflip_p: float = 0.5
    vflip_p: float = 0.5
    rot90_p: float = 0.5
    noise_p: float = 0.25
    noise_std: float = 0.05
    blur_p: float = 0.1
    blur_sigma: float = 1.0

    def __post_init__(self) -> None:
        for name in ("hflip_p", "vflip_p", "rot90_p", "noise_p", "blur_p"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(
                    f"{name} must be a probability in [0, 1], got {getattr(self, name)}"
                )
        if self.noise_std < 0 or self.blur_sigma <= 0:
            raise ValueError("noise_std must be >= 0 and blur_sigma > 0")


class FlipRotate:
    """Random horizontal flip, vertical flip and 90° rotation of an image and its labels.

    Works on numpy arrays and returns views, so the dataset copies the pixels only once.
    """

    def __init__(self, config: AugmentConfig) -> None:
        self.config = config

    def __call__(
        self, x: np.ndarray, y: np.ndarray, generator: torch.Generator | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        draws = torch.rand(3, generator=generator)
        if draws[0] < self.config.hflip_p:
            x, y = x[..., ::-1], y[..., ::-1]
        if draws[1] < self.config.vflip_p:
            x, y = x[..., ::-1, :], y[..., ::-1, :]
        if draws[2] < self.config.rot90_p:
            k = int(torch.randint(1, 4, (), generator=generator))
            x, y = np.rot90(x, k, (-2, -1)), np.rot90(y, k, (-2, -1))
        return x, y


class NoiseBlur(nn.Module):
    """Per-sample Gaussian noise and Gaussian blur on a (B, C, H, W) batch, on its device.

    The `validity` channels (`…/valid`, indicators, not measurements) get no noise, and where
    a sample is blurred they are eroded over the blur's window instead: a pixel whose blurred
    value took in a filled no-data pixel is no data itself, so the filled values still never
    reach a model that masks with them.
    """

    def __init__(self, config: AugmentConfig, validity: Sequence[int] = ()) -> None:
        super().__init__()
        self.config = config
        self.kernel_size = 2 * int(3 * config.blur_sigma + 0.5) + 1
        self.validity = list(validity)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Return an augmented copy of `x` (`x` itself when no sample is chosen).

        Noise and blur are computed only for the chosen samples, which keeps the step cheap
        on the CPU as well. `generator` (on x's device) makes the draws reproducible.
        """
        draw = {"device": x.device, "generator": generator}
        blur = torch.rand(x.shape[0], **draw) < self.config.blur_p
        noise = torch.rand(x.shape[0], **draw) < self.config.noise_p
        noise &= self.config.noise_std > 0
        if not (blur.any() or noise.any()):
            return x
        validity = x[:, self.validity].clone()
        x = x.clone()
        if blur.any():
            x[blur] = F.gaussian_blur(x[blur], [self.kernel_size] * 2, [self.config.blur_sigma] * 2)
            if self.validity:  # the window's minimum: a validity channel is lowest at no data
                validity[blur] = -nn.functional.max_pool2d(
                    -validity[blur], self.kernel_size, stride=1, padding=self.kernel_size // 2
                )
        if noise.any():
            chosen = x[noise]
            x[noise] = chosen + torch.randn(chosen.shape, **draw) * self.config.noise_std
        x[:, self.validity] = validity
        return x
