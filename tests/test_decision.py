"""The contest decision: a class-1 threshold chosen on tiles that are not scored."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import f1_score

from src.esd_data.cache import prepare_dataset
from src.esd_data.manifest import Manifest
from src.esd_data.synthetic import generate_synthetic_dataset
from src.evaluation.config import EvalConfig
from src.evaluation.decision import best_class1_threshold, decide
from src.evaluation.evaluate import evaluate
from src.training.train import train
from tests.shared_runs import tiny

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def brute_force(probabilities: list[np.ndarray], truths: list[np.ndarray]) -> float:
    """The best class-1 F1 over every threshold, by trying each one with scikit-learn."""
    p1 = np.concatenate([p[0].ravel() for p in probabilities])
    truth = np.concatenate([t.ravel() for t in truths]) == 1
    return max(f1_score(truth, p1 >= theta, zero_division=0) for theta in np.unique(p1))


def test_the_threshold_is_the_best_of_every_candidate_and_labels_follow_it():
    rng = np.random.default_rng(0)
    probabilities, truths = [], []
    for _ in range(5):
        p = rng.dirichlet(np.ones(4), size=(16, 16)).transpose(2, 0, 1)
        p[0] = np.round(p[0], 2)  # ties among the class-1 probabilities
        probabilities.append(p)
        truths.append(np.where(rng.random((16, 16)) < p[0] + 0.1, 1, rng.integers(2, 5, (16, 16))))
    threshold, f1 = best_class1_threshold(probabilities, truths)
    assert f1 == pytest.approx(brute_force(probabilities, truths))
    labels = decide(probabilities[0], threshold)
    assert ((labels == 1) == (probabilities[0][0] >= threshold)).all()
    others = labels != 1
    assert (labels[others] == probabilities[0][1:].argmax(axis=0)[others] + 2).all()
    np.testing.assert_array_equal(decide(probabilities[0], None),
                                  probabilities[0].argmax(axis=0) + 1)  # fmt: skip
    assert best_class1_threshold(probabilities, [np.full((16, 16), 2)] * 5) == (1.0, 0.0)


@pytest.fixture(scope="module")
def checkpoint(synthetic_raw, tmp_path_factory) -> tuple[Path, Path]:
    """A checkpoint trained on a folder with val and test tiles, and that folder."""
    root = tmp_path_factory.mktemp("decision")
    processed = root / "processed"
    prepare_dataset(synthetic_raw, processed, val_fraction=0.25, test_fraction=0.25, workers=1)
    results = train(tiny(processed, root, max_epochs=2, embedding_size=4), summary=False)
    return Path(results["best_model_path"]), processed


def _evaluate(checkpoint: Path, out: Path, **options) -> dict:
    config = EvalConfig(model_path=[checkpoint], results_dir=out, accelerator="cpu", **options)
    return evaluate(config, log=lambda _: None)


@pytest.mark.slow
def test_the_threshold_is_chosen_on_the_val_tiles_never_on_the_scored_ones(checkpoint, tmp_path):
    model, processed = checkpoint
    first = _evaluate(model, tmp_path / "a", split="test", decision="class1_threshold")
    chosen = first["decision"]
    manifest = Manifest.load(processed)
    assert chosen["tiles"] == manifest.split["val"] and "val tiles" in chosen["chosen_on"]
    assert first["held_out"]["label"] == ""  # the test tiles chose nothing
    assert first["decision"]["f1_class1_argmax"] is not None
    # other scored tiles (other probabilities, other scores): the threshold does not move
    other = tmp_path / "other"
    generate_synthetic_dataset(other, n_tiles=3, seed=9, tile_px=64)
    second = _evaluate(model, tmp_path / "b", raw_dir=other, cache_dir=tmp_path / "cache",
                       decision="class1_threshold", prepare_workers=1)  # fmt: skip
    assert second["decision"]["threshold"] == chosen["threshold"]
    assert second["overall"] != first["overall"]
    subset = _evaluate(model, tmp_path / "s", tiles=manifest.split["test"][:1],
                       decision="class1_threshold")  # fmt: skip
    assert subset["decision"]["threshold"] == chosen["threshold"]
    # on the val tiles, which chose it (and the epoch): OPTIMISTIC
    on_val = _evaluate(model, tmp_path / "c", decision="class1_threshold")
    assert on_val["held_out"]["label"] == "OPTIMISTIC"
    assert "the class-1 threshold" in on_val["held_out"]["reason"]


@pytest.mark.slow
def test_argmax_writes_exactly_what_it_wrote_before(checkpoint, tmp_path):
    model, _ = checkpoint
    default = _evaluate(model, tmp_path / "default", split="test")
    explicit = _evaluate(model, tmp_path / "argmax", split="test", decision="argmax")
    assert "decision" not in default and default["evaluation_key"] == explicit["evaluation_key"]
    for path in sorted((tmp_path / "default").rglob("*")):
        if path.is_file() and path.suffix != ".png":
            twin = tmp_path / "argmax" / path.relative_to(tmp_path / "default")
            if path.name == "metrics.json":
                a, b = (json.loads(p.read_text()) for p in (path, twin))
                a.pop("results_dir", None), b.pop("results_dir", None)
                assert a == b
            else:
                assert path.read_bytes() == twin.read_bytes(), path.name


@pytest.mark.slow
def test_a_cross_validation_chooses_each_folds_threshold_on_the_other_folds(
    synthetic_processed, tmp_path
):
    import tifffile

    from src.cross_validation.config import CVConfig
    from src.cross_validation.run import cross_validate

    cv = CVConfig(folds=3, model_type=["SegmentationCNN"], selection="last",
                  decision="class1_threshold", output_dir=tmp_path, tile_pictures="none",
                  bootstrap_resamples=50)  # fmt: skip
    run = cross_validate(cv, tiny(synthetic_processed, tmp_path, max_epochs=1), log=lambda _: 0)
    (model,) = run["models"]
    manifest = Manifest.load(synthetic_processed)
    oof = Path(run["root"]) / "SegmentationCNN" / "oof" / "tiles"

    def truth(tile):
        return np.load(synthetic_processed / manifest.tiles[tile].labels)

    for fold, threshold in zip(model["folds"], model["decision"]["thresholds"], strict=True):
        others = [t for f in model["folds"] if f is not fold for t in f["val_tiles"]]
        expected, _ = best_class1_threshold(
            [tifffile.imread(oof / f"{t}_probabilities.tif") for t in others],
            [truth(t) for t in others],
        )
        assert threshold == expected  # chosen without the fold's own tiles
    assert model["decision"]["f1_class1"] >= 0 and "other folds" in model["decision"]["chosen_on"]
