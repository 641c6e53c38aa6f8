"""Train a segmentation model: `python -m scripts.train --model_type=UNet [--help]`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python scripts/NAME.py`, not `python -m scripts.NAME`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src.cli import build_parser, construct, parse_values
from src.held_out import OPTIMISTIC
from src.progress import set_progress
from src.training.config import ESDConfig, validation_problem

__all__ = ["ESDConfig", "main", "train"]


def train(config: ESDConfig, extra_callbacks: list[Any] | None = None) -> dict[str, Any]:
    """`src.training.train.train`: prepare, train, test; the final metrics (see there)."""
    from src.training.train import train as run

    return run(config, extra_callbacks)


def parse_arguments(argv: list[str] | None = None) -> ESDConfig:
    """ESDConfig from `--config` YAML and flags; with `--resume`, the checkpoint's run with
    only the options that may change (exit status 2 and one line for anything else)."""
    parser = build_parser(ESDConfig)
    values = parse_values(parser, ESDConfig, argv)
    if values.get("resume") is None:
        config = construct(parser, ESDConfig, values)
        problem = validation_problem(config)
        if problem:
            parser.exit(2, f"{parser.prog}: error: {problem}\n")
        return config
    from src.training.checkpoints import CheckpointError
    from src.training.resume import resumed_config

    try:
        return resumed_config(Path(values["resume"]), values)
    except (CheckpointError, TypeError, ValueError) as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")
        raise  # unreachable: parser.exit raises SystemExit


def main(argv: list[str] | None = None) -> int:
    """Parse ESDConfig from the command line, train, print the final metrics.

    Exit status: 0, 1 for an error (one line), 2 for bad options, 130/143 for Ctrl-C/SIGTERM
    (the run is recorded as interrupted and the line to resume it is printed).
    """
    config = parse_arguments(argv)
    set_progress(config.progress)
    from src.training.signals import StopSignal, stop_on_signals
    from src.training.train import is_local_zero

    with stop_on_signals():
        try:
            results = train(config)
        except KeyboardInterrupt:
            return StopSignal.exit_status()
        except (FileNotFoundError, ValueError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
    if is_local_zero():
        print(format_results(results))
        if results.get("metrics_csv") and Path(results["metrics_csv"]).is_file():
            from src.visualization.figure_output import figure_file, figure_output
            from src.visualization.learning_curves import plot_learning_curves

            metrics_csv = Path(results["metrics_csv"])
            with figure_output(config):
                curves = figure_file(metrics_csv.with_name("learning_curves.png"))
                title = f"run {results['run_name']}: learning curves"
                plot_learning_curves({results["run_name"]: metrics_csv}, title, curves)
            print(f"  learning curves: {curves}")
    return 0


def shown(path: str | Path) -> str:
    """A path as the user would type it: relative to the current folder when inside it."""
    path = Path(path)
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


SUMMARY_METRICS = ("f1_class1", "acc_overall", "iou_macro", "f1_macro", "auroc_macro", "loss")


def format_results(results: dict[str, Any]) -> str:
    """The run's checkpoints and its main validation/test metrics, rounded, a few lines."""
    if results.get("fast_dev_run"):
        return (
            f"run {results['run_name']}: --fast_dev_run ran one training and one validation "
            f"batch; no checkpoint, log or status was written"
        )
    score, best_epoch = results["best_model_score"], results.get("best_epoch")
    last_epoch = results.get("last_epoch")
    best = shown(results["best_model_path"]) if results["best_model_path"] else None
    lines = [
        f"run {results['run_name']}",
        f"  best checkpoint: {best or 'none (no validation)'}"
        + ("" if score is None else f" (epoch {best_epoch}, {results['monitor']} {score:.4f})"),
        f"  last checkpoint: {shown(results['last_model_path'])} (epoch {last_epoch})",
    ]
    labels = {
        "val": f"val, last epoch ({last_epoch}), {OPTIMISTIC}: these tiles chose the best "
        f"epoch and when to stop",
        "test": f"test, {results.get('test_checkpoint', 'best')} checkpoint, held out",
    }
    for stage in ("val", "test"):
        values = [f"{m} {results[f'{stage}_{m}']:.4f}" for m in SUMMARY_METRICS
                 if f"{stage}_{m}" in results]  # fmt: skip
        if values:
            lines.append(f"  {labels[stage]}:")
            lines.append(f"    {stage}: " + "  ".join(values))
            per_class = [results.get(f"{stage}_f1_class{k}") for k in range(1, 5)]
            if None not in per_class:
                lines.append(
                    f"    {stage} F1 of classes 1-4: " + " ".join(f"{v:.4f}" for v in per_class)
                )
    if results.get("metrics_csv"):
        lines.append(f"  every metric, per epoch: {shown(results['metrics_csv'])}")
    return "\n".join(lines)


if __name__ == "__main__":
    from src.shutdown import finish

    sys.exit(finish(main()))
