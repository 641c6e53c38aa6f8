"""Evaluate a checkpoint on whole tiles: `python -m scripts.evaluate [--model_path CKPT]`."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from src.cli import config_field, parse_config
from src.esd_data.manifest import Manifest
from src.esd_data.subtiles import check_tile_size_gt
from src.evaluation.evaluator import (
    CheckpointError,
    check_compatible,
    load_checkpoint,
    newest_best_checkpoint,
    predict_tiles,
)
from src.evaluation.report import (
    format_table,
    true_colour_image,
    write_run_outputs,
    write_tile_outputs,
)


@dataclass
class EvalConfig:
    """Restitch a model's predictions per parent tile; write images, predictions, metrics."""

    model_path: Path | None = config_field(
        None, "checkpoint (default: the newest best-*.ckpt under checkpoint_dir)"
    )
    checkpoint_dir: Path = config_field(Path("checkpoints"), "where scripts.train put checkpoints")
    processed_dir: Path = config_field(Path("data/processed"), "prepared data (scripts.prepare)")
    split: Literal["val", "test", "predict", "train"] = config_field(
        "val", "tiles to evaluate; `predict`: tiles without ground truth (predictions only)"
    )
    results_dir: Path | None = config_field(
        None, "output folder (default: data/predictions/<model_type>/)"
    )
    tile_size_gt: int | None = config_field(
        None, "label cells per window side (default: the checkpoint's)"
    )
    restitch: Literal["grid", "overlap"] = config_field(
        "grid", "grid: subtiles as cut; overlap: sliding windows, logits averaged per cell"
    )
    stride_gt: int | None = config_field(None, "window stride for overlap (default: half a window)")
    batch_size: int = config_field(16, "windows per forward pass")
    accelerator: Literal["auto", "cpu", "cuda", "mps"] = config_field(
        "auto", "device to run the model on"
    )

    def __post_init__(self) -> None:
        for name in ("model_path", "checkpoint_dir", "processed_dir", "results_dir"):
            value = getattr(self, name)
            setattr(self, name, None if value is None else Path(value))
        if self.tile_size_gt is not None:
            check_tile_size_gt(self.tile_size_gt)
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")

    def device(self) -> torch.device:
        """The torch device for `accelerator` (auto: CUDA, then MPS, then CPU)."""
        if self.accelerator != "auto":
            return torch.device(self.accelerator)
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if torch.backends.mps.is_available() else "cpu")


def evaluate(config: EvalConfig) -> dict:
    """Predict, restitch and write every output; return the metrics written to metrics.json."""
    model_path = config.model_path or newest_best_checkpoint(config.checkpoint_dir)
    device = config.device()
    module = load_checkpoint(model_path, device)
    manifest = Manifest.load(config.processed_dir)
    check_compatible(module, manifest, config.processed_dir)
    tile_size_gt = config.tile_size_gt or module.hparams.tile_size_gt
    stride = None
    if config.restitch == "overlap":
        stride = config.stride_gt or max(1, tile_size_gt // 2)
    results_dir = config.results_dir or Path("data/predictions") / module.hparams.model_type
    predictions = predict_tiles(
        module, config.processed_dir, config.split, tile_size_gt, stride, config.batch_size, device
    )
    per_tile = [
        write_tile_outputs(
            results_dir, p, true_colour_image(config.processed_dir, manifest, p.tile)
        )
        for p in predictions
    ]
    info = {
        "model_path": str(model_path),
        "model_type": module.hparams.model_type,
        "split": config.split,
        "restitch": config.restitch,
        "tile_size_gt": tile_size_gt,
        "stride_gt": stride or tile_size_gt,
    }
    return write_run_outputs(results_dir, predictions, per_tile, info) | {
        "results_dir": str(results_dir)
    }


def main(argv: list[str] | None = None) -> int:
    """Parse EvalConfig, evaluate, print the table and where the files are."""
    config = parse_config(EvalConfig, argv)
    try:
        metrics = evaluate(config)
    except (CheckpointError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    results_dir = Path(metrics["results_dir"])
    print(format_table(metrics))
    print(f"model: {metrics['model_path']}")
    print(f"wrote {len(metrics['tiles'])} tile images to {results_dir / 'tiles'}/")
    for tile in metrics["tiles"]:
        print(f"  {results_dir / 'tiles' / (tile['tile'] + '.png')}")
    for name in (
        "metrics.json",
        "predictions.csv",
        "confusion_matrix.png",
        "roc_curves.png",
        "classification_report.txt",
    ):
        if (results_dir / name).exists():
            print(f"  {results_dir / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
