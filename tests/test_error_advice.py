"""Every command an error or a warning advises works: each test makes the situation, takes the
advised command out of the message itself and runs it (the command's own `main`, in this
process), then checks that it did what the message promised. (The interrupted run's
`resume with:` command is followed in test_run_folders, a cross-validation's refusal's
alternatives in test_held_out_matrix, beside the cross-validation they share.)"""

from __future__ import annotations

import importlib
import json
import re
import shlex
import shutil
from pathlib import Path

import pytest

from src.esd_data.manifest import Manifest
from src.esd_data.synthetic import generate_synthetic_dataset
from tests.test_train_cli import train_arguments

SMALL = ["--n_tiles", "3", "--tile_px", "64"]
"""Appended to an advised make_synthetic command: the test's size, the advice's own options."""
TINY = ["--raw_dir", "none", "--embedding_size", "4", "--n_encoders", "1", "--wandb_mode",
        "disabled"]  # fmt: skip


def advised(message: str) -> list[str]:
    """The first `python -m scripts.NAME …` command of `message` (in backticks, or to the end
    of its line), as argv with the module first."""
    match = re.search(r"`(python -m scripts\.[^`]+)`", message) or re.search(
        r"(python -m scripts\.[^\n)]+)", message
    )
    assert match, f"no command advised in: {message}"
    words = shlex.split(match[1])
    assert words[:2] == ["python", "-m"]
    return words[2:]


def run(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    """`python -m argv[0] argv[1:]` in this process: (exit status, stdout, stderr)."""
    capsys.readouterr()
    code = importlib.import_module(argv[0]).main(argv[1:])
    out, err = capsys.readouterr()
    return code, out, err


def substitute(argv: list[str], **values: Path) -> list[str]:
    """The advice's placeholders (RAW, CKPT) replaced by this test's paths."""
    return [str(values.get(word, word)) for word in argv]


@pytest.fixture
def quiet_wandb(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")


def test_a_missing_raw_folder_advises_make_synthetic_then_prepare_works(tmp_path, capsys):
    raw, processed = tmp_path / "raw", tmp_path / "processed"
    prepare = ["scripts.prepare", "--raw_dir", str(raw), "--processed_dir", str(processed)]
    code, _, err = run(prepare, capsys)
    assert code == 1 and not processed.exists()
    command = advised(err)
    assert command[0] == "scripts.make_synthetic"
    assert run([*command, *SMALL], capsys)[0] == 0
    code, _, err = run(prepare, capsys)
    assert code == 0, err
    assert len(Manifest.load(processed).tiles) == 3


def test_an_unprepared_folder_advises_prepare_then_training_works(
    synthetic_raw, tmp_path, capsys, quiet_wandb
):
    processed = tmp_path / "processed"
    train = ["scripts.train", *train_arguments(tmp_path, *TINY, "--processed_dir", str(processed))]
    code, _, err = run(train, capsys)
    assert code != 0 and "prepare" in err
    command = substitute(advised(err), RAW=synthetic_raw)
    assert command[0] == "scripts.prepare"
    assert run(command, capsys)[0] == 0
    code, _, err = run(train, capsys)
    assert code == 0, err[-2000:]


def test_a_changed_tile_file_advises_a_rebuild_that_training_then_accepts(
    synthetic_processed, tmp_path, capsys, quiet_wandb
):
    processed = Path(shutil.copytree(synthetic_processed, tmp_path / "processed"))
    image = processed / "tiles/Tile2.npy"
    image.write_bytes(image.read_bytes()[:-8])  # truncated, as by a full disk
    train = ["scripts.train", *train_arguments(tmp_path, *TINY, "--processed_dir", str(processed))]
    code, _, err = run(train, capsys)
    assert code != 0 and "Tile2" in err
    command = advised(err)
    assert command[0] == "scripts.prepare"
    assert run(command, capsys)[0] == 0
    code, _, err = run(train, capsys)
    assert code == 0, err[-2000:]


@pytest.fixture
def trained_on_copy(synthetic_raw, tmp_path, capsys, quiet_wandb) -> tuple[Path, Path, Path]:
    """(raw folder, processed folder, checkpoint): a tiny UNet trained on its own folder."""
    processed = tmp_path / "processed"
    assert run(["scripts.prepare", "--raw_dir", str(synthetic_raw), "--processed_dir",
                str(processed)], capsys)[0] == 0  # fmt: skip
    train = train_arguments(tmp_path / "run", *TINY, "--processed_dir", str(processed))
    code, _, err = run(["scripts.train", *train], capsys)
    assert code == 0, err[-2000:]
    (checkpoint,) = (tmp_path / "run/checkpoints").rglob("last.ckpt")
    return synthetic_raw, processed, checkpoint


def test_a_re_split_names_the_evaluate_command_that_scores_the_runs_own_tiles(
    trained_on_copy, tmp_path, capsys
):
    raw, processed, checkpoint = trained_on_copy
    val_before = Manifest.load(processed).split["val"]
    code, out, _ = run(["scripts.prepare", "--raw_dir", str(raw), "--processed_dir",
                        str(processed), "--seed", "1"], capsys)  # fmt: skip
    assert code == 0 and "changes under 1 run(s) trained on it" in out
    assert Manifest.load(processed).split["val"] != val_before
    match = re.search(r"scripts\.evaluate (--raw_dir \S+)", out)
    assert match, out
    results = tmp_path / "results"
    command = ["scripts.evaluate", "--model_path", str(checkpoint), *match[1].split(),
               "--results_dir", str(results), "--accelerator", "cpu"]  # fmt: skip
    code, out, err = run(command, capsys)
    assert code == 0, err[-2000:]
    metrics = json.loads((results / "metrics.json").read_text())
    assert metrics["tiles_scored"] == val_before  # the run's own val tiles, none trained on
    assert metrics["held_out"]["label"] == "OPTIMISTIC"  # they chose its epoch
    assert "NOT HELD OUT" not in out
    # "to keep both folders, prepare into another --processed_dir"
    other = tmp_path / "other"
    code, _, _ = run(["scripts.prepare", "--raw_dir", str(raw), "--processed_dir", str(other),
                      "--seed", "2"], capsys)  # fmt: skip
    assert code == 0 and Manifest.load(processed).split["val"] != val_before


def test_a_folder_of_unlabelled_tiles_advises_evaluate_which_predicts_them(
    trained_on_copy, tmp_path, capsys
):
    _, _, checkpoint = trained_on_copy
    unlabelled = tmp_path / "unlabelled"
    generate_synthetic_dataset(unlabelled, n_tiles=1, seed=5, tile_px=64, unlabelled=2)
    shutil.rmtree(unlabelled / "Train/Tile1")  # only the two without ground truth remain
    code, _, err = run(["scripts.prepare", "--raw_dir", str(unlabelled), "--processed_dir",
                        str(tmp_path / "processed_u")], capsys)  # fmt: skip
    assert code == 1
    command = substitute(advised(err), CKPT=checkpoint)
    assert command[0] == "scripts.evaluate"
    results = tmp_path / "predictions"
    code, _, err = run([*command, "--results_dir", str(results), "--accelerator", "cpu"], capsys)
    assert code == 0, err[-2000:]
    assert {"Tile2", "Tile3"} <= {p.name.split("_")[0] for p in (results / "tiles").iterdir()}
