"""`SelfTrainConfig`: the options of `scripts.self_train` besides the student's training options."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from src.cli import check_field_types, config_field


@dataclass
class SelfTrainConfig:
    """Self-training: a teacher pseudo-labels unlabelled tiles, a student trains on them too."""

    model_path: list[Path] | None = config_field(
        None, "the teacher: checkpoint(s), several averaged as an ensemble"
    )
    cv_dir: Path | None = config_field(
        None, "the teacher: a cross-validation's fold ensemble (instead of --model_path)"
    )
    unlabelled: list[Path] | None = config_field(
        None,
        "folders of unlabelled tiles: a processed folder (its predict split) or a raw folder "
        "(e.g. the contest's Val/ and Test/; prepared like the teacher's data) (None: the "
        "student's processed folder's predict split)",
    )
    confidence: float = config_field(
        0.9, "a cell is pseudo-labelled when the teacher's top class probability reaches this"
    )
    class_cap: float = config_field(
        0.5, "no class keeps more than this share of the confident cells (its most confident)"
    )
    rounds: int = config_field(
        1, "rounds of self-training: each round's student teaches the next round"
    )
    output_dir: Path = config_field(Path("self_training"), "self-trainings go to DIR/<name>/")
    name: str | None = config_field(
        None, "this self-training's folder name (None: <model_type>-<hash of its options>)"
    )

    def __post_init__(self) -> None:
        check_field_types(self)
        problems = []
        if (self.model_path is None) == (self.cv_dir is None):
            problems.append("name the teacher: --model_path CKPT [CKPT …] or --cv_dir DIR")
        if not 0.0 <= self.confidence <= 1.0:
            problems.append(f"confidence must be in [0, 1], got {self.confidence}")
        if not 0.0 < self.class_cap <= 1.0:
            problems.append(f"class_cap must be in (0, 1], got {self.class_cap}")
        if self.rounds < 1:
            problems.append(f"rounds must be at least 1, got {self.rounds}")
        if problems:
            raise ValueError("; ".join(problems))
        self.output_dir = Path(self.output_dir)
