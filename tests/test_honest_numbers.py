"""Numbers that stay honest: reuse keyed on the configuration, held-out fold selection, a
processed folder and fold views that cannot lie, stratified folds, studies that know their
objective, failures that count."""

from __future__ import annotations

import csv
import hashlib
import json
import random
import shutil
from pathlib import Path

import lightning as L
import numpy as np
import optuna
import pytest

from scripts.evaluate import main as evaluate_main
from scripts.prepare import main as prepare_main
from scripts.train import main as train_main
from src.cross_validation.config import CVConfig
from src.cross_validation.run import ConfigurationMismatchError, cross_validate
from src.esd_data.cache import ChangedTileWarning, prepare_dataset
from src.esd_data.folds import assign_folds, inner_split
from src.esd_data.manifest import MANIFEST_FILE, Manifest, sample_digest
from src.esd_data.preprocessing import PreprocessConfig
from src.evaluation.config import EvalConfig
from src.evaluation.evaluate import evaluate
from src.evaluation.evaluator import check_ensemble
from src.sweeps.optuna_backend import OptunaRun, open_study, run_optuna, study_folder
from src.sweeps.spec import parse_sweep_spec
from src.sweeps.study import counted_trials
from src.training.checkpoints import CheckpointError
from src.training.config import ESDConfig

# One torch thread per process (see conftest): the same results, without OpenMP contention.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny(processed: Path, **overrides) -> ESDConfig:
    values = {
        "raw_dir": None, "processed_dir": processed, "model_type": "SegmentationCNN",
        "embedding_size": 4, "depth": 1, "max_epochs": 3, "num_workers": 0,
        "wandb_mode": "disabled", "learning_rate": 0.05,
    }  # fmt: skip
    return ESDConfig(**{**values, **overrides})


def quiet(_: str) -> None:
    return None


def replace_pixels(processed: Path, tile: str, seed: int) -> None:
    """Give `tile` other pixels (its labels kept), recorded as a preparation would record them."""
    image = processed / "tiles" / f"{tile}.npy"
    pixels = np.load(image)
    pixels = np.random.default_rng(seed).permutation(pixels.reshape(len(pixels), -1), axis=1)
    pixels = np.ascontiguousarray(pixels.reshape(np.load(image, mmap_mode="r").shape))
    np.save(image, pixels)
    record_path = processed / "tiles" / f"{tile}.json"
    record = json.loads(record_path.read_text())
    record.update(
        sha256=hashlib.sha256(memoryview(pixels).cast("B")).hexdigest(),
        sample_sha256=sample_digest(image),
    )
    record_path.write_text(json.dumps(record))
    manifest = Manifest.load(processed)
    tiles = dict(manifest.tiles)
    tiles[tile] = type(tiles[tile])(
        **{
            **tiles[tile].__dict__,
            "sha256": record["sha256"],
            "sample_sha256": record["sample_sha256"],
        }
    )
    Manifest(**{**manifest.__dict__, "tiles": tiles}).save(processed)


class Stop(L.Callback):
    """Stops a training as it starts."""

    def on_train_start(self, trainer, module):
        raise RuntimeError("stop")


def val_curve(fold_dir: Path) -> list[str]:
    """The fold's logged validation metrics, epoch by epoch (what its selection saw)."""
    (metrics,) = fold_dir.glob("logs/**/metrics.csv")
    rows = list(csv.DictReader(metrics.open()))
    return [row["val_f1_class1"] for row in rows if row.get("val_f1_class1")]


# --------------------------------------------------------------------------------------------
# folds


@pytest.mark.parametrize(("n_tiles", "with_class1", "folds"), [(48, 6, 5), (12, 3, 3), (60, 5, 5),
                                                               (13, 4, 4), (9, 2, 2)])  # fmt: skip
def test_every_fold_holds_class1_whenever_the_data_allow(n_tiles, with_class1, folds):
    for seed in range(200):
        rng = random.Random(seed)
        rich = set(rng.sample(range(n_tiles), with_class1))
        shares = {f"Tile{n + 1}": (rng.uniform(0.01, 0.9) if n in rich else 0.0)
                  for n in range(n_tiles)}  # fmt: skip
        assigned = assign_folds(shares, folds, seed)
        assert all(any(shares[t] > 0 for t in fold) for fold in assigned), (seed, assigned)
        inner = {t: shares[t] for fold in assigned[1:] for t in fold}  # fold 0's training
        fit, choose = inner_split(inner, 0.2, seed)
        if sum(v > 0 for v in inner.values()) >= 2:
            assert any(inner[t] > 0 for t in fit) and any(inner[t] > 0 for t in choose)
        assert not set(fit) & set(choose) and sorted(fit + choose) == sorted(inner)


# --------------------------------------------------------------------------------------------
# the cross-validation: held-out selection, configuration keys, stale views


@pytest.fixture
def two_caches(synthetic_raw: Path, tmp_path: Path) -> tuple[Path, Path, str]:
    """Two processed copies of the synthetic set that differ only in one tile's pixels (the
    tile is one that a 2-fold cross-validation holds out in its first fold)."""
    first = tmp_path / "a"
    prepare_dataset(synthetic_raw, first, val_fraction=0.25, workers=1)
    second = Path(shutil.copytree(first, tmp_path / "b"))
    manifest = Manifest.load(first)
    labelled = sorted(manifest.split["train"] + manifest.split["val"])
    from src.esd_data.folds import class1_shares

    folds = assign_folds(class1_shares(first, manifest, labelled), 2, 0)
    tile = folds[0][0]
    replace_pixels(second, tile, seed=1)
    return first, second, tile


@pytest.mark.slow
def test_inner_selection_never_sees_the_scored_tiles(two_caches, tmp_path, synthetic_raw):
    first, second, changed = two_caches
    options = {"folds": 2, "model_type": ["SegmentationCNN"], "selection": "inner",
               "tile_pictures": "none"}  # fmt: skip
    runs = []
    for processed, out in ((first, "cv_a"), (second, "cv_b")):
        runs.append(cross_validate(CVConfig(output_dir=tmp_path / out, **options),
                                   tiny(processed), log=quiet))  # fmt: skip
    a, b = (run["models"][0]["folds"][0] for run in runs)
    assert changed in a["val_tiles"] and changed not in a["selection_tiles"] + a["train_tiles"]
    # The scored tile's pixels changed its score, but nothing that chose the epoch saw them.
    assert a["scores"] != b["scores"]
    assert a["selected_epoch"] == b["selected_epoch"]
    fold_dirs = [Path(run["root"]) / "SegmentationCNN" / "fold_0" for run in runs]
    assert val_curve(fold_dirs[0]) == val_curve(fold_dirs[1]) and val_curve(fold_dirs[0])
    summary = json.loads((Path(runs[0]["root"]) / "summary.json").read_text())
    assert summary["selection"] == "inner" and summary["optimistic"] is False
    assert runs[0]["root"].endswith(summary["configuration_hash"][:8])

    # Another learning rate under the same name: refused, naming it, nothing reused.
    named = CVConfig(output_dir=tmp_path / "cv_a", name=Path(runs[0]["root"]).name, **options)
    with pytest.raises(ConfigurationMismatchError, match="learning_rate"):
        cross_validate(named, tiny(first, learning_rate=0.1), log=quiet)
    # Without a name, another configuration is another cross-validation (stopped at once).
    summary_file = Path(runs[0]["root"]) / "summary.json"
    before = summary_file.read_bytes()
    with pytest.raises(RuntimeError, match="stop"):
        cross_validate(CVConfig(output_dir=tmp_path / "cv_a", **options),
                       tiny(first, learning_rate=0.1), log=quiet,
                       extra_callbacks=[Stop()])  # fmt: skip
    assert len(list((tmp_path / "cv_a").iterdir())) == 2 and summary_file.read_bytes() == before

    # The cache re-prepared with other preprocessing: the folds' ensemble (which scores the
    # cache's test split) refuses, naming the parameter; the fold views refuse, naming tiles.
    prepare_dataset(synthetic_raw, second, val_fraction=0.25, workers=1,
                    preprocessing=PreprocessConfig(s1_blur_sigma=2.0))  # fmt: skip
    with pytest.raises(ValueError, match=r"other preprocessing .*s1_blur_sigma"):
        evaluate(EvalConfig(cv_dir=Path(runs[1]["root"]), accelerator="cpu"), log=quiet)
    checkpoint = Path(b["checkpoint"])
    with pytest.raises(ValueError, match=rf"{changed}: .*re-prepared or changed"):
        evaluate(EvalConfig(model_path=[checkpoint], split="test", accelerator="cpu"), log=quiet)


@pytest.mark.slow
def test_last_and_outer_selection_are_labelled_for_what_they_are(synthetic_processed, tmp_path):
    lines: list[str] = []
    base = tiny(synthetic_processed, max_epochs=2)
    last = cross_validate(CVConfig(folds=2, model_type=["SegmentationCNN"], selection="last",
                                   output_dir=tmp_path, tile_pictures="none"), base,
                          log=lines.append)  # fmt: skip
    for fold in last["models"][0]["folds"]:
        assert fold["selected_epoch"] == 1 and fold["selection_tiles"] == []
        assert Path(fold["checkpoint"]).name == "last.ckpt"
        assert val_curve(Path(last["root"]) / "SegmentationCNN" / f"fold_{fold['fold']}") == []
    assert not any("OPTIMISTIC" in line for line in lines)
    lines.clear()
    outer = cross_validate(CVConfig(folds=2, model_type=["SegmentationCNN"], selection="outer",
                                    output_dir=tmp_path, tile_pictures="none"), base,
                           log=lines.append)  # fmt: skip
    assert outer["root"] != last["root"]
    assert any("OPTIMISTIC" in line for line in lines)
    summary = json.loads((Path(outer["root"]) / "summary.json").read_text())
    assert summary["optimistic"] is True and "OPTIMISTIC" in summary["selection_rule"]
    # A resumed run with another budget under the same name does not mix folds.
    named = CVConfig(folds=2, model_type=["SegmentationCNN"], selection="last",
                     output_dir=tmp_path, name=Path(last["root"]).name,
                     tile_pictures="none")  # fmt: skip
    with pytest.raises(ConfigurationMismatchError, match="max_epochs"):
        cross_validate(named, tiny(synthetic_processed, max_epochs=3), log=quiet)


# --------------------------------------------------------------------------------------------
# the processed folder cannot lie


def test_an_edited_manifest_is_refused_and_never_resplit(synthetic_raw, tmp_path, capsys):
    processed = tmp_path / "processed"
    prepare_dataset(synthetic_raw, processed, val_fraction=0.25, seed=3, workers=1)
    path = processed / MANIFEST_FILE
    original = path.read_text()
    values = json.loads(original)
    values["split"]["val"].append(values["split"]["train"][0])  # a tile in train and val
    path.write_text(json.dumps(values))
    with pytest.raises(ValueError, match="edited or damaged"):
        Manifest.load(processed)
    # Even with a recomputed fingerprint, a tile in two splits is refused.
    manifest = json.loads(original)
    manifest["split"]["val"].append(manifest["split"]["train"][0])
    values = {k: v for k, v in manifest.items() if k != "fingerprint"}
    manifest["fingerprint"] = hashlib.sha256(
        json.dumps(values, sort_keys=True).encode()
    ).hexdigest()
    path.write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="in both train and val"):
        Manifest.load(processed)
    assert train_main(["--raw_dir", "none", "--processed_dir", str(processed),
                       "--wandb_mode", "disabled", "--log_dir", str(tmp_path / "logs"),
                       "--checkpoint_dir", str(tmp_path / "ck")]) == 1  # fmt: skip
    assert "in both train and val" in capsys.readouterr().err
    # scripts.prepare does not guess a split for it; with the split given it rebuilds.
    prepare = ["--raw_dir", str(synthetic_raw), "--processed_dir", str(processed), "--workers", "1"]
    assert prepare_main(prepare) == 1
    assert "give its split explicitly" in capsys.readouterr().err
    assert prepare_main([*prepare, "--seed", "3", "--val_fraction", "0.25",
                         "--test_fraction", "0"]) == 0  # fmt: skip
    assert Manifest.load(processed).split == json.loads(original)["split"]


def test_a_swapped_tile_file_is_detected_by_train_evaluate_and_prepare(
    synthetic_raw, tmp_path, capsys
):
    processed = tmp_path / "processed"
    prepare_dataset(synthetic_raw, processed, val_fraction=0.25, workers=1)
    manifest = Manifest.load(processed)
    victim, other = manifest.split["val"][0], manifest.split["train"][0]
    checkpoint_dir = tmp_path / "ck"
    common = ["--wandb_mode", "disabled", "--log_dir", str(tmp_path / "logs"), "--num_workers",
              "0", "--checkpoint_dir", str(checkpoint_dir), "--model_type", "SegmentationCNN",
              "--embedding_size", "4", "--depth", "1", "--max_epochs", "1"]  # fmt: skip
    assert train_main(["--raw_dir", "none", "--processed_dir", str(processed), *common]) == 0
    (ckpt,) = checkpoint_dir.rglob("last.ckpt")
    capsys.readouterr()
    image = processed / "tiles" / f"{victim}.npy"
    before = image.read_bytes()
    shutil.copyfile(processed / "tiles" / f"{other}.npy", image)  # same size, other pixels
    assert image.stat().st_size == len(before)

    assert train_main(["--raw_dir", "none", "--processed_dir", str(processed), *common]) == 1
    assert f"{victim}: " in capsys.readouterr().err
    results = tmp_path / "results"
    assert evaluate_main(["--model_path", str(ckpt), "--results_dir", str(results),
                          "--accelerator", "cpu"]) == 1  # fmt: skip
    assert f"{victim}: " in capsys.readouterr().err and not results.exists()
    # scripts.prepare hashes every pixel, names the tile and rebuilds it.
    with pytest.warns(ChangedTileWarning, match=victim):
        assert prepare_main(["--raw_dir", str(synthetic_raw), "--processed_dir",
                             str(processed), "--workers", "1"]) == 0  # fmt: skip
    assert image.read_bytes() == before
    Manifest.load(processed).check_files(processed, full=True)


def test_a_changed_pixel_passes_the_sample_check_but_not_the_full_hash(synthetic_processed,
                                                                       tmp_path):  # fmt: skip
    processed = Path(shutil.copytree(synthetic_processed, tmp_path / "processed"))
    manifest = Manifest.load(processed)
    tile = manifest.split["train"][0]
    image = processed / "tiles" / f"{tile}.npy"
    pixels = np.load(image)
    pixels.reshape(-1)[pixels.size // 2 + 7] += 1  # between the sampled blocks
    np.save(image, pixels)
    if sample_digest(image) == manifest.tiles[tile].sample_sha256:
        manifest.check_files(processed)  # the cheap check is a sample
    with pytest.raises(ValueError, match=f"{tile}: .*other pixels"):
        manifest.check_files(processed, full=True)


# --------------------------------------------------------------------------------------------
# ensembles


def test_an_ensemble_of_different_windows_is_refused_before_any_work():
    hparams = [{"model_type": "UNet", "channels": ["a"], "cell_px": 4, "tile_size_gt": size}
               for size in (4, 8)]  # fmt: skip
    with pytest.raises(CheckpointError, match="4 and 8 label cells"):
        check_ensemble(hparams)
    check_ensemble(hparams, tile_size_gt=4)  # one window chosen for all
    check_ensemble(hparams[:1] * 2)


# --------------------------------------------------------------------------------------------
# studies


SPEC = {"method": "random", "metric": {"name": "val_f1_class1", "goal": "maximize"},
        "parameters": {"learning_rate": {"values": [0.01, 0.02]}}}  # fmt: skip


def test_a_study_keeps_its_objective_and_its_own_folds(tmp_path):
    spec = parse_sweep_spec(SPEC)
    journal = str(tmp_path / "study.journal")
    run = OptunaRun(storage=journal, study_name="s", objective="val", output_dir=tmp_path)
    open_study(spec, run, 1)
    from src.sweeps.study import SweepError

    for other in ({"objective": "cv"},):
        with pytest.raises(SweepError, match="objective val"):
            open_study(spec, OptunaRun(**{**run.__dict__, **other}), 1)
    cv = {"objective": "cv", "folds": 3}
    first = open_study(spec, OptunaRun(**{**run.__dict__, **cv, "study_name": "c"}), 1)
    with pytest.raises(SweepError, match="folds 3"):
        open_study(spec, OptunaRun(**{**run.__dict__, **cv, "study_name": "c", "folds": 4}), 1)
    # The same name in a fresh storage and the same output folder: its own folds folder.
    fresh = OptunaRun(**{**run.__dict__, **cv, "study_name": "c",
                         "storage": str(tmp_path / "moved.journal")})  # fmt: skip
    second = open_study(spec, fresh, 1)
    assert study_folder(first, run) != study_folder(second, fresh)


def test_a_trial_that_logs_no_metric_fails_once_and_counts(tmp_path):
    spec = parse_sweep_spec(SPEC)
    trainings = []

    def train(config, extra_callbacks=None):
        trainings.append(config.learning_rate)
        return {"best_model_path": "", "best_model_score": None}  # no metric logged

    run = OptunaRun(storage=str(tmp_path / "study.journal"), study_name="s", count=2,
                    max_failures=5, output_dir=tmp_path)  # fmt: skip
    base = ESDConfig(wandb_mode="disabled")
    study = run_optuna(spec, base, run, train=train, log=quiet)
    assert len(trainings) == 2
    trials = study.get_trials()
    assert [t.state for t in trials] == [optuna.trial.TrialState.FAIL] * 2
    assert all("logged no val_f1_class1" in t.user_attrs["error"] for t in trials)
    assert len(counted_trials(trials)) == 2


def test_a_trial_is_worth_the_checkpoint_it_exports_not_its_last_epoch(tmp_path):
    spec = parse_sweep_spec(SPEC)

    def train(config, extra_callbacks=None):  # the best epoch scored 0.9, the last 0.7
        return {"best_model_path": "best.ckpt", "best_model_score": 0.9, "val_f1_class1": 0.7,
                "test_f1_class1": 0.6}  # fmt: skip

    run = OptunaRun(storage=str(tmp_path / "study.journal"), study_name="s", count=1,
                    output_dir=tmp_path)  # fmt: skip
    study = run_optuna(spec, ESDConfig(wandb_mode="disabled"), run, train=train, log=quiet)
    (trial,) = study.get_trials()
    assert trial.value == 0.9 and trial.user_attrs["test_scores"] == {"test_f1_class1": 0.6}
