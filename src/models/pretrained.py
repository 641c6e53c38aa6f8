"""Adapting pretrained RGB first-convolution weights to C input channels.

One helper shared by the models that load ImageNet/COCO-style RGB weights (FCNResnetTransfer,
SMPSegmentation). It delegates to timm's maintained `timm.models.adapt_input_conv`, whose
convention segmentation_models_pytorch uses too:

* C == 3: the kernels unchanged;
* C == 1: summed over RGB (a grey image gives the response of the same grey RGB image);
* otherwise: repeated cyclically over the C channels (channel i gets W[:, i mod 3]) and
  rescaled by 3 / C. When C is a multiple of 3, an input whose channels are an RGB image
  repeated cyclically gives exactly the pretrained response to that RGB image.
"""

from __future__ import annotations

import torch
from timm.models import adapt_input_conv

from src.models.checks import check_positive_int


def adapt_first_conv_weight(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Adapt RGB conv kernels (out, 3, k, k) to `in_channels` inputs (a new tensor)."""
    check_positive_int("in_channels", in_channels)
    if weight.ndim != 4 or weight.shape[1] != 3:
        raise ValueError(f"expected RGB conv weights (out, 3, k, k), got {tuple(weight.shape)}")
    # timm returns its argument itself when the channel counts match: clone so the result
    # never aliases the caller's tensor.
    return adapt_input_conv(in_channels, weight.clone())
