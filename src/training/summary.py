"""A model summary of the network's layers only (not the metric and loss modules)."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelSummary
from lightning.pytorch.utilities.model_summary import ModelSummary as Summary
from torch import nn

NETWORK = "model"
"""The attribute of `ESDSegmentation` that holds the network."""


class _NetworkSummary(Summary):
    """Lightning's summary table restricted to `model` and the layers inside it."""

    @property
    def named_modules(self) -> list[tuple[str, nn.Module]]:
        return [
            (name, module)
            for name, module in super().named_modules
            if name == NETWORK or name.startswith(f"{NETWORK}.")
        ]


class LayerSummary(ModelSummary):
    """`ModelSummary` whose table lists the network's layers, not the torchmetrics modules."""

    def _summary(self, trainer: L.Trainer, pl_module: L.LightningModule) -> Any:
        return _NetworkSummary(pl_module, max_depth=self._max_depth)
