"""Train a segmentation model: `python -m scripts.train --model_type=UNet [--help]`."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
import wandb
from lightning.pytorch.callbacks import (
    EarlyStopping,
    LearningRateMonitor,
    ModelCheckpoint,
    ModelSummary,
    TQDMProgressBar,
)

from src.cli import config_field, parse_config
from src.esd_data.augmentation import AugmentConfig
from src.esd_data.datamodule import ESDDataModule
from src.esd_data.manifest import check_band_selection
from src.esd_data.subtiles import check_tile_size_gt
from src.models.fcn_resnet_transfer import resolve_weights_file
from src.models.registry import MODEL_TYPES, model_hparams
from src.training.loggers import WandbMode, build_loggers
from src.training.losses import LossName
from src.training.module import ESDSegmentation, OptimizerName, SchedulerName

# Epoch metrics are synchronised by torchmetrics before they are logged (see the module).
warnings.filterwarnings("ignore", message=".*when logging on epoch level in distributed.*")

RUN_NAME_VARIABLE = "ESD_RUN_NAME"
"""Carries the run name to the processes that DDP starts, so all ranks share one folder."""


@dataclass
class ESDConfig:
    """Train SegmentationCNN, FCNResnetTransfer or UNet on prepared DFC2021 subtiles."""

    # data
    raw_dir: Path | None = config_field(
        Path("data/raw"), "raw tiles to prepare (None: use processed_dir as it is)"
    )
    processed_dir: Path = config_field(Path("data/processed"), "processed cache folder")
    tile_size_gt: int = config_field(4, "label cells per subtile side (1, 2, 4, 8 or 16)")
    bands: dict[str, Any] | None = config_field(
        None, "band selection, e.g. '{sentinel2: [B04, B03, B02], viirs: null}' (None: all)"
    )
    val_fraction: float = config_field(0.2, "fraction of labelled parent tiles for validation")
    test_fraction: float = config_field(0.0, "fraction of labelled parent tiles held out")
    augment: bool = config_field(True, "flips, rotations, noise and blur on training batches")
    num_workers: int = config_field(2, "data-loader worker processes")
    prepare_workers: int = config_field(2, "processes preparing raw tiles")
    # model
    model_type: str = config_field("UNet", f"one of {', '.join(MODEL_TYPES)}")
    embedding_size: int = config_field(32, "width of the first layer (SegmentationCNN, UNet)")
    depth: int = config_field(2, "convolutions per encoder (SegmentationCNN)")
    kernel_size: int = config_field(3, "convolution kernel size (SegmentationCNN)")
    pool_sizes: list[int] | None = config_field(
        None, "max-pool sizes multiplying to the pixels per label cell (SegmentationCNN)"
    )
    n_encoders: int = config_field(2, "down/up levels (UNet)")
    pretrained: bool = config_field(False, "load torchvision's weights (FCNResnetTransfer)")
    weights_path: Path | None = config_field(None, "file of FCN-ResNet101 weights to load")
    freeze_backbone: float = config_field(
        0.0, "fraction of backbone blocks frozen, 0 none to 1 all (FCNResnetTransfer)"
    )
    # optimisation
    batch_size: int = config_field(8, "subtiles per batch")
    max_epochs: int = config_field(5, "training epochs")
    learning_rate: float = config_field(1e-3, "initial learning rate")
    optimizer: OptimizerName = config_field("adam", "optimiser")
    weight_decay: float = config_field(0.0, "weight decay")
    scheduler: SchedulerName = config_field("plateau", "learning-rate schedule")
    loss: LossName = config_field("ce", "loss function")
    class_weighting: bool = config_field(
        False, "weight cross-entropy by inverse training-label frequency"
    )
    ce_weight: float = config_field(1.0, "weight of cross-entropy in ce+dice")
    dice_weight: float = config_field(1.0, "weight of Dice in ce+dice")
    fp_penalty: float = config_field(0.0, "weight of the class-1 false-positive penalty")
    accumulate_grad_batches: int = config_field(1, "batches per optimiser step")
    patience: int = config_field(10, "early-stopping patience in epochs")
    monitor: str = config_field("val_f1_class1", "metric for checkpoints and early stopping")
    monitor_mode: Literal["max", "min"] = config_field("max", "whether the monitor should grow")
    seed: int = config_field(0, "seed of the split, initialisation and augmentation")
    deterministic: bool = config_field(True, "use deterministic algorithms where available")
    # hardware
    accelerator: str = config_field("auto", "cpu, gpu, mps or auto")
    devices: str = config_field("auto", "device count ('2'), list ('0,1') or auto")
    strategy: str = config_field("auto", "auto, ddp, ddp_spawn, fsdp, …")
    num_nodes: int = config_field(1, "machines taking part")
    precision: str = config_field("32-true", "32-true, 16-mixed, bf16-mixed, …")
    limit_train_batches: float = config_field(1.0, "fraction (≤ 1) or number (> 1) of batches")
    limit_val_batches: float = config_field(1.0, "fraction (≤ 1) or number (> 1) of batches")
    fast_dev_run: bool = config_field(False, "one batch of training and validation, no logs")
    # outputs
    checkpoint_dir: Path = config_field(Path("checkpoints"), "checkpoints go to DIR/model/run/")
    log_dir: Path = config_field(Path("logs"), "CSV logs and offline W&B runs go here")
    resume: Path | None = config_field(None, "checkpoint to continue training from")
    wandb_project: str = config_field("esd", "W&B project")
    wandb_run_name: str | None = config_field(None, "run name (default: model and time)")
    wandb_mode: WandbMode = config_field(
        "auto", "auto (online if logged in, else offline), online, offline or disabled"
    )

    def __post_init__(self) -> None:
        """Reject bad values before any data is prepared or any training starts."""
        problems = []
        for name in (
            "raw_dir",
            "processed_dir",
            "weights_path",
            "checkpoint_dir",
            "log_dir",
            "resume",
        ):
            value = getattr(self, name)
            setattr(self, name, None if value is None else Path(value))
        try:
            check_tile_size_gt(self.tile_size_gt)
        except ValueError as error:
            problems.append(str(error))
        if self.model_type not in MODEL_TYPES:
            problems.append(f"unknown model_type {self.model_type!r}: use {', '.join(MODEL_TYPES)}")
        if self.resume is not None and not self.resume.is_file():
            problems.append(f"resume checkpoint {self.resume} does not exist")
        try:
            check_band_selection(self.bands)
        except ValueError as error:
            problems.append(str(error))
        for name in ("batch_size", "max_epochs", "num_nodes", "accumulate_grad_batches"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.learning_rate <= 0:
            problems.append(f"learning_rate must be positive, got {self.learning_rate}")
        if self.model_type == "FCNResnetTransfer" and self.pretrained:
            try:
                resolve_weights_file(self.weights_path)
            except FileNotFoundError as error:
                problems.append(str(error))
        if not 0.0 <= self.freeze_backbone <= 1.0:
            problems.append(f"freeze_backbone must be in [0, 1], got {self.freeze_backbone}")
        if problems:
            raise ValueError("; ".join(problems))

    def model_hparams(self) -> dict[str, Any]:
        """The hyper-parameters that the chosen model takes, from this config."""
        values = {name: getattr(self, name) for name in model_hparams(self.model_type)}
        if "freeze_backbone" in values:
            values["freeze_backbone"] = values["freeze_backbone"] or False
        if values.get("weights_path") is not None:
            values["weights_path"] = str(values["weights_path"])  # plain types in checkpoints
        return values


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
        val_fraction=config.val_fraction,
        test_fraction=config.test_fraction,
        prepare_workers=config.prepare_workers,
        augment=AugmentConfig() if config.augment else no_augment,
    )


def build_module(config: ESDConfig, data: ESDDataModule) -> ESDSegmentation:
    """The LightningModule for `config`, sized from the prepared data's manifest."""
    manifest = data.manifest
    channels = [manifest.channels[i] for i in manifest.select_channels(config.bands)]
    return ESDSegmentation(
        model_type=config.model_type,
        channels=channels,
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
    )


def build_trainer(
    config: ESDConfig, name: str, extra_callbacks: list[L.Callback] | None = None
) -> L.Trainer:
    """A Trainer with checkpoints, early stopping, LR monitor, progress bar and loggers."""
    checkpoints = ModelCheckpoint(
        dirpath=config.checkpoint_dir / config.model_type / name,
        filename=f"best-{{epoch:03d}}-{{{config.monitor}:.4f}}",
        monitor=config.monitor,
        mode=config.monitor_mode,
        save_last=True,
        auto_insert_metric_name=False,
    )
    callbacks: list[L.Callback] = [
        checkpoints,
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
        {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(config).items()},
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
    module = build_module(config, data)
    name = run_name(config)
    trainer = build_trainer(config, name, extra_callbacks)
    os.environ[RUN_NAME_VARIABLE] = name
    try:
        trainer.fit(module, datamodule=data, ckpt_path=config.resume)
        results: dict[str, Any] = _numbers(trainer.callback_metrics)
        checkpoint = trainer.checkpoint_callback
        best_score = checkpoint.best_model_score if checkpoint else None
        results.update(
            run_name=name,
            best_model_path=checkpoint.best_model_path if checkpoint else "",
            last_model_path=checkpoint.last_model_path if checkpoint else "",
            best_model_score=None if best_score is None else float(best_score),
        )
        if data.manifest.split["test"] and not config.fast_dev_run:
            ckpt = results["best_model_path"] or None
            results.update(_numbers(trainer.test(module, datamodule=data, ckpt_path=ckpt)[0]))
    finally:
        os.environ.pop(RUN_NAME_VARIABLE, None)
        if wandb.run is not None:
            wandb.finish()  # the next train() in this process starts a new W&B run
    return results


def main(argv: list[str] | None = None) -> int:
    """Parse ESDConfig from the command line, train, print the final metrics."""
    config = parse_config(ESDConfig, argv)
    try:
        results = train(config)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if int(os.environ.get("LOCAL_RANK", "0")) == 0:
        print(format_results(results))
    return 0


def format_results(results: dict[str, Any]) -> str:
    """The run's checkpoints and its validation/test metrics, one per line."""
    score = results["best_model_score"]
    lines = [
        f"run {results['run_name']}",
        f"  best checkpoint: {results['best_model_path']} (score {score})",
        f"  last checkpoint: {results['last_model_path']}",
    ]
    for key in sorted(k for k in results if k.startswith(("val_", "test_"))):
        lines.append(f"  {key}: {results[key]:.4f}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
