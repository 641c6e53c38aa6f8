"""Pretrained weights shared by FCNResnetTransfer and SMPSegmentation: checking the options,
reading a state-dict file, adapting RGB first-convolution weights to C input channels.

The adaptation delegates to timm's maintained `timm.models.adapt_input_conv`, whose
convention segmentation_models_pytorch uses too:

* C == 3: the kernels unchanged;
* C == 1: summed over RGB (a grey image gives the response of the same grey RGB image);
* otherwise: repeated cyclically over the C channels (channel i gets W[:, i mod 3]) and
  rescaled by 3 / C. When C is a multiple of 3, an input whose channels are an RGB image
  repeated cyclically gives exactly the pretrained response to that RGB image.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from timm.models import adapt_input_conv

from src.models.checks import check_positive_int


def check_pretrained_options(pretrained: bool, weights_path: str | os.PathLike[str] | None) -> None:
    """ValueError unless `pretrained` is a bool and `weights_path` is given only with it."""
    if not isinstance(pretrained, bool):
        raise ValueError(f"pretrained must be a bool, got {pretrained!r}")
    if weights_path is not None and not pretrained:
        raise ValueError("weights_path is only read when pretrained=True")


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict read on the CPU from a torch or `.safetensors` file, nothing executed.

    ValueError naming the file if it cannot be read or is not a mapping of names to tensors.
    """
    try:
        if path.suffix == ".safetensors":
            state = load_file(path, device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError, SafetensorError) as error:
        raise ValueError(f"could not read {path} as a state dict: {error}") from error
    if not isinstance(state, Mapping) or not all(
        isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in state.items()
    ):
        raise ValueError(f"{path} is not a state dict (a mapping of names to tensors)")
    return dict(state)


def adapt_first_conv_weight(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Adapt RGB conv kernels (out, 3, k, k) to `in_channels` inputs (a new tensor)."""
    check_positive_int("in_channels", in_channels)
    if weight.ndim != 4 or weight.shape[1] != 3:
        raise ValueError(f"expected RGB conv weights (out, 3, k, k), got {tuple(weight.shape)}")
    # timm returns its argument itself when the channel counts match: clone so the result
    # never aliases the caller's tensor.
    return adapt_input_conv(in_channels, weight.clone())
