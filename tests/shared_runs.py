"""Runs that several test modules read: a tiny training configuration and the ablation
cross-validation (trained once per session through the `ablation` fixture of conftest)."""

from __future__ import annotations

from pathlib import Path

import lightning as L

from src.cross_validation.config import CVConfig
from src.cross_validation.run import cross_validate
from src.training.config import ESDConfig


def tiny(processed: Path, tmp_path: Path, **overrides) -> ESDConfig:
    values = {
        "raw_dir": None, "processed_dir": processed, "model_type": "SegmentationCNN",
        "embedding_size": 8, "depth": 1, "max_epochs": 4, "num_workers": 0,
        "wandb_mode": "disabled", "learning_rate": 0.05, "checkpoint_dir": tmp_path / "ckpt",
        "log_dir": tmp_path / "logs", "scheduler": "none",
    }  # fmt: skip
    return ESDConfig(**{**values, **overrides})


class CountTrainings(L.Callback):
    def __init__(self) -> None:
        self.count = 0

    def on_train_start(self, trainer, module):
        self.count += 1


ABLATION_BANDS = {"sentinel1": None, "sentinel2": ["B04", "B08"], "viirs": None}


def ablation_run(processed: Path, out: Path, callbacks=None) -> dict:
    """A 2-fold cross-validation of SegmentationCNN on Sentinel-1, Sentinel-2 and VIIRS, with
    every sensor left out and every sensor alone (7 variants, 14 trainings)."""
    config = tiny(processed, out, bands=ABLATION_BANDS, embedding_size=8, max_epochs=10,
                  batch_size=32)  # fmt: skip
    cv = CVConfig(folds=2, model_type=["SegmentationCNN"], ablate="sensors", selection="last",
                  output_dir=out / "cv", bootstrap_resamples=300)  # fmt: skip
    return cross_validate(cv, config, log=lambda _: None, extra_callbacks=callbacks)
