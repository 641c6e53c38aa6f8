"""Transfer learning from torchvision's FCN-ResNet101, adapted to C input channels.

The network is `torchvision.models.segmentation.fcn_resnet101(weights=None,
weights_backbone=None, aux_loss=False)`, so building it never downloads anything. Then

* `backbone.conv1` is rebuilt for `in_channels` (64 filters, 7×7, stride 2, no bias);
* the classifier's last 1×1 conv (`classifier.4`) is rebuilt for `out_channels`;
* FCN's 'out' map (already bilinearly upsampled to the input size) is average-pooled with
  kernel = stride = cell_px to the label grid.

Pretrained weights (`pretrained=True`) are the state dict of torchvision's
`FCN_ResNet101_Weights.COCO_WITH_VOC_LABELS_V1`, read from `weights_path` or else from the
local torch hub cache, `torch.hub.get_dir()/checkpoints/fcn_resnet101_coco-7ecb50ca.pth`
(where `torchvision` itself caches it). Nothing is ever downloaded: a missing file raises
FileNotFoundError. The pretrained RGB first-conv kernels W (64, 3, 7, 7) are adapted to C
channels by `src.models.pretrained.adapt_first_conv_weight` (timm's `adapt_input_conv`, the
convention segmentation_models_pytorch uses too):

* C == 3: kept as they are;
* C == 1: summed over RGB (a grey image gives the response of the same grey RGB image);
* otherwise: repeated cyclically over the C channels (channel i gets W[:, i mod 3]) and
  rescaled by 3 / C. When C is a multiple of 3, an input whose channels are an RGB image
  repeated cyclically then gives exactly the pretrained conv1 response to that RGB image.

The pretrained classifier's last conv is loaded only if its shape matches out_channels (21
VOC classes), and the auxiliary classifier in the checkpoint is ignored.

`freeze_backbone` (only sets `requires_grad=False`; BatchNorm layers keep their usual
train/eval behaviour, so in train mode their running statistics still adapt to the data):

* False: everything trains;
* True: every backbone parameter is frozen except the rebuilt first conv;
* a float f in (0, 1]: the backbone is split into 5 blocks, in order
  [stem (bn1; the rebuilt conv1 always trains), layer1, layer2, layer3, layer4], and the
  first ceil(f · 5) blocks are frozen (f = 0.2 → stem; 0.5 → stem, layer1, layer2; 1.0 → all,
  the same as True).

The classifier head always trains. The frozen block names are in `frozen_blocks`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlparse

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.segmentation import FCN_ResNet101_Weights, fcn_resnet101

from src.models.checks import check_input_size, check_positive_int
from src.models.pretrained import (
    adapt_first_conv_weight,
    check_pretrained_options,
    read_state_dict,
)

PRETRAINED_WEIGHTS = FCN_ResNet101_Weights.COCO_WITH_VOC_LABELS_V1
BACKBONE_BLOCKS: tuple[str, ...] = ("bn1", "layer1", "layer2", "layer3", "layer4")
"""The backbone's blocks in order, as counted by a fractional `freeze_backbone` (the stem's
conv1 is left out: it is rebuilt and always trains)."""

_FIRST_CONV_KEY = "backbone.conv1.weight"
_LAST_CLASSIFIER_PREFIX = "classifier.4."
_AUX_PREFIX = "aux_classifier."


def default_weights_file() -> Path:
    """Where torchvision caches the pretrained FCN-ResNet101 weights (the file may not exist)."""
    file_name = Path(urlparse(PRETRAINED_WEIGHTS.url).path).name
    return Path(torch.hub.get_dir()) / "checkpoints" / file_name


def resolve_weights_file(weights_path: str | os.PathLike[str] | None) -> Path:
    """The pretrained weights file to read; FileNotFoundError (never a download) if missing."""
    path = Path(weights_path) if weights_path is not None else default_weights_file()
    if not path.is_file():
        where = "weights_path" if weights_path is not None else "the torch hub cache"
        raise FileNotFoundError(
            f"pretrained FCN-ResNet101 weights not found: looked in {where} at '{path}'. "
            "Nothing is downloaded at run time. To get the file, run once on a machine with "
            'internet: `python -c "from torchvision.models.segmentation import '
            "fcn_resnet101, FCN_ResNet101_Weights; "
            'fcn_resnet101(weights=FCN_ResNet101_Weights.COCO_WITH_VOC_LABELS_V1)"`, which '
            f"saves it as {default_weights_file().name} under <torch hub dir>/checkpoints "
            f"(download URL: {PRETRAINED_WEIGHTS.url}); then copy it into this machine's torch "
            "hub cache (torch.hub.get_dir()/checkpoints, set by $TORCH_HOME) or pass "
            "weights_path=<file>."
        )
    return path


def _check_freeze_backbone(freeze_backbone: bool | float) -> None:
    if isinstance(freeze_backbone, bool):
        return
    if not isinstance(freeze_backbone, int | float) or not 0 < freeze_backbone <= 1:
        raise ValueError(
            "freeze_backbone must be False, True or a fraction in (0, 1] of the backbone's "
            f"blocks {list(BACKBONE_BLOCKS)} to freeze, got {freeze_backbone!r}"
        )


def frozen_block_names(freeze_backbone: bool | float) -> tuple[str, ...]:
    """The backbone blocks that `freeze_backbone` freezes (see the module docstring)."""
    _check_freeze_backbone(freeze_backbone)
    if freeze_backbone is False:
        return ()
    if freeze_backbone is True:
        return BACKBONE_BLOCKS
    # The small tolerance keeps e.g. 0.6 · 5 = 3.0000000000000004 at 3 blocks.
    n_blocks = math.ceil(float(freeze_backbone) * len(BACKBONE_BLOCKS) - 1e-9)
    return BACKBONE_BLOCKS[:n_blocks]


def _read_state_dict(weights_file: Path) -> Mapping[str, torch.Tensor]:
    state = read_state_dict(weights_file)
    if _FIRST_CONV_KEY not in state:
        raise ValueError(
            f"{weights_file} is not an FCN-ResNet101 state dict (no '{_FIRST_CONV_KEY}'); "
            f"expected the state dict of torchvision's {PRETRAINED_WEIGHTS}"
        )
    return state


class FCNResnetTransfer(nn.Module):
    """FCN-ResNet101 for C-channel inputs: (B, C, H, W) → logits (B, out, H/cell_px, W/cell_px)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        cell_px: int,
        pretrained: bool = False,
        weights_path: str | os.PathLike[str] | None = None,
        freeze_backbone: bool | float = False,
    ) -> None:
        super().__init__()
        check_positive_int("in_channels", in_channels)
        check_positive_int("out_channels", out_channels)
        check_positive_int("cell_px", cell_px)
        check_pretrained_options(pretrained, weights_path)
        _check_freeze_backbone(freeze_backbone)
        # Fail fast, before the (slow) construction, on a missing or malformed weights file.
        weights_file = resolve_weights_file(weights_path) if pretrained else None
        state = _read_state_dict(weights_file) if weights_file is not None else None

        self.in_channels = in_channels
        self.out_channels = out_channels
        self.cell_px = cell_px
        self.model = fcn_resnet101(weights=None, weights_backbone=None, aux_loss=False)
        old_conv = self.model.backbone.conv1
        self.model.backbone.conv1 = nn.Conv2d(
            in_channels,
            old_conv.out_channels,
            kernel_size=old_conv.kernel_size,
            stride=old_conv.stride,
            padding=old_conv.padding,
            bias=False,
        )
        # The same initialisation torchvision's ResNet gives its convs.
        nn.init.kaiming_normal_(
            self.model.backbone.conv1.weight, mode="fan_out", nonlinearity="relu"
        )
        old_last = self.model.classifier[4]
        self.model.classifier[4] = nn.Conv2d(old_last.in_channels, out_channels, kernel_size=1)

        if state is not None and weights_file is not None:
            self._load_pretrained(state, source=weights_file)

        self.frozen_blocks = frozen_block_names(freeze_backbone)
        for name in self.frozen_blocks:
            for parameter in self.model.backbone[name].parameters():
                parameter.requires_grad_(False)

    def _load_pretrained(self, state: Mapping[str, torch.Tensor], source: Path) -> None:
        """Load a pretrained FCN-ResNet101 state dict, adapting conv1 (see module docstring)."""
        own = self.model.state_dict()
        adapted: dict[str, torch.Tensor] = {}
        for key, value in state.items():
            if key.startswith(_AUX_PREFIX):
                continue
            if key == _FIRST_CONV_KEY:
                value = adapt_first_conv_weight(value, self.in_channels)
            elif key.startswith(_LAST_CLASSIFIER_PREFIX) and value.shape != own[key].shape:
                continue  # a different number of classes: keep the new conv
            if key not in own:
                raise ValueError(f"{source}: unexpected key '{key}' for FCN-ResNet101")
            if value.shape != own[key].shape:
                raise ValueError(
                    f"{source}: '{key}' has shape {tuple(value.shape)}, "
                    f"expected {tuple(own[key].shape)}"
                )
            adapted[key] = value
        missing = (
            set(own) - set(adapted) - {k for k in own if k.startswith(_LAST_CLASSIFIER_PREFIX)}
        )
        if missing:
            raise ValueError(f"{source} lacks FCN-ResNet101 weights: {sorted(missing)}")
        self.model.load_state_dict(adapted, strict=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input_size(x, self.cell_px)
        out = self.model(x)["out"]  # (B, out_channels, H, W)
        return F.avg_pool2d(out, kernel_size=self.cell_px)


def build_fcn_resnet_transfer(
    in_channels: int,
    cell_px: int,
    out_channels: int,
    *,
    pretrained: bool = False,
    weights_path: str | os.PathLike[str] | None = None,
    freeze_backbone: bool | float = False,
) -> nn.Module:
    """Build an FCNResnetTransfer (the registry's builder)."""
    return FCNResnetTransfer(
        in_channels,
        out_channels,
        cell_px,
        pretrained=pretrained,
        weights_path=weights_path,
        freeze_backbone=freeze_backbone,
    )
