"""Validate, preprocess and cache raw DFC2021 tiles: `python -m scripts.prepare --raw_dir R`.

A cached tile is reused only after every pixel of its file is hashed and found to be the
recorded one (training and evaluation check a sample of each file, which is cheaper).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python scripts/NAME.py`, not `python -m scripts.NAME`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src.cli import check_field_types, config_field, parse_config
from src.esd_data.preparation import PrepareRequest
from src.progress import set_progress


@dataclass
class PrepareConfig:
    """Preprocess raw tiles into the processed cache (split, manifest, float16 arrays).

    Options left unset keep what an already prepared processed_dir has (the defaults for a
    new folder), so running it again never silently changes a folder.
    """

    raw_dir: Path = config_field(Path("data/raw"), "folder holding Train/TileN (or TileN) folders")
    processed_dir: Path = config_field(Path("data/processed"), "where the processed cache goes")
    tile_size_gt: int | None = config_field(
        None, "default label cells per subtile side (divides 16; None: the folder's, 4 if new)"
    )
    seed: int | None = config_field(
        None, "seed of the split of parent tiles (None: the folder's, 0 if new)"
    )
    val_fraction: float | None = config_field(
        None, "fraction of labelled tiles for validation (None: the folder's, 0.2 if new)"
    )
    test_fraction: float | None = config_field(
        None, "fraction of labelled tiles held out for testing (None: the folder's, 0.0 if new)"
    )
    workers: int = config_field(2, "worker processes preprocessing tiles in parallel")
    progress: bool | None = config_field(
        None, "progress bars (None: on a terminal only, never in a log file)"
    )
    preprocessing: dict[str, Any] | None = config_field(
        None,
        "overrides of PreprocessConfig fields, e.g. '{viirs_max_projection: false}' (None: the "
        "folder's, the defaults if new)",
    )

    def __post_init__(self) -> None:
        check_field_types(self)
        self.raw_dir, self.processed_dir = Path(self.raw_dir), Path(self.processed_dir)
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")
        self.request()

    def request(self) -> PrepareRequest:
        """The preparation these options ask for (validated)."""
        return PrepareRequest(
            preprocessing=self.preprocessing,
            split_seed=self.seed,
            val_fraction=self.val_fraction,
            test_fraction=self.test_fraction,
            tile_size_gt=self.tile_size_gt,
        )


def main(argv: list[str] | None = None) -> int:
    """Run the preparation; print a summary, or the problems and exit with status 1."""
    config = parse_config(PrepareConfig, argv)
    set_progress(config.progress)
    from src.esd_data.cache import PrepareError
    from src.esd_data.preparation import prepare_requested
    from src.esd_data.reader import TileError

    try:
        summary = prepare_requested(
            config.raw_dir, config.processed_dir, config.request(), config.workers, verify="full"
        )
    except (PrepareError, TileError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(summary)
    print(f"manifest: {config.processed_dir / 'manifest.json'}")
    return 0


if __name__ == "__main__":
    from src.shutdown import finish

    sys.exit(finish(main()))
