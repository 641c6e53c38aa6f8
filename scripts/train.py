"""Train a segmentation model: `python -m scripts.train --model_type=UNet [--help]`."""

from __future__ import annotations

import sys
from typing import Any

from src.cli import parse_config
from src.training.config import ESDConfig

__all__ = ["ESDConfig", "main", "train"]


def train(config: ESDConfig, extra_callbacks: list[Any] | None = None) -> dict[str, Any]:
    """`src.training.train.train`: prepare, train, test; the final metrics (see there)."""
    from src.training.train import train as run

    return run(config, extra_callbacks)


def main(argv: list[str] | None = None) -> int:
    """Parse ESDConfig from the command line, train, print the final metrics."""
    config = parse_config(ESDConfig, argv)
    from src.training.train import is_local_zero

    try:
        results = train(config)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if is_local_zero():
        print(format_results(results))
    return 0


def format_results(results: dict[str, Any]) -> str:
    """The run's checkpoints and its validation/test metrics, one per line."""
    score = results["best_model_score"]
    lines = [
        f"run {results['run_name']}",
        f"  best checkpoint: {results['best_model_path']} (score {score})",
        f"  last checkpoint: {results['last_model_path']}",
    ]
    for key in sorted(k for k in results if k.startswith(("val_", "test_"))):
        lines.append(f"  {key}: {results[key]:.4f}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
