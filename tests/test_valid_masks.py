"""Validity channels (`PreprocessConfig.valid_masks`): one per sensor and date, 0 where a band
of the date had no data, in both recipes, selectable by name like any band.

How Galileo masks with them is tested in `test_galileo.py`; the real Tile1's no-data in
`test_value_pathologies.py`.
"""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch

from scripts.evaluate import main as evaluate_main
from src.esd_data.augmentation import AugmentConfig, NoiseBlur
from src.esd_data.cache import prepare_dataset, tile_fingerprint
from src.esd_data.datamodule import ESDDataModule
from src.esd_data.manifest import Manifest, check_band_selection
from src.esd_data.preprocessing import PreprocessConfig
from src.esd_data.sensors import SENSORS
from src.training.train import train
from tests.shared_runs import tiny


def _plant_no_data(raw) -> None:
    """Tile1: Sentinel-2 B04 of 2020-08-16 without data (0) in its top-left 5×7 pixels; VIIRS
    of 2020-08-11 (day 224) fill (65 535) at one pixel."""
    tile = raw / "Train" / "Tile1"
    for name, where, value in (
        ("L2A_20200816_B04.tif", np.s_[:5, :7], 0),
        ("DNB_VNP46A1_A2020224.tif", np.s_[10, 20], 65535),
    ):
        values = tifffile.imread(tile / name)
        values[where] = value
        tifffile.imwrite(tile / name, values)


NO_DATA = {"sentinel2": lambda v: v == 0, "landsat8": lambda v: ~(v > 0),
           "viirs": lambda v: v == 65535, "sentinel1": lambda v: ~(v > 0)}  # fmt: skip
"""Each product's no-data (the issue's table; NaN fails `> 0`)."""
IGNORED = ("B01", "B09")
"""Sentinel-2's 60 m bands, whose no-data does not make a pixel of their date missing."""


def _no_data_of(tile, channel: str) -> np.ndarray:
    """Where any raw band of the channel's sensor and date holds no data, read here from the
    files themselves."""
    sensor, date, _ = channel.split("/")
    spec = next(s for s in SENSORS if s.name == sensor)
    files = [p for p in tile.iterdir() if (parsed := spec.parse(p.name)) and str(parsed[0]) == date]
    assert len(files) == len(spec.bands), channel
    counted = [p for p in files if not (sensor == "sentinel2" and spec.parse(p.name)[1] in IGNORED)]
    return np.logical_or.reduce([NO_DATA[sensor](tifffile.imread(p)) for p in counted])


@pytest.mark.parametrize("recipe", ["course", "physical"])
def test_each_date_has_a_validity_channel_zero_where_a_band_had_no_data(
    synthetic_copy, tmp_path, recipe, capsys
):
    _plant_no_data(synthetic_copy)
    processed = tmp_path / "processed"
    config = PreprocessConfig(recipe=recipe, valid_masks=True)
    with pytest.warns(UserWarning, match="no data"):
        summary = prepare_dataset(synthetic_copy, processed, val_fraction=0.25, workers=1,
                                  preprocessing=config)  # fmt: skip
    channels = summary.manifest.channels
    assert str(summary).endswith(f"{recipe} recipe, validity channels")  # said when prepared
    without = PreprocessConfig(recipe=recipe)
    plain = prepare_dataset(
        synthetic_copy, tmp_path / "plain", val_fraction=0.25, workers=1, preprocessing=without
    ).manifest.channels
    # each sensor's channels as without, then one validity channel per date
    expected = []
    for spec in SENSORS:
        own = [c for c in plain if c.startswith(f"{spec.name}/")]
        dates = sorted({c.split("/")[1] for c in own} - {"max"})
        expected += own + [f"{spec.name}/{date}/valid" for date in dates]
    assert channels == expected and len(channels) == len(plain) + 9 + 4 + 4 + 3
    # 0 exactly where a raw band of the date holds its product's no-data value (B01 and B09
    # aside: the synthetic tiles have no data along an edge of them, as the real ones)
    for tile in summary.manifest.tiles:
        stored = np.load(processed / "tiles" / f"{tile}.npy")
        for i, name in enumerate(channels):
            if name.endswith("/valid"):
                expected_invalid = _no_data_of(synthetic_copy / "Train" / tile, name)
                np.testing.assert_array_equal(stored[i] == 0, expected_invalid, err_msg=name)
                assert set(np.unique(stored[i]).tolist()) <= {0.0, 1.0}
    stored = np.load(processed / "tiles" / "Tile1.npy")
    planted = stored[channels.index("sentinel2/2020-08-16/valid"), :5, :7]
    assert (planted == 0).all()
    assert stored[channels.index("viirs/2020-08-11/valid"), 10, 20] == 0
    # another cache identity than without them; without them, the one it always had
    tile = synthetic_copy / "Train" / "Tile1"
    assert tile_fingerprint(tile, config) != tile_fingerprint(tile, PreprocessConfig(recipe=recipe))
    assert "valid_masks" not in PreprocessConfig(recipe=recipe).to_dict()
    # selected by name like any band, and named in the hint where a folder has none
    selected = summary.manifest.select_channels({"sentinel2": ["valid"]})
    assert [channels[i] for i in selected] == [
        f"sentinel2/{d}/valid" for d in ("2020-08-11", "2020-08-16", "2020-08-26", "2020-08-31")
    ]
    check_band_selection({"sentinel1": ["valid"], "viirs": ["2020-08-11/valid"]})
    with pytest.raises(ValueError, match=r"no band or date 'valid'.*valid_masks: true"):
        Manifest.load(tmp_path / "plain").select_channels({"sentinel2": ["valid"]})
    if recipe == "physical":  # a model of them, scored on a folder without: the reason said
        result = train(
            tiny(processed, tmp_path, max_epochs=1, limit_train_batches=1), summary=False
        )
        code = evaluate_main([
            "--model_path", result["last_model_path"], "--processed_dir", str(tmp_path / "plain"),
            "--results_dir", str(tmp_path / "eval"),
        ])  # fmt: skip
        err = capsys.readouterr().err
        assert code != 0 and "(valid_masks differ): evaluate with --raw_dir" in err, err[-2000:]


def test_valid_masks_must_be_a_boolean():
    with pytest.raises(ValueError, match="valid_masks must be true or false"):
        PreprocessConfig(valid_masks="yes")


def test_noise_and_blur_keep_validity_channels_indicators_that_cover_every_filled_value():
    """A blurred pixel that took in a filled one is no data itself (the validity channel is
    eroded over the blur's 7×7 window); no noise on an indicator; the data as without them."""
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    x[:, 2] = 0.5  # standardised "has data"
    x[:, 2, 8, 8] = -2.0  # no data at (8, 8)
    config = AugmentConfig(noise_p=1, noise_std=0.5, blur_p=1, blur_sigma=1.0)
    augmented = NoiseBlur(config, validity=[2])(x, torch.Generator().manual_seed(1))
    window = torch.zeros(16, 16, dtype=torch.bool)
    window[5:12, 5:12] = True
    assert (augmented[:, 2][:, window] == -2.0).all()
    assert (augmented[:, 2][:, ~window] == 0.5).all()
    plain = NoiseBlur(config)(x, torch.Generator().manual_seed(1))
    torch.testing.assert_close(augmented[:, :2], plain[:, :2])  # the same draws for the data
    assert not torch.equal(plain[:, 2], x[:, 2])  # which, without, would blur the indicator


def test_the_training_augmentation_knows_the_validity_channels(synthetic_copy, tmp_path):
    processed = tmp_path / "processed"
    prepare_dataset(synthetic_copy, processed, val_fraction=0.25, workers=1,
                    preprocessing=PreprocessConfig(valid_masks=True))  # fmt: skip
    bands = {"viirs": ["DNB", "valid"], "sentinel2": ["B04", "valid"]}
    data = ESDDataModule(processed, bands=bands)
    data.setup("fit")
    names = data.datasets["train"].channel_names
    assert [names[i] for i in data.batch_augment.validity] == [
        name for name in names if name.endswith("/valid")
    ] and len(data.batch_augment.validity) == 9 + 4
