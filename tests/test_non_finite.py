"""Nothing trains on non-finite numbers: product no-data values filled and counted, the float16
cache never overflows, non-finite statistics and losses stop the run in one line."""

from __future__ import annotations

import csv
import json
import math
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import tifffile
import torch

from src.esd_data import cache as cache_module
from src.esd_data import preprocessing as preprocessing_module
from src.esd_data.cache import prepare_dataset
from src.esd_data.preprocessing import PreprocessConfig
from src.esd_data.reader import NoDataWarning
from src.training.module import NonFiniteError
from src.training.train import train
from tests.shared_runs import tiny

pytestmark = pytest.mark.usefixtures("one_torch_thread")

VIIRS_FILE = "DNB_VNP46A1_A2020221.tif"
"""The first VIIRS date of the synthetic tiles (as of the contest's Tile1)."""


def losses(log_dir: Path) -> list[float]:
    (metrics,) = log_dir.rglob("metrics.csv")
    rows = list(csv.DictReader(metrics.open()))
    return [float(r[k]) for r in rows for k in ("train_loss", "val_loss") if r.get(k)]


@pytest.mark.parametrize("recipe", ["course", "physical"])
def test_a_viirs_fill_value_is_counted_filled_and_trains_finite(synthetic_copy, tmp_path, recipe):
    raster = synthetic_copy / "Train" / "Tile3" / VIIRS_FILE
    values = tifffile.imread(raster)
    values[5, 7] = 65535  # VNP46A1's fill value: no radiance was measured there
    tifffile.imwrite(raster, values)
    processed = tmp_path / "processed"
    with pytest.warns(NoDataWarning, match=r"1 pixel\(s\) of VNP46A1") as caught:
        prepare_dataset(synthetic_copy, processed, val_fraction=0.25, workers=1,
                        preprocessing=PreprocessConfig(recipe=recipe))  # fmt: skip
    assert [str(w.message) for w in caught if issubclass(w.category, NoDataWarning)]
    record = json.loads((processed / "tiles" / "Tile3.json").read_text())["no_data"]
    assert record[f"Tile3/{VIIRS_FILE}"] == {"fill": 1, "non_finite": 0, "product": "VNP46A1"}
    stored = np.load(processed / "tiles" / "Tile3.npy")
    assert np.isfinite(stored).all()
    if recipe == "physical":  # the radiance the others have, not 65535 (and never inf)
        others = np.delete(values.ravel(), 5 * values.shape[1] + 7)
        assert stored[0, 5, 7] == np.float16(np.round(np.median(others)))
    results = train(tiny(processed, tmp_path, max_epochs=1, embedding_size=4), summary=False)
    trained = losses(tmp_path / "logs")
    assert trained and all(math.isfinite(v) for v in trained), trained
    assert results["best_model_path"]


def test_values_beyond_float16_are_capped_with_a_count_and_never_cached_as_inf(
    synthetic_copy, tmp_path
):
    raster = synthetic_copy / "Train" / "Tile2" / "LC08_L1TP_2020-08-14_B4.tif"
    values = tifffile.imread(raster)
    values[:2, :3] = 70000.0  # beyond float16's 65 504 (a Landsat DN can reach 65 535)
    tifffile.imwrite(raster, values)
    with pytest.warns(UserWarning, match=r"6 pixel\(s\) in 1 file\(s\) above 65504.*"
                      r"Tile2/LC08_L1TP_2020-08-14_B4\.tif"):  # fmt: skip
        prepare_dataset(synthetic_copy, tmp_path / "p", workers=1,
                        preprocessing=PreprocessConfig(recipe="physical"))  # fmt: skip
    stored = np.load(tmp_path / "p" / "tiles" / "Tile2.npy")
    assert np.isfinite(stored).all() and stored.max() == np.float16(65504)
    record = json.loads((tmp_path / "p" / "tiles" / "Tile2.json").read_text())
    assert record["capped"] == {"Tile2/LC08_L1TP_2020-08-14_B4.tif": 6}


def test_non_finite_training_statistics_stop_the_run_naming_the_channel(
    synthetic_copy, tmp_path, monkeypatch
):
    # A cache written without the cap and the finiteness check (as an older esd wrote them):
    # an overflowing Landsat 8 DN is stored as inf, and the statistics computed from the tile
    # records are not finite.
    raster = synthetic_copy / "Train" / "Tile2" / "LC08_L1TP_2020-08-14_B4.tif"
    values = tifffile.imread(raster)
    values[0, 0] = 70000.0
    tifffile.imwrite(raster, values)
    monkeypatch.setattr(preprocessing_module, "cap_to_cache", lambda stack, x: x)
    monkeypatch.setattr(cache_module, "_check_finite", lambda *args: None)
    processed = tmp_path / "processed"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepare_dataset(synthetic_copy, processed, val_fraction=0.25, workers=1, seed=3,
                        preprocessing=PreprocessConfig(recipe="physical"))  # fmt: skip
    manifest = json.loads((processed / "manifest.json").read_text())
    if "Tile2" not in manifest["split"]["train"]:
        pytest.fail("the split seed must put Tile2 among the training tiles")
    with pytest.raises(NonFiniteError, match=r"landsat8/2020-08-14/B4 \(mean nan") as error:
        train(tiny(processed, tmp_path, max_epochs=1), summary=False)
    assert "\n" not in str(error.value)
    (status,) = (tmp_path / "logs").rglob("status.json")
    assert json.loads(status.read_text())["status"] == "failed"
    assert not list((tmp_path / "ckpt").rglob("*.ckpt"))  # not one step trained


class NaNFrom(L.Callback):
    """Makes the network's output NaN from training batch `step` (0-based, over epochs) on."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if trainer.global_step == self.step:
            module.model.register_forward_hook(lambda _, __, output: output * math.nan)


def test_a_nan_loss_stops_the_run_at_its_epoch_and_batch(synthetic_processed, tmp_path):
    config = tiny(synthetic_processed, tmp_path, max_epochs=3, batch_size=8)
    batches = math.ceil(9 * 16 / 8)  # 9 training tiles of 16 windows each
    with pytest.raises(NonFiniteError) as error:
        train(config, [NaNFrom(batches + 2)], summary=False)
    message = str(error.value)
    assert "the train loss is nan at epoch 1, batch 2 (tiles Tile" in message, message
    assert "every input is finite, so the model diverged" in message
    (status,) = (tmp_path / "logs").rglob("status.json")
    record = json.loads(status.read_text())
    assert record["status"] == "failed" and "NonFiniteError" in record["error"]
    assert all(math.isfinite(v) for v in losses(tmp_path / "logs"))  # epoch 0 logged only


class InfWeight(L.Callback):
    """Leaves one weight infinite after the first optimiser step (a step that diverged)."""

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        with torch.no_grad():
            next(module.model.parameters()).view(-1)[0] = math.inf


def test_a_step_that_leaves_weights_not_finite_stops_before_any_checkpoint(
    synthetic_processed, tmp_path
):
    config = tiny(synthetic_processed, tmp_path, max_epochs=1, limit_val_batches=0)
    with pytest.raises(NonFiniteError, match=r"weights are not finite after epoch 0, batch 0"):
        train(config, [InfWeight()], summary=False)
    assert not list((tmp_path / "ckpt").rglob("*.ckpt"))


def test_tiles_cached_under_older_no_data_rules_are_prepared_again(
    synthetic_raw, tmp_path, monkeypatch
):
    from src.esd_data import cache

    processed = tmp_path / "p"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        monkeypatch.setattr(cache, "NO_DATA_RULES", 0)  # as an esd before them cached it
        prepare_dataset(synthetic_raw, processed, workers=1)
        monkeypatch.undo()
        again = prepare_dataset(synthetic_raw, processed, workers=1)
    assert len(again.rebuilt) == 12 and not again.reused  # not reused with old pixels
