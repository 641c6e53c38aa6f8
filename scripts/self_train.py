"""Self-training from unlabelled tiles: `python -m scripts.self_train --model_path CKPT`.

A teacher (checkpoints, or a cross-validation's fold ensemble) predicts unlabelled tiles (the
processed folder's predict split, or `--unlabelled` folders such as the contest's Val/ and
Test/), keeps the cells it is confident about as pseudo-labels, and a student (every
`scripts.train` option) trains on the labelled and the pseudo-labelled tiles, for `--rounds`
rounds. Results go to `self_training/<name>/`; calling again completes an interrupted run.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as `python scripts/NAME.py`, not `python -m scripts.NAME`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src.cli import add_config_arguments, build_parser, construct, parse_values
from src.progress import set_progress
from src.self_training.config import SelfTrainConfig
from src.training.config import ESDConfig

SHARED = frozenset({"resume", "pseudo_labels"})
"""ESDConfig fields this command sets itself."""
_Options = dataclasses.make_dataclass(
    "_Options",
    [(f.name, object) for f in dataclasses.fields(SelfTrainConfig)]
    + [(f.name, object) for f in dataclasses.fields(ESDConfig) if f.name not in SHARED],
)


def parse_arguments(argv: Sequence[str] | None = None) -> tuple[SelfTrainConfig, ESDConfig]:
    """(the self-training's options, the student's training options)."""
    parser = build_parser(SelfTrainConfig)
    add_config_arguments(
        parser, ESDConfig, "student's training options", "as scripts.train's", exclude=SHARED
    )
    values = parse_values(parser, _Options, argv)
    own = {f.name for f in dataclasses.fields(SelfTrainConfig)}
    options = construct(parser, SelfTrainConfig, {k: v for k, v in values.items() if k in own})
    student = construct(parser, ESDConfig, {k: v for k, v in values.items() if k not in own})
    return options, student


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the options and run (or complete) the self-training; print each round."""
    options, student = parse_arguments(argv)
    set_progress(student.progress)
    from src.self_training.run import self_train
    from src.training.checkpoints import CheckpointError
    from src.training.signals import run_resumable

    results = run_resumable(
        lambda: self_train(options, student), (CheckpointError, FileNotFoundError, ValueError)
    )
    if isinstance(results, int):
        return results
    for result in results:
        scores = ", ".join(
            f"{name} {result[name]:.4f}"
            for name in ("val_f1_class1", "test_f1_class1")
            if result.get(name) is not None
        )
        print(
            f"round {result['round']}: student {result['checkpoint']} ({result['checkpoint_kind']}"
            f" checkpoint, epoch {result['epoch']}){': ' + scores if scores else ''}"
        )
    return 0


if __name__ == "__main__":
    from src.shutdown import finish

    sys.exit(finish(main()))
