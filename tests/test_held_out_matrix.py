"""Honest across commands: every producer of models × every consumer of scores.

Producers (tiny data): a training with a val split, a training with a test split, cross-
validations with inner and outer selection, with `--selection last --repeats 2`, with
`--ablate sensors` (selection last), a sweep's best trial (objective cv) and an ensemble of
checkpoints. Consumers: evaluate (its
default and `--split test`), importance, compare and report. Each cell must be a result or a
one-line refusal, never a traceback; and the test recomputes, from the runs' own records
(checkpoints' data identity, `folds.json`, each fold's `result.json`), which scored tiles each
member trained on or was chosen on, and checks every printed score's refusal or OPTIMISTIC
label against it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from scripts.compare import main as compare_main
from scripts.evaluate import main as evaluate_main
from scripts.importance import main as importance_main
from scripts.report import main as report_main
from scripts.train import main as train_main
from src.cross_validation.config import CVConfig
from src.cross_validation.run import cross_validate
from src.esd_data.cache import prepare_dataset
from src.esd_data.synthetic import generate_synthetic_dataset
from src.sweeps.optuna_backend import OptunaRun, run_optuna, study_folder
from src.sweeps.spec import parse_sweep_spec
from src.training.train import train
from tests.shared_runs import tiny

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REFUSED, OPTIMISTIC, HONEST = "refused", "OPTIMISTIC", "honest"


@dataclass
class Producer:
    """What a producer made: checkpoints (with the split they hold) or a CV model folder."""

    name: str
    checkpoints: list[Path] = field(default_factory=list)
    cv_model: Path | None = None


def checkpoint_member(path: Path) -> tuple[set[str], set[str]]:
    """(training tiles, tiles that chose it) of a checkpoint, from its own record."""
    saved = torch.load(path, map_location="cpu", weights_only=True)
    split = saved["esd_data_identity"]["split"]
    validated = saved["hyper_parameters"]["run_config"]["limit_val_batches"] != 0
    return set(split["train"]), set(split["val"]) if validated else set()


def checkpoint_split(path: Path, split: str) -> set[str]:
    saved = torch.load(path, map_location="cpu", weights_only=True)
    return set(saved["esd_data_identity"]["split"][split])


def cv_records(cv_model: Path) -> tuple[dict, list[dict]]:
    plan = json.loads((cv_model.parent / "folds.json").read_text())
    folds = [json.loads((cv_model / f"fold_{k}" / "result.json").read_text())
             for k in range(len(plan["folds"]))]  # fmt: skip
    return plan, folds


def fold_member(plan: dict, fold: dict) -> tuple[set[str], set[str]]:
    """(training tiles, tiles that chose it) of a fold, from folds.json and result.json."""
    chose = set(fold["selection_tiles"])
    if fold["selection"] == "outer":
        chose |= set(fold["val_tiles"])
    if plan.get("hyperparameters_chosen_by"):
        chose |= {t for unit in plan["folds"] for t in unit}
    return set(fold["train_tiles"]), chose


def expected(members: list[tuple[set[str], set[str]]], scored: set[str]) -> str:
    if any(trained & scored for trained, _ in members):
        return REFUSED
    return OPTIMISTIC if any(chose & scored for _, chose in members) else HONEST


def expected_out_of_fold(cv_model: Path) -> str:
    """Each fold scoring its own held-out tiles."""
    plan, folds = cv_records(cv_model)
    labels = {expected([fold_member(plan, f)], set(f["val_tiles"])) for f in folds}
    assert REFUSED not in labels
    return OPTIMISTIC if OPTIMISTIC in labels else HONEST


def expected_evaluation(producer: Producer, split: str | None) -> str:
    """What scripts.evaluate must say of the producer's models on a split (None: default)."""
    if producer.cv_model is not None:
        plan, folds = cv_records(producer.cv_model)
        if split not in (None, "test") or not plan["test"]:
            return REFUSED  # no val split of a fold ensemble; no test split to score
        return expected([fold_member(plan, f) for f in folds], set(plan["test"]))
    scored = checkpoint_split(producer.checkpoints[0], split or "val")
    if not scored:
        return REFUSED  # an empty split
    return expected([checkpoint_member(p) for p in producer.checkpoints], scored)


def run_main(main, argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_refusal(code: int, err: str) -> None:
    assert code != 0
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err


SPEC = {"method": "grid", "metric": {"name": "val_f1_class1", "goal": "maximize"},
        "parameters": {"learning_rate": {"values": [0.05]}}}  # fmt: skip


@pytest.fixture(scope="module")
def producers(synthetic_raw, synthetic_processed, ablation, tmp_path_factory) -> list[Producer]:
    root = tmp_path_factory.mktemp("producers")
    with_test = root / "with_test"
    prepare_dataset(synthetic_raw, with_test, val_fraction=0.25, test_fraction=0.25, workers=1)
    made = []

    def trained(processed: Path, name: str, **options) -> Path:
        config = tiny(processed, root / name, max_epochs=2, embedding_size=4, **options)
        return Path(train(config, summary=False)["best_model_path"])

    made.append(Producer("train (val split)", [trained(synthetic_processed, "plain")]))
    with_test_checkpoint = trained(with_test, "tested")
    made.append(Producer("train with a test split", [with_test_checkpoint]))
    made.append(Producer("ensemble of checkpoints",
                         [with_test_checkpoint, trained(with_test, "seed1", seed=1)]))  # fmt: skip
    base = tiny(with_test, root / "cv", max_epochs=1, embedding_size=4)
    for selection, repeats in (("inner", 1), ("outer", 1), ("last", 2)):
        cv = CVConfig(folds=2, repeats=repeats, model_type=["SegmentationCNN"],
                      selection=selection, output_dir=root / "cv", tile_pictures="none",
                      bootstrap_resamples=50)  # fmt: skip
        result = cross_validate(cv, base, log=lambda _: None)
        name = f"CV {selection}" + (f" --repeats {repeats}" if repeats > 1 else "")
        made.append(Producer(name, cv_model=Path(result["root"]) / "SegmentationCNN"))
    made.append(Producer("CV --ablate sensors",
                         cv_model=Path(ablation["root"]) / "SegmentationCNN"))  # fmt: skip
    sweep = OptunaRun(storage=str(root / "study.journal"), study_name="matrix", count=1,
                      objective="cv", folds=2, output_dir=root / "sweep")  # fmt: skip
    study = run_optuna(parse_sweep_spec(SPEC), base, sweep, log=lambda _: None)
    trial = study_folder(study, sweep) / "trial-0" / "SegmentationCNN"
    made.append(Producer("sweep best trial", cv_model=trial))
    return made


def evaluation_args(producer: Producer, split: str | None, out: Path, charts: bool) -> list[str]:
    """The evaluate command line; `charts`: every figure, as SVG (whose text can be read)."""
    models = (
        ["--cv_dir", str(producer.cv_model)]
        if producer.cv_model is not None
        else ["--model_path", *map(str, producer.checkpoints)]
    )
    options = ["--results_dir", str(out), "--accelerator", "cpu", "--bootstrap_resamples", "50",
               *(["--fig_format", "svg"] if charts else ["--no-tile_pictures"])]  # fmt: skip
    return [*models, *(["--split", split] if split else []), *options]


@pytest.mark.slow
def test_evaluate_and_report_label_every_score_as_the_records_say(producers, tmp_path, capsys):
    cells = []
    for index, producer in enumerate(producers):
        for split in (None, "test"):
            out = tmp_path / f"eval-{index}-{split}"
            want = expected_evaluation(producer, split)
            arguments = evaluation_args(producer, split, out, charts=want == OPTIMISTIC)
            code, stdout, err = run_main(evaluate_main, arguments, capsys)
            cells.append((producer.name, split, want))
            if want == REFUSED:
                assert_one_line_refusal(code, err)
                continue
            assert code == 0, (producer.name, split, err)
            metrics = json.loads((out / "metrics.json").read_text())
            assert metrics["held_out"]["label"] == ("" if want == HONEST else OPTIMISTIC)
            assert ("OPTIMISTIC" in stdout) == (want == OPTIMISTIC), (producer.name, split)
            assert ("no interval" in stdout) == (len(metrics["tiles_scored"]) < 12)
            assert run_main(report_main, [str(out)], capsys)[0] == 0
            page = (out / "report.html").read_text()
            assert ('class="warn">OPTIMISTIC' in page) == (want == OPTIMISTIC), producer.name
            if want == OPTIMISTIC:  # every embedded chart says so too (SVG text stays text)
                charts = re.findall(r"data:image/svg\+xml;base64,([A-Za-z0-9+/=]+)", page)
                import base64

                texts = [base64.b64decode(c).decode() for c in charts]
                assert texts and all("OPTIMISTIC" in text for text in texts), producer.name
    # the matrix has every kind of cell
    assert {want for *_, want in cells} == {REFUSED, OPTIMISTIC, HONEST}


@pytest.mark.slow
def test_importance_compare_and_report_of_cross_validations(producers, tmp_path, capsys):
    cvs = [p for p in producers if p.cv_model is not None]
    for index, producer in enumerate(cvs):
        want = expected_out_of_fold(producer.cv_model)
        out = tmp_path / f"importance-{index}"
        code, stdout, err = run_main(importance_main, [
            "--cv_dir", str(producer.cv_model), "--grouping", "sensor", "--repeats", "1",
            "--bootstrap_resamples", "50", "--results_dir", str(out), "--accelerator", "cpu",
        ], capsys)  # fmt: skip
        assert code == 0, (producer.name, err)
        result = json.loads((out / "importance.json").read_text())
        assert result["optimistic"] == (want == OPTIMISTIC), producer.name
        assert ("OPTIMISTIC" in stdout) == (want == OPTIMISTIC), producer.name
        code, _, err = run_main(report_main, [str(producer.cv_model)], capsys)
        assert code == 0, err
        page = (producer.cv_model / "report.html").read_text()
        assert ('class="warn">OPTIMISTIC' in page) == (want == OPTIMISTIC), producer.name
    # compare: the runs of the same tiles in one leaderboard, each flagged as its records say
    same_tiles = [p for p in cvs if p.name.startswith(("CV inner", "CV last", "CV outer",
                                                       "sweep"))]  # fmt: skip
    assert len(same_tiles) == 4
    code, stdout, err = run_main(compare_main, [
        "--runs", *(str(p.cv_model) for p in same_tiles), "--bootstrap_resamples", "50",
    ], capsys)  # fmt: skip
    assert code == 0, err
    for producer in same_tiles:
        line = next(ln for ln in stdout.splitlines()
                    if f"{producer.cv_model.parent.name}/SegmentationCNN " in ln)  # fmt: skip
        want = expected_out_of_fold(producer.cv_model)
        assert ("OPTIMISTIC" in line) == (want == OPTIMISTIC), (producer.name, line)
    # one report over several folders: one leaderboard, each run labelled
    page = tmp_path / "all.html"
    folders = [str(p.cv_model) for p in same_tiles]
    assert run_main(report_main, [*folders, "--out", str(page)], capsys)[0] == 0
    board = page.read_text().split('<table id="leaderboard">')[1].split("</table>")[0]
    flagged = re.findall(r"<tr><td>([^<]+?)( OPTIMISTIC)?</td>", board)
    assert {name.split("/")[0]: bool(flag) for name, flag in flagged} == {
        p.cv_model.parent.name: expected_out_of_fold(p.cv_model) == OPTIMISTIC for p in same_tiles
    }


@pytest.mark.slow
def test_checkpoint_consumers_refuse_or_label(producers, tmp_path, capsys):
    for index, producer in enumerate(p for p in producers if p.checkpoints):
        want = expected_evaluation(producer, None)  # importance scores the val split
        out = tmp_path / f"importance-{index}"
        code, stdout, err = run_main(importance_main, [
            "--model_path", *map(str, producer.checkpoints), "--grouping", "sensor",
            "--repeats", "1", "--bootstrap_resamples", "50", "--results_dir", str(out),
            "--accelerator", "cpu",
        ], capsys)  # fmt: skip
        if len(producer.checkpoints) > 1:  # an ensemble's members hold out the same tiles
            assert_one_line_refusal(code, err)
            continue
        assert code == 0, (producer.name, err)
        assert ("OPTIMISTIC" in stdout) == (want == OPTIMISTIC), producer.name


@pytest.mark.slow
def test_a_sweeps_choice_travels_with_its_folds_and_its_best_config(producers, tmp_path, capsys):
    import shutil

    import yaml

    trial = next(p for p in producers if p.name == "sweep best trial").cv_model
    fold = next(trial.glob("fold_0/checkpoints/*/fold_0/*.ckpt"))
    # a fold's checkpoint scored on its own held-out tiles: they chose the trial's settings
    code, out, err = run_main(evaluate_main, ["--model_path", str(fold), "--split", "test",
                              "--results_dir", str(tmp_path / "fold"), "--accelerator", "cpu"],
                              capsys)  # fmt: skip
    assert code == 0, err
    assert "OPTIMISTIC" in out and "by the sweep matrix" in out
    # the sweep's best configuration names the tiles that chose it ...
    sweep_dir = trial.parents[2].parent
    best = yaml.safe_load((sweep_dir / "best_config.yaml").read_text())
    processed = Path(best["processed_dir"])
    labelled = json.loads((processed / "manifest.json").read_text())["split"]
    assert sorted(best["chosen_on"]["tiles"]) == sorted(labelled["train"] + labelled["val"])
    assert "cv_mean_f1_class1" in (sweep_dir / "trials.csv").read_text().splitlines()[0]
    # ... and a model trained with it, on a folder split anew, scores them OPTIMISTIC
    split_again = Path(shutil.copytree(processed, tmp_path / "again"))
    config = tmp_path / "best.yaml"
    config.write_text(yaml.safe_dump({**best, "processed_dir": str(split_again)}))
    raw = json.loads((processed / "manifest.json").read_text())["raw_dir"]
    assert run_main(train_main, ["--config", str(config), "--raw_dir", raw,
                                 "--split_seed", "9", "--max_epochs", "1", "--checkpoint_dir",
                                 str(tmp_path / "ck"), "--log_dir", str(tmp_path / "logs"),
                                 "--wandb_mode", "disabled"], capsys)[0] == 0  # fmt: skip
    new_test = json.loads((split_again / "manifest.json").read_text())["split"]["test"]
    was_chosen = set(new_test) & set(best["chosen_on"]["tiles"])
    assert was_chosen  # the new split's test tiles include tiles the sweep chose on
    code, out, err = run_main(evaluate_main, ["--checkpoint_dir", str(tmp_path / "ck"),
                              "--split", "test", "--results_dir", str(tmp_path / "best"),
                              "--accelerator", "cpu"], capsys)  # fmt: skip
    assert code == 0, err
    metrics = json.loads((tmp_path / "best" / "metrics.json").read_text())
    assert set(metrics["held_out"]["optimistic_tiles"]) == was_chosen


def test_a_cross_validation_without_test_tiles_names_scores_that_work(ablation, tmp_path, capsys):
    """The ablation's folder has no test split: evaluating its fold ensemble is refused, and
    each alternative the refusal names works: the report of its out-of-fold scores, and
    tiles no fold saw from another raw folder (scored with no OPTIMISTIC label)."""
    folder = Path(ablation["root"]) / "SegmentationCNN"
    evaluate = ["--cv_dir", str(folder), "--accelerator", "cpu",
                "--bootstrap_resamples", "50"]  # fmt: skip
    code, _, err = run_main(
        evaluate_main, [*evaluate, "--results_dir", str(tmp_path / "refused")], capsys
    )
    assert code != 0 and not (tmp_path / "refused" / "metrics.json").exists()
    assert "python -m scripts.report on its folder" in err and "--raw_dir with tiles" in err
    report = tmp_path / "report.html"
    code, _, err = run_main(report_main, [str(folder), "--out", str(report)], capsys)
    assert code == 0, err[-2000:]
    summary = json.loads((folder.parent / "summary.json").read_text())
    (model,) = [m for m in summary["models"] if m["name"] == "SegmentationCNN"]
    assert f"{model['out_of_fold']['f1_class1']:.4f}" in report.read_text()
    new = tmp_path / "new"
    generate_synthetic_dataset(new, n_tiles=2, seed=9, tile_px=64)
    results = tmp_path / "scored"
    code, out, err = run_main(
        evaluate_main, [*evaluate, "--raw_dir", str(new), "--results_dir", str(results)], capsys
    )
    assert code == 0, err[-2000:]
    metrics = json.loads((results / "metrics.json").read_text())
    assert metrics["tiles_scored"] == ["Tile1", "Tile2"] and metrics["held_out"]["label"] == ""
    assert "OPTIMISTIC" not in out
