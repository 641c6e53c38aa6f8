"""A checkpoint knows its data: evaluation scores its own split with its own statistics,
never a training tile as val/test, predicts any raw folder, and training keeps a prepared
folder as it is. Real files, real training on tiny synthetic tiles, no mocks."""

from __future__ import annotations

import ast
import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from sklearn.metrics import f1_score
from torchvision.models.segmentation import fcn_resnet101

from src.esd_data.cache import MissingLabelsWarning, prepare_dataset
from src.esd_data.manifest import Manifest
from src.esd_data.preparation import RUNS_FILE
from src.esd_data.preprocessing import PreprocessConfig
from src.esd_data.synthetic import generate_synthetic_dataset
from src.evaluation.config import EvalConfig
from src.evaluation.evaluate import evaluate
from src.held_out import HeldOutError
from src.training.checkpoints import data_identity, read_checkpoint
from src.training.config import ESDConfig
from src.training.train import train

ROOT = Path(__file__).resolve().parents[1]
# One torch thread per process (see conftest): the same results, without OpenMP contention.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_training(tmp_path: Path, processed: Path, **overrides) -> ESDConfig:
    values = {
        "raw_dir": None, "processed_dir": processed, "max_epochs": 1, "num_workers": 0,
        "embedding_size": 4, "n_encoders": 1, "checkpoint_dir": tmp_path / "checkpoints",
        "log_dir": tmp_path / "logs", "wandb_mode": "disabled", "wandb_run_name": "run",
    }  # fmt: skip
    values.update(overrides)
    return ESDConfig(**values)


def evaluate_quietly(**options) -> dict:
    return evaluate(EvalConfig(accelerator="cpu", **options), log=lambda _: None)


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under `folder` with its size and modification time (ns)."""
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name not in (".prepare.lock", RUNS_FILE)  # the folder's bookkeeping
    }


def test_an_old_checkpoint_scores_its_own_split_after_a_re_prepare(synthetic_copy, tmp_path):
    processed = tmp_path / "processed"
    prepare_dataset(synthetic_copy, processed, seed=0, val_fraction=0.25, workers=1)
    before = Manifest.load(processed)
    checkpoint = Path(train(tiny_training(tmp_path, processed))["last_model_path"])
    first = evaluate_quietly(model_path=checkpoint, results_dir=tmp_path / "first")
    assert first["tiles_scored"] == before.split["val"]

    prepare_dataset(synthetic_copy, processed, seed=1, val_fraction=0.25, workers=1)
    after = Manifest.load(processed)
    assert after.split["val"] != before.split["val"] and after.mean != before.mean
    second = evaluate_quietly(model_path=checkpoint, results_dir=tmp_path / "second")
    assert second["tiles_scored"] == before.split["val"]
    assert second["overall"] == first["overall"]
    for tile in before.split["val"]:  # same inputs, hence bit-identical probabilities
        name = f"tiles/{tile}_probabilities.tif"
        np.testing.assert_array_equal(
            tifffile.imread(tmp_path / "first" / name), tifffile.imread(tmp_path / "second" / name)
        )

    leaked = sorted(set(after.split["val"]) & set(before.split["train"]))
    assert leaked  # the re-prepared val split holds tiles the model trained on
    with pytest.raises(HeldOutError, match="refusing to score") as error:
        evaluate_quietly(model_path=checkpoint, tiles=after.split["val"], results_dir=tmp_path)
    assert all(tile in str(error.value) for tile in leaked)
    clean = before.split["val"][-1:]  # a tile it never trained on, named explicitly
    scored = evaluate_quietly(model_path=checkpoint, tiles=clean, results_dir=tmp_path / "c")
    assert scored["tiles_scored"] == clean


def test_training_uses_a_custom_prepared_folder_as_it_is(synthetic_copy, tmp_path, capsys):
    processed = tmp_path / "processed"
    custom = PreprocessConfig(s1_blur_sigma=2.0)
    prepare_dataset(synthetic_copy, processed, seed=3, val_fraction=0.25, workers=1,
                    preprocessing=custom)  # fmt: skip
    manifest_bytes = (processed / "manifest.json").read_bytes()
    files = snapshot(processed)
    results = train(tiny_training(tmp_path, processed, raw_dir=synthetic_copy))
    assert (processed / "manifest.json").read_bytes() == manifest_bytes
    assert snapshot(processed) == files  # no tile rewritten
    identity = data_identity(read_checkpoint(results["last_model_path"]), Path())
    assert identity.preprocessing["s1_blur_sigma"] == 2.0 and identity.split_seed == 3
    assert identity.split == Manifest.load(processed).split

    capsys.readouterr()
    train(tiny_training(tmp_path / "b", processed, raw_dir=synthetic_copy, val_fraction=0.5))
    out = capsys.readouterr().out
    assert "re-splitting the tiles for split val_fraction=0.5 (was 0.25)" in out
    # the re-split says that a run was trained on the folder as it was, and how to keep both
    assert "changes under 1 run(s) trained on it" in out and "another --processed_dir" in out
    manifest = Manifest.load(processed)
    assert manifest.val_fraction == 0.5 and manifest.preprocessing["s1_blur_sigma"] == 2.0
    tiles_now = {k: v for k, v in snapshot(processed).items() if k.startswith("tiles/")}
    assert tiles_now == {k: v for k, v in files.items() if k.startswith("tiles/")}


def test_processed_folder_from_another_raw_folder_is_refused(synthetic_raw, tmp_path):
    processed = tmp_path / "processed"
    prepare_dataset(synthetic_raw, processed, workers=1)
    other = tmp_path / "other"
    generate_synthetic_dataset(other, n_tiles=3, seed=2, tile_px=64)
    with pytest.raises(ValueError, match=rf"was prepared from {synthetic_raw}, not {other}"):
        train(tiny_training(tmp_path, processed, raw_dir=other))


@pytest.fixture(scope="module")
def trained(synthetic_processed, tmp_path_factory) -> Path:
    """A tiny UNet trained for one epoch on the shared synthetic tiles (Tile1 … Tile12)."""
    out = tmp_path_factory.mktemp("trained")
    return Path(train(tiny_training(out, synthetic_processed))["last_model_path"])


def test_raw_folder_of_unlabelled_tiles_with_colliding_names(
    trained, synthetic_processed, tmp_path
):
    contest_val = tmp_path / "Val"
    generate_synthetic_dataset(contest_val, n_tiles=3, seed=7, tile_px=64)
    truths = {}
    for tile in ("Tile1", "Tile2", "Tile3"):
        label_file = contest_val / "Train" / tile / "groundTruth.tif"
        truths[tile] = tifffile.imread(label_file)
        label_file.unlink()
    training_cache = snapshot(synthetic_processed)
    results = tmp_path / "results"
    metrics = evaluate_quietly(
        model_path=trained, raw_dir=contest_val, cache_dir=tmp_path / "cache", results_dir=results
    )
    assert snapshot(synthetic_processed) == training_cache  # the training cache is untouched
    assert metrics["tiles_predicted"] == ["Tile1", "Tile2", "Tile3"]
    assert metrics["tiles_scored"] == [] and "overall" not in metrics
    with (results / "predictions.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    ids = {int(r["pixelId"]): int(r["predictions"]) for r in rows}
    assert sorted(ids) == list(range(3 * 256))  # Tile1 … Tile3: (tile − 1)·256 + row·16 + col
    asymmetric = tifffile.imread(results / "tiles" / "Tile3_prediction.tif")
    assert all(ids[512 + r * 16 + c] == asymmetric[r, c] for r in range(16) for c in range(16))

    # the same folder with one labelled tile: only that one is scored
    shutil.copytree(contest_val, tmp_path / "Mixed")
    tifffile.imwrite(tmp_path / "Mixed" / "Train" / "Tile2" / "groundTruth.tif", truths["Tile2"])
    mixed = evaluate_quietly(
        model_path=trained, raw_dir=tmp_path / "Mixed", cache_dir=tmp_path / "cache2",
        results_dir=tmp_path / "mixed",
    )  # fmt: skip
    assert mixed["tiles_scored"] == ["Tile2"] and len(mixed["tiles_predicted"]) == 3
    predicted = tifffile.imread(tmp_path / "mixed" / "tiles" / "Tile2_prediction.tif")
    expected = f1_score(truths["Tile2"].ravel() == 1, predicted.ravel() == 1, zero_division=0)
    assert mixed["overall"]["f1_class1"] == pytest.approx(expected)


def test_raw_folder_holding_training_tiles_is_refused(trained, synthetic_raw, tmp_path):
    renamed = tmp_path / "raw" / "Train"
    renamed.mkdir(parents=True)
    manifest = Manifest.load(read_checkpoint(trained)["esd_data_identity"]["processed_dir"])
    trained_tile = manifest.split["train"][0]
    shutil.copytree(synthetic_raw / "Train" / trained_tile, renamed / "Tile40")
    with pytest.raises(HeldOutError, match=rf"Tile40 \(= training tile {trained_tile}\)"):
        evaluate_quietly(model_path=trained, raw_dir=tmp_path / "raw", cache_dir=tmp_path / "c")


def test_empty_split_and_stride_without_overlap_are_errors(trained, tmp_path):
    with pytest.raises(ValueError, match="the checkpoint's test split has no tiles"):
        evaluate_quietly(model_path=trained, split="test", results_dir=tmp_path)
    with pytest.raises(ValueError, match=r"--stride_gt .* --restitch overlap"):
        evaluate_quietly(model_path=trained, stride_gt=2, results_dir=tmp_path)


def test_default_results_folder_is_per_result_and_never_mixes_results(
    trained, synthetic_processed, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    val = Manifest.load(synthetic_processed).split["val"]
    metrics = evaluate_quietly(model_path=trained)
    folder = Path("data/predictions/UNet/run/val")
    assert Path(metrics["results_dir"]) == folder
    assert sorted(p.stem for p in (folder / "tiles").glob("*.png")) == sorted(val)
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    # Other tiles, other TTA: other folders; the first evaluation stays as it was.
    subset = evaluate_quietly(model_path=trained, tiles=val[:1])
    flipped = evaluate_quietly(model_path=trained, tta="flips")
    folders = {Path(m["results_dir"]) for m in (metrics, subset, flipped)}
    assert len(folders) == 3 and Path(flipped["results_dir"]).name == "val-tta-flips"
    assert [p.stem for p in (Path(subset["results_dir"]) / "tiles").glob("*.png")] == val[:1]
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before
    # Another result into a folder holding one is refused; the same one replaces it.
    with pytest.raises(ValueError, match=r"holds another evaluation.*tiles"):
        evaluate_quietly(model_path=trained, tiles=val[:1], results_dir=folder)
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before
    again = evaluate_quietly(model_path=trained)
    assert again["overall"] == metrics["overall"]
    info = json.loads((folder / "metrics.json").read_text())
    assert info["tiles_scored"] == val and info["model_path"] == str(trained)
    assert not list(folder.parent.glob(".*"))  # no staging folder left


@pytest.mark.slow
def test_pretrained_fcn_checkpoint_evaluates_without_the_weights_file(
    synthetic_processed, tmp_path
):
    weights = tmp_path / "fcn_coco.pth"
    torch.save(
        fcn_resnet101(weights=None, weights_backbone=None, aux_loss=True).state_dict(), weights
    )
    config = tiny_training(
        tmp_path, synthetic_processed, model_type="FCNResnetTransfer", pretrained=True,
        weights_path=weights, limit_train_batches=1, limit_val_batches=1,
    )  # fmt: skip
    checkpoint = Path(train(config)["last_model_path"])
    weights.unlink()
    metrics = evaluate_quietly(model_path=checkpoint, results_dir=tmp_path / "out")
    assert metrics["model_type"] == "FCNResnetTransfer" and "f1_class1" in metrics["overall"]


def test_missing_ground_truth_is_named_in_a_warning(synthetic_copy, tmp_path):
    for tile in ("Tile4", "Tile11"):
        (synthetic_copy / "Train" / tile / "groundTruth.tif").unlink()
    with pytest.warns(MissingLabelsWarning, match=r"2 tile\(s\) .*: Tile4, Tile11"):
        summary = prepare_dataset(synthetic_copy, tmp_path / "processed", workers=1)
    assert summary.manifest.split["predict"] == ["Tile4", "Tile11"]


def test_truncated_cache_tile_stops_training_before_any_work(synthetic_processed, tmp_path):
    processed = Path(shutil.copytree(synthetic_processed, tmp_path / "processed"))
    tile = processed / "tiles" / "Tile5.npy"
    tile.write_bytes(tile.read_bytes()[:-1000])
    completed = subprocess.run(
        [sys.executable, "-m", "scripts.train", "--raw_dir", "none", "--processed_dir",
         str(processed), "--checkpoint_dir", str(tmp_path / "ck"), "--log_dir",
         str(tmp_path / "logs"), "--wandb_mode", "disabled", "--num_workers", "0"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert completed.returncode != 0
    assert str(tile) in completed.stderr and "scripts.prepare" in completed.stderr
    assert not (tmp_path / "ck").exists() and not (tmp_path / "logs").exists()


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names.append(node.module or "")
    return names


def test_no_library_module_imports_the_scripts():
    offenders = [f"{path}: {name}" for path in (ROOT / "src").rglob("*.py")
                 for name in _imports(path) if name.split(".")[0] == "scripts"]  # fmt: skip
    assert offenders == []


LAYERS = ["esd_data", "models", "visualization", "training", "evaluation", "cross_validation",
          "sweeps", "self_training", "submission", "run_listing"]  # fmt: skip
"""TorchGeo's layering, bottom first: a package imports only those below it (and the shared
modules directly under src/)."""


def test_no_package_imports_one_above_it():
    offenders = []
    for package in LAYERS:
        for path in (ROOT / "src" / package).rglob("*.py"):
            for name in _imports(path):
                parts = [*name.split("."), ""]
                above = parts[1] in LAYERS and LAYERS.index(parts[1]) > LAYERS.index(package)
                if parts[0] == "src" and above:
                    offenders.append(f"{path.relative_to(ROOT)} imports {name}")
    assert offenders == []


@pytest.mark.slow
def test_pretrained_smp_checkpoint_evaluates_without_the_weights_file(
    synthetic_processed, tmp_path
):
    import segmentation_models_pytorch as smp

    rgb = smp.create_model("unet", encoder_name="resnet18", encoder_weights=None, in_channels=3)
    weights = tmp_path / "resnet18_imagenet.pth"
    torch.save(rgb.encoder.state_dict(), weights)
    config = tiny_training(
        tmp_path, synthetic_processed, model_type="SMP", smp_encoder="resnet18",
        pretrained=True, weights_path=weights, limit_train_batches=1, limit_val_batches=1,
    )  # fmt: skip
    checkpoint = Path(train(config)["last_model_path"])
    weights.unlink()
    metrics = evaluate_quietly(model_path=checkpoint, results_dir=tmp_path / "out")
    assert metrics["model_type"] == "SMP" and "f1_class1" in metrics["overall"]


def test_its_own_raw_folder_scores_its_split_known_by_name_whatever_the_pixels(
    trained, synthetic_raw, tmp_path, monkeypatch
):
    from src.esd_data import preprocessing
    from src.held_out import Ledger, Member

    # Another version of the preprocessing (every value × 0.999): other pixels, other hashes.
    store = preprocessing._store
    monkeypatch.setattr(preprocessing, "_store", lambda out, x: store(out, x * 0.999))
    options = {"cache_dir": tmp_path / "cache", "results_dir": tmp_path / "out"}
    metrics = evaluate_quietly(model_path=trained, raw_dir=synthetic_raw, prepare_workers=1,
                               **options)  # fmt: skip
    identity = read_checkpoint(trained)["esd_data_identity"]
    assert metrics["tiles_scored"] == identity["split"]["val"]  # not its training tiles
    # by their names in the folder they were prepared from, not by pixels that changed
    assert metrics["held_out"]["label"] == "OPTIMISTIC"
    assert metrics["held_out"]["optimistic_tiles"] == identity["split"]["val"]
    # the ledger itself: the same names from the member's raw folder are its tiles, the same
    # names from another folder (the contest's Val/, also Tile1…) are not
    member = Member("m", {"Tile1": "a"}, raw_dir="/data/Train")
    assert Ledger.ensemble([member], {"Tile1": "b"}, "/data/Val").trained_tiles() == []
    assert Ledger.ensemble([member], {"Tile1": "b"}, "/data/Train").trained_tiles() == ["Tile1"]
    assert Ledger.ensemble([member], {"Tile9": "a"}, "/data/Val").trained_tiles() == ["Tile9"]
