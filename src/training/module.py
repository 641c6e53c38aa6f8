"""`ESDSegmentation`: one LightningModule that trains any registered segmentation model."""

from __future__ import annotations

import random
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from torch import nn
from torchmetrics import MeanMetric

from src.models.registry import build_model
from src.training.config import LossName, OptimizerName, SchedulerName
from src.training.losses import SegmentationLoss
from src.training.metrics import CONTEST_METRIC, segmentation_metrics

OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "sgd": torch.optim.SGD,
}
RNG_STATE_KEY = "esd_rng_states"
DATA_IDENTITY_KEY = "esd_data_identity"


class NonFiniteError(ValueError):
    """A loss (or input) that is NaN or infinite: the run stops rather than train on it."""


STAGES = ("train", "val", "test")


class ESDSegmentation(L.LightningModule):
    """Wraps `build_model(model_type, …)` with the loss, optimiser, scheduler and metrics.

    Batches are the datamodule's dicts (`X` (B, C, H, W), `y` (B, t, t) in 0..3, −1 for no
    label). A self-trained student's `pseudo_tiles` carry pseudo-labels, whose cells weigh
    `pseudo_weight` in the training loss (1: as much as a labelled cell). Metrics are
    accumulated over each epoch and logged as `train_*`, `val_*` and `test_*` (see
    `src.training.metrics`); `val_f1_class1` is the contest's score. The data geometry
    (`channels`, `cell_px`, `tile_size_gt`) and the run's whole configuration (`run_config`,
    the ESDConfig as plain values) are saved with the hyper-parameters; `data_identity` (the
    `DataIdentity` of the training data, as a dict) is stored in every checkpoint under
    `esd_data_identity`, so that evaluation normalises, selects and checks data as in training.
    """

    def __init__(
        self,
        model_type: str,
        channels: list[str],
        cell_px: int,
        tile_size_gt: int,
        model_hparams: dict[str, Any] | None = None,
        loss: LossName = "ce",
        class_weights: list[float] | None = None,
        ce_weight: float = 1.0,
        dice_weight: float = 1.0,
        fp_penalty: float = 0.0,
        optimizer: OptimizerName = "adam",
        learning_rate: float = 1e-3,
        weight_decay: float = 0.0,
        scheduler: SchedulerName = "plateau",
        monitor: str = "val_f1_class1",
        monitor_mode: Literal["max", "min"] = "max",
        run_config: dict[str, Any] | None = None,
        data_identity: dict[str, Any] | None = None,
        pseudo_tiles: list[str] | None = None,
        pseudo_weight: float = 1.0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["data_identity"])
        self.data_identity = data_identity
        stats = (data_identity["mean"], data_identity["std"]) if data_identity else None
        self.model: nn.Module = build_model(
            model_type,
            len(channels),
            cell_px,
            channels=channels,
            input_stats=stats,
            **(model_hparams or {}),
        )
        self.loss = SegmentationLoss(loss, class_weights, ce_weight, dice_weight, fp_penalty)
        self.train_metrics = segmentation_metrics("train_")
        self.val_metrics = segmentation_metrics("val_")
        self.test_metrics = segmentation_metrics("test_")
        self.epoch_loss = nn.ModuleDict({f"{stage}_loss": MeanMetric() for stage in STAGES})
        self.pseudo_tiles = frozenset(pseudo_tiles or ())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, 4, t, t) for images (B, C, t·cell_px, t·cell_px)."""
        return self.model(x)

    def _step(self, batch: dict[str, Any], stage: str, batch_idx: int = -1) -> torch.Tensor:
        logits = self(batch["X"])
        loss = self.loss(
            logits, batch["y"], self._sample_weights(batch) if stage == "train" else None
        )
        if not torch.isfinite(loss):
            raise NonFiniteError(self._non_finite(batch, stage, batch_idx, loss))
        self.epoch_loss[f"{stage}_loss"].update(loss.detach(), weight=batch["X"].shape[0])
        getattr(self, f"{stage}_metrics").update(logits.detach().softmax(dim=1), batch["y"])
        return loss

    def _sample_weights(self, batch: dict[str, Any]) -> torch.Tensor | None:
        """`pseudo_weight` for subtiles of pseudo-labelled tiles, 1 for the others (None when
        they all weigh 1)."""
        weight = self.hparams.pseudo_weight
        if weight == 1.0 or not self.pseudo_tiles:
            return None
        return torch.tensor(
            [weight if tile in self.pseudo_tiles else 1.0 for tile in batch["tile"]]
        )

    def _log_epoch_metrics(self, stage: str) -> None:
        """Compute (synchronised across processes by torchmetrics), log and reset.

        Every collective happens here, in the same order on every rank; the values are then
        logged without `sync_dist`, so rank-zero-only callbacks (progress bar) never start a
        collective that the other ranks do not join.
        """
        metrics = getattr(self, f"{stage}_metrics")
        values = metrics.compute()
        values[f"{stage}_loss"] = self.epoch_loss[f"{stage}_loss"].compute()
        for name in (f"{stage}_{CONTEST_METRIC}", f"{stage}_loss"):
            self.log(name, values.pop(name), prog_bar=stage == "val")
        self.log_dict(values)
        metrics.reset()
        self.epoch_loss[f"{stage}_loss"].reset()

    def on_train_epoch_end(self) -> None:
        self._log_epoch_metrics("train")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch_metrics("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch_metrics("test")

    def _non_finite(self, batch: dict[str, Any], stage: str, batch_idx: int,
                    loss: torch.Tensor) -> str:  # fmt: skip
        """One line: where the non-finite loss came from (epoch, batch, tiles, channels)."""
        bad = (~torch.isfinite(batch["X"])).flatten(2).any(dim=2).any(dim=0)
        channels = [self.hparams.channels[k] for k in torch.nonzero(bad).flatten().tolist()]
        tiles = sorted(set(batch.get("tile", [])))
        where = (
            f"the input channels {', '.join(channels[:5])}"
            + (f" and {len(channels) - 5} more" if len(channels) > 5 else "")
            + " are not finite: prepare the data again with this version"
            if channels
            else "every input is finite, so the model diverged: lower --learning_rate"
        )
        return (
            f"the {stage} loss is {loss.item()} at epoch {self.current_epoch}, batch "
            f"{batch_idx} (tiles {', '.join(tiles) or 'unknown'}): {where}; stopped before "
            f"training on it"
        )

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train", batch_idx)

    def on_train_batch_end(self, outputs: Any, batch: dict[str, Any], batch_idx: int) -> None:
        """Stop when the optimiser's step left a weight that is not finite (a finite loss can
        still give one), before any checkpoint holds it."""
        trainable = [p for p in self.parameters() if p.requires_grad]
        if trainable and not torch.stack([p.isfinite().all() for p in trainable]).all():
            raise NonFiniteError(
                f"the model's weights are not finite after epoch {self.current_epoch}, batch "
                f"{batch_idx} (the step diverged): lower --learning_rate; stopped before any "
                f"checkpoint holds them"
            )

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._step(batch, "val", batch_idx)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._step(batch, "test", batch_idx)

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        """Logits (B, 4, t, t) with the subtiles' tile, row and column."""
        return {
            "logits": self(batch["X"]),
            "tile": batch["tile"],
            "row": batch["row"],
            "col": batch["col"],
        }

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        options: dict[str, Any] = {"lr": hp.learning_rate, "weight_decay": hp.weight_decay}
        if hp.optimizer == "sgd":
            options["momentum"] = 0.9
        trainable = [p for p in self.parameters() if p.requires_grad]
        optimizer = OPTIMIZERS[hp.optimizer](trainable, **options)
        if hp.scheduler == "none":
            return {"optimizer": optimizer}
        if hp.scheduler == "cosine":
            epochs = max(1, self.trainer.max_epochs or 1)
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler}}
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode=hp.monitor_mode, factor=0.5, patience=3
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "monitor": hp.monitor, "strict": False},
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store the Python, numpy and torch RNG states so that `--resume` continues exactly.

        Only tensors, numbers, strings and tuples are stored, so the checkpoint still loads
        with torch.load(weights_only=True).
        """
        name, keys, position, has_gauss, cached = np.random.get_state()  # noqa: NPY002
        checkpoint[DATA_IDENTITY_KEY] = self.data_identity
        checkpoint[RNG_STATE_KEY] = {
            "python": random.getstate(),
            "numpy": (name, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the data identity and the RNG states saved by `on_save_checkpoint`."""
        self.data_identity = checkpoint.get(DATA_IDENTITY_KEY, self.data_identity)
        states = checkpoint.get(RNG_STATE_KEY)
        if states is None:
            return
        random.setstate(states["python"])
        name, keys, position, has_gauss, cached = states["numpy"]
        np.random.set_state(  # noqa: NPY002 - the global state other libraries use
            (name, keys.numpy().astype(np.uint32), position, has_gauss, cached)
        )
        torch.set_rng_state(states["torch"])
        if states["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(states["cuda"])
