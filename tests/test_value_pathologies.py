"""A value-pathology corpus on the real Tile1: what real products hold prepares, with a warning
naming each file and its pixel count, and trains with finite losses, in both recipes.

One copy of Tile1 carries every pathology, each in its own file (so one preparation per recipe
checks them all): a VIIRS date that is fill everywhere, Sentinel-2 pixels saturated at the
uint16 maximum, a constant Landsat 8 band, Landsat 8 fill outside the scene footprint, extreme
Sentinel-1 outliers, Sentinel-2 pixels without data in a 10 m band, and NaN and inf in each
float sensor (Sentinel-1, Landsat 8; the uint16 products, VIIRS and Sentinel-2, cannot hold
them and mark no data with their fill values).
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile

from src.esd_data.cache import prepare_dataset
from src.esd_data.preprocessing import PreprocessConfig
from src.esd_data.reader import NoDataWarning
from src.training.train import train
from tests.conftest import replace_with_copy
from tests.shared_runs import tiny

pytestmark = [pytest.mark.real_data, pytest.mark.usefixtures("one_torch_thread")]


def corrupt(tile: Path, name: str, change) -> None:
    """Replace the link `tile/name` by a copy whose pixels `change(values)` edits."""
    path = replace_with_copy(tile / name)
    values = tifffile.imread(path)
    change(values)
    tifffile.imwrite(path, values)


def _fill(value):
    def change(values):
        values[...] = value

    return change


def _saturate(values):
    values[100:110, 100:120] = 65535  # 200 saturated Sentinel-2 pixels: a measurement


def _footprint(values):
    values[:, :40] = 0.0  # Landsat 8 fill outside the scene: 800 × 40 pixels


def _s2_no_data(values):
    values[200:210, 300:305] = 0  # 50 Sentinel-2 pixels without data in a 10 m band


def _outliers(values):
    values[::100, ::100] = 1e30  # 64 absurd Sentinel-1 backscatters


def _nan_and_inf(values):
    values[:3, :3] = np.nan  # 9 NaN
    values[500, 500] = np.inf  # and 1 inf


PATHOLOGIES = {
    "DNB_VNP46A1_A2020224.tif": _fill(65535),  # a VIIRS date that is fill everywhere
    "L2A_20200816_B03.tif": _saturate,
    "L2A_20200826_B04.tif": _s2_no_data,
    "LC08_L1TP_2020-07-29_B2.tif": _fill(7000.0),  # a constant band
    "LC08_L1TP_2020-08-14_B5.tif": _footprint,
    "LC08_L1TP_2020-08-30_B7.tif": _nan_and_inf,
    "S1A_IW_GRDH_20200804_VH.tif": _outliers,
    "S1A_IW_GRDH_20200816_VV.tif": _nan_and_inf,
}
"""Each corrupted file and its pathology."""


@pytest.fixture(scope="module")
def corpus(real_train_dir, tmp_path_factory) -> Path:
    """Tile1 with every pathology, and a clean Tile2 (Tile1's pixels) to validate on."""
    raw = tmp_path_factory.mktemp("corpus") / "raw" / "Train"
    for tile in ("Tile1", "Tile2"):
        (raw / tile).mkdir(parents=True)
        for source in (real_train_dir / "Tile1").iterdir():
            (raw / tile / source.name).symlink_to(source)
    for name, change in PATHOLOGIES.items():
        corrupt(raw / "Tile1", name, change)
    return raw.parent


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["course", "physical"])
def test_every_pathology_prepares_with_counts_and_trains_finite(corpus, tmp_path, recipe):
    processed = tmp_path / "processed"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # the physical recipe (Galileo's) with the validity channels that Galileo masks with
        preprocessing = PreprocessConfig(recipe=recipe, valid_masks=recipe == "physical")
        prepare_dataset(corpus, processed, tile_size_gt=4, val_fraction=0.5, seed=0, workers=2,
                        preprocessing=preprocessing)  # fmt: skip
    messages = [str(w.message) for w in caught]
    summary = next(m for m in messages if m.startswith("no data filled"))
    for product in ("VNP46A1", "Landsat 8 L1", "Landsat 8 L1 (NaN/inf)", "Sentinel-1 GRD (NaN/inf)",
                    "Sentinel-2 L2A"):  # fmt: skip
        assert f"of {product}" in summary, summary
    assert sum(issubclass(w.category, NoDataWarning) for w in caught) == 1  # one line
    record = json.loads((processed / "tiles" / "Tile1.json").read_text())["no_data"]
    assert record["Tile1/DNB_VNP46A1_A2020224.tif"]["fill"] == 800 * 800
    assert record["Tile1/LC08_L1TP_2020-08-14_B5.tif"]["fill"] == 800 * 40
    assert record["Tile1/LC08_L1TP_2020-08-30_B7.tif"]["non_finite"] == 10
    assert record["Tile1/S1A_IW_GRDH_20200816_VV.tif"]["non_finite"] == 10
    assert "Tile1/L2A_20200816_B03.tif" not in record  # saturated is measured, not no data
    assert record["Tile1/L2A_20200826_B04.tif"]["fill"] == 50
    assert "Tile1/LC08_L1TP_2020-07-29_B2.tif" not in record  # constant is measured too
    if recipe == "physical":  # 65 535 does not fit the float16 cache: capped, counted
        capped = json.loads((processed / "tiles" / "Tile1.json").read_text())["capped"]
        assert capped == {"Tile1/L2A_20200816_B03.tif": 200}
        assert any(m.startswith("200 pixel(s) in 1 file(s) above 65504") for m in messages)
    stored = np.load(processed / "tiles" / "Tile1.npy")
    assert np.isfinite(stored).all()
    if recipe == "physical":
        _check_validity_channels(processed, stored)
    manifest = json.loads((processed / "manifest.json").read_text())
    assert all(map(math.isfinite, manifest["mean"] + manifest["std"]))
    train(tiny(processed, tmp_path, max_epochs=1, embedding_size=4), summary=False)
    (metrics,) = (tmp_path / "logs").rglob("metrics.csv")
    rows = list(csv.DictReader(metrics.open()))
    values = [float(r[k]) for r in rows for k in ("train_loss", "val_loss") if r.get(k)]
    assert len(values) >= 2 and all(map(math.isfinite, values)), values
    shutil.rmtree(processed)


def _check_validity_channels(processed: Path, stored: np.ndarray) -> None:
    """Each date's validity channel is 0 exactly where a band of it held no data: the planted
    pathologies, not the 193 pixels per date where Tile1's Sentinel-2 B01 and B09 (60 m) have
    none and every other band has data."""
    channels = json.loads((processed / "tiles" / "Tile1.json").read_text())["channels"]
    invalid = {
        name.removesuffix("/valid"): stored[i] == 0
        for i, name in enumerate(channels)
        if name.endswith("/valid")
    }
    assert len(invalid) == 9 + 4 + 4 + 3  # a channel per date of each sensor
    for date in invalid:
        values = np.unique(stored[channels.index(f"{date}/valid")])
        assert set(values.tolist()) <= {0.0, 1.0}, date
    assert invalid["viirs/2020-08-11"].all()  # fill everywhere
    footprint = np.zeros((800, 800), bool)
    footprint[:, :40] = True
    assert np.array_equal(invalid["landsat8/2020-08-14"], footprint)
    nan_and_inf = np.zeros((800, 800), bool)
    nan_and_inf[:3, :3] = nan_and_inf[500, 500] = True
    assert np.array_equal(invalid["landsat8/2020-08-30"], nan_and_inf)
    assert np.array_equal(invalid["sentinel1/2020-08-16"], nan_and_inf)
    assert not invalid["sentinel1/2020-08-04"].any()  # outliers are measurements
    s2_block = np.zeros((800, 800), bool)
    s2_block[200:210, 300:305] = True
    assert np.array_equal(invalid["sentinel2/2020-08-26"], s2_block)
    s2 = [
        m for d, m in invalid.items() if d.startswith("sentinel2/") and d != "sentinel2/2020-08-26"
    ]
    assert not any(mask.any() for mask in s2)  # saturation is a measurement; B01, B09 aside
    untouched = [
        m for d, m in invalid.items() if d.startswith("viirs/") and d != "viirs/2020-08-11"
    ]
    assert not any(mask.any() for mask in untouched)
