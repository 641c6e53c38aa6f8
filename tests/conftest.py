"""Shared fixtures: the real DFC2021 tile (via ESD_REAL_DATA_DIR) and small synthetic data sets."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from src.esd_data.cache import prepare_dataset
from src.esd_data.synthetic import generate_synthetic_dataset

REAL_DATA_VARIABLE = "ESD_REAL_DATA_DIR"


@pytest.fixture(scope="session")
def real_train_dir() -> Path:
    """The folder holding the real `Tile1` (CI points ESD_REAL_DATA_DIR at ../shared)."""
    value = os.environ.get(REAL_DATA_VARIABLE)
    if not value:
        pytest.skip(
            f"{REAL_DATA_VARIABLE} is not set: it must point at a folder with the real Tile1"
        )
    folder = Path(value)
    if not (folder / "Tile1").is_dir():
        pytest.skip(f"{REAL_DATA_VARIABLE}={folder} holds no Tile1 folder")
    return folder


@pytest.fixture
def real_tile_copy(real_train_dir: Path, tmp_path: Path) -> Path:
    """A writable raw folder `tmp/raw/Train/Tile1` whose files link to the real tile's.

    Tests that damage a file must first replace its link (`replace_with_copy`).
    """
    tile = tmp_path / "raw" / "Train" / "Tile1"
    tile.mkdir(parents=True)
    for source in (real_train_dir / "Tile1").iterdir():
        (tile / source.name).symlink_to(source)
    return tile


def replace_with_copy(link: Path) -> Path:
    """Turn a link made by `real_tile_copy` into a private, writable copy of the file."""
    source = link.resolve()
    link.unlink()
    shutil.copyfile(source, link)
    return link


@pytest.fixture(scope="session")
def synthetic_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Twelve synthetic 64-pixel tiles (4 px per label cell), shared read-only by tests."""
    out = tmp_path_factory.mktemp("synthetic") / "raw"
    generate_synthetic_dataset(out, n_tiles=12, seed=0, tile_px=64)
    return out


@pytest.fixture(scope="session")
def synthetic_processed(synthetic_raw: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The prepared cache of `synthetic_raw` (t=4, 25 % validation tiles), read-only."""
    processed = tmp_path_factory.mktemp("processed")
    prepare_dataset(synthetic_raw, processed, tile_size_gt=4, val_fraction=0.25, workers=1)
    return processed


@pytest.fixture
def synthetic_copy(synthetic_raw: Path, tmp_path: Path) -> Path:
    """A private copy of the synthetic raw folder that a test may change."""
    return Path(shutil.copytree(synthetic_raw, tmp_path / "raw"))


@pytest.fixture
def one_torch_thread(monkeypatch: pytest.MonkeyPatch):
    """torch on one thread, here and in the processes the test starts (OMP_NUM_THREADS=1).

    On a 2-core machine that also runs other work (a second process, DDP ranks, sweep
    workers), two OpenMP threads per process spin against each other and make the tiny
    trainings of the tests many times slower; one thread computes the same results.
    Opt-in (`pytestmark = pytest.mark.usefixtures("one_torch_thread")`); restored after.
    """
    import torch

    before = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def ablation(synthetic_processed: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """`tests.shared_runs.ablation_run` on the shared synthetic data, once per session (the
    paper-results and held-out-matrix tests read it)."""
    from tests.shared_runs import ablation_run

    return ablation_run(synthetic_processed, tmp_path_factory.mktemp("ablation"))
