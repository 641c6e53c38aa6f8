"""Validate, preprocess and cache raw DFC2021 tiles: `python -m scripts.prepare --raw_dir R`."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from src.cli import config_field, parse_config
from src.esd_data.cache import PrepareError, prepare_dataset
from src.esd_data.preprocessing import PreprocessConfig
from src.esd_data.reader import TileError
from src.esd_data.subtiles import check_tile_size_gt


@dataclass
class PrepareConfig:
    """Preprocess raw tiles into the processed cache (split, manifest, float16 arrays)."""

    raw_dir: Path = config_field(Path("data/raw"), "folder holding Train/TileN (or TileN) folders")
    processed_dir: Path = config_field(Path("data/processed"), "where the processed cache goes")
    tile_size_gt: int = config_field(4, "label cells per subtile side (divides 16)")
    seed: int = config_field(0, "seed of the split of parent tiles")
    val_fraction: float = config_field(0.2, "fraction of labelled tiles for validation")
    test_fraction: float = config_field(0.0, "fraction of labelled tiles held out for testing")
    workers: int = config_field(2, "worker processes preprocessing tiles in parallel")
    preprocessing: dict[str, Any] = config_field(
        {}, "overrides of PreprocessConfig fields, e.g. '{viirs_max_projection: false}'"
    )

    def __post_init__(self) -> None:
        self.raw_dir, self.processed_dir = Path(self.raw_dir), Path(self.processed_dir)
        check_tile_size_gt(self.tile_size_gt)
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")
        self.preprocess_config()

    def preprocess_config(self) -> PreprocessConfig:
        """The PreprocessConfig these overrides describe."""
        try:
            return PreprocessConfig.from_dict(self.preprocessing)
        except TypeError as error:
            raise ValueError(f"preprocessing: {error}") from error


def main(argv: list[str] | None = None) -> int:
    """Run the preparation; print a summary, or the problems and exit with status 1."""
    config = parse_config(PrepareConfig, argv)
    try:
        summary = prepare_dataset(
            config.raw_dir,
            config.processed_dir,
            config.tile_size_gt,
            config.seed,
            config.val_fraction,
            config.test_fraction,
            config.workers,
            config.preprocess_config(),
        )
    except (PrepareError, TileError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(summary)
    print(f"manifest: {config.processed_dir / 'manifest.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
