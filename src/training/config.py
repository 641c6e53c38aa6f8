"""`ESDConfig`: every option of a training run, turned into command-line flags by `src.cli`.

This module imports no deep-learning library, so that `--help` answers at once; the
training itself is assembled in `src.training.train`.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from src.cli import check_field_types, closest, config_field
from src.esd_data.manifest import check_band_selection
from src.esd_data.preparation import PrepareRequest
from src.esd_data.subtiles import check_tile_size_gt
from src.models.registry import MODEL_TYPES, model_hparams
from src.visualization.figure_output import FigureOptions

LossName = Literal["ce", "dice", "ce+dice"]
OptimizerName = Literal["adam", "adamw", "sgd"]
SchedulerName = Literal["plateau", "cosine", "none"]
WandbMode = Literal["auto", "online", "offline", "disabled"]
TemporalAggregator = Literal["attention", "mean", "convgru", "ltae"]

GALILEO_RECIPE = "physical"
"""The preprocessing recipe Galileo needs (it was pretrained on physical units)."""
GALILEO_PREPROCESSING = f"'{{recipe: {GALILEO_RECIPE}, valid_masks: true}}'"
"""The `--preprocessing` to advise for Galileo: physical units, and the validity channels it
masks no data with."""
PATH_FIELDS = ("raw_dir", "processed_dir", "weights_path", "checkpoint_dir", "log_dir", "resume")


@dataclass
class ESDConfig(FigureOptions):
    """Train a segmentation model on prepared DFC2021 subtiles."""

    # data
    raw_dir: Path | None = config_field(
        Path("data/raw"),
        "raw tiles to prepare or check against the cache ('none': use processed_dir as it is)",
    )
    processed_dir: Path = config_field(Path("data/processed"), "processed cache folder")
    tile_size_gt: int = config_field(4, "label cells per subtile side (1, 2, 4, 8 or 16)")
    bands: dict[str, Any] | None = config_field(
        None, "band selection, e.g. '{sentinel2: [B04, B03, B02], viirs: null}' (None: all)"
    )
    preprocessing: dict[str, Any] | None = config_field(
        None,
        "PreprocessConfig overrides, e.g. '{s1_blur_sigma: 2}' (None: as the processed folder "
        "was prepared; the defaults for a new folder)",
    )
    split_seed: int | None = config_field(
        None, "seed of the train/val/test split (None: the processed folder's; `seed` if new)"
    )
    val_fraction: float | None = config_field(
        None, "fraction of labelled tiles for validation (None: the folder's; 0.2 if new)"
    )
    test_fraction: float | None = config_field(
        None, "fraction of labelled tiles held out (None: the folder's; 0.0 if new)"
    )
    augment: bool = config_field(True, "flips, rotations, noise and blur on training batches")
    num_workers: int = config_field(2, "data-loader worker processes")
    data_on_device: Literal["auto", "true", "false"] = config_field(
        "auto",
        "keep the tiles on the accelerator and cut batches there, without loader workers "
        "(auto: on a GPU when they fit in device_memory_share of its free memory)",
    )
    device_memory_share: float = config_field(
        0.5, "share of free device memory the device data path may use"
    )
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
    tf_width: int = config_field(32, "features per sensor branch (TemporalFusion)")
    tf_depth: int = config_field(2, "3×3 conv blocks per sensor encoder (TemporalFusion)")
    temporal: TemporalAggregator = config_field(
        "attention",
        "aggregation over a sensor's dates: attention (learned per-pixel weights), mean, "
        "convgru, or ltae (date-aware attention: knows each date's day of the year) "
        "(TemporalFusion)",
    )
    tf_dropout: float = config_field(
        0.0, "dropout in [0, 1) after each conv block (TemporalFusion)"
    )
    smp_arch: str = config_field(
        "unet",
        "segmentation_models_pytorch architecture: unet, unetplusplus, deeplabv3plus, fpn, "
        "segformer, manet, linknet, pspnet, … (SMP)",
    )
    smp_encoder: str = config_field(
        "resnet34", "segmentation_models_pytorch encoder, e.g. resnet18, resnet34, mit_b0 (SMP)"
    )
    galileo_patch_size: int = config_field(
        5, "pixels per token side, after averaging to galileo_resolution_m (Galileo)"
    )
    galileo_resolution_m: int = config_field(
        100, "metres per pixel the encoder sees (the data's 10 m averaged) (Galileo)"
    )
    galileo_exit_layer: int | None = config_field(
        None, "transformer blocks the encoder runs, 1 to 4 (None: all 4) (Galileo)"
    )
    galileo_time: Literal["monthly", "acquisition"] = config_field(
        "monthly",
        "the encoder's time axis: monthly composites of each sensor (as pretrained, at most 12 "
        "steps a year) or one step per acquisition date (Galileo)",
    )
    pretrained: bool = config_field(
        False,
        "load pretrained weights from local files, never downloaded (FCNResnetTransfer: "
        "torchvision's COCO weights, found in the torch hub cache or at weights_path; SMP: "
        "the encoder's ImageNet weights at weights_path; Galileo: the nano encoder in the "
        "weights_path folder)",
    )
    weights_path: Path | None = config_field(
        None,
        "the pretrained weights file (FCNResnetTransfer, SMP) or folder (Galileo: config.json, "
        "encoder.pt, normalization.json)",
    )
    freeze_backbone: float = config_field(
        0.0,
        "fraction of backbone blocks frozen, 0 none to 1 all (FCNResnetTransfer; Galileo: "
        "its input projections and that fraction of its transformer blocks)",
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
    seed: int = config_field(0, "seed of the initialisation and augmentation (and a new split)")
    deterministic: bool = config_field(True, "use deterministic algorithms where available")
    # hardware
    accelerator: str = config_field("auto", "cpu, gpu, mps or auto")
    devices: str = config_field("auto", "device count ('2'), list ('0,1') or auto")
    strategy: str = config_field("auto", "auto, ddp, ddp_spawn, fsdp, …")
    num_nodes: int = config_field(1, "machines taking part")
    precision: str = config_field("32-true", "32-true, 16-mixed, bf16-mixed, …")
    limit_train_batches: int | float = config_field(
        1.0,
        "batches per epoch as Lightning counts them: a whole number is a count (1: one "
        "batch), a decimal a fraction (1.0: all)",
    )
    limit_val_batches: int | float = config_field(
        1.0, "validation batches: a count (0: no validation) or a fraction (1.0: all)"
    )
    fast_dev_run: bool = config_field(False, "one batch of training and validation, no logs")
    progress: bool | None = config_field(
        None, "progress bars (None: on a terminal only, never in a log file)"
    )
    # outputs
    checkpoint_dir: Path = config_field(Path("checkpoints"), "checkpoints go to DIR/model/run/")
    log_dir: Path = config_field(Path("logs"), "CSV logs and offline W&B runs go here")
    resume: Path | None = config_field(None, "checkpoint to continue training from")
    chosen_on: dict[str, Any] | None = config_field(
        None,
        "what chose these settings and on which tiles (a sweep writes it into best_config.yaml; "
        "a model trained with them scores those tiles OPTIMISTIC)",
    )
    pseudo_labels: dict[str, Any] | None = config_field(
        None,
        "the pseudo-label set a self-trained student learns from (scripts.self_train writes it: "
        "its tiles, teacher, confidence and cells kept per class)",
    )
    pseudo_weight: float = config_field(
        1.0, "loss weight of a pseudo-labelled cell relative to a labelled one (self-training)"
    )
    wandb_project: str = config_field("esd", "W&B project")
    wandb_run_name: str | None = config_field(None, "run name (None: <model_type>-<date>-<time>)")
    wandb_mode: WandbMode = config_field(
        "auto", "auto (online if logged in, else offline), online, offline or disabled"
    )
    wandb_id: str | None = config_field(
        None, "W&B run id (None: a new one; --resume continues the checkpoint's run)"
    )

    def __post_init__(self) -> None:
        """Reject bad values before any data is prepared or any training starts."""
        if isinstance(self.data_on_device, bool):  # YAML reads `data_on_device: true` as a bool
            self.data_on_device = "true" if self.data_on_device else "false"
        check_field_types(self)
        super().__post_init__()
        problems = []
        for name in PATH_FIELDS:
            value = getattr(self, name)
            setattr(self, name, None if value is None else Path(value))
        try:
            check_tile_size_gt(self.tile_size_gt)
        except ValueError as error:
            problems.append(str(error))
        if self.model_type not in MODEL_TYPES:
            problems.append(
                f"unknown model_type {self.model_type!r}{closest(self.model_type, MODEL_TYPES)}: "
                f"use {', '.join(MODEL_TYPES)}"
            )
        if self.resume is not None and not self.resume.is_file():
            problems.append(f"resume checkpoint {self.resume} does not exist")
        try:
            check_band_selection(self.bands)
        except ValueError as error:
            problems.append(str(error))
        try:
            self.prepare_request()
        except ValueError as error:
            problems.append(str(error))
        for name in ("batch_size", "max_epochs", "num_nodes", "accumulate_grad_batches"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("limit_train_batches", "limit_val_batches"):
            value = getattr(self, name)
            if isinstance(value, float) and not 0.0 <= value <= 1.0:
                problems.append(
                    f"{name} {value} is a fraction (a decimal) and must be in [0, 1]; write a "
                    f"whole number ({int(value)}) for a count of batches"
                )
            elif value < 0:
                problems.append(f"{name} must not be negative, got {value}")
        if self.limit_train_batches == 0:
            problems.append("limit_train_batches 0 trains nothing: give a count or a fraction")
        if not 0.0 < self.pseudo_weight <= 1.0:
            problems.append(f"pseudo_weight must be in (0, 1], got {self.pseudo_weight}")
        name = self.wandb_run_name
        if name is not None and (
            not name.strip()
            or "/" in name
            or "\0" in name
            or name in (".", "..")
            or len(name.encode()) > 200
        ):
            problems.append(
                f"wandb_run_name {name!r} cannot name a folder (no '/', not empty, at most 200 "
                f"bytes): choose another"
            )
        if self.learning_rate <= 0:
            problems.append(f"learning_rate must be positive, got {self.learning_rate}")
        if not 0.0 < self.device_memory_share <= 1.0:
            problems.append(
                f"device_memory_share must be in (0, 1], got {self.device_memory_share}"
            )
        problems += self._model_problems()
        if not 0.0 <= self.freeze_backbone <= 1.0:
            problems.append(f"freeze_backbone must be in [0, 1], got {self.freeze_backbone}")
        if problems:
            raise ValueError("; ".join(problems))

    def _model_problems(self) -> list[str]:
        """What the chosen model cannot be built with, found before any data is prepared."""
        problems = []
        if self.pretrained and "pretrained" not in model_hparams(self.model_type):
            problems.append(f"{self.model_type} loads no pretrained weights: drop --pretrained")
        if self.model_type == "SMP":
            from src.models.smp_model import check_smp_encoder, smp_arch_name

            try:
                smp_arch_name(self.smp_arch)
                check_smp_encoder(self.smp_encoder)
            except ValueError as error:
                problems.append(str(error))
        if self.model_type == "Galileo":
            problems += self._galileo_problems()
        if self.resume is None and not _WEIGHTS_CHECKED_LATER.get():
            problems += self.weights_problems()
        if self.model_type == "TemporalFusion" and not 0.0 <= self.tf_dropout < 1.0:
            problems.append(f"tf_dropout must be in [0, 1), got {self.tf_dropout}")
        if self.model_type == "TemporalFusion" and self.temporal == "ltae":
            from src.models.temporal_fusion import LTAE_HEADS

            if self.tf_width % LTAE_HEADS:
                problems.append(
                    f"--temporal ltae splits --tf_width among its {LTAE_HEADS} heads: "
                    f"{self.tf_width} is not divisible by {LTAE_HEADS} (use e.g. "
                    f"{self.tf_width - self.tf_width % LTAE_HEADS or LTAE_HEADS})"
                )
        return problems

    def weights_problems(self) -> list[str]:
        """What is wrong with the pretrained weights file or folder a new run starts from
        (none for a resumed run: its weights are in its checkpoint)."""
        if not self.pretrained:
            return []
        problems = []
        if self.model_type == "FCNResnetTransfer":
            from src.models.fcn_resnet_transfer import resolve_weights_file

            try:
                resolve_weights_file(self.weights_path)
            except FileNotFoundError as error:
                problems.append(str(error))
        if self.model_type == "SMP" and (
            self.weights_path is None or not self.weights_path.is_file()
        ):
            problems.append(
                f"--pretrained SMP reads the encoder's weights from --weights_path, a local "
                f"file (nothing is downloaded): {self.weights_path or 'none given'} is not a file"
            )
        if self.model_type == "Galileo":
            from src.models.galileo_weights import check_weights_folder

            try:
                check_weights_folder(self.weights_path)
            except ValueError as error:
                problems.append(str(error))
        return problems

    def _galileo_problems(self) -> list[str]:
        """Galileo's timm, recipe and exit layer, checked before any data is prepared."""
        from src.models.checks import timm_problem

        problems = [problem] if (problem := timm_problem()) else []
        recipe = (self.preprocessing or {}).get("recipe")
        if recipe is not None and recipe != GALILEO_RECIPE:
            problems.append(
                f"Galileo takes physical units: use --preprocessing {GALILEO_PREPROCESSING}, "
                f"not {recipe!r}"
            )
        if self.galileo_exit_layer is not None and not 1 <= self.galileo_exit_layer <= 4:
            problems.append(f"galileo_exit_layer must be 1 to 4, got {self.galileo_exit_layer}")
        return problems

    def prepare_request(self) -> PrepareRequest:
        """The preparation options this run asks for (None: as the processed folder has them)."""
        return PrepareRequest(
            preprocessing=self.preprocessing,
            split_seed=self.split_seed,
            val_fraction=self.val_fraction,
            test_fraction=self.test_fraction,
            new_folder_seed=self.seed,
        )

    def model_hparams(self) -> dict[str, Any]:
        """The hyper-parameters that the chosen model takes, from this config."""
        values = {name: getattr(self, name) for name in model_hparams(self.model_type)}
        if "freeze_backbone" in values:
            values["freeze_backbone"] = values["freeze_backbone"] or False
        if values.get("weights_path") is not None:
            values["weights_path"] = str(values["weights_path"])  # plain types in checkpoints
        return values


_WEIGHTS_CHECKED_LATER: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "weights_checked_later", default=False
)


@contextlib.contextmanager
def weights_checked_later() -> Iterator[None]:
    """Within the block, ESDConfig leaves the pretrained weights to `weights_problems`, called
    where they are used: a cross-validation needs them only for the folds it starts anew (a
    finished fold needs none, a stopped one resumes from its checkpoint, and the rest start
    from the copy it keeps)."""
    token = _WEIGHTS_CHECKED_LATER.set(True)
    try:
        yield
    finally:
        _WEIGHTS_CHECKED_LATER.reset(token)


def validation_problem(config: ESDConfig) -> str | None:
    """Why a training run of `config` could not validate, known from its options alone: a
    re-split with `val_fraction` 0 leaves no validation tiles (None when it can)."""
    if config.val_fraction == 0 and config.limit_val_batches != 0 and config.raw_dir is not None:
        return (
            "--val_fraction 0 leaves no validation tiles, but the run validates: add "
            "--limit_val_batches 0 to train a fixed budget (its last.ckpt is the model), or "
            "give --val_fraction above 0"
        )
    return None
