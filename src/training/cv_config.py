"""`CVConfig`: the options of `scripts.cross_validate` besides the training options."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from src.cli import check_field_types, config_field
from src.evaluation.config import TTAMode
from src.models.registry import MODEL_TYPES

FOLDS_FILE = "folds.json"
"""Written into a cross-validation's folder: its folds, seed, test tiles and data."""
FOLD_RESULT_FILE = "result.json"
"""Written into a fold's folder when the fold has finished: its scores and best checkpoint."""


@dataclass
class CVConfig:
    """K-fold cross-validation over parent tiles: per-fold and out-of-fold scores."""

    folds: int = config_field(5, "number of folds K (every labelled tile is validated once)")
    model_type: list[str] = field(
        default_factory=lambda: ["UNet"],
        metadata={
            "help": f"model type(s) to cross-validate, one leaderboard: {', '.join(MODEL_TYPES)}"
        },
    )
    name: str | None = config_field(
        None, "name of the cross-validation (None: <model types>-<K>fold-seed<seed>)"
    )
    output_dir: Path = config_field(Path("cv"), "folds, predictions and summaries go to DIR/name/")
    tta: TTAMode = config_field(
        "none", "test-time augmentation of the fold evaluations: none, flips or d4"
    )

    def __post_init__(self) -> None:
        check_field_types(self)
        self.output_dir = Path(self.output_dir)
        problems = []
        if self.folds < 2:
            problems.append(f"folds must be at least 2, got {self.folds}")
        unknown = [m for m in self.model_type if m not in MODEL_TYPES]
        if unknown:
            problems.append(
                f"unknown model_type {', '.join(unknown)}: use {', '.join(MODEL_TYPES)}"
            )
        if len(set(self.model_type)) != len(self.model_type):
            problems.append(f"model_type repeats a model: {' '.join(self.model_type)}")
        if problems:
            raise ValueError("; ".join(problems))
