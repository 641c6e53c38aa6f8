"""`SubmitConfig`: the options of `scripts.submit`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from src.cli import check_field_types, config_field
from src.evaluation.config import TTAMode


@dataclass
class SubmitConfig:
    """Refit a cross-validated model on every labelled tile and write checked Kaggle files."""

    cv_dir: Path = config_field(
        Path("cv"), "the cross-validation of one model whose budget is refit (<cv>/<model>)"
    )
    unlabelled: list[Path] = field(
        default_factory=list,
        metadata={"help": "raw folders to predict, e.g. data/contest/Val data/contest/Test"},
    )
    decision: Literal["argmax", "class1_threshold"] | None = config_field(
        None,
        "argmax, or class1_threshold (its threshold chosen on the cross-validation's "
        "out-of-fold predictions) (None: the cross-validation's own decision)",
    )
    epochs: int | None = config_field(
        None, "training epochs (None: the median of the epochs the folds chose, plus one)"
    )
    tta: TTAMode = config_field("none", "test-time augmentation of the predictions")
    accelerator: Literal["auto", "cpu", "cuda", "mps"] = config_field(
        "auto", "where the predictions run (training keeps the cross-validation's settings)"
    )
    output_dir: Path = config_field(Path("submissions"), "refits go to DIR/<name>/")
    name: str | None = config_field(None, "the refit's folder name (None: <cv>-<model>)")

    def __post_init__(self) -> None:
        check_field_types(self)
        self.cv_dir, self.output_dir = Path(self.cv_dir), Path(self.output_dir)
        self.unlabelled = [Path(folder) for folder in self.unlabelled]
        if not self.unlabelled:
            raise ValueError("name the folder(s) to predict: --unlabelled DIR [DIR …]")
        if self.epochs is not None and self.epochs < 1:
            raise ValueError(f"epochs must be at least 1, got {self.epochs}")
