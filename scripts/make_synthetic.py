"""Write a synthetic DFC2021 Track DSE data set with the contest's layout.

    python -m scripts.make_synthetic --out data/synthetic --n_tiles 12 --seed 0 [--tile_px 800]
        [--unlabelled 24]

writes OUT/Train/Tile1 … TileN, each with the 98 single-band rasters, groundTruth.tif and
groundTruthRGB.png under the real file names (see src/esd_data/synthetic.py), and after them
`--unlabelled` tiles of the same distribution without ground truth (they prepare into the
predict split, as the contest's unlabelled Val/ and Test/ tiles).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as `python scripts/NAME.py`, not `python -m scripts.NAME`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src.cli import check_field_types, config_field, parse_config
from src.esd_data.sensors import LABEL_GRID
from src.esd_data.synthetic import generate_synthetic_dataset


@dataclass
class SyntheticConfig:
    """Generate synthetic DFC2021 Track DSE tiles (real file names, dtypes and value ranges)."""

    out: Path | None = config_field(
        None, "output folder (required); tiles are written to OUT/Train/Tile1 … TileN"
    )
    n_tiles: int = config_field(12, "number of labelled tiles to write (at least 1)")
    unlabelled: int = config_field(
        0, "tiles without ground truth written after the labelled ones (the predict split)"
    )
    seed: int = config_field(0, "random seed; the same seed gives byte-identical files")
    tile_px: int = config_field(
        800, f"tile side in pixels, a positive multiple of {LABEL_GRID} (the real tiles: 800)"
    )

    def __post_init__(self) -> None:
        check_field_types(self)
        if self.out is None:
            raise ValueError("--out is required: the folder to write Train/Tile1 … TileN into")
        self.out = Path(self.out)
        if isinstance(self.tile_px, bool) or not isinstance(self.tile_px, int):
            raise ValueError(f"tile_px must be an integer, got {self.tile_px!r}")
        if self.tile_px <= 0 or self.tile_px % LABEL_GRID:
            raise ValueError(
                f"tile_px must be a positive multiple of {LABEL_GRID} "
                f"(one label cell = tile_px/{LABEL_GRID} pixels), got {self.tile_px}"
            )
        if isinstance(self.n_tiles, bool) or not isinstance(self.n_tiles, int) or self.n_tiles < 1:
            raise ValueError(f"n_tiles must be an integer of at least 1, got {self.n_tiles!r}")
        if self.unlabelled < 0:
            raise ValueError(f"unlabelled must be 0 or more, got {self.unlabelled}")


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the options, write the tiles, print one line per tile and a summary."""
    config = parse_config(SyntheticConfig, argv)
    assert config.out is not None  # checked in __post_init__
    start = time.perf_counter()
    total_bytes = 0

    def report(tile_dir: Path, n_bytes: int) -> None:
        nonlocal total_bytes
        total_bytes += n_bytes
        elapsed = time.perf_counter() - start
        print(f"{tile_dir}: {n_bytes / 1e6:.1f} MB ({elapsed:.1f} s elapsed)", flush=True)

    tiles = generate_synthetic_dataset(
        config.out, config.n_tiles, config.seed, config.tile_px, progress=report,
        unlabelled=config.unlabelled,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    unlabelled = f" ({config.unlabelled} without ground truth)" if config.unlabelled else ""
    print(
        f"wrote {len(tiles)} tiles{unlabelled} of {config.tile_px}×{config.tile_px} px (seed "
        f"{config.seed}) to {config.out / 'Train'}: {total_bytes / 1e6:.1f} MB in {seconds:.1f} s"
    )
    return 0


if __name__ == "__main__":
    from src.shutdown import finish

    raise SystemExit(finish(main()))
