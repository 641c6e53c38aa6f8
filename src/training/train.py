"""Assemble and run a training from an `ESDConfig`: datamodule, module, Trainer, loggers.

`train(config)` prepares the data (reusing the cache), trains with Lightning, tests on the
test tiles when there are some, and returns the final metrics. Checkpoints go to
`checkpoint_dir/<model_type>/<run>/`: `best-<epoch>-<score>.ckpt` (by the monitored metric)
and `last.ckpt`, which is always the last completed epoch (a callback of its own: with
`save_last=True` Lightning 2.6 writes it only when a best checkpoint is saved in the same
step). Both are written at the end of each training epoch, after its metrics are logged.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
import warnings
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import (
    EarlyStopping,
    LearningRateMonitor,
    ModelCheckpoint,
    ModelSummary,
    TQDMProgressBar,
)

from src.cli import config_values
from src.esd_data.augmentation import AugmentConfig
from src.esd_data.datamodule import ESDDataModule
from src.esd_data.identity import DataIdentity
from src.training.checkpoints import read_checkpoint
from src.training.config import ESDConfig
from src.training.loggers import build_loggers
from src.training.module import ESDSegmentation

# Epoch metrics are synchronised by torchmetrics before they are logged (see the module).
warnings.filterwarnings("ignore", message=".*when logging on epoch level in distributed.*")

RUN_NAME_VARIABLE = "ESD_RUN_NAME"
"""Carries the run name to the processes that DDP starts, so all ranks share one folder."""
LAST_CHECKPOINT = "last"


def _trainer_number(value: float) -> int | float:
    return int(value) if value > 1 else value


def _devices(value: str) -> str | int | list[int]:
    if value.isdigit():
        return int(value)
    if "," in value:
        return [int(v) for v in value.split(",") if v]
    return value


def run_name(config: ESDConfig) -> str:
    """The configured name, the one DDP handed down, or `<model>-<date>-<time>`."""
    return (
        config.wandb_run_name
        or os.environ.get(RUN_NAME_VARIABLE)
        or f"{config.model_type}-{dt.datetime.now():%Y%m%d-%H%M%S}"
    )


def is_local_zero() -> bool:
    """Whether this process is the first of its machine (DDP launchers set LOCAL_RANK)."""
    return int(os.environ.get("LOCAL_RANK", "0")) == 0


def build_datamodule(config: ESDConfig) -> ESDDataModule:
    """The datamodule that `config` describes (nothing prepared yet)."""
    no_augment = AugmentConfig(hflip_p=0, vflip_p=0, rot90_p=0, noise_p=0, blur_p=0)
    return ESDDataModule(
        config.processed_dir,
        raw_dir=config.raw_dir,
        tile_size_gt=config.tile_size_gt,
        bands=config.bands,
        batch_size=config.batch_size,
        num_workers=config.num_workers,
        seed=config.seed,
        preprocessing=config.preprocessing,
        split_seed=config.split_seed,
        val_fraction=config.val_fraction,
        test_fraction=config.test_fraction,
        prepare_workers=config.prepare_workers,
        augment=AugmentConfig() if config.augment else no_augment,
    )


def build_module(config: ESDConfig, data: ESDDataModule) -> ESDSegmentation:
    """The LightningModule for `config`, sized from the prepared data's manifest, carrying
    the run's configuration and the `DataIdentity` of the data it trains on."""
    manifest = data.manifest
    indices = manifest.select_channels(config.bands)
    identity = DataIdentity.from_manifest(manifest, config.processed_dir, indices)
    return ESDSegmentation(
        model_type=config.model_type,
        channels=identity.channels,
        cell_px=manifest.cell_px,
        tile_size_gt=config.tile_size_gt,
        model_hparams=config.model_hparams(),
        loss=config.loss,
        class_weights=data.inverse_class_frequencies() if config.class_weighting else None,
        ce_weight=config.ce_weight,
        dice_weight=config.dice_weight,
        fp_penalty=config.fp_penalty,
        optimizer=config.optimizer,
        learning_rate=config.learning_rate,
        weight_decay=config.weight_decay,
        scheduler=config.scheduler,
        monitor=config.monitor,
        monitor_mode=config.monitor_mode,
        run_config=config_values(config),
        data_identity=identity.to_dict(),
    )


def checkpoint_callbacks(config: ESDConfig, name: str) -> tuple[ModelCheckpoint, ModelCheckpoint]:
    """(best by the monitored metric, last completed epoch), both in the run's folder."""
    folder = config.checkpoint_dir / config.model_type / name
    best = ModelCheckpoint(
        dirpath=folder,
        filename=f"best-{{epoch:03d}}-{{{config.monitor}:.4f}}",
        monitor=config.monitor,
        mode=config.monitor_mode,
        auto_insert_metric_name=False,
        save_on_train_epoch_end=True,
    )
    last = ModelCheckpoint(
        dirpath=folder,
        filename=LAST_CHECKPOINT,
        monitor=None,
        save_top_k=1,
        enable_version_counter=False,
        save_on_train_epoch_end=True,
    )
    return best, last


def build_trainer(
    config: ESDConfig,
    name: str,
    extra_callbacks: list[L.Callback] | None = None,
    continue_after_epoch: int | None = None,
) -> L.Trainer:
    """A Trainer with checkpoints, early stopping, LR monitor, progress bar and loggers.

    `continue_after_epoch` (a resumed run: the checkpoint's epoch) appends to the run's logs.
    """
    best, last = checkpoint_callbacks(config, name)
    callbacks: list[L.Callback] = [
        best,
        last,
        EarlyStopping(config.monitor, patience=config.patience, mode=config.monitor_mode),
        LearningRateMonitor(logging_interval="epoch"),
        TQDMProgressBar(),
        ModelSummary(max_depth=2),
        *(extra_callbacks or []),
    ]
    loggers = build_loggers(
        config.log_dir,
        config.model_type,
        name,
        config.wandb_mode,
        config.wandb_project,
        continue_after_epoch=continue_after_epoch,
    )
    return L.Trainer(
        accelerator=config.accelerator,
        devices=_devices(config.devices),
        strategy=config.strategy,
        num_nodes=config.num_nodes,
        precision=config.precision,
        max_epochs=config.max_epochs,
        accumulate_grad_batches=config.accumulate_grad_batches,
        limit_train_batches=_trainer_number(config.limit_train_batches),
        limit_val_batches=_trainer_number(config.limit_val_batches),
        fast_dev_run=config.fast_dev_run,
        deterministic="warn" if config.deterministic else False,
        callbacks=callbacks,
        logger=loggers,
        log_every_n_steps=1,
        use_distributed_sampler=False,  # the datamodule shards by rank itself
    )


def _numbers(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float, torch.Tensor))}


def train(config: ESDConfig, extra_callbacks: list[L.Callback] | None = None) -> dict[str, Any]:
    """Prepare the data, train, test when there are test tiles; return the final metrics.

    The result holds the last epoch's logged metrics, `best_model_score`, `best_model_path`,
    `last_model_path`, `run_name` and, with test tiles, the best checkpoint's `test_*`.
    """
    L.seed_everything(config.seed, workers=True, verbose=False)
    data = build_datamodule(config)
    data.prepare_data()
    if data.summary is not None and (is_local_zero() or data.summary.rebuilt):
        print(f"data: {data.summary}")
    module = build_module(config, data)
    name = run_name(config)
    resumed_epoch = None
    if config.resume is not None:
        resumed_epoch = int(read_checkpoint(config.resume)["epoch"])
    trainer = build_trainer(config, name, extra_callbacks, resumed_epoch)
    best, last = (c for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint))
    os.environ[RUN_NAME_VARIABLE] = name
    try:
        trainer.fit(module, datamodule=data, ckpt_path=config.resume)
        results: dict[str, Any] = _numbers(trainer.callback_metrics)
        results.update(
            run_name=name,
            best_model_path=best.best_model_path,
            last_model_path=last.best_model_path,
            best_model_score=None
            if best.best_model_score is None
            else float(best.best_model_score),
        )
        if data.manifest.split["test"] and not config.fast_dev_run:
            ckpt = results["best_model_path"] or None
            results.update(_numbers(trainer.test(module, datamodule=data, ckpt_path=ckpt)[0]))
    finally:
        os.environ.pop(RUN_NAME_VARIABLE, None)
        _finish_wandb()
    return results


def _finish_wandb() -> None:
    """Close the W&B run, if one was started, so the next train() in this process starts anew."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish()
