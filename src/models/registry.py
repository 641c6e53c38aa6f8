"""The one place that maps `model_type` names to model builders.

A builder takes `(in_channels, cell_px, out_channels)` positionally and its model's
hyper-parameters as keyword-only arguments with defaults; `model_hparams` reads their names
from the builder's signature (a builder that also declares `channels` gets the inputs'
`sensor/date/band` names). To add a model, write its builder (beside the model) and add it
to `_BUILDERS`.

A training config passes one shared set of hyper-parameters for all models, so it filters
them first::

    accepted = model_hparams(model_type)
    model = build_model(model_type, in_channels, cell_px,
                        **{k: v for k, v in hparams.items() if k in accepted})

`build_model` itself rejects hyper-parameters the chosen model does not take.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from src.models.checks import check_positive_int

if TYPE_CHECKING:
    from torch import nn

DATA_KEYWORDS = ("channels", "input_stats")
"""Builder keywords filled from the data, not hyper-parameters: the channel names, and the
per-channel (mean, std) the inputs are standardised with (None where unknown, e.g. when a
checkpoint is rebuilt: its state dict then holds them)."""
PRETRAINED_HPARAMS = {"pretrained": False, "weights_path": None}
"""Hyper-parameters that load weights from a file, and their values once the weights are in
a checkpoint (see `without_pretrained_loading`)."""


_BUILDERS: dict[str, str] = {
    "SegmentationCNN": "src.models.segmentation_cnn:build_segmentation_cnn",
    "FCNResnetTransfer": "src.models.fcn_resnet_transfer:build_fcn_resnet_transfer",
    "UNet": "src.models.unet:build_unet",
    "TemporalFusion": "src.models.temporal_fusion:build_temporal_fusion",
    "SMP": "src.models.smp_model:build_smp",
    "Galileo": "src.models.galileo:build_galileo",
}
"""model_type → `module:function` of its builder, imported when first needed (the models
import torch, torchvision and segmentation_models_pytorch; the registry and `--help` do not)."""

MODEL_TYPES: tuple[str, ...] = tuple(_BUILDERS)


def _builder(model_type: str) -> Callable[..., nn.Module]:
    try:
        module, function = _BUILDERS[model_type].split(":")
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown model_type {model_type!r}; known model types: {', '.join(MODEL_TYPES)}"
        ) from None
    return getattr(importlib.import_module(module), function)


def _keywords(model_type: str) -> set[str]:
    signature = inspect.signature(_builder(model_type))
    return {
        name
        for name, parameter in signature.parameters.items()
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY
    }


def model_hparams(model_type: str) -> set[str]:
    """Names of the hyper-parameters (keyword arguments) that `model_type`'s builder accepts."""
    return _keywords(model_type) - set(DATA_KEYWORDS)


def without_pretrained_loading(hparams: dict[str, Any]) -> dict[str, Any]:
    """`hparams` with weight-file loading turned off, for models whose weights come from a
    checkpoint: rebuilding them must not need the original weights file."""
    return {k: PRETRAINED_HPARAMS.get(k, v) for k, v in hparams.items()}


def build_model(
    model_type: str,
    in_channels: int,
    cell_px: int,
    out_channels: int = 4,
    channels: Sequence[str] | None = None,
    input_stats: tuple[Sequence[float], Sequence[float]] | None = None,
    **hparams: Any,
) -> nn.Module:
    """Build `model_type` for `in_channels` inputs and cell_px-pixel label cells.

    The model maps (B, in_channels, t·cell_px, t·cell_px) to logits (B, out_channels, t, t).
    `channels` (the `sensor/date/band` names of the inputs) and `input_stats` (their
    standardisation's mean and std) reach the builders that take them.
    Unknown model types and hyper-parameters the model does not take raise ValueError.
    """
    builder = _builder(model_type)
    for name, value in (
        ("in_channels", in_channels),
        ("cell_px", cell_px),
        ("out_channels", out_channels),
    ):
        check_positive_int(name, value)
    unknown = set(hparams) - model_hparams(model_type)
    if unknown:
        raise ValueError(
            f"{model_type} does not take hyper-parameter(s) {sorted(unknown)}; it accepts "
            f"{sorted(model_hparams(model_type))} (filter shared hparams with model_hparams())"
        )
    if "channels" in _keywords(model_type):
        if channels is None or len(channels) != in_channels:
            raise ValueError(
                f"{model_type} is built from the channel names: pass channels (one name per "
                f"input channel, {in_channels}), got {channels!r}"
            )
        hparams["channels"] = list(channels)
    if "input_stats" in _keywords(model_type):
        hparams["input_stats"] = input_stats
    return builder(in_channels, cell_px, out_channels, **hparams)
