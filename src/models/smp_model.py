"""Any segmentation_models_pytorch (smp) architecture, for C channels and the label grid.

The network is `smp.create_model(arch, encoder_name=encoder, encoder_weights=None,
in_channels=C, classes=out_channels)`, so building it never downloads anything. Its forward:

* pads the input with zeros, centred, to a multiple of the encoder's output stride (the
  divisor smp's decoders need; 32 for most encoders, 16 for DeepLabV3+, 8 for DeepLabV3 and
  PSPNet), and to at least 128 pixels for PAN, whose pyramid attention pools the 1/16 map
  three more times; subtiles of 8 or 16 pixels thus work too;
* crops the per-pixel logits back to the input and average-pools them with kernel = stride =
  cell_px to the label grid.

Pretrained weights come only from a local file, `weights_path` with `pretrained=True`: the
state dict of the smp encoder (what `model.encoder.state_dict()` holds), as a torch file or as
a `.safetensors` file (the format of smp's own hub checkpoints). It is usually an RGB
(in_channels=3) encoder: every 4-D weight that has 3 input channels in the file but C in the
model (the first convolution) is adapted by `src.models.pretrained.adapt_first_conv_weight`;
every other tensor must match the encoder's names and shapes exactly. The decoder and head
keep their smp initialisation. A missing file raises FileNotFoundError before the model is
built; a file that is not a state dict of that encoder raises ValueError.

Known limitation: DeepLabV3, DeepLabV3+, UPerNet and PAN have a BatchNorm after a global
pooling, so in train mode they need batches of at least 2. DPT is left out of `SMP_ARCHS`: it
needs a ViT encoder at one fixed input size.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path

import segmentation_models_pytorch as smp
import timm
import torch
import torch.nn.functional as F
from torch import nn

from src.models.checks import check_input_size, check_positive_int
from src.models.pretrained import (
    adapt_first_conv_weight,
    check_pretrained_options,
    read_state_dict,
)

_UNSUPPORTED_ARCHS = {"dpt": "it needs a ViT ('tu-vit…') encoder at one fixed input size"}
SMP_ARCHS: tuple[str, ...] = tuple(
    name for name in smp.MODEL_ARCHITECTURES_MAPPING if name not in _UNSUPPORTED_ARCHS
)
"""The smp architectures (lower-case names) that SMPSegmentation accepts."""

_MIN_INPUT_PX = {"pan": 128}
_TIMM_PREFIX = "tu-"


def smp_arch_name(arch: str) -> str:
    """The lower-case smp name of `arch` (case-insensitive); ValueError listing SMP_ARCHS."""
    name = arch.lower() if isinstance(arch, str) else None
    if name in _UNSUPPORTED_ARCHS:
        raise ValueError(f"smp architecture {arch!r} is not supported: {_UNSUPPORTED_ARCHS[name]}")
    if name not in SMP_ARCHS:
        raise ValueError(f"unknown smp architecture {arch!r}; choose one of {', '.join(SMP_ARCHS)}")
    return name


def check_smp_encoder(encoder: str) -> None:
    """ValueError unless `encoder` is an smp encoder name or 'tu-' + a timm model name."""
    if not isinstance(encoder, str):
        raise ValueError(f"the smp encoder must be a name, got {encoder!r}")
    if encoder in smp.encoders.get_encoder_names():
        return
    if encoder.startswith(_TIMM_PREFIX) and timm.is_model(encoder.removeprefix(_TIMM_PREFIX)):
        return
    raise ValueError(
        f"unknown smp encoder {encoder!r}; choose one of "
        f"{', '.join(smp.encoders.get_encoder_names())}, or '{_TIMM_PREFIX}<timm model name>'"
    )


def read_state_dict_file(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """A state dict read from a torch or .safetensors file, on the CPU, nothing executed.

    FileNotFoundError naming the file if it is missing; ValueError if it is not a state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"pretrained encoder weights not found at '{path}' (weights_path). Nothing is "
            "downloaded at run time: save the encoder's state dict (or copy smp's "
            "model.safetensors for it) to this machine and pass its path."
        )
    return read_state_dict(path)


def _is_rgb_version(value: torch.Tensor, expected: torch.Size, in_channels: int) -> bool:
    """Whether `value` is the RGB (out, 3, k, k) form of a (out, in_channels, k, k) weight."""
    return (
        value.ndim == 4
        and len(expected) == 4
        and value.shape[1] == 3
        and expected[1] == in_channels
        and value.shape[0] == expected[0]
        and value.shape[2:] == expected[2:]
    )


def load_encoder_weights(
    encoder: nn.Module, state: Mapping[str, torch.Tensor], in_channels: int, source: Path
) -> list[str]:
    """Load an encoder state dict into `encoder`, adapting RGB first-conv weights to C channels.

    Returns the adapted keys. ValueError naming `source` on missing, unexpected or misshapen
    entries.
    """
    own = encoder.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        hint = (
            " (a whole smp model's state dict? save model.encoder.state_dict() instead)"
            if any(key.startswith("encoder.") for key in unexpected)
            else ""
        )
        raise ValueError(
            f"{source} is not a state dict of this encoder{hint}: {len(missing)} missing keys "
            f"{missing[:5]}, {len(unexpected)} unexpected keys {unexpected[:5]}"
        )
    adapted: dict[str, torch.Tensor] = {}
    adapted_keys = []
    for key, value in state.items():
        expected = own[key].shape
        if value.shape != expected:
            if not _is_rgb_version(value, expected, in_channels):
                raise ValueError(
                    f"{source}: '{key}' has shape {tuple(value.shape)}, expected "
                    f"{tuple(expected)} (or its RGB form with 3 input channels)"
                )
            value = adapt_first_conv_weight(value, in_channels)
            adapted_keys.append(key)
        adapted[key] = value
    encoder.load_state_dict(adapted)
    return adapted_keys


class SMPSegmentation(nn.Module):
    """An smp model: (B, C, H, W) → logits (B, out_channels, H / cell_px, W / cell_px)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        cell_px: int,
        arch: str = "unet",
        encoder: str = "resnet34",
        pretrained: bool = False,
        weights_path: str | os.PathLike[str] | None = None,
    ) -> None:
        super().__init__()
        check_positive_int("in_channels", in_channels)
        check_positive_int("out_channels", out_channels)
        check_positive_int("cell_px", cell_px)
        arch = smp_arch_name(arch)
        check_smp_encoder(encoder)
        check_pretrained_options(pretrained, weights_path)
        if pretrained and weights_path is None:
            raise ValueError(
                "pretrained=True needs weights_path, a local file with the encoder's state "
                "dict: nothing is downloaded"
            )
        # Fail fast, before the construction, on a missing or unreadable weights file.
        state = read_state_dict_file(weights_path) if weights_path is not None else None

        self.in_channels = in_channels
        self.cell_px = cell_px
        self.arch = arch
        self.encoder_name = encoder
        self.model = smp.create_model(
            arch,
            encoder_name=encoder,
            encoder_weights=None,
            in_channels=in_channels,
            classes=out_channels,
        )
        self.divisor: int = self.model.encoder.output_stride
        self.min_input_px: int = _MIN_INPUT_PX.get(arch, 1)
        self.adapted_keys: list[str] = []
        if state is not None and weights_path is not None:
            self.adapted_keys = load_encoder_weights(
                self.model.encoder, state, in_channels, Path(weights_path)
            )

    def _padded(self, size: int) -> int:
        """The smallest multiple of the divisor that is ≥ size and ≥ min_input_px."""
        return self.divisor * math.ceil(max(size, self.min_input_px) / self.divisor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input_size(x, self.cell_px)
        height, width = x.shape[-2:]
        pad_h = self._padded(height) - height
        pad_w = self._padded(width) - width
        top, left = pad_h // 2, pad_w // 2
        x = F.pad(x, [left, pad_w - left, top, pad_h - top])
        logits = self.model(x)[..., top : top + height, left : left + width]
        return F.avg_pool2d(logits, kernel_size=self.cell_px)


def build_smp(
    in_channels: int,
    cell_px: int,
    out_channels: int,
    *,
    smp_arch: str = "unet",
    smp_encoder: str = "resnet34",
    pretrained: bool = False,
    weights_path: str | os.PathLike[str] | None = None,
) -> nn.Module:
    """Build an SMPSegmentation (`smp_arch` is case-insensitive, one of SMP_ARCHS)."""
    return SMPSegmentation(
        in_channels,
        out_channels,
        cell_px,
        arch=smp_arch,
        encoder=smp_encoder,
        pretrained=pretrained,
        weights_path=weights_path,
    )
