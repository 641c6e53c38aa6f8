"""Results a paper can print: intervals over tiles, paired comparisons, what the model uses."""

from __future__ import annotations

import csv
import dataclasses
import json
import re
import shutil
import subprocess
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from scipy import stats
from sklearn.metrics import accuracy_score, f1_score

from scripts.compare import main as compare_main
from scripts.report import main as report_main
from src.cross_validation.config import CVConfig
from src.cross_validation.run import cross_validate
from src.esd_data.manifest import Manifest
from src.evaluation import bootstrap
from src.evaluation.bootstrap import (
    bootstrap_intervals,
    bootstrap_record,
    confusion,
    paired_difference,
)
from src.evaluation.comparison import (
    PairingError,
    ScoredRun,
    compare_pair,
    compare_runs,
    distinct_names,
    fold_difference,
    format_pairs,
    holm,
)
from src.evaluation.config import ImportanceConfig
from src.evaluation.importance import permutation_importance
from src.evaluation.report import truth_digest
from src.training.train import train
from tests.shared_runs import ABLATION_BANDS, CountTrainings, ablation_run, tiny
from tests.test_honest_numbers import replace_pixels

# One torch thread per process (see conftest): the same results, without OpenMP contention.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def noisy_tiles(n_tiles: int, seed: int, accuracy: float = 0.7):
    """Tiles of a fixed distribution: (truths, predictions) of 16×16 labels 1..4."""
    rng = np.random.default_rng(seed)
    truths, predictions = [], []
    for _ in range(n_tiles):
        share = rng.uniform(0.0, 0.5)  # tiles differ in how much class 1 they hold
        truth = rng.choice([1, 2, 3, 4], size=(16, 16), p=[share, 0.5 - share, 0.3, 0.2])
        wrong = rng.random((16, 16)) > accuracy
        prediction = np.where(wrong, rng.integers(1, 5, size=(16, 16)), truth)
        truths.append(truth.astype(np.uint8))
        predictions.append(prediction.astype(np.uint8))
    return truths, predictions


def reference_interval(truths, predictions, resamples, seed):
    """A straightforward bootstrap: draw tiles, concatenate their cells, score with sklearn,
    leave out of class-1 F1 the draws without a class-1 cell in the truth, and take the
    expanded percentile interval (levels Φ(±√(n/(n−1))·t_{n−1, 0.975}))."""
    rng = np.random.default_rng(seed)
    n = len(truths)
    draws = rng.integers(0, n, size=(resamples, n))
    tail = 100 * stats.norm.sf(np.sqrt(n / (n - 1)) * stats.t.ppf(0.975, n - 1))
    f1, macro, accuracy = [], [], []
    for draw in draws:
        t = np.concatenate([truths[k].ravel() for k in draw])
        p = np.concatenate([predictions[k].ravel() for k in draw])
        present = sorted(set(t) | set(p))
        if (t == 1).any():
            f1.append(f1_score(t == 1, p == 1, zero_division=0))
        macro.append(f1_score(t, p, labels=present, average="macro", zero_division=0))
        accuracy.append(accuracy_score(t, p))
    return {name: np.percentile(values, [tail, 100 - tail]) for name, values in
            (("f1_class1", f1), ("f1_macro", macro), ("accuracy", accuracy))}  # fmt: skip


def test_bootstrap_interval_equals_a_numpy_reference_contains_the_estimate_and_narrows(
    monkeypatch,
):
    truths, predictions = noisy_tiles(12, seed=3)
    for truth in truths[:9]:  # 9 tiles without class 1: many draws have none (left out)
        truth[truth == 1] = 2
    predictions[1][predictions[1] == 4] = 3  # one never predicting class 4
    confusions = [confusion(t, p) for t, p in zip(truths, predictions, strict=True)]
    # Three tiles hold class 1: too few for its interval (said so), the others get theirs.
    ours = bootstrap_intervals(confusions, resamples=300, seed=11)
    record = bootstrap_record(300, 11, confusions)
    assert "f1_class1" not in ours and "f1_class1 (3 tile(s) hold the class" in record["note"]
    assert record["tiles"] == 12 and 0 < record["resamples_without_class1"] < 30  # ≈ (9/12)¹²
    monkeypatch.setattr(bootstrap, "MIN_CLASS_TILES", 1)  # the resampling itself, checked
    ours = bootstrap_intervals(confusions, resamples=300, seed=11)
    reference = reference_interval(truths, predictions, 300, 11)
    for score, interval in reference.items():
        np.testing.assert_allclose(ours[score], interval, rtol=0, atol=1e-12)
    t = np.concatenate([x.ravel() for x in truths])
    p = np.concatenate([x.ravel() for x in predictions])
    point = f1_score(t == 1, p == 1)
    assert ours["f1_class1"][0] < point < ours["f1_class1"][1]
    # A perfect model, class 1 in 2 of 12 tiles: a draw without class 1 is left out, not
    # scored 0 (which gave [0.0, 1.0]); by default no interval is printed for so few.
    perfect = [confusion(t, t) for t in truths[:10] + truths[-2:]]
    assert bootstrap_intervals(perfect, resamples=300, seed=0)["f1_class1"] == [1.0, 1.0]
    monkeypatch.undo()
    assert "f1_class1" not in bootstrap_intervals(perfect, resamples=300, seed=0)
    # Too few tiles: no interval, and the record says why.
    assert bootstrap_intervals(confusions[:2], 300, 0) == {}
    assert "2 tile(s) are fewer than" in bootstrap_record(300, 0, confusions[:2])["note"]
    assert paired_difference(perfect[:2], perfect[:2], 300, 0)["interval"] is None
    widths = []
    for n_tiles in (12, 32, 128):
        truths, predictions = noisy_tiles(n_tiles, seed=5)
        matrices = [confusion(a, b) for a, b in zip(truths, predictions, strict=True)]
        low, high = bootstrap_intervals(matrices, resamples=500, seed=0)["f1_class1"]
        widths.append(high - low)
    assert widths[0] > widths[1] > widths[2] > 0


def test_paired_difference_of_a_model_with_itself_a_constant_predictor_and_other_tiles():
    truths, predictions = noisy_tiles(12, seed=1, accuracy=0.8)
    model = np.array([confusion(t, p) for t, p in zip(truths, predictions, strict=True)])
    constant = np.array([confusion(t, np.full_like(t, 2)) for t in truths])  # never class 1
    same = paired_difference(model, model.copy(), resamples=200, seed=0)
    assert same["difference"] == 0.0 and same["interval"] == [0.0, 0.0] and same["includes_zero"]
    better = paired_difference(model, constant, resamples=200, seed=0)
    assert better["interval"][0] > 0 and not better["includes_zero"]
    assert better["interval"][0] <= better["difference"] <= better["interval"][1]
    tiles = [f"Tile{k}" for k in range(1, 13)]
    digests = [truth_digest(t) for t in truths]
    first = ScoredRun("a", tiles, model, digests)
    # The same tiles listed in another order pair tile by tile, not position by position.
    shuffled = ScoredRun("b", tiles[::-1], model[::-1], digests[::-1])
    assert compare_pair(first, shuffled, 100, 0)["interval"] == [0.0, 0.0]
    other_tiles = ScoredRun("c", [*tiles[:-1], "Tile99"], model, digests)
    with pytest.raises(PairingError, match=r"not scored on the same tiles.*Tile12.*Tile99"):
        compare_pair(first, other_tiles, 100, 0)
    # A transposed truth has the same class counts (and the same predictions' counts): it is
    # still other ground truth.
    transposed = [truth_digest(truths[0].T), *digests[1:]]
    with pytest.raises(PairingError, match=r"other ground truth.*Tile1"):
        compare_pair(first, ScoredRun("d", tiles, model, transposed), 100, 0)
    folds = [tiles[:6], tiles[6:]]
    a = ScoredRun("a", tiles, model, digests, folds, [0.8, 0.7], [6, 6])
    b = ScoredRun("b", tiles, model, digests, [tiles[::2], tiles[1::2]], [0.8, 0.6], [6, 6])
    other_folds = compare_pair(a, b, 100, 0)  # the tiles pair; the folds do not
    assert other_folds["folds"] is None and "other folds" in other_folds["folds_note"]


def test_per_fold_difference_uses_the_corrected_t_test():
    tiles = [f"Tile{k}" for k in range(1, 11)]
    folds = [tiles[k::5] for k in range(5)]
    empty = np.zeros((10, 4, 4), dtype=int)
    same = ["x"] * 10
    first = ScoredRun("a", tiles, empty, same, folds, [0.80, 0.75, 0.90, 0.70, 0.85], [8] * 5)
    second = ScoredRun("b", tiles, empty, same, folds, [0.70, 0.74, 0.80, 0.69, 0.70], [8] * 5)
    result = fold_difference(first, second)
    differences = np.array([0.10, 0.01, 0.10, 0.01, 0.15])
    assert result["mean"] == pytest.approx(differences.mean())
    assert result["std"] == pytest.approx(differences.std(ddof=1))
    # Nadeau & Bengio: variance × (1/J + n_test/n_train), here 1/5 + 2/8.
    t = differences.mean() / np.sqrt((1 / 5 + 2 / 8) * differences.var(ddof=1))
    assert result["t"] == pytest.approx(t)
    assert result["p_value"] == pytest.approx(2 * stats.t.sf(t, 4))
    assert result["p_value"] > stats.ttest_rel(first.fold_scores, second.fold_scores).pvalue
    assert fold_difference(first, first)["p_value"] == 1.0


def test_verdicts_need_the_fold_test_holm_corrected_not_the_tile_bootstrap():
    truths, predictions = noisy_tiles(12, seed=2, accuracy=0.9)
    digests = [truth_digest(t) for t in truths]
    tiles = [f"Tile{k}" for k in range(1, 13)]
    good = np.array([confusion(t, p) for t, p in zip(truths, predictions, strict=True)])
    worse = np.array([confusion(t, np.where(t == 1, 2, p)) for t, p in
                      zip(truths, predictions, strict=True)])  # fmt: skip
    folds = [tiles[k::3] for k in range(3)]
    # The tiles say "good" clearly (given these models), but the folds were noisy: retraining
    # moved the difference around 0 (as a seed change alone does).
    a = ScoredRun("a", tiles, good, digests, folds, [0.80, 0.70, 0.78], [8] * 3, seeds=2)
    b = ScoredRun("b", tiles, worse, digests, folds, [0.74, 0.76, 0.75], [8] * 3, seeds=2)
    (pair,) = compare_runs([a, b], 300, 0)
    assert pair["interval"][0] > 0  # the tile bootstrap alone would call it
    assert "no difference shown" in pair["verdict"] and "better" not in pair["verdict"]
    assert "given these trained models" in format_pairs([pair])
    # Without folds (two evaluations): no verdict, whatever the tiles say.
    (pair,) = compare_runs([ScoredRun("a", tiles, good, digests),
                            ScoredRun("b", tiles, worse, digests)], 300, 0)  # fmt: skip
    assert pair["verdict"].startswith("no verdict") and "--seeds" in pair["verdict"]
    # two evaluations of one run (with and without TTA) are told apart by their folders
    twins = distinct_names(
        [
            ScoredRun("UNet/r", tiles, good, digests, source="/e/test"),
            ScoredRun("UNet/r", tiles, worse, digests, source="/e/test-tta-d4"),
        ]
    )
    assert [run.name for run in twins] == ["UNet/r [test]", "UNet/r [test-tta-d4]"]
    # Holm over one leaderboard's pairs: p = 0.01, 0.03, 0.04 → 0.03, 0.06, 0.06.
    pairs = [{"first": f"x{k}", "second": "y", "difference": 0.1, "interval": [0.05, 0.15],
              "includes_zero": False, "tiles": 12,
              "folds": {"p_value": p, "mean": 0.1, "differences": [0.1] * 3, "seeds": 2}}
             for k, p in enumerate((0.04, 0.01, 0.03))]  # fmt: skip
    holm(pairs)
    assert [p["folds"]["p_holm"] for p in pairs] == pytest.approx([0.06, 0.03, 0.06])
    assert ["better" in p["verdict"] for p in pairs] == [False, True, False]
    # one seed per fold: a seed's luck is shared by every fold, so no verdict at any p
    pairs[1]["folds"]["seeds"] = 1
    assert holm(pairs)[1]["verdict"].startswith("no verdict: each fold was trained with one seed")


@pytest.mark.slow
def test_seeds_train_the_same_folds_again_and_a_seed_change_alone_is_no_verdict(
    synthetic_processed, tmp_path, capsys
):
    options = {"folds": 2, "model_type": ["SegmentationCNN"], "selection": "last",
               "tile_pictures": "none", "bootstrap_resamples": 200}  # fmt: skip
    config = tiny(synthetic_processed, tmp_path, max_epochs=2, split_seed=0)
    seeded = cross_validate(CVConfig(seeds=2, output_dir=tmp_path / "s", **options), config,
                            log=lambda _: None)  # fmt: skip
    plan = seeded["plan"]
    assert "-2seeds-" in Path(seeded["root"]).name and plan["seeds"] == [0, 1]
    assert [u["seed"] for u in plan["units"]] == [0, 0, 1, 1]
    assert plan["folds"][:2] == plan["folds"][2:]  # the same folds, trained again
    (model,) = seeded["models"]
    trained = [f["configuration"]["training"]["seed"] for f in model["folds"]]
    assert trained == [0, 0, 1, 1] and len(model["out_of_fold_repeats"]) == 2
    assert all(np.sum(t["confusion_matrix"]) == 2 * 256 for t in model["out_of_fold_tiles"])
    # Two cross-validations of one configuration on the same folds, only --seed differs:
    runs = [
        cross_validate(CVConfig(output_dir=tmp_path / f"seed{seed}", **options),
                       dataclasses.replace(config, seed=seed), log=lambda _: None)
        for seed in (0, 1)
    ]  # fmt: skip
    assert runs[0]["plan"]["folds"] == runs[1]["plan"]["folds"]
    capsys.readouterr()
    assert compare_main(["--runs", runs[0]["root"], runs[1]["root"]]) == 0
    out = capsys.readouterr().out
    assert " is better" not in out and "no verdict: each fold was trained with one seed" in out


# --------------------------------------------------------------------------------------------
# permutation importance


class ReadOnlySentinel1(L.Callback):
    """Keeps the first convolution's weights of every non-Sentinel-1 channel at exactly 0: the
    model trains to read Sentinel-1 alone."""

    def __init__(self, channels: list[str]) -> None:
        self.unread = [k for k, name in enumerate(channels) if not name.startswith("sentinel1/")]

    def _project(self, module) -> None:
        first = next(m for m in module.model.modules() if isinstance(m, torch.nn.Conv2d))
        with torch.no_grad():
            first.weight[:, self.unread] = 0.0

    def on_train_start(self, trainer, module):
        self._project(module)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self._project(module)


@pytest.mark.slow
def test_importance_of_a_one_sensor_model_and_never_of_training_tiles(
    synthetic_processed, tmp_path
):
    channels = Manifest.load(synthetic_processed).channels
    results = train(tiny(synthetic_processed, tmp_path), [ReadOnlySentinel1(channels)],
                    summary=False)  # fmt: skip
    checkpoint = Path(results["last_model_path"])
    options = {"model_path": [checkpoint], "grouping": ["sensor", "date"], "repeats": 3,
               "bootstrap_resamples": 200}  # fmt: skip
    first = permutation_importance(
        ImportanceConfig(**options, results_dir=tmp_path / "first"), log=lambda _: None
    )
    by_sensor = {row["group"]: row for row in first["groupings"]["sensor"]}
    assert set(by_sensor) == {"sentinel1", "sentinel2", "landsat8", "viirs"}
    assert by_sensor["sentinel1"]["f1_class1"]["drop"] > 0.02
    assert first["groupings"]["sensor"][0]["group"] == "sentinel1"
    for row in [*first["groupings"]["sensor"], *first["groupings"]["date"]]:
        if not row["group"].startswith("sentinel1"):
            for score in ("f1_class1", "f1_macro"):
                assert row[score]["repeats"] == [0.0, 0.0, 0.0], row
                assert row[score]["drop"] == 0.0, row
    # 3 val tiles: too few for an interval, said instead of printed.
    assert by_sensor["sentinel1"]["f1_class1"]["interval"] is None
    assert "3 tile(s) are fewer than" in first["bootstrap"]["note"]
    # A date of VIIRS moves the maximum projection, computed from every date, with it.
    by_date = {row["group"]: row for row in first["groupings"]["date"]}
    viirs_dates = [g for g in by_date if g.startswith("viirs/") and g != "viirs/max"]
    assert viirs_dates and all(by_date[g]["derived"] == ["viirs/max/DNB"] for g in viirs_dates)
    assert all(row["derived"] == [] for g, row in by_date.items() if g.startswith("sentinel1"))
    held_out = first["held_out"]  # the val tiles chose its epoch
    assert first["optimistic"] and held_out["label"] == "OPTIMISTIC"
    assert held_out["optimistic_tiles"] == sorted(first["tiles"], key=lambda t: int(t[4:]))
    held_out = Manifest.load(synthetic_processed).split["val"]
    assert sorted(first["tiles"]) == sorted(held_out)
    # The training tiles' pixels changed (and recorded as a preparation would): same result.
    altered = Path(shutil.copytree(synthetic_processed, tmp_path / "altered"))
    for seed, tile in enumerate(Manifest.load(altered).split["train"]):
        replace_pixels(altered, tile, seed)
    second = permutation_importance(
        ImportanceConfig(**options, processed_dir=altered, results_dir=tmp_path / "second"),
        log=lambda _: None,
    )
    assert second["groupings"] == first["groupings"] and second["baseline"] == first["baseline"]
    written = json.loads((tmp_path / "first" / "importance.json").read_text())
    assert written["groupings"]["sensor"][0]["group"] == "sentinel1"
    assert (tmp_path / "first" / "importance_sensor.png").stat().st_size > 0
    rows = list(csv.DictReader((tmp_path / "first" / "importance.csv").open()))
    assert len(rows) == len(first["groupings"]["sensor"]) + len(first["groupings"]["date"])


# --------------------------------------------------------------------------------------------
# ablation by retraining, paired on the same folds


@pytest.mark.slow
def test_ablation_trains_every_variant_on_the_same_folds_resumes_and_pairs_with_the_full_model(
    ablation, synthetic_processed
):
    names = {model["name"] for model in ablation["models"]}
    variants = {f"SegmentationCNN-{how}-{s}" for how in ("without", "only") for s in ABLATION_BANDS}
    assert names == {"SegmentationCNN"} | variants
    root = Path(ablation["root"])
    assert "ablate-sensors" in root.name
    viirs_free = next(m for m in ablation["models"] if m["name"] == "SegmentationCNN-without-viirs")
    manifest = Manifest.load(synthetic_processed)
    selected = [manifest.channels[k] for k in manifest.select_channels(ABLATION_BANDS)]
    kept = [name.split("/") for name in selected if not name.startswith("viirs/")]
    assert viirs_free["bands"] == {
        sensor: [f"{d}/{b}" for s, d, b in kept if s == sensor]
        for sensor in ("sentinel1", "sentinel2")
    }
    folds = {json.dumps([f["val_tiles"] for f in m["folds"]]) for m in ablation["models"]}
    assert len(folds) == 1  # every variant on the same folds
    pairs = {(p["first"], p["second"]): p for p in ablation["pairs"]}
    assert set(pairs) == {(name, "SegmentationCNN") for name in names - {"SegmentationCNN"}}
    for pair in pairs.values():
        assert pair["tiles"] == 12 and len(pair["folds"]["differences"]) == 2
    # What each sensor is worth, by retraining: VIIRS alone shows electricity.
    worth = {s: -pairs[(f"SegmentationCNN-without-{s}", "SegmentationCNN")]["difference"]
             for s in ABLATION_BANDS}  # fmt: skip
    assert max(worth, key=worth.get) == "viirs", worth
    assert pairs[("SegmentationCNN-without-viirs", "SegmentationCNN")]["interval"][1] < 0
    summary = json.loads((root / "summary.json").read_text())
    assert summary["pairs"] == ablation["pairs"] and summary["bootstrap"]["resamples"] == 300
    for model in summary["models"]:
        low, high = model["out_of_fold_interval"]["f1_class1"]
        assert low <= model["out_of_fold"]["f1_class1"] <= high
    for model in summary["models"]:  # the full model's figures; a variant's only with `all`
        drawn = model["reference"] is None
        for figure in ("learning_curves.png", "oof/confusion_matrix.png", "oof/roc_curves.png"):
            assert (root / model["name"] / figure).is_file() == drawn, (model["name"], figure)
    # --tile_pictures full (the default): pictures of the full model's tiles, not of ablations
    for model, drawn in (("SegmentationCNN", True), ("SegmentationCNN-without-viirs", False)):
        tiles = root / model / "fold_0" / "predictions" / "tiles"
        assert any(tiles.glob("*.png")) == drawn and any(tiles.glob("*_prediction.tif"))
    counter = CountTrainings()
    again = ablation_run(synthetic_processed, root.parent.parent, [counter])
    assert counter.count == 0 and again["pairs"] == ablation["pairs"]


# --------------------------------------------------------------------------------------------
# the report, in a real browser; the comparison command


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.skip("no Chromium on this machine (.ci/run installs Debian's chromium)")
    return found


@pytest.mark.slow
def test_report_opens_in_headless_chromium_with_every_model_and_the_gallery(ablation, capsys):
    root = Path(ablation["root"])
    importance = permutation_importance(
        ImportanceConfig(cv_dir=root / "SegmentationCNN", grouping=["sensor"], repeats=1,
                         bootstrap_resamples=100), log=lambda _: None,
    )  # fmt: skip
    assert report_main([str(root)]) == 0
    page = root / "report.html"
    assert f"wrote {page}" in capsys.readouterr().out
    text = page.read_text()
    assert "http://" not in text and "https://" not in text  # nothing fetched
    completed = subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000",
         "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    dom = completed.stdout
    loaded = re.search(r'data-images-loaded="(\d+)/(\d+)"', dom)
    assert loaded is not None, completed.stderr[-2000:]
    # 12 tile pictures, the summary, the full model's curves, confusion matrix and ROC curves
    # (the 6 variants draw none: a page of their figures was 20 000 px tall), the importance
    assert loaded.group(1) == loaded.group(2) and int(loaded.group(2)) == 12 + 1 + 3 + 1
    leaderboard = dom[dom.index('<table id="leaderboard"') :].split("</table>")[0]
    names = re.findall(r"<tr><td>([^<]+)</td>", leaderboard)
    assert names == [f"{root.name}/{m['name']}" for m in ablation["models"]]  # pooled OOF order
    oof = [m["out_of_fold"]["f1_class1"] for m in ablation["models"]]
    assert oof == sorted(oof, reverse=True)
    assert leaderboard.count("[") >= 4 * len(names)  # every headline score with its interval
    assert 'href="#run-0"' in dom  # a contents list
    # the ablation beside this model's permutation importance, each cost inside its interval
    table = dom[dom.index('<table id="ablation"') :].split("</table>")[0]
    rows = re.findall(r"<tr><td>SegmentationCNN</td><td>(\w+)</td><td>([^<]*)</td><td>([^<]*)</td>",
                      table)  # fmt: skip
    dropped = {r["group"]: r["f1_class1"]["drop"] for r in importance["groupings"]["sensor"]}
    assert {sensor for sensor, _, _ in rows} == set(dropped)
    for sensor, retrained, permuted in rows:
        for cell in (retrained, permuted):
            value, low, high = map(float, re.findall(r"[-+]?\d+\.\d+", cell)[:3])
            assert low <= value <= high, (sensor, cell)
        assert float(permuted.split()[0]) == pytest.approx(dropped[sensor], abs=5e-5)
    gallery = dom[dom.index('id="gallery-run-0"') :]
    assert gallery.count('class="tile"') == 12
    scores = [float(s) for s in re.findall(r'data-f1class1="([0-9.]+)"', gallery)]
    assert scores == sorted(scores)  # worst first
    # a summary figure sized for a page, whatever the number of variants (7 here)
    from PIL import Image

    assert Image.open(root / "summary.png").size[0] <= 1300
    # the leaderboard for a paper: every class's F1 with its interval, in Markdown and LaTeX
    markdown = (root / "report_leaderboard.md").read_text()
    assert all(f"f1_class{k}" in markdown.splitlines()[0] for k in range(1, 5))
    assert sum(line.startswith("|") for line in markdown.splitlines()) == 2 + len(names)
    latex = (root / "report_leaderboard.tex").read_text()
    assert latex.count(r"\makecell") >= 4 * len(names) and r"\bottomrule" in latex


def test_compare_command_pairs_the_models_of_a_cross_validation(ablation, capsys, tmp_path):
    root = Path(ablation["root"])
    out = tmp_path / "comparison.json"
    assert compare_main(["--runs", str(root), "--reference", f"{root.name}/SegmentationCNN",
                         "--bootstrap_resamples", "300", "--out", str(out)]) == 0  # fmt: skip
    written = json.loads(out.read_text())
    assert len(written["pairs"]) == 6
    assert not any(entry["optimistic"] for entry in written["leaderboard"])  # --selection last
    from_summary = {(p["first"], p["second"]): p for p in ablation["pairs"]}
    for pair in written["pairs"]:
        same = from_summary[(pair["first"].split("/")[1], pair["second"].split("/")[1])]
        assert pair["difference"] == same["difference"] and pair["interval"] == same["interval"]
    assert "interval includes 0" in capsys.readouterr().out or all(
        not p["includes_zero"] for p in written["pairs"]
    )
    assert compare_main(["--runs", str(root / "SegmentationCNN" / "oof")]) == 1


class StopAfterError(Exception):
    pass


@pytest.mark.slow
def test_repeated_k_fold_draws_new_folds_per_repeat_pools_the_out_of_fold_and_resumes(
    synthetic_processed, tmp_path
):
    config = tiny(synthetic_processed, tmp_path, max_epochs=1)
    cv = CVConfig(folds=2, repeats=2, model_type=["SegmentationCNN"], selection="last",
                  output_dir=tmp_path / "cv", bootstrap_resamples=100,
                  tile_pictures="none")  # fmt: skip
    seen = []

    def stop_after_three(model, fold, result):
        seen.append(fold)
        if len(seen) == 3:
            raise StopAfterError

    with pytest.raises(StopAfterError):
        cross_validate(cv, config, log=lambda _: None, on_fold=stop_after_three)
    counter = CountTrainings()
    run = cross_validate(cv, config, log=lambda _: None, extra_callbacks=[counter])
    assert counter.count == 1  # only the fourth fold trains again
    assert "2foldx2" in Path(run["root"]).name
    folds = run["plan"]["folds"]
    labelled = sorted(Manifest.load(synthetic_processed).split["train"]
                      + Manifest.load(synthetic_processed).split["val"])  # fmt: skip
    assert len(folds) == 4
    for repeat in (folds[:2], folds[2:]):  # each repetition is a partition of the tiles
        assert sorted(repeat[0] + repeat[1]) == labelled
    assert sorted(map(sorted, folds[:2])) != sorted(map(sorted, folds[2:]))
    (model,) = run["models"]
    assert len(model["folds"]) == 4 and len(model["out_of_fold_repeats"]) == 2
    for tile in model["out_of_fold_tiles"]:
        assert np.sum(tile["confusion_matrix"]) == 2 * 256  # predicted once per repetition
    pooled = np.sum([t["confusion_matrix"] for t in model["out_of_fold_tiles"]], axis=0)
    assert model["out_of_fold"]["accuracy"] == pytest.approx(np.trace(pooled) / pooled.sum())
    for r in range(2):
        written = json.loads((Path(run["root"]) / "SegmentationCNN" / "oof" / f"repeat_{r}"
                              / "metrics.json").read_text())  # fmt: skip
        assert written["overall"]["accuracy"] == model["out_of_fold_repeats"][r]["accuracy"]
    oof = Path(run["root"]) / "SegmentationCNN" / "oof"  # pooled figures, not per partition
    for figure in ("confusion_matrix.png", "roc_curves.png"):
        assert (oof / figure).is_file() and not (oof / "repeat_0" / figure).exists()


def test_learning_curves_read_the_epoch_rows_of_lightnings_metrics_csv(tmp_path):
    from src.visualization.learning_curves import epoch_metrics, plot_learning_curves

    metrics = tmp_path / "metrics.csv"  # Lightning's layout: step rows and epoch rows in one file
    metrics.write_text(
        "epoch,step,train_loss,train_f1_class1,val_loss,val_f1_class1,lr-Adam\n"
        ",0,,,,,0.001\n"
        "0,9,,,0.9,0.40,\n"
        "0,9,1.2,0.30,,,\n"
        "1,19,,,0.7,0.55,\n"
        "1,19,0.8,0.50,,,\n"
    )
    series = epoch_metrics(metrics)
    assert series == {
        "val_loss": [(0, 0.9), (1, 0.7)], "val_f1_class1": [(0, 0.40), (1, 0.55)],
        "train_loss": [(0, 1.2), (1, 0.8)], "train_f1_class1": [(0, 0.30), (1, 0.50)],
    }  # fmt: skip
    figure = plot_learning_curves({"fold 0": metrics, "fold 1": metrics}, "t", tmp_path / "c.png")
    loss, f1 = figure.axes[:2]
    assert len(loss.lines) == 4 and len(f1.lines) == 4  # train and val of each run
    assert list(f1.lines[1].get_ydata()) == [0.40, 0.55]
    assert (tmp_path / "c.png").stat().st_size > 0


def test_date_ablation_leaves_out_one_date_of_one_sensor_at_a_time(synthetic_processed):
    from src.cross_validation.variants import model_variants

    manifest = Manifest.load(synthetic_processed)
    bands = {"sentinel1": None, "viirs": None}  # nine dates and their maximum
    base = tiny(synthetic_processed, Path("unused"), bands=bands, model_type="UNet")
    variants = model_variants({"UNet": base}, "dates", base, manifest)
    selected = [manifest.channels[k] for k in manifest.select_channels(bands)]
    groups = sorted({name.rsplit("/", 1)[0] for name in selected})
    assert [v.name for v in variants] == ["UNet"] + [
        f"UNet-without-{g.replace('/', '-')}" for g in sorted(groups, key=selected_order(selected))
    ]
    for variant in variants[1:]:
        assert variant.reference == "UNet" and variant.config.model_type == "UNet"
        kept = [manifest.channels[k] for k in manifest.select_channels(variant.config.bands)]
        left_out = sorted(set(selected) - set(kept))
        assert kept == [name for name in selected if name not in left_out]  # order kept
        if variant.name == "UNet-without-viirs-max":
            assert left_out == ["viirs/max/DNB"]
            continue
        derived = [name for name in left_out if name == "viirs/max/DNB"]
        dates = {name.rsplit("/", 1)[0] for name in left_out if name not in derived}
        assert len(dates) == 1  # one sensor's date, and what is computed from it:
        assert bool(derived) == (variant.name.startswith("UNet-without-viirs-2020"))
    with pytest.raises(ValueError, match="at least two sensors"):
        only_viirs = tiny(synthetic_processed, Path("unused"), bands={"viirs": None})
        model_variants({"UNet": only_viirs}, "sensors", only_viirs, manifest)


def selected_order(selected: list[str]):
    first = {}
    for k, name in enumerate(selected):
        first.setdefault(name.rsplit("/", 1)[0], k)
    return first.get


def test_model_options_apply_to_one_model_and_never_to_what_the_models_share(synthetic_processed):
    base = tiny(synthetic_processed, Path("unused"))
    cv = CVConfig(folds=2, model_type=["SegmentationCNN", "UNet"],
                  model_options={"UNet": {"embedding_size": 4, "n_encoders": 1}})  # fmt: skip
    unet, cnn = cv.model_config(base, "UNet"), cv.model_config(base, "SegmentationCNN")
    assert (unet.embedding_size, unet.n_encoders) == (4, 1) and cnn.embedding_size == 8
    for shared in ({"seed": 7}, {"preprocessing": {"s1_blur_sigma": 3.0}}, {"split_seed": 5}):
        with pytest.raises(ValueError, match="belong to the whole cross-validation"):
            CVConfig(folds=2, model_type=["UNet"], model_options={"UNet": shared})
    with pytest.raises(ValueError, match="not among --model_type"):
        CVConfig(folds=2, model_type=["UNet"], model_options={"Galileo": {"pretrained": True}})
