"""Self-training: a teacher's confident cells on unlabelled tiles, capped per class, train a
student beside the labelled tiles; never on a tile with ground truth, never with a teacher that
saw the student's scored tiles; recorded with the student, resumable. Real training on tiny
synthetic tiles."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile

from src.esd_data.cache import prepare_dataset
from src.esd_data.manifest import Manifest
from src.esd_data.synthetic import generate_synthetic_dataset
from src.evaluation.config import EvalConfig
from src.evaluation.evaluate import evaluate
from src.held_out import Member
from src.self_training.config import SelfTrainConfig
from src.self_training.pseudo_labels import select_cells
from src.self_training.run import self_train
from src.training.checkpoints import held_out_member, read_checkpoint
from src.training.train import train
from tests.shared_runs import tiny

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def kept_by_hand(probabilities: dict[str, np.ndarray], confidence: float, cap: float) -> dict:
    """The pseudo-labels by a plain loop: every confident cell, then per class its q most
    confident ones, q the largest for which no class is over cap of the kept cells."""
    cells = []  # (tile, row, col, class, probability)
    for tile, p in probabilities.items():
        for row in range(p.shape[1]):
            for col in range(p.shape[2]):
                cls = int(np.argmax(p[:, row, col]))
                if p[cls, row, col] >= confidence:
                    cells.append((tile, row, col, cls + 1, float(p[cls, row, col])))
    counts = [sum(c[3] == cls for c in cells) for cls in range(1, 5)]
    quota = max(counts)
    while max(min(n, quota) for n in counts) > cap * sum(min(n, quota) for n in counts):
        quota -= 1
    out = {tile: np.zeros(p.shape[1:], np.uint8) for tile, p in probabilities.items()}
    for cls in range(1, 5):
        mine = sorted((c for c in cells if c[3] == cls), key=lambda c: -c[4])
        for tile, row, col, _, _ in mine[:quota]:
            out[tile][row, col] = cls
    return out


def test_confident_cells_are_kept_and_no_class_passes_its_cap():
    rng = np.random.default_rng(3)
    probabilities = {}
    for tile in ("Tile1", "Tile2", "Tile3"):
        logits = rng.normal(size=(4, 16, 16))
        logits[3] += 2.5  # class 4 dominates, as the lit-and-unlit land of a scene
        p = np.exp(logits) / np.exp(logits).sum(axis=0)
        probabilities[tile] = np.round(p, 3)  # ties among probabilities
    labels = select_cells(probabilities, confidence=0.6, class_cap=0.3)
    expected = kept_by_hand(probabilities, 0.6, 0.3)
    for tile in probabilities:
        np.testing.assert_array_equal(labels[tile], expected[tile])
    kept = np.stack(list(labels.values()))
    confident_4 = sum(((p.argmax(axis=0) == 3) & (p.max(axis=0) >= 0.6)).sum()
                      for p in probabilities.values())  # fmt: skip
    assert 0 < (kept == 4).sum() < confident_4  # the dominant class was cut
    shares = [(kept == cls).sum() / (kept > 0).sum() for cls in range(1, 5)]
    assert max(shares) <= 0.3 and shares[0] > 0  # none over the cap, class 1 not drowned
    unsure = np.stack([p.max(axis=0) < 0.6 for p in probabilities.values()])
    assert (kept[unsure] == 0).all()


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict:
    """A teacher trained on a folder with val, test and 3 unlabelled tiles; 2 rounds of
    self-training from that folder's unlabelled tiles and from a contest-like raw folder of
    2 unlabelled tiles whose names the labelled tiles have."""
    root = tmp_path_factory.mktemp("self_training")
    generate_synthetic_dataset(root / "raw", n_tiles=8, seed=0, tile_px=64, unlabelled=3)
    processed = root / "processed"
    prepare_dataset(root / "raw", processed, val_fraction=0.25, test_fraction=0.25, workers=1)
    teacher = train(tiny(processed, root / "teacher", max_epochs=2, embedding_size=4),
                    summary=False)["best_model_path"]  # fmt: skip
    contest = root / "contest_val"
    generate_synthetic_dataset(contest, n_tiles=1, seed=5, tile_px=64, unlabelled=2)
    shutil.rmtree(contest / "Train" / "Tile1")  # Tile2, Tile3: no ground truth
    options = SelfTrainConfig(
        model_path=[Path(teacher)], unlabelled=[processed, contest], confidence=0.5,
        class_cap=0.4, output_dir=root / "self", name="st", rounds=2,
    )  # fmt: skip
    student = tiny(processed, root / "unused", max_epochs=2, embedding_size=4, pseudo_weight=0.5)
    results = self_train(options, student, log=lambda _: None)
    return {"root": root, "processed": processed, "teacher": Path(teacher), "contest": contest,
            "options": options, "student": student, "results": results}  # fmt: skip


@pytest.mark.slow
def test_the_pseudo_label_set_is_what_the_teacher_was_sure_of_and_travels_with_the_student(run):
    round_dir = run["root"] / "self" / "st" / "round_1"
    record = json.loads((round_dir / "pseudo_labels.json").read_text())
    assert record["tiles"] == ["Tile9", "Tile10", "Tile11", "Tile2002", "Tile2003"]
    assert record["origins"]["Tile2002"] == f"{run['contest'].resolve()}/Tile2"
    # the teacher's own probabilities, read back, give these labels (renamed tiles included)
    teacher_tiles = {**{t: round_dir / "teacher/0-processed/tiles" / t for t in
                        ("Tile9", "Tile10", "Tile11")},
                     **{f"Tile200{n}": round_dir / f"teacher/1-contest_val/tiles/Tile{n}"
                        for n in (2, 3)}}  # fmt: skip
    probabilities = {name: tifffile.imread(f"{path}_probabilities.tif")
                     for name, path in teacher_tiles.items()}  # fmt: skip
    expected = kept_by_hand(probabilities, 0.5, 0.4)
    totals = np.zeros(4, int)
    for name in record["tiles"]:
        labels = np.load(round_dir / "pseudo" / f"{name}.npy")
        np.testing.assert_array_equal(labels, expected[name])
        counts = [int((labels == c).sum()) for c in range(1, 5)]
        assert record["cells_kept_per_tile"][name] == counts
        totals += counts
    assert [record["cells_kept"][str(c)] for c in range(1, 5)] == totals.tolist()
    assert 0 < totals.sum() < record["cells_total"]
    # the student trained on the labelled train tiles and these, was chosen and tested on the
    # labelled val and test tiles; its checkpoint holds the set
    labelled = Manifest.load(run["processed"])
    first = run["results"][0]
    checkpoint = read_checkpoint(Path(first["checkpoint"]))
    split = checkpoint["esd_data_identity"]["split"]
    assert split["train"] == sorted(labelled.split["train"] + record["tiles"],
                                    key=lambda t: int(t[4:]))  # fmt: skip
    assert (split["val"], split["test"]) == (labelled.split["val"], labelled.split["test"])
    hparams = checkpoint["hyper_parameters"]
    assert hparams["pseudo_tiles"] == record["tiles"] and hparams["pseudo_weight"] == 0.5
    assert hparams["run_config"]["pseudo_labels"]["cells_kept"] == record["cells_kept"]
    view = Manifest.load(round_dir / "data")
    assert all(Path(view.tiles[t].labels).parent == (round_dir / "pseudo").resolve()
               for t in record["tiles"])  # fmt: skip
    # round 2's teacher is round 1's student
    second = json.loads((round_dir.parent / "round_2/pseudo_labels.json").read_text())
    assert second["teacher"] == {"model_path": [first["checkpoint"]]}


@pytest.mark.slow
def test_the_student_is_scored_honestly_on_test_and_its_teachers_choices_count(run, tmp_path):
    student = Path(run["results"][0]["checkpoint"])
    test = evaluate(EvalConfig(model_path=[student], split="test", accelerator="cpu",
                               results_dir=tmp_path / "test"), log=lambda _: None)  # fmt: skip
    assert test["held_out"]["label"] == ""
    member = held_out_member(read_checkpoint(student), student)
    assert "pseudo-labels' teacher" in member.why  # the teacher's val tiles chose it too
    teacher = held_out_member(read_checkpoint(run["teacher"]), run["teacher"])
    assert set(teacher.trained) <= set(member.trained)
    assert set(teacher.chose) <= set(member.chose)


def test_a_student_counts_its_teachers_tiles_as_its_own():
    teacher = Member("t", {"Tile1": "a", "Tile2": "b"}, {"Tile3": "c"}, "its epoch", "/raw/A")
    same = Member("s", {"Tile1": "a"}, {}, "", "/raw/A").taught_by(teacher)
    assert same.trained == {"Tile1": "a", "Tile2": "b"} and same.chose == {"Tile3": "c"}
    other = Member("s", {"Tile9": "z"}, {}, "", "/raw/B").taught_by(teacher)
    assert other.trained == {"Tile9": "z", "/raw/A/Tile1": "a", "/raw/A/Tile2": "b"}
    assert other.chose == {"/raw/A/Tile3": "c"}


@pytest.mark.slow
def test_a_finished_self_training_is_reused_and_an_interrupted_round_completes(run):
    root = run["root"] / "self" / "st"
    files = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.suffix in (".ckpt", ".npy")}
    again = self_train(run["options"], run["student"], log=lambda _: None)
    assert again == run["results"]
    (root / "round_2" / "result.json").unlink()  # as if stopped after its pseudo-labels
    resumed = self_train(run["options"], run["student"], log=lambda _: None)
    assert resumed == run["results"]
    assert {p: p.stat().st_mtime_ns for p in files if p.suffix == ".npy"} == {
        p: t for p, t in files.items() if p.suffix == ".npy"
    }  # the round's pseudo-labels were not made again
    # stopped before its first epoch: its logs say so, no checkpoint; it starts afresh
    shutil.rmtree(root / "round_2" / "checkpoints")
    (root / "round_2" / "result.json").unlink()
    afresh = self_train(run["options"], run["student"], log=lambda _: None)

    def scores(results: list[dict]) -> list[dict]:  # a new file: the same training, new bytes
        return [{k: v for k, v in r.items() if k != "checkpoint_sha256"} for r in results]

    assert scores(afresh) == scores(run["results"])
    # a student trained further since is not taken for the recorded one
    student = Path(afresh[1]["checkpoint"])
    student.write_bytes(student.read_bytes() + b"\0")
    with pytest.raises(ValueError, match=r"round 2's student .* changed since"):
        self_train(run["options"], run["student"], log=lambda _: None)


@pytest.mark.slow
def test_refusals_before_any_student_trains(run, tmp_path):
    base = {"output_dir": tmp_path / "self", "confidence": 0.5}
    teacher = [run["teacher"]]
    # another plan in the same folder
    other = SelfTrainConfig(**{**vars(run["options"]), "confidence": 0.7})
    with pytest.raises(ValueError, match="confidence"):
        self_train(other, run["student"], log=lambda _: None)
    # a raw folder whose tile has ground truth
    labelled = tmp_path / "labelled"
    generate_synthetic_dataset(labelled, n_tiles=1, seed=7, tile_px=64)
    with pytest.raises(ValueError, match=r"Tile1 of .* has ground truth"):
        self_train(SelfTrainConfig(model_path=teacher, unlabelled=[labelled], **base),
                   run["student"], log=lambda _: None)  # fmt: skip
    # a labelled tile's copy without its ground truth
    copy = tmp_path / "copy" / "Train"
    shutil.copytree(run["root"] / "raw" / "Train" / "Tile1", copy / "Tile1")
    (copy / "Tile1" / "groundTruth.tif").unlink()
    with pytest.raises(ValueError, match="pixels of the labelled tile Tile1"):
        self_train(SelfTrainConfig(model_path=teacher, unlabelled=[copy.parent], **base),
                   run["student"], log=lambda _: None)  # fmt: skip
    # a teacher that trained on the student's val or test tiles
    resplit = tmp_path / "resplit"
    prepare_dataset(run["root"] / "raw", resplit, seed=5, val_fraction=0.25, workers=1)
    leaky = train(tiny(resplit, tmp_path / "leaky", max_epochs=1, embedding_size=4),
                  summary=False)["last_model_path"]  # fmt: skip
    labelled_split = Manifest.load(run["processed"]).split
    seen = sorted(set(Manifest.load(resplit).split["train"])
                  & set(labelled_split["val"] + labelled_split["test"]))  # fmt: skip
    assert seen
    with pytest.raises(ValueError, match=f"the teacher trained on {seen[0]}"):
        self_train(SelfTrainConfig(model_path=[Path(leaky)], **base), run["student"],
                   log=lambda _: None)  # fmt: skip
    assert not list((tmp_path / "self").rglob("*.ckpt"))
    # the teacher trained further since: the recorded self-training is not its
    original = run["teacher"].read_bytes()
    try:
        run["teacher"].write_bytes(original + b"\0")
        with pytest.raises(ValueError, match="teacher_files"):
            self_train(run["options"], run["student"], log=lambda _: None)
    finally:
        run["teacher"].write_bytes(original)
