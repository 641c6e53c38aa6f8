"""Spectral indices (NDVI, NDBI, NDWI) as derived channels of the preprocessing.

The references here are written from the definitions, with their own band table, and read
the real Tile1's raw TIFFs with tifffile (not with `src.esd_data.reader`): per date,
index = (a − b) / (a + b) of the raw values in float64, 0 where a + b = 0, stored as
(index + 1) / 2. The code under test computes in float32 (exact sums and differences of the
integer data, one rounding each for the division and the + 1: errors below 2e-7, hence
ATOL_FLOAT32 = 1e-6); the prepared cache is float16, whose rounding of values in [0.5, 1) is
at most 2^-12 ≈ 2.44e-4 (ATOL_FLOAT16 = 2.5e-4). A wrong band, a swapped pair, a missing
(x + 1) / 2 or an index of the scaled bands moves values by 1e-2 or much more.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from scripts.prepare import PrepareConfig
from src.cli import parse_config
from src.esd_data.cache import prepare_dataset, tile_fingerprint
from src.esd_data.manifest import Manifest, check_band_selection
from src.esd_data.preparation import PrepareRequest, prepare_requested
from src.esd_data.preprocessing import PreprocessConfig, preprocess_tile
from src.esd_data.reader import RawTile, read_tile
from src.training.config import ESDConfig
from src.training.train import train
from tests.preprocessing_reference import with_data

# One torch thread per process (see conftest): the same results, without OpenMP contention.
pytestmark = pytest.mark.usefixtures("one_torch_thread")

ATOL_FLOAT32 = 1e-6
ATOL_FLOAT16 = 2.5e-4
ALL = ("NDVI", "NDBI", "NDWI")

# index → sensor → (a, b): index = (a − b) / (a + b). Green, Red, NIR, SWIR1 are B03, B04,
# B08, B11 on Sentinel-2 and B3, B4, B5, B6 on Landsat 8.
PAIRS = {
    "NDVI": {"sentinel2": ("B08", "B04"), "landsat8": ("B5", "B4")},
    "NDBI": {"sentinel2": ("B11", "B08"), "landsat8": ("B6", "B5")},
    "NDWI": {"sentinel2": ("B03", "B08"), "landsat8": ("B3", "B5")},
}
S2_BANDS = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12"]
L8_BANDS = [f"B{i}" for i in range(1, 12)]
S2_DATES = ["2020-08-11", "2020-08-16", "2020-08-26", "2020-08-31"]
L8_DATES = ["2020-07-29", "2020-08-14", "2020-08-30"]


def ref_index(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(a − b) / (a + b) in float64, 0 where a + b = 0, mapped from [−1, 1] to [0, 1]."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    total = a + b
    index = np.zeros_like(total)
    np.divide(a - b, total, out=index, where=total != 0)
    return (index + 1.0) / 2.0


def raw_file(tile_dir: Path, sensor: str, date: str, band: str) -> Path:
    day = dt.date.fromisoformat(date)
    if sensor == "sentinel2":
        return tile_dir / f"L2A_{day:%Y%m%d}_{band}.tif"
    return tile_dir / f"LC08_L1TP_{date}_{band}.tif"


def raw_dates(tile_dir: Path, sensor: str) -> list[str]:
    """ISO dates of a sensor's files in a tile folder, from the file names."""
    if sensor == "sentinel2":
        found = [re.fullmatch(r"L2A_(\d{8})_B04\.tif", p.name) for p in tile_dir.iterdir()]
        return sorted(dt.datetime.strptime(m[1], "%Y%m%d").date().isoformat() for m in found if m)
    found = [re.fullmatch(r"LC08_L1TP_(\S{10})_B4\.tif", p.name) for p in tile_dir.iterdir()]
    return sorted(m[1] for m in found if m)


def raw_reference(tile_dir: Path, indices=ALL) -> dict[str, np.ndarray]:
    """Channel name → float64 (H, W) reference, for every index of both sensors and dates."""
    out = {}
    for sensor in ("sentinel2", "landsat8"):
        for date in raw_dates(tile_dir, sensor):
            for name in indices:
                a, b = (
                    tifffile.imread(raw_file(tile_dir, sensor, date, band))
                    for band in PAIRS[name][sensor]
                )
                assert np.isfinite(a).all() and np.isfinite(b).all()  # Tile1 has no NaN
                out[f"{sensor}/{date}/{name}"] = ref_index(a, b)
    return out


def expected_channels(indices: tuple[str, ...] = ()) -> list[str]:
    """The documented channel order: sensors, dates, bands, then each date's indices."""
    viirs_days = ["08", "11", "12", "13", "14", "18", "22", "23", "24"]
    names = [f"viirs/2020-08-{d}/DNB" for d in viirs_days] + ["viirs/max/DNB"]
    names += [
        f"sentinel1/{d}/{b}"
        for d in ("2020-07-23", "2020-08-04", "2020-08-16", "2020-08-28")
        for b in ("VV", "VH")
    ]
    names += [f"sentinel2/{d}/{b}" for d in S2_DATES for b in [*S2_BANDS, *indices]]
    names += [f"landsat8/{d}/{b}" for d in L8_DATES for b in [*L8_BANDS, *indices]]
    return names


def compare(stack: np.ndarray, names: list[str], expected: dict[str, np.ndarray], atol: float):
    bad = []
    for name, plane in expected.items():
        error = float(np.max(np.abs(stack[names.index(name)].astype(np.float64) - plane)))
        if not error <= atol:
            bad.append(f"{name}: max |error| {error:.3g}")
    assert not bad, "index channels off the numpy reference:\n" + "\n".join(bad)


# --- the real Tile1 ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_reference(real_train_dir) -> dict[str, np.ndarray]:
    return raw_reference(real_train_dir / "Tile1")


@pytest.mark.real_data
def test_real_tile_indices_equal_numpy_in_float32(real_train_dir, real_reference):
    tile = read_tile(real_train_dir / "Tile1")
    stack, names = preprocess_tile(tile, PreprocessConfig(spectral_indices=ALL))
    assert names == expected_channels(ALL) and stack.shape == (120, 800, 800)
    assert len(real_reference) == 3 * (4 + 3)
    compare(stack, names, real_reference, ATOL_FLOAT32)
    # The indices carry information: not constant, not all at the neutral 0.5.
    for name in real_reference:
        assert stack[names.index(name)].std() > 0.01, name


@pytest.mark.real_data
def test_real_tile_prepared_cache_holds_the_indices_and_unchanged_bands(
    real_train_dir, real_reference, tmp_path
):
    config = PreprocessConfig(spectral_indices=("NDBI", "NDVI"))
    summary = prepare_dataset(
        real_train_dir, tmp_path, val_fraction=0.0, workers=1, preprocessing=config
    )
    channels = summary.manifest.channels
    assert channels == expected_channels(("NDVI", "NDBI"))  # table order, not the order given
    assert len(channels) == 99 + 2 * 7
    stored = np.load(tmp_path / "tiles" / "Tile1.npy", mmap_mode="r")
    assert stored.dtype == np.float16 and stored.shape == (113, 800, 800)
    wanted = {k: v for k, v in real_reference.items() if not k.endswith("/NDWI")}
    compare(stored, channels, wanted, ATOL_FLOAT16)
    # Every other channel is bit for bit what the preprocessing without indices stores.
    plain, plain_names = preprocess_tile(
        read_tile(real_train_dir / "Tile1"), PreprocessConfig(), dtype=np.float16
    )
    assert plain_names == expected_channels()
    kept = [channels.index(name) for name in plain_names]
    np.testing.assert_array_equal(stored[kept], plain)


# --- synthetic and in-memory data ----------------------------------------------------------


@pytest.fixture(scope="module")
def synthetic_tile(synthetic_raw) -> RawTile:
    return read_tile(synthetic_raw / "Train" / "Tile1")


def test_zero_denominator_gives_zero_and_non_finite_pixels_are_filled_first(synthetic_tile):
    s2 = synthetic_tile.sensors["sentinel2"].data.copy()
    l8 = synthetic_tile.sensors["landsat8"].data.copy()
    b03, b04, b08, b11 = (S2_BANDS.index(b) for b in ("B03", "B04", "B08", "B11"))
    s2[0, [b04, b08], :5, :5] = 0  # NDVI: 0 / 0 on 25 pixels of the first date
    s2[0, b11, :3, :3] = 0  # NDBI: 0 / 0 on 9 of them
    s2[2, [b03, b08], -2:, -2:] = 0  # NDWI: 0 / 0 on the third date
    l4, l5, l6 = (L8_BANDS.index(b) for b in ("B4", "B5", "B6"))
    l8[1, [l4, l5], 10:14, 20:24] = 0.0  # Landsat NDVI: 0 / 0 on the second date
    l8[2, l6, 7, 9] = np.nan  # filled with the plane median before the index
    l8[2, l6, 8, 8] = np.inf

    filled = l8.astype(np.float64)
    plane = filled[2, l6]
    plane[~np.isfinite(plane)] = np.median(plane[np.isfinite(plane)])
    expected = {}
    for name, pair in PAIRS.items():
        for t, date in enumerate(S2_DATES):
            a, b = (s2[t, S2_BANDS.index(band)] for band in pair["sentinel2"])
            expected[f"sentinel2/{date}/{name}"] = ref_index(a, b)
        for t, date in enumerate(L8_DATES):
            a, b = (filled[t, L8_BANDS.index(band)] for band in pair["landsat8"])
            expected[f"landsat8/{date}/{name}"] = ref_index(a, b)

    tile = with_data(synthetic_tile, sentinel2=s2, landsat8=l8)
    stack, names = preprocess_tile(tile, PreprocessConfig(spectral_indices=ALL))
    assert np.isfinite(stack).all() and stack.min() >= 0.0 and stack.max() <= 1.0
    ndvi = stack[names.index("sentinel2/2020-08-11/NDVI")]
    assert (ndvi[:5, :5] == 0.5).all()  # index 0, stored as (0 + 1) / 2
    assert (stack[names.index("sentinel2/2020-08-11/NDBI")][:3, :3] == 0.5).all()
    assert (stack[names.index("sentinel2/2020-08-26/NDWI")][-2:, -2:] == 0.5).all()
    assert (stack[names.index("landsat8/2020-08-14/NDVI")][10:14, 20:24] == 0.5).all()
    compare(stack, names, expected, ATOL_FLOAT32)


def test_channel_names_and_count(synthetic_tile):
    stack, names = preprocess_tile(synthetic_tile, PreprocessConfig(spectral_indices=ALL))
    assert names == expected_channels(ALL)
    assert len(names) == 99 + 3 * (4 + 3) == 120 and stack.shape == (120, 64, 64)
    assert names.index("sentinel2/2020-08-11/NDVI") == names.index("sentinel2/2020-08-11/B12") + 1
    _, plain = preprocess_tile(synthetic_tile, PreprocessConfig())
    assert plain == expected_channels() and len(plain) == 99
    one = PreprocessConfig(spectral_indices=("NDWI",), viirs_max_projection=False)
    _, names = preprocess_tile(synthetic_tile, one)
    assert len(names) == 98 + 7 and "viirs/max/DNB" not in names
    assert [n for n in names if n.endswith("NDWI")] == [
        *(f"sentinel2/{d}/NDWI" for d in S2_DATES),
        *(f"landsat8/{d}/NDWI" for d in L8_DATES),
    ]


def test_option_is_validated_normalised_and_round_trips():
    with pytest.raises(ValueError, match=r"unknown spectral index\(es\) 'EVI'.*NDVI, NDBI, NDWI"):
        PreprocessConfig(spectral_indices=("NDVI", "EVI"))
    with pytest.raises(ValueError, match=r"'ndvi'"):
        PreprocessConfig.from_dict({"spectral_indices": ["ndvi"]})
    config = PreprocessConfig.from_dict({"spectral_indices": ["NDWI", "NDBI", "NDVI", "NDBI"]})
    assert config.spectral_indices == ALL and config == PreprocessConfig(spectral_indices=ALL)
    assert config.to_dict()["spectral_indices"] == list(ALL)
    assert PreprocessConfig.from_dict(config.to_dict()) == config
    assert PreprocessConfig().spectral_indices == ()
    # Both commands take it through --preprocessing, and reject an unknown index.
    flags = ["--preprocessing", "{spectral_indices: [NDBI, NDVI]}"]
    prepare = parse_config(PrepareConfig, flags)
    assert prepare.request().resolve(None).preprocessing.spectral_indices == ("NDVI", "NDBI")
    training = parse_config(ESDConfig, [*flags, "--bands", "{sentinel2: [NDBI]}"])
    assert training.prepare_request().resolve(None).preprocessing.spectral_indices == (
        "NDVI",
        "NDBI",
    )
    with pytest.raises(ValueError, match="unknown spectral index"):
        PrepareRequest(preprocessing={"spectral_indices": ["SAVI"]})
    with pytest.raises(ValueError, match="unknown spectral index"):
        ESDConfig(preprocessing={"spectral_indices": ["SAVI"]}, wandb_mode="disabled")


def test_band_selection_accepts_indices_of_the_optical_sensors():
    check_band_selection({"sentinel2": ["NDBI"], "landsat8": ["NDVI"]})
    check_band_selection({"sentinel2": ["2020-08-11/NDBI", "B04"], "landsat8": ["NDWI"]})
    for bad in ({"viirs": ["NDVI"]}, {"sentinel1": ["NDBI"]}, {"sentinel2": ["EVI"]}):
        with pytest.raises(ValueError, match="has no band"):
            check_band_selection(bad)


def test_fingerprint_changes_with_the_option_and_the_folder_is_rebuilt(
    synthetic_raw, synthetic_processed, tmp_path
):
    tile_dir = synthetic_raw / "Train" / "Tile1"
    plain = tile_fingerprint(tile_dir, PreprocessConfig())
    ndvi = tile_fingerprint(tile_dir, PreprocessConfig(spectral_indices=("NDVI",)))
    both = tile_fingerprint(tile_dir, PreprocessConfig(spectral_indices=("NDVI", "NDBI")))
    assert len({plain, ndvi, both}) == 3
    assert both == tile_fingerprint(tile_dir, PreprocessConfig(spectral_indices=("NDBI", "NDVI")))

    processed = tmp_path / "processed"
    first = prepare_dataset(synthetic_raw, processed, val_fraction=0.25, workers=1)
    assert first.manifest.channels == expected_channels()
    lines: list[str] = []
    request = PrepareRequest(preprocessing={"spectral_indices": ["NDVI", "NDBI", "NDWI"]})
    second = prepare_requested(synthetic_raw, processed, request, workers=1, log=lines.append)
    assert len(second.rebuilt) == 12 and second.reused == []
    assert second.manifest.fingerprint != first.manifest.fingerprint
    assert second.manifest.preprocessing["spectral_indices"] == list(ALL)
    assert second.manifest.channels == expected_channels(ALL)
    assert np.load(processed / "tiles" / "Tile3.npy", mmap_mode="r").shape == (120, 64, 64)
    assert len(lines) == 1 and "spectral_indices=['NDVI', 'NDBI', 'NDWI'] (was [])" in lines[0]
    # The same set in another order is the same cache; the folder keeps it when unasked.
    again = PrepareRequest(preprocessing={"spectral_indices": ["NDWI", "NDBI", "NDVI"]})
    assert prepare_requested(synthetic_raw, processed, again, workers=1).rebuilt == []
    kept = prepare_requested(synthetic_raw, processed, PrepareRequest(), workers=1)
    assert kept.rebuilt == [] and kept.manifest.channels == expected_channels(ALL)
    # The band channels are the cache without indices, bit for bit.
    stored = np.load(processed / "tiles" / "Tile3.npy")
    reference = np.load(synthetic_processed / "tiles" / "Tile3.npy")
    kept_channels = [expected_channels(ALL).index(n) for n in expected_channels()]
    np.testing.assert_array_equal(stored[kept_channels], reference)

    manifest = second.manifest
    selected = manifest.select_channels({"sentinel2": ["2020-08-16/NDBI"], "landsat8": ["NDVI"]})
    assert [manifest.channels[i] for i in selected] == [
        "sentinel2/2020-08-16/NDBI",
        *(f"landsat8/{d}/NDVI" for d in L8_DATES),
    ]
    with pytest.raises(ValueError, match=r"no band or date 'NDBI'.*spectral_indices: \[NDBI\]"):
        Manifest.load(synthetic_processed).select_channels({"sentinel2": ["NDBI"]})


def test_a_model_trains_on_the_indices_alone(synthetic_raw, tmp_path):
    bands = {"sentinel2": ["NDVI", "NDBI"], "landsat8": ["NDBI"]}
    config = ESDConfig(
        raw_dir=synthetic_raw,
        processed_dir=tmp_path / "processed",
        bands=bands,
        preprocessing={"spectral_indices": ["NDVI", "NDBI"]},
        model_type="SegmentationCNN",
        embedding_size=4,
        max_epochs=1,
        num_workers=0,
        prepare_workers=1,
        batch_size=16,
        accelerator="cpu",
        checkpoint_dir=tmp_path / "checkpoints",
        log_dir=tmp_path / "logs",
        wandb_mode="disabled",
        wandb_run_name="indices",
    )
    results = train(config)
    checkpoint = torch.load(results["last_model_path"], weights_only=True)
    assert checkpoint["epoch"] == 0 and checkpoint["global_step"] > 0
    assert checkpoint["hyper_parameters"]["channels"] == [
        *(f"sentinel2/{d}/NDVI" for d in S2_DATES),
        *(f"sentinel2/{d}/NDBI" for d in S2_DATES),
        *(f"landsat8/{d}/NDBI" for d in L8_DATES),
    ]
    weights = [v for k, v in checkpoint["state_dict"].items() if v.ndim == 4]
    assert weights[0].shape[1] == 11  # the first convolution sees the 11 index channels
