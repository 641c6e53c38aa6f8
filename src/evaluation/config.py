"""`EvalConfig`: the options of `scripts.evaluate`, turned into flags by `src.cli`.

No deep-learning library is imported here, so that `--help` answers at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from src.cli import check_field_types, closest, config_field
from src.esd_data.subtiles import check_tile_size_gt
from src.models.registry import MODEL_TYPES
from src.visualization.figure_output import FigureOptions

EvalSplit = Literal["val", "test", "predict", "train"]
TTAMode = Literal["none", "flips", "d4"]


@dataclass
class EvalConfig(FigureOptions):
    """Restitch a model's predictions per parent tile; write images, predictions, metrics."""

    model_path: list[Path] | None = config_field(
        None,
        "checkpoint(s); several: an ensemble averaging their probabilities (default: the "
        "newest best-*.ckpt under checkpoint_dir)",
    )
    cv_dir: Path | None = config_field(
        None, "a cross-validation's folder: the ensemble of its folds' best checkpoints"
    )
    model_type: str | None = config_field(
        None, "with the default checkpoint: only consider this model type's runs"
    )
    checkpoint_dir: Path = config_field(Path("checkpoints"), "where scripts.train put checkpoints")
    processed_dir: Path | None = config_field(
        None, "prepared data (default: the folder the checkpoint was trained on)"
    )
    split: EvalSplit | None = config_field(
        None,
        "the split to score: the checkpoint's own val (the default; OPTIMISTIC for a best "
        "epoch, which they chose), test or train, `predict` (the processed folder's tiles "
        "without ground truth); with --cv_dir, test (the default: the tiles no fold saw)",
    )
    tiles: list[str] | None = config_field(
        None, "score these tiles of processed_dir instead (never training tiles as val/test)"
    )
    raw_dir: Path | None = config_field(
        None,
        "predict every tile of this raw folder (labelled or not, e.g. the contest's Val/), "
        "prepared like the checkpoint's data into cache_dir; scores the labelled ones",
    )
    cache_dir: Path | None = config_field(
        None, "where --raw_dir's tiles are prepared (default: data/eval_cache/<folder>-<hash>)"
    )
    results_dir: Path | None = config_field(
        None, "output folder (default: data/predictions/<model_type>/<run>/<split or folder>/)"
    )
    tile_size_gt: int | None = config_field(
        None, "label cells per window side (default: the checkpoint's)"
    )
    restitch: Literal["grid", "overlap"] = config_field(
        "grid", "grid: subtiles as cut; overlap: sliding windows, logits averaged per cell"
    )
    stride_gt: int | None = config_field(None, "window stride for overlap (default: half a window)")
    tta: TTAMode = config_field(
        "none", "test-time augmentation: none, flips (4 views) or d4 (8 dihedral views)"
    )
    decision: Literal["argmax", "class1_threshold"] = config_field(
        "argmax",
        "how cells get their label: argmax of the four probabilities, or class1_threshold: "
        "class 1 where its probability reaches the threshold that maximises class-1 F1 on "
        "tiles not scored (the checkpoint's val tiles; a --cv_dir's out-of-fold predictions)",
    )
    threshold_cv: Path | None = config_field(
        None,
        "choose the class-1 threshold on this cross-validation's out-of-fold predictions "
        "(<cv>/<model>; e.g. for a model refit on all its tiles, which has no val tiles)",
    )
    batch_size: int = config_field(16, "windows per forward pass")
    tile_pictures: bool = config_field(
        True, "draw each tile's picture (its TIFFs and scores are always written)"
    )
    bootstrap_resamples: int = config_field(
        1000, "bootstrap resamples of the tiles for the 95 % intervals (0: no intervals)"
    )
    bootstrap_seed: int = config_field(0, "seed of the bootstrap resamples")
    prepare_workers: int = config_field(2, "processes preparing --raw_dir's tiles")
    progress: bool | None = config_field(
        None, "progress bars (None: on a terminal only, never in a log file)"
    )
    accelerator: Literal["auto", "cpu", "cuda", "mps"] = config_field(
        "auto", "device to run the model on"
    )

    @property
    def scored_split(self) -> str:
        """`split`, or its default: a cross-validation's test split, a checkpoint's val."""
        if self.split is not None:
            return self.split
        return "test" if self.cv_dir is not None else "val"

    def __post_init__(self) -> None:
        if isinstance(self.model_path, (str, Path)):  # one checkpoint, from Python
            self.model_path = [Path(self.model_path)]
        check_field_types(self)
        super().__post_init__()
        if self.model_path is not None:
            self.model_path = [Path(p) for p in self.model_path]
        for name in (
            "cv_dir",
            "threshold_cv",
            "checkpoint_dir",
            "processed_dir",
            "raw_dir",
            "cache_dir",
            "results_dir",
        ):
            value = getattr(self, name)
            setattr(self, name, None if value is None else Path(value))
        problems = []
        if self.tile_size_gt is not None:
            try:
                check_tile_size_gt(self.tile_size_gt)
            except ValueError as error:
                problems.append(str(error))
        if self.bootstrap_resamples < 0:
            problems.append(
                f"bootstrap_resamples must be 0 or more, got {self.bootstrap_resamples}"
            )
        if self.batch_size < 1:
            problems.append(f"batch_size must be at least 1, got {self.batch_size}")
        if self.model_type is not None and self.model_type not in MODEL_TYPES:
            problems.append(
                f"unknown model_type {self.model_type!r}{closest(self.model_type, MODEL_TYPES)}: "
                f"use {', '.join(MODEL_TYPES)}"
            )
        if self.raw_dir is not None and (self.tiles is not None or self.processed_dir is not None):
            problems.append(
                "--raw_dir predicts a raw folder: it takes no --tiles or --processed_dir"
            )
        if self.cv_dir is not None and self.model_path is not None:
            problems.append("give --model_path or --cv_dir, not both")
        if self.threshold_cv is not None and self.decision != "class1_threshold":
            problems.append("--threshold_cv chooses the class-1 threshold: add --decision "
                            "class1_threshold")  # fmt: skip
        if self.cache_dir is not None and self.raw_dir is None:
            problems.append("--cache_dir is where --raw_dir's tiles go: give --raw_dir too")
        if problems:
            raise ValueError("; ".join(problems))


@dataclass
class CompareConfig:
    """Compare runs scored on the same tiles: leaderboard and paired differences."""

    runs: list[Path] = config_field(
        [], "evaluation results folders or cross-validation folders (2 or more runs in all)"
    )
    reference: str | None = config_field(
        None, "compare every run with this one (its name as printed) instead of every pair"
    )
    bootstrap_resamples: int = config_field(1000, "bootstrap resamples of the tiles")
    bootstrap_seed: int = config_field(0, "seed of the bootstrap resamples")
    out: Path | None = config_field(None, "also write the leaderboard and pairs to this JSON file")

    def __post_init__(self) -> None:
        check_field_types(self)
        self.runs = [Path(run) for run in self.runs]
        if self.bootstrap_resamples < 1:
            raise ValueError(
                f"bootstrap_resamples must be at least 1, got {self.bootstrap_resamples}"
            )


@dataclass
class ImportanceConfig(FigureOptions):
    """Permutation importance of channel groups on held-out tiles only."""

    model_path: list[Path] | None = config_field(
        None, "checkpoint(s) scored on their own --split tiles (never tiles they trained on)"
    )
    cv_dir: Path | None = config_field(
        None, "one model of a cross-validation: each fold's checkpoint on its held-out tiles"
    )
    split: Literal["val", "test"] = config_field("val", "the checkpoints' held-out split")
    processed_dir: Path | None = config_field(
        None, "with --model_path: prepared data (default: the folder the checkpoint was trained on)"
    )
    grouping: list[str] = config_field(
        ["sensor", "date", "band"],
        "channel groups permuted together: sensor, date (sensor and date), band (a sensor's "
        "band across its dates)",
    )
    repeats: int = config_field(5, "permutations per group (seeded)")
    seed: int = config_field(0, "seed of the permutations")
    bootstrap_resamples: int = config_field(1000, "bootstrap resamples of the tiles")
    bootstrap_seed: int = config_field(0, "seed of the bootstrap resamples")
    results_dir: Path | None = config_field(
        None,
        "output folder (default: <cv_dir>/importance, or data/importance/<model_type>/<run>-"
        "<split>)",
    )
    batch_size: int = config_field(16, "windows per forward pass")
    progress: bool | None = config_field(
        None, "progress bars (None: on a terminal only, never in a log file)"
    )
    accelerator: Literal["auto", "cpu", "cuda", "mps"] = config_field(
        "auto", "device to run the model on"
    )

    def __post_init__(self) -> None:
        if isinstance(self.model_path, (str, Path)):
            self.model_path = [Path(self.model_path)]
        check_field_types(self)
        super().__post_init__()
        if self.model_path is not None:
            self.model_path = [Path(p) for p in self.model_path]
        for name in ("cv_dir", "results_dir", "processed_dir"):
            value = getattr(self, name)
            setattr(self, name, None if value is None else Path(value))
        problems = []
        if (self.model_path is None) == (self.cv_dir is None):
            problems.append("give --model_path or --cv_dir (one of them)")
        if self.cv_dir is not None and self.processed_dir is not None:
            problems.append("--processed_dir goes with --model_path (folds read their own data)")
        unknown = [g for g in self.grouping if g not in ("sensor", "date", "band")]
        if unknown or not self.grouping:
            problems.append(f"grouping must be among sensor, date, band, got {self.grouping}")
        if self.repeats < 1:
            problems.append(f"repeats must be at least 1, got {self.repeats}")
        if self.bootstrap_resamples < 1:
            problems.append(
                f"bootstrap_resamples must be at least 1, got {self.bootstrap_resamples}"
            )
        if self.batch_size < 1:
            problems.append(f"batch_size must be at least 1, got {self.batch_size}")
        if problems:
            raise ValueError("; ".join(problems))
