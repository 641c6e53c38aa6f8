"""`python -m scripts.prepare` on bad raw data: clear error, non-zero exit, nothing trusted."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from src.esd_data.manifest import Manifest
from tests.conftest import replace_with_copy

ROOT = Path(__file__).resolve().parents[1]


def run_prepare(raw: Path, processed: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [
        sys.executable,
        "-m",
        "scripts.prepare",
        "--raw_dir",
        str(raw),
        "--processed_dir",
        str(processed),
        "--workers",
        "1",
        *extra,
    ]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)


def _missing_band(tile: Path) -> str:
    (tile / "L2A_20200826_B03.tif").unlink()
    return "L2A_20200826_B03.tif: missing sentinel2 band file"


def _unknown_tif(tile: Path) -> str:
    tifffile.imwrite(tile / "notes.tif", np.zeros((800, 800), np.uint16))
    return "notes.tif: unknown raster"


def _truncated(tile: Path) -> str:
    path = replace_with_copy(tile / "LC08_L1TP_2020-08-30_B7.tif")
    path.write_bytes(path.read_bytes()[: 800 * 800])
    return "LC08_L1TP_2020-08-30_B7.tif: truncated"


def _wrong_shape(tile: Path) -> str:
    path = tile / "DNB_VNP46A1_A2020237.tif"
    path.unlink()
    tifffile.imwrite(path, np.zeros((800, 640), np.uint16))
    return "DNB_VNP46A1_A2020237.tif: shape (800, 640)"


def _bad_labels(tile: Path) -> str:
    path = tile / "groundTruth.tif"
    labels = tifffile.imread(path)
    path.unlink()
    labels[5, 5] = 9
    tifffile.imwrite(path, labels)
    return "groundTruth.tif: labels [9] outside 1..4"


@pytest.mark.real_data
@pytest.mark.parametrize(
    "damage", [_missing_band, _unknown_tif, _truncated, _wrong_shape, _bad_labels]
)
def test_bad_tile_fails_clearly_and_leaves_nothing_trusted(real_tile_copy, tmp_path, damage):
    expected = damage(real_tile_copy)
    processed = tmp_path / "processed"
    result = run_prepare(real_tile_copy.parents[1], processed)
    assert result.returncode != 0
    assert "tile Tile1" in result.stderr and expected in result.stderr, result.stderr
    assert not (processed / "manifest.json").exists()
    assert not list(processed.rglob("Tile1.npy")) and not list(processed.rglob("Tile1.json"))
    with pytest.raises(FileNotFoundError):
        Manifest.load(processed)


@pytest.mark.real_data
def test_damage_after_a_good_run_removes_the_stale_manifest(real_tile_copy, tmp_path):
    processed = tmp_path / "processed"
    assert run_prepare(real_tile_copy.parents[1], processed, "--val_fraction", "0").returncode == 0
    assert Manifest.load(processed).split["train"] == ["Tile1"]
    _missing_band(real_tile_copy)
    result = run_prepare(real_tile_copy.parents[1], processed, "--val_fraction", "0")
    assert result.returncode != 0 and "L2A_20200826_B03.tif" in result.stderr
    assert not (processed / "manifest.json").exists()


def test_empty_and_missing_raw_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    for raw, message in [
        (tmp_path / "empty", "no TileN folders"),
        (tmp_path / "absent", "does not exist"),
    ]:
        result = run_prepare(raw, tmp_path / "processed")
        assert result.returncode != 0
        assert message in result.stderr and str(raw) in result.stderr
        assert not (tmp_path / "processed" / "manifest.json").exists()


def test_invalid_option_value_is_rejected(tmp_path):
    result = run_prepare(tmp_path, tmp_path / "processed", "--tile_size_gt", "3")
    assert result.returncode == 2
    assert "tile_size_gt=3 must divide" in result.stderr


def test_the_seed_reaches_the_split_in_every_data_command(synthetic_raw, tmp_path):
    from src.esd_data.split import split_tiles
    from src.training.config import ESDConfig
    from src.training.train import build_datamodule

    tiles = [f"Tile{n}" for n in range(1, 13)]
    fractions = ("--val_fraction", "0.25", "--test_fraction", "0.25")
    expected = split_tiles(tiles, 5, 0.25, 0.25)
    assert expected != split_tiles(tiles, 0, 0.25, 0.25)  # the seed matters for this data

    result = run_prepare(synthetic_raw, tmp_path / "prepared", "--seed", "5", *fractions)
    assert result.returncode == 0, result.stderr
    manifest = Manifest.load(tmp_path / "prepared")
    assert manifest.seed == 5 and {k: manifest.split[k] for k in expected} == expected

    def split_of_training(folder: str, **options) -> dict[str, list[str]]:
        config = ESDConfig(
            raw_dir=synthetic_raw,
            processed_dir=tmp_path / folder,
            val_fraction=0.25,
            test_fraction=0.25,
            prepare_workers=1,
            **options,
        )
        build_datamodule(config).prepare_data()
        split = Manifest.load(tmp_path / folder).split
        return {k: split[k] for k in expected}

    assert split_of_training("trained", seed=5) == expected  # a new folder: the run's seed
    assert split_of_training("split_seed", seed=0, split_seed=5) == expected
    assert split_of_training("trained", seed=9) == expected  # a prepared folder keeps its split
