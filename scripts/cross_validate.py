"""K-fold cross-validation: `python -m scripts.cross_validate --folds 5 --model_type UNet SMP`.

Every `scripts.train` option is fixed for all folds; results go to `cv/<name>/` (per fold,
out of fold, `summary.json`, `summary.csv`, `summary.png`). Calling again completes an
interrupted run; any number of workers share it (`--workers`, or the same command started
again, on other machines with `--storage`); `--status DIR` says where it stands and
`--summarize DIR` writes the summary of the units finished so far.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as `python scripts/NAME.py`, not `python -m scripts.NAME`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src.cli import add_config_arguments, build_parser, construct, parse_values
from src.cross_validation.config import CVConfig
from src.progress import set_progress
from src.training.config import ESDConfig, weights_checked_later

SHARED = frozenset({"model_type", "resume"})
"""ESDConfig fields this command sets itself: the model types are CVConfig's, folds start anew."""
_Options = dataclasses.make_dataclass(
    "_Options",
    [(f.name, object) for f in dataclasses.fields(CVConfig)]
    + [(f.name, object) for f in dataclasses.fields(ESDConfig) if f.name not in SHARED],
)


def parse_arguments(argv: Sequence[str] | None = None) -> tuple[CVConfig, ESDConfig]:
    """(the cross-validation's options, the training options of every fold)."""
    parser = build_parser(CVConfig)
    add_config_arguments(
        parser, ESDConfig, "training options", "fixed for every fold and model",
        exclude=SHARED,
    )  # fmt: skip
    values = parse_values(parser, _Options, argv)
    cv_fields = {f.name for f in dataclasses.fields(CVConfig)}
    cv = construct(parser, CVConfig, {k: v for k, v in values.items() if k in cv_fields})
    training = {k: v for k, v in values.items() if k not in cv_fields}
    # Pretrained weights are checked where a fold starts from them: a cross-validation that
    # completes an interrupted run reads the copy it made, the original may be gone.
    with weights_checked_later():
        base = construct(parser, ESDConfig, {**training, "model_type": cv.model_type[0]})
        for model in cv.model_type:  # each model's own options, checked before any work
            try:
                cv.model_config(base, model)
            except ValueError as error:
                parser.exit(2, f"{parser.prog}: error: {error}\n")
    return cv, base


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the options and run (or complete) the cross-validation, in `--workers` processes;
    or print where one stands (`--status DIR`); or summarize its finished units (`--summarize
    DIR`)."""
    cv, base = parse_arguments(argv)
    if cv.status is not None or cv.summarize is not None:
        try:
            print(_look(cv, base))
        except ValueError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        return 0
    if cv.workers > 1:
        return run_workers(list(sys.argv[1:] if argv is None else argv), cv.workers, base)
    set_progress(base.progress)
    from src.cross_validation.run import cross_validate
    from src.training.signals import run_resumable

    status = run_resumable(lambda: cross_validate(cv, base), (FileNotFoundError, ValueError))
    return status if isinstance(status, int) else 0


def _look(cv: CVConfig, base: ESDConfig) -> str:
    """What `--status` or `--summarize` prints (ValueError in one line)."""
    if cv.status is not None:
        from src.cross_validation.status import format_status

        return format_status(cv.status, cv.storage, cv.lease_s)
    from src.cross_validation.outputs import summarize_folder
    from src.visualization.figure_output import figure_output

    with figure_output(base):
        return summarize_folder(cv.summarize, cv)


def run_workers(argv: list[str], workers: int, base: ESDConfig) -> int:
    """Start `workers` processes of this command (each one worker, on device k of a GPU run)
    and wait for them; the exit status is the worst of theirs."""
    import os
    import subprocess

    processes = []
    for k in range(workers):
        environment = dict(os.environ)
        if base.accelerator in ("gpu", "cuda"):
            environment["CUDA_VISIBLE_DEVICES"] = str(k)
        processes.append(subprocess.Popen(
            # the last --workers wins: each process is one worker
            [sys.executable, "-m", "scripts.cross_validate", *argv, "--workers", "1"],
            env=environment,
        ))  # fmt: skip
    print(f"started {workers} workers: processes {', '.join(str(p.pid) for p in processes)}")
    return max(process.wait() for process in processes)


if __name__ == "__main__":
    from src.shutdown import finish

    sys.exit(finish(main()))
