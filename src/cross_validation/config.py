"""`CVConfig`: the options of `scripts.cross_validate` besides the training options."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from src.cli import check_field_types, closest, config_field
from src.cross_validation.variants import Ablation
from src.evaluation.config import TTAMode
from src.models.registry import MODEL_TYPES
from src.training.config import ESDConfig

Selection = Literal["inner", "last", "outer"]
OPTIMISTIC = "outer"
"""The one selection rule that chooses a fold's epoch on the tiles the fold is scored on."""

SELECTION_LABELS = {
    "inner": "inner: epoch chosen on an inner split of each fold's training tiles (held out)",
    "last": "last: the last epoch of a fixed budget, no validation (held out)",
    "outer": "outer: epoch chosen on the scored tiles themselves (OPTIMISTIC, not held out)",
}
"""How each selection rule is described wherever its scores are printed or written."""


@dataclass
class CVConfig:
    """K-fold cross-validation over parent tiles: per-fold and out-of-fold scores."""

    folds: int = config_field(5, "number of folds K (every labelled tile is validated once)")
    repeats: int = config_field(
        1, "repeated k-fold: the K folds drawn again with seeds seed, seed+1, … (R repetitions)"
    )
    seeds: int = config_field(
        1,
        "train every fold S times, with training seeds seed, seed+1, … on the same folds: the "
        "seed-to-seed variance of training enters the paired comparisons",
    )
    model_type: list[str] = field(
        default_factory=lambda: ["UNet"],
        metadata={
            "help": f"model type(s) to cross-validate, one leaderboard: {', '.join(MODEL_TYPES)}"
        },
    )
    model_options: dict[str, Any] | None = config_field(
        None,
        "training options of one model type only, e.g. '{Galileo: {pretrained: true, "
        "weights_path: models/galileo-nano}}' beside a UNet (flags apply to every model)",
    )
    selection: Selection = config_field(
        "inner",
        "how each fold's checkpoint is chosen without its scored tiles: inner (early stopping "
        "and best epoch on an inner split of its training tiles), last (the last epoch, no "
        "validation) or outer (on the scored tiles: optimistic, for comparison only)",
    )
    inner_val_fraction: float = config_field(
        0.2, "share of a fold's training tiles that choose its epoch (--selection inner)"
    )
    name: str | None = config_field(
        None,
        "name of the cross-validation (None: <model types>-<K>fold-seed<seed>-<hash of the "
        "configuration>)",
    )
    output_dir: Path = config_field(Path("cv"), "folds, predictions and summaries go to DIR/name/")
    tta: TTAMode = config_field(
        "none", "test-time augmentation of the fold evaluations: none, flips or d4"
    )
    tile_pictures: Literal["all", "full", "none"] = config_field(
        "full",
        "pictures of each fold's held-out tiles: for every model (all), for the full models "
        "but not their ablation variants (full), or none (TIFFs and scores are always "
        "written); an ablation variant's learning curves, confusion matrix and ROC curves are "
        "drawn with all only",
    )
    ablate: Ablation = config_field(
        "none",
        "also train, on the same folds, each model without each sensor and with each sensor "
        "alone (sensors), or without each sensor's date in turn (dates); the leaderboard pairs "
        "every variant with the full model",
    )
    decision: Literal["argmax", "class1_threshold"] = config_field(
        "argmax",
        "also score the out-of-fold predictions under the contest decision: class 1 where its "
        "probability reaches a threshold, each fold's chosen on the other folds' predictions",
    )
    bootstrap_resamples: int = config_field(
        1000, "bootstrap resamples of the tiles for the 95 % intervals and paired differences"
    )
    bootstrap_seed: int = config_field(0, "seed of the bootstrap resamples")
    workers: int = config_field(
        1,
        "processes training the units side by side (each claims one unit at a time; on GPUs, "
        "one device each: worker k gets device k); the same command started on other machines "
        "sharing the folder joins them",
    )
    storage: str | None = config_field(
        None,
        "PostgreSQL URL (postgresql://user@host/db) through which workers claim units, where "
        "file locks on a shared disk cannot be trusted across machines (None: file locks); "
        "every worker, --status and --summarize give the same",
    )
    lease_s: float = config_field(
        120.0,
        "--storage: a unit whose worker has not renewed its lease for this long (it renews "
        "every quarter of it) is taken over by another worker and resumed from its last.ckpt",
    )
    status: Path | None = config_field(
        None, "print where the cross-validation in this folder stands (done, running, failed, "
        "waiting) and exit",
    )  # fmt: skip
    summarize: Path | None = config_field(
        None,
        "write the summary of the cross-validation in this folder from its finished units, "
        "training nothing: with units missing, partial_summary.json/.csv and a PARTIAL table "
        "naming them (summary.json only once every unit is done) and exit",
    )

    def __post_init__(self) -> None:
        check_field_types(self)
        self.output_dir = Path(self.output_dir)
        self.status = None if self.status is None else Path(self.status)
        self.summarize = None if self.summarize is None else Path(self.summarize)
        problems = []
        if self.folds < 2:
            problems.append(f"folds must be at least 2, got {self.folds}")
        if self.repeats < 1:
            problems.append(f"repeats must be at least 1, got {self.repeats}")
        if self.seeds < 1:
            problems.append(f"seeds must be at least 1, got {self.seeds}")
        if self.workers < 1:
            problems.append(f"workers must be at least 1, got {self.workers}")
        if self.lease_s <= 0:
            problems.append(f"lease_s must be positive, got {self.lease_s}")
        if self.storage is not None and not self.storage.startswith("postgresql"):
            problems.append(
                f"--storage {self.storage.split('://')[0]}://… cannot claim units: give a "
                f"PostgreSQL URL (postgresql://user@host/db), or none for file locks"
            )
        if not 0.0 < self.inner_val_fraction < 1.0:
            problems.append(f"inner_val_fraction must be in (0, 1), got {self.inner_val_fraction}")
        unknown = [m for m in self.model_type if m not in MODEL_TYPES]
        if unknown:
            problems.append(
                f"unknown model_type {', '.join(u + closest(u, MODEL_TYPES) for u in unknown)}: "
                f"use {', '.join(MODEL_TYPES)}"
            )
        if self.bootstrap_resamples < 1:
            problems.append(
                f"bootstrap_resamples must be at least 1, got {self.bootstrap_resamples}"
            )
        if len(set(self.model_type)) != len(self.model_type):
            problems.append(f"model_type repeats a model: {' '.join(self.model_type)}")
        problems += self._model_option_problems()
        if problems:
            raise ValueError("; ".join(problems))

    def _model_option_problems(self) -> list[str]:
        """What is wrong with `model_options`: models not cross-validated, unknown options."""
        problems = []
        known = {f.name for f in dataclasses.fields(ESDConfig)} - {"model_type", "resume"}
        # every model of one cross-validation shares its data, folds, seeds and folders (a
        # model's own would be ignored, or break the pairing of the models)
        shared = {
            "raw_dir", "processed_dir", "preprocessing", "split_seed", "val_fraction",
            "test_fraction", "seed", "checkpoint_dir", "log_dir", "wandb_run_name", "wandb_id",
        }  # fmt: skip
        for model, options in (self.model_options or {}).items():
            if model not in self.model_type:
                problems.append(
                    f"model_options names {model}, which is not among --model_type "
                    f"{' '.join(self.model_type)}"
                )
            elif not isinstance(options, dict):
                problems.append(f"model_options of {model} must be a mapping, got {options!r}")
            else:
                unknown = sorted(set(options) - known)
                if unknown:
                    problems.append(
                        f"model_options of {model}: unknown option(s) {', '.join(unknown)}"
                    )
                common = sorted(set(options) & shared)
                if common:
                    problems.append(
                        f"model_options of {model}: {', '.join(common)} belong to the whole "
                        f"cross-validation (its data, folds and seeds are every model's): give "
                        f"them as flags"
                    )
        return problems

    def model_config(self, base: ESDConfig, model_type: str) -> ESDConfig:
        """The training options of `model_type`: every flag, then its own `model_options`
        (ValueError naming the model when they do not fit it)."""
        options = (self.model_options or {}).get(model_type, {})
        try:
            return dataclasses.replace(base, model_type=model_type, **options)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{model_type}: {error}") from None

    def protocol(self) -> dict[str, object]:
        """The options of this cross-validation that determine its scores."""
        protocol: dict[str, object] = {
            "folds": self.folds, "selection": self.selection, "tta": self.tta,
        }  # fmt: skip
        if self.selection == "inner":
            protocol["inner_val_fraction"] = self.inner_val_fraction
        if self.seeds > 1:
            protocol["seeds"] = self.seeds
        if self.decision != "argmax":
            protocol["decision"] = self.decision
        return protocol
