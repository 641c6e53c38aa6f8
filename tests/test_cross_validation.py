"""K-fold cross-validation, out-of-fold scores, test-time augmentation and ensembles."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import tifffile
import torch
from sklearn.metrics import accuracy_score, f1_score

from src.cross_validation.config import CVConfig
from src.cross_validation.run import cross_validate
from src.esd_data.cache import prepare_dataset
from src.esd_data.folds import assign_folds, class1_shares, fold_manifest
from src.esd_data.manifest import Manifest
from src.esd_data.synthetic import generate_synthetic_dataset
from src.evaluation.config import EvalConfig
from src.evaluation.cv_record import CVRecordError
from src.evaluation.evaluate import evaluate
from src.evaluation.tta import averaged_probabilities, views
from src.training.checkpoints import CheckpointError
from src.training.config import ESDConfig
from src.training.train import train

# One torch thread per process (see conftest): the same results, without OpenMP contention.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny(processed: Path, **overrides) -> ESDConfig:
    values = {
        "raw_dir": None, "processed_dir": processed, "model_type": "SegmentationCNN",
        "embedding_size": 4, "depth": 1, "max_epochs": 1, "num_workers": 0,
        "wandb_mode": "disabled",
    }  # fmt: skip
    return ESDConfig(**{**values, **overrides})


# --------------------------------------------------------------------------------------------
# folds


def test_folds_partition_the_labelled_tiles_whatever_the_order(synthetic_copy, tmp_path):
    processed = tmp_path / "processed"
    prepare_dataset(synthetic_copy, processed, val_fraction=0.25, test_fraction=0.25, workers=1)
    manifest = Manifest.load(processed)
    labelled = manifest.split["train"] + manifest.split["val"]
    shares = class1_shares(processed, manifest, labelled)
    folds = assign_folds(shares, 3, seed=4)
    assert sorted(t for fold in folds for t in fold) == sorted(labelled)  # each exactly once
    assert not set(manifest.split["test"]) & {t for fold in folds for t in fold}
    shuffled = list(shares.items())
    random.Random(1).shuffle(shuffled)
    assert assign_folds(dict(shuffled), 3, seed=4) == folds  # listing order does not matter
    others = [assign_folds(shares, 3, seed=s) for s in range(5, 15)]
    assert any(other != folds for other in others)  # the seed does
    with_class1 = [t for t in labelled if shares[t] > 0]
    if len(with_class1) >= 3:
        assert all(any(shares[t] > 0 for t in fold) for fold in folds)
    sizes = sorted(len(fold) for fold in folds)
    assert sizes[-1] - sizes[0] <= 1


def test_stratification_spreads_class1_tiles_over_the_folds():
    shares = {f"Tile{n}": (0.5 if n in (1, 5, 9, 10) else 0.0) for n in range(1, 13)}
    for seed in range(10):
        folds = assign_folds(shares, 4, seed)
        assert all(sum(shares[t] > 0 for t in fold) == 1 for fold in folds), folds


def test_folds_with_tied_shares_do_not_depend_on_the_listing_order():
    # Many real tiles hold no class 1 at all: equal shares must not fall back on the order.
    shares = {f"Tile{n}": (0.25 if n % 4 == 0 else 0.0) for n in range(1, 13)}
    folds = assign_folds(shares, 3, seed=2)
    for order in range(5):
        listed = list(shares.items())
        random.Random(order).shuffle(listed)
        assert assign_folds(dict(listed), 3, seed=2) == folds


def test_fold_statistics_come_from_the_fold_training_tiles_only(synthetic_processed, tmp_path):
    processed = Path(shutil.copytree(synthetic_processed, tmp_path / "processed"))
    manifest = Manifest.load(processed)
    labelled = manifest.split["train"] + manifest.split["val"]
    validation = labelled[:3]
    train = [tile for tile in labelled if tile not in validation]
    before = fold_manifest(manifest, processed, train, validation, [])
    assert before.split["val"] == sorted(validation, key=lambda t: int(t[4:]))
    assert not set(before.split["train"]) & set(validation)
    for tile, change in ((validation[0], False), (before.split["train"][0], True)):
        record_path = processed / "tiles" / f"{tile}.json"
        record = json.loads(record_path.read_text())
        record["mean"] = [m + 5.0 for m in record["mean"]]  # the tile's pixels "altered"
        record_path.write_text(json.dumps(record))
        after = fold_manifest(manifest, processed, train, validation, [])
        assert (after.mean != before.mean) is change, tile
        before = after


# --------------------------------------------------------------------------------------------
# the cross-validation


class FailOnFold(L.Callback):
    """Stops the run the first time fold `fold` starts training (an injected failure)."""

    def __init__(self, fold: int) -> None:
        self.fold, self.fired = fold, False

    def on_train_start(self, trainer, module):
        if not self.fired and trainer.logger.version == f"fold_{self.fold}":
            self.fired = True
            raise RuntimeError("injected failure")


@pytest.mark.slow
def test_cross_validation_scores_resumes_and_agrees_with_its_files(synthetic_processed, tmp_path):
    base = tiny(synthetic_processed)
    options = {"folds": 3, "model_type": ["SegmentationCNN"], "name": "cv",
               "tile_pictures": "none"}  # fmt: skip
    straight = cross_validate(
        CVConfig(output_dir=tmp_path / "a", **options), base, log=lambda _: None
    )

    with pytest.raises(RuntimeError, match="injected failure"):
        cross_validate(CVConfig(output_dir=tmp_path / "b", **options), base,
                       log=lambda _: None, extra_callbacks=[FailOnFold(1)])  # fmt: skip
    root = tmp_path / "b" / "cv" / "SegmentationCNN"
    first_fold = (root / "fold_0" / "result.json").stat().st_mtime_ns
    assert not (root / "fold_1" / "result.json").exists()
    cv_dir = tmp_path / "b" / "cv"
    with pytest.raises(CVRecordError, match=r"fold_1\b.*have not finished"):
        evaluate(EvalConfig(cv_dir=cv_dir, accelerator="cpu"), log=lambda _: None)
    resumed = cross_validate(
        CVConfig(output_dir=tmp_path / "b", **options), base, log=lambda _: None
    )
    # --cv_dir is the ensemble of the checkpoints the folds chose and recorded.
    recorded = [json.loads((root / f"fold_{k}" / "result.json").read_text())["checkpoint"]
                for k in range(3)]  # fmt: skip
    unseen = tmp_path / "unseen"  # tiles no fold trained on
    generate_synthetic_dataset(unseen, n_tiles=2, seed=7, tile_px=64)
    common = {"raw_dir": unseen, "cache_dir": tmp_path / "cache", "accelerator": "cpu"}
    by_dir = evaluate(EvalConfig(cv_dir=cv_dir, results_dir=tmp_path / "by_dir", **common),
                      log=lambda _: None)  # fmt: skip
    by_paths = evaluate(EvalConfig(model_path=[Path(r) for r in recorded],
                                   results_dir=tmp_path / "by_paths", **common),
                        log=lambda _: None)  # fmt: skip
    assert sorted(Path(p).resolve() for p in by_dir["model_path"]) == sorted(
        Path(r).resolve() for r in recorded
    )
    np.testing.assert_array_equal(
        probabilities(tmp_path / "by_dir", by_dir["tiles_predicted"]),
        probabilities(tmp_path / "by_paths", by_paths["tiles_predicted"]),
    )
    assert (root / "fold_0" / "result.json").stat().st_mtime_ns == first_fold  # not retrained
    for a, b in zip(straight["models"], resumed["models"], strict=True):
        assert [f["scores"] for f in a["folds"]] == [f["scores"] for f in b["folds"]]
        assert a["out_of_fold"] == b["out_of_fold"] and a["mean"] == b["mean"]

    summary = json.loads((tmp_path / "a" / "cv" / "summary.json").read_text())["models"][0]
    manifest = Manifest.load(synthetic_processed)
    labelled = sorted(manifest.split["train"] + manifest.split["val"])
    oof = tmp_path / "a" / "cv" / "SegmentationCNN" / "oof" / "tiles"
    assert sorted(p.name.split("_")[0] for p in oof.glob("*_prediction.tif")) == labelled
    truth = np.concatenate(
        [np.load(synthetic_processed / manifest.tiles[t].labels).ravel() for t in labelled]
    )
    predicted = np.concatenate(
        [tifffile.imread(oof / f"{t}_prediction.tif").ravel() for t in labelled]
    )
    assert summary["out_of_fold"]["f1_class1"] == pytest.approx(
        f1_score(truth == 1, predicted == 1)
    )
    assert summary["out_of_fold"]["accuracy"] == pytest.approx(accuracy_score(truth, predicted))
    per_fold = [f["scores"]["f1_class1"] for f in summary["folds"]]
    assert summary["mean"]["f1_class1"] == pytest.approx(np.mean(per_fold))
    assert summary["std"]["f1_class1"] == pytest.approx(np.std(per_fold, ddof=1))
    each_once = sorted(t for f in summary["folds"] for t in f["val_tiles"])
    assert each_once == labelled
    assert (tmp_path / "a" / "cv" / "summary.png").stat().st_size > 5000
    model_dir = tmp_path / "a" / "cv" / "SegmentationCNN"
    for figure in ("confusion_matrix.png", "roc_curves.png"):  # once, of every fold together
        assert (model_dir / "oof" / figure).stat().st_size > 0
        assert not list(model_dir.glob(f"fold_*/predictions/{figure}"))


# --------------------------------------------------------------------------------------------
# test-time augmentation


class PointwiseModel(torch.nn.Module):
    """A 1×1 conv then average pooling to cells: commutes with every flip and rotation."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 4, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.avg_pool2d(self.conv(x), 2)


class CornerModel(torch.nn.Module):
    """Not equivariant: every cell's logits depend on the window's top-left pixel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.nn.functional.avg_pool2d(x[:, :1].repeat(1, 4, 1, 1), 2)
        corner = x[:, :1, :1, :1] * torch.tensor([3.0, -1.0, 0.0, 2.0])[:, None, None]
        return pooled * torch.arange(1.0, 5.0)[:, None, None] + corner


def test_d4_of_an_equivariant_model_equals_no_augmentation():
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    model = PointwiseModel()
    none = averaged_probabilities(model, x, "none")
    assert torch.allclose(averaged_probabilities(model, x, "d4"), none, atol=1e-6)
    assert len(views("d4")) == 8 and len(set(views("d4"))) == 8


def test_flips_average_the_four_flipped_predictions():
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    model = CornerModel()
    manual = [
        model(x).softmax(1),
        model(x.flip(-1)).softmax(1).flip(-1),  # left–right, mapped back
        model(x.flip(-2)).softmax(1).flip(-2),  # top–bottom
        model(x.flip(-1, -2)).softmax(1).flip(-1, -2),  # both
    ]
    expected = torch.stack(manual).mean(0)
    assert torch.allclose(averaged_probabilities(model, x, "flips"), expected, atol=1e-6)
    assert not torch.allclose(expected, manual[0], atol=1e-3)  # the views really differ


# --------------------------------------------------------------------------------------------
# ensembles


@pytest.fixture(scope="module")
def two_checkpoints(synthetic_processed, tmp_path_factory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("ensemble")
    first = train(tiny(synthetic_processed, checkpoint_dir=out / "a", log_dir=out / "la",
                       wandb_run_name="a"))["last_model_path"]  # fmt: skip
    other = train(
        tiny(synthetic_processed, checkpoint_dir=out / "b", log_dir=out / "lb",
             wandb_run_name="b", bands={"sentinel2": ["B04"]})
    )["last_model_path"]  # fmt: skip
    return Path(first), Path(other)


def probabilities(results: Path, tiles: list[str]) -> np.ndarray:
    return np.stack([tifffile.imread(results / "tiles" / f"{t}_probabilities.tif") for t in tiles])


def test_ensembles_of_one_checkpoint_and_of_copies_equal_it(two_checkpoints, tmp_path):
    checkpoint, _ = two_checkpoints
    copy = tmp_path / "copy.ckpt"
    shutil.copyfile(checkpoint, copy)
    runs = {
        "single": [checkpoint],
        "copies": [checkpoint, copy],
    }
    outputs = {}
    for name, paths in runs.items():
        metrics = evaluate(EvalConfig(model_path=paths, results_dir=tmp_path / name,
                                      accelerator="cpu"), log=lambda _: None)  # fmt: skip
        outputs[name] = probabilities(tmp_path / name, metrics["tiles_predicted"])
    np.testing.assert_allclose(outputs["copies"], outputs["single"], atol=1e-6)


def test_ensemble_of_models_reading_other_channels_is_refused(two_checkpoints, tmp_path):
    first, other = two_checkpoints
    with pytest.raises(CheckpointError, match="same channels"):
        evaluate(EvalConfig(model_path=[first, other], results_dir=tmp_path, accelerator="cpu"),
                 log=lambda _: None)  # fmt: skip
