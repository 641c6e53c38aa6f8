"""Assemble and run a training from an `ESDConfig`: datamodule, module, Trainer, loggers.

`train(config)` prepares the data (reusing the cache), trains with Lightning, tests on the
test tiles when there are some, and returns the final metrics. Checkpoints go to
`checkpoint_dir/<model_type>/<run>/`: `best-<epoch>-<score>.ckpt` (by the monitored metric)
and `last.ckpt`, which is always the last completed epoch (a callback of its own: with
`save_last=True` Lightning 2.6 writes it only when a best checkpoint is saved in the same
step). Both are written at the end of each training epoch, after its metrics are logged.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import math
import os
import secrets
import sys
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import (
    EarlyStopping,
    LearningRateMonitor,
    ModelCheckpoint,
    TQDMProgressBar,
)
from lightning.pytorch.trainer.states import TrainerStatus

from src.atomic import check_writable, is_output_error, output_error
from src.cli import config_values
from src.esd_data.augmentation import AugmentConfig
from src.esd_data.cache import filled_pixels
from src.esd_data.datamodule import ESDDataModule
from src.esd_data.identity import DataIdentity
from src.esd_data.manifest import Manifest
from src.esd_data.preparation import preparation_lock, record_run
from src.esd_data.sensors import VALID_BAND
from src.hardware import check_accelerator
from src.models.registry import without_pretrained_loading
from src.progress import show_progress
from src.training.checkpoint_io import AtomicCheckpointIO
from src.training.checkpoints import check_weights_fit, data_identity, read_checkpoint
from src.training.config import (
    GALILEO_PREPROCESSING,
    GALILEO_RECIPE,
    ESDConfig,
    validation_problem,
)
from src.training.loggers import build_loggers
from src.training.module import ESDSegmentation, NonFiniteError
from src.training.quiet import quiet_third_party
from src.training.resume import MAY_CHANGE, check_same_data, saved_run_config
from src.training.run_folder import claim_run, read_status, run_log_dir, write_status
from src.training.signals import StopSignal
from src.training.summary import LayerSummary

RUN_NAME_VARIABLE = "ESD_RUN_NAME"
"""Carries the run name to the processes that DDP starts, so all ranks share one folder."""
WANDB_ID_VARIABLE = "ESD_WANDB_ID"
LAST_CHECKPOINT = "last"


def _trainer_number(value: int | float) -> int | float:
    """Lightning's convention, kept: a float is a fraction of the batches, an int a count."""
    return value if isinstance(value, float) else int(value)


def _devices(value: str) -> str | int | list[int]:
    if value.isdigit():
        return int(value)
    if "," in value:
        return [int(v) for v in value.split(",") if v]
    return value


def run_identity(config: ESDConfig) -> ESDConfig:
    """`config` with its run name and W&B id filled in: configured, handed down by DDP to the
    processes it starts, or new (`<model>-<date>-<time>-<4 hex digits>`, so that two runs
    started in the same second differ; a random id)."""
    name = (
        config.wandb_run_name
        or os.environ.get(RUN_NAME_VARIABLE)
        or f"{config.model_type}-{dt.datetime.now():%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"
    )
    wandb_id = config.wandb_id or os.environ.get(WANDB_ID_VARIABLE) or secrets.token_hex(4)
    return dataclasses.replace(config, wandb_run_name=name, wandb_id=wandb_id)


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
        data_on_device=config.data_on_device,
        device_memory_share=config.device_memory_share,
    )


def build_module(config: ESDConfig, data: ESDDataModule) -> ESDSegmentation:
    """The LightningModule for `config`, sized from the prepared data's manifest, carrying
    the run's configuration and the `DataIdentity` of the data it trains on."""
    manifest = data.manifest
    indices = manifest.select_channels(config.bands)
    identity = DataIdentity.from_manifest(manifest, config.processed_dir, indices)
    recipe = identity.preprocessing.get("recipe", "course")
    if config.model_type == "Galileo" and recipe != GALILEO_RECIPE:
        raise ValueError(
            f"Galileo takes physical units, but {config.processed_dir} was prepared with the "
            f"{recipe} recipe: prepare another folder with --preprocessing "
            f"{GALILEO_PREPROCESSING} --processed_dir NEW_DIR"
        )
    return ESDSegmentation(
        model_type=config.model_type,
        channels=identity.channels,
        cell_px=manifest.cell_px,
        tile_size_gt=config.tile_size_gt,
        # a resumed run's weights come from its checkpoint, not from a weights file or folder
        model_hparams=config.model_hparams()
        if config.resume is None
        else without_pretrained_loading(config.model_hparams()),
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
        pseudo_tiles=pseudo_tiles(config, manifest),
        pseudo_weight=config.pseudo_weight,
    )


def pseudo_tiles(config: ESDConfig, manifest: Manifest) -> list[str] | None:
    """The training tiles that carry `config.pseudo_labels` (None without); ValueError when
    the set names tiles the folder does not train on (a student's folder was replaced)."""
    if config.pseudo_labels is None:
        return None
    tiles = list(config.pseudo_labels["tiles"])
    missing = sorted(set(tiles) - set(manifest.split["train"]))
    if missing:
        raise ValueError(
            f"{config.processed_dir} does not train on the pseudo-labelled tile(s) "
            f"{', '.join(missing[:5])}: run the self-training again (python -m scripts.self_train)"
        )
    return tiles


def validates(config: ESDConfig) -> bool:
    """Whether the run validates at all (`--limit_val_batches 0`: a fixed budget, no choice)."""
    return config.limit_val_batches != 0


def checkpoint_callbacks(
    config: ESDConfig, name: str
) -> tuple[ModelCheckpoint | None, ModelCheckpoint]:
    """(best by the monitored metric, last completed epoch), both in the run's folder; no
    best checkpoint for a run that does not validate."""
    folder = config.checkpoint_dir / config.model_type / name
    best = (
        None
        if not validates(config)
        else ModelCheckpoint(
            dirpath=folder,
            filename=f"best-{{epoch:03d}}-{{{config.monitor}:.4f}}",
            monitor=config.monitor,
            mode=config.monitor_mode,
            auto_insert_metric_name=False,
            save_on_train_epoch_end=True,
        )
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
    extra_callbacks: list[L.Callback] | None = None,
    continue_after_epoch: int | None = None,
    summary: bool = True,
) -> L.Trainer:
    """A Trainer with checkpoints, early stopping, LR monitor, progress bar and loggers, for
    a config whose run identity is filled in (`run_identity`).

    `continue_after_epoch` (a resumed run: the checkpoint's epoch) appends to the run's logs.
    Options the hardware cannot satisfy raise ValueError with Lightning's one-line reason.
    """
    name = config.wandb_run_name
    assert name is not None
    check_accelerator(config.accelerator)
    quiet_third_party()
    best, last = checkpoint_callbacks(config, name)
    stopping = EarlyStopping(config.monitor, patience=config.patience, mode=config.monitor_mode)
    callbacks: list[L.Callback] = [
        *([best, stopping] if best is not None else []),
        last,
        LearningRateMonitor(logging_interval="epoch"),
        *([TQDMProgressBar()] if show_progress() else []),
        *([LayerSummary(max_depth=2)] if summary else []),
        StopWhenSignalled(),
        *(extra_callbacks or []),
    ]
    loggers = build_loggers(
        config.log_dir,
        config.model_type,
        name,
        config.wandb_mode,
        config.wandb_project,
        continue_after_epoch=continue_after_epoch,
        wandb_id=config.wandb_id,
    )
    try:
        return _trainer(config, callbacks, loggers, summary)
    except MisconfigurationException as error:
        raise ValueError(f"--accelerator/--devices/--strategy: {error}") from None


def _trainer(
    config: ESDConfig, callbacks: list[L.Callback], loggers: list[Any], summary: bool
) -> L.Trainer:
    return L.Trainer(
        enable_model_summary=summary,
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
        plugins=[AtomicCheckpointIO()],
        enable_progress_bar=show_progress(),
        log_every_n_steps=1,
        use_distributed_sampler=False,  # the datamodule shards by rank itself
    )


def _numbers(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float, torch.Tensor))}


class StopWhenSignalled(L.Callback):
    """Stops the training at the next batch once a stop signal came, should the signal's own
    KeyboardInterrupt have been lost (see `StopSignal.check`)."""

    def on_train_batch_end(self, *args: Any) -> None:
        StopSignal.check()

    def on_validation_batch_end(self, *args: Any) -> None:
        StopSignal.check()


class EpochStatus(L.Callback):
    """Keeps `status.json` (running) up to date with the epochs completed, so that a run
    listed or killed mid-way says how far it got."""

    def __init__(self, log_folder: Path) -> None:
        self.log_folder = log_folder

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            write_status(self.log_folder, "running", epochs_completed=trainer.current_epoch + 1)


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped a training; its `status.json` says `interrupted`."""


def is_global_zero_process() -> bool:
    """Whether this process is the first of the whole run (not a DDP rank started for it)."""
    return is_local_zero() and int(os.environ.get("NODE_RANK", "0")) == 0


def train(
    config: ESDConfig,
    extra_callbacks: list[L.Callback] | None = None,
    test: bool = True,
    summary: bool = True,
    resume_hint: bool = True,
) -> dict[str, Any]:
    """Prepare the data, train, test when there are test tiles (and `test`); return the
    final metrics.

    The result holds the last epoch's logged metrics, `best_model_score`, `best_model_path`
    (empty without validation), `last_model_path`, `run_name` and, with test tiles, the
    chosen checkpoint's `test_*`. With `config.resume`, the checkpoint must belong to a run
    of this config on the same data; `summary` prints the model's layers and the notes that
    one run of several says for all. A run name whose folders hold another run, or that
    another process trains, is refused before any work
    (`RunFolderError`); Ctrl-C or SIGTERM raises `TrainingInterrupted` after `status.json`
    says `interrupted` (and, with `resume_hint`, the command that resumes the run is printed:
    a run of a command's own folder is resumed by that command).
    """
    problem = validation_problem(config)
    if problem:  # before the data are touched: a re-split would change the folder
        raise ValueError(problem)
    L.seed_everything(config.seed, workers=True, verbose=False)
    resumed_epoch = None
    if config.resume is not None:
        config, resumed_epoch = _resumable(config)
    config = run_identity(config)
    assert config.wandb_run_name is not None
    log_folder = run_log_dir(config.log_dir, config.model_type, config.wandb_run_name)
    if resumed_epoch is not None and is_global_zero_process():
        previous = read_status(log_folder).get("status", "unknown")
        print(f"resuming run {config.wandb_run_name} after {resumed_epoch + 1} completed "
              f"epoch(s) (it was {previous})")  # fmt: skip
    checkpoint_folder = config.checkpoint_dir / config.model_type / config.wandb_run_name
    owns_folder = is_global_zero_process() and not config.fast_dev_run
    if owns_folder:
        check_writable(config.checkpoint_dir, "checkpoints")
        check_writable(config.log_dir, "logs")
    claim = (
        claim_run(log_folder, checkpoint_folder, resuming=config.resume is not None)
        if owns_folder
        else contextlib.nullcontext()
    )
    if owns_folder:  # status.json counts the epochs as they complete
        extra_callbacks = [*(extra_callbacks or []), EpochStatus(log_folder)]
    with claim:
        return _train_claimed(config, extra_callbacks, test, summary, resumed_epoch,
                              log_folder, owns_folder, resume_hint)  # fmt: skip


def _train_claimed(config: ESDConfig, extra_callbacks: list[L.Callback] | None, test: bool,
                   summary: bool, resumed_epoch: int | None, log_folder: Path,
                   owns_folder: bool, resume_hint: bool) -> dict[str, Any]:  # fmt: skip
    """`train` once the run's folders are this process's."""
    trainer = build_trainer(config, extra_callbacks, resumed_epoch, summary)  # hardware first
    data = build_datamodule(config)
    data.prepare_data()
    # Readers share the folder's lock: a preparation that would change it waits until the
    # training is done (files changed between the preparation and the lock are found here).
    with preparation_lock(config.processed_dir, shared=True):
        manifest = data.manifest  # read once: the folder cannot change while the lock is held
        manifest.check_files(config.processed_dir)
        _check_splits(config, manifest)
        return _fit(config, trainer, data, test, log_folder, owns_folder, resume_hint, summary)


def _unmasked_no_data(config: ESDConfig, module: ESDSegmentation, data: ESDDataModule) -> str:
    """A Galileo model that reads filled no-data pixels as measurements (channels without a
    validity channel of their date selected): say how many, and how to mask them ('' when it
    reads none)."""
    if config.model_type != "Galileo":
        return ""
    manifest = data.manifest
    unmasked = set(module.model.unmasked_channels())
    filled = filled_pixels(config.processed_dir, manifest, unmasked)
    if not filled:
        return ""
    dates = {name.rsplit("/", 1)[0] for name in unmasked}
    in_folder = [d for d in dates if f"{d}/{VALID_BAND}" in manifest.channels]
    advice = (
        f"select their validity channels (add {VALID_BAND} to --bands)"
        if in_folder
        else f"prepare a folder with --preprocessing {GALILEO_PREPROCESSING}"
    )
    return (
        f"Galileo reads the {filled} no-data pixel(s) filled in these tiles as measurements: "
        f"to mask them, {advice}"
    )


def _check_splits(config: ESDConfig, manifest: Manifest) -> None:
    """ValueError, before the Trainer starts, for splits this run cannot train or validate on."""
    labelled = len(manifest.split["train"]) + len(manifest.split["val"])
    if validates(config) and not manifest.split["val"]:
        raise ValueError(
            f"{config.processed_dir} has no validation tiles ({labelled} labelled, "
            f"val_fraction {manifest.val_fraction}): prepare with more labelled tiles or a "
            f"larger --val_fraction, or train a fixed budget with --limit_val_batches 0"
        )


def _fit(config: ESDConfig, trainer: L.Trainer, data: ESDDataModule, test: bool,
         log_folder: Path, owns_folder: bool, resume_hint: bool,
         summary: bool) -> dict[str, Any]:  # fmt: skip
    """Fit (and test) on prepared data; status.json follows the run (`summary`: say what
    one run of several need say only once)."""
    if data.summary is not None and (is_local_zero() or data.summary.rebuilt):
        print(f"data: {data.summary}")
    path = data.choose_data_path(trainer.strategy.root_device)
    if is_local_zero():
        print(f"data: {path}")
    module = build_module(config, data)
    if summary and is_local_zero() and (note := _unmasked_no_data(config, module, data)):
        print(f"data: {note}")
    if config.resume is not None:
        checkpoint = read_checkpoint(config.resume)
        check_same_data(data_identity(checkpoint, config.resume),
                        DataIdentity.from_dict(module.data_identity))  # fmt: skip
        check_weights_fit(module, checkpoint, config.resume)
        del checkpoint
    last = next(c for c in trainer.checkpoint_callbacks if c.filename == LAST_CHECKPOINT)
    best = next((c for c in trainer.checkpoint_callbacks if c is not last), None)
    os.environ[RUN_NAME_VARIABLE] = config.wandb_run_name or ""
    os.environ[WANDB_ID_VARIABLE] = config.wandb_id or ""
    status = "failed"

    def record(state: str, **details: Any) -> None:
        if owns_folder:
            write_status(log_folder, state, epochs_completed=trainer.current_epoch, **details)

    record("running")
    try:
        check_statistics(DataIdentity.from_dict(module.data_identity), config.processed_dir)
        trainer.fit(module, datamodule=data, ckpt_path=config.resume)
        results: dict[str, Any] = _numbers(trainer.callback_metrics)
        results.update(
            run_name=config.wandb_run_name,
            metrics_csv=str(log_folder / "metrics.csv"),
            best_model_path=best.best_model_path if best is not None else "",
            last_model_path=last.best_model_path,
            best_model_score=None
            if best is None or best.best_model_score is None
            else float(best.best_model_score),
            fast_dev_run=config.fast_dev_run,
        )
        results.update(last_epoch=trainer.current_epoch - 1, best_epoch=_epoch_of(best),
                       monitor=config.monitor)  # fmt: skip
        if test and data.manifest.split["test"] and not config.fast_dev_run:
            ckpt = results["best_model_path"] or results["last_model_path"] or None
            results["test_checkpoint"] = "best" if results["best_model_path"] else "last"
            results.update(_numbers(trainer.test(module, datamodule=data, ckpt_path=ckpt)[0]))
        status = "finished"
        if owns_folder and data.manifest.purpose == "training":  # a run trained on it
            folder = config.checkpoint_dir / config.model_type / (config.wandb_run_name or "")
            record_run(config.processed_dir, folder, data.manifest.fingerprint)
    except BaseException as error:
        interrupted = isinstance(error, KeyboardInterrupt) or (
            trainer.state.status == TrainerStatus.INTERRUPTED and not isinstance(error, Exception)
        )
        status = "interrupted" if interrupted else "failed"
        record(status, error=None if interrupted else f"{type(error).__name__}: {error}")
        if interrupted:
            resume = Path(last.dirpath or "") / f"{LAST_CHECKPOINT}.ckpt"
            if is_local_zero() and resume_hint:
                print(_resume_hint(resume, trainer.current_epoch), file=sys.stderr)
            raise TrainingInterrupted from None
        if isinstance(error, OSError) and is_output_error(error):
            raise output_error(error, Path(error.filename or log_folder / "metrics.csv")) from None
        raise
    finally:
        os.environ.pop(RUN_NAME_VARIABLE, None)
        os.environ.pop(WANDB_ID_VARIABLE, None)
        _finish_wandb(exit_code=0 if status == "finished" else 1)
    record(status)
    return results


def _epoch_of(best: ModelCheckpoint | None) -> int | None:
    """The epoch of the best checkpoint (its file name, `best-<epoch>-<score>.ckpt`)."""
    if best is None or not best.best_model_path:
        return None
    return int(Path(best.best_model_path).name.split("-")[1])


def check_statistics(identity: DataIdentity, processed_dir: Path) -> None:
    """NonFiniteError naming the channels whose training mean or std is not finite (pixels a
    cache written before this version let through), before the first step."""
    mean, std = identity.normalisation()
    bad = [
        f"{name} (mean {m:g}, std {s:g})"
        for name, m, s in zip(identity.channels, mean, std, strict=True)
        if not (math.isfinite(m) and math.isfinite(s))
    ]
    if bad:
        raise NonFiniteError(
            f"the training statistics of {len(bad)} channel(s) of {processed_dir} are not "
            f"finite: {', '.join(bad[:3])}{' …' if len(bad) > 3 else ''}; prepare the folder "
            f"again with this version (it caps or fills such pixels, and says where)"
        )


def _resume_hint(last: Path, epochs_completed: int) -> str:
    if not last.is_file():
        return "interrupted before the first epoch completed: nothing to resume, start again"
    return (
        f"interrupted after {epochs_completed} completed epoch(s); resume with: "
        f"python -m scripts.train --resume {last}"
    )


def _resumable(config: ESDConfig) -> tuple[ESDConfig, int]:
    """`config` with the resumed run's name and W&B id (unless set), and the checkpoint's
    epoch; ValueError unless `config.resume` is a checkpoint of a run of this config."""
    assert config.resume is not None
    checkpoint = read_checkpoint(config.resume)
    saved = saved_run_config(checkpoint, config.resume)
    config = dataclasses.replace(
        config,
        wandb_run_name=config.wandb_run_name or saved.get("wandb_run_name"),
        wandb_id=config.wandb_id or saved.get("wandb_id"),
    )
    now = config_values(config)
    differing = sorted(
        name for name in saved if name not in MAY_CHANGE and saved[name] != now.get(name)
    )
    if differing:
        raise ValueError(
            f"{config.resume} is a checkpoint of another run: {', '.join(differing)} differ "
            f"(python -m scripts.train --resume CKPT restores them from the checkpoint)"
        )
    return config, int(checkpoint["epoch"])


def _finish_wandb(exit_code: int = 0) -> None:
    """Close the W&B run, if one was started (marked failed with a non-zero `exit_code`), so
    the next train() in this process starts anew."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish(exit_code=exit_code)
