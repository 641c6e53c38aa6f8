"""Real use: a processed folder shared read-only, commands that fail without changing data."""

from __future__ import annotations

import subprocess

import pytest

from scripts.cross_validate import main as cross_validate_main
from scripts.evaluate import main as evaluate_main
from scripts.prepare import main as prepare_main
from scripts.train import main as train_main
from src.esd_data.cache import prepare_dataset
from src.esd_data.preparation import PrepareRequest, prepare_requested

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = ["--model_type", "SegmentationCNN", "--embedding_size", "4", "--depth", "1",
        "--max_epochs", "1", "--num_workers", "0", "--wandb_mode", "disabled"]  # fmt: skip


@pytest.fixture
def read_only(synthetic_raw, tmp_path):
    """A prepared folder (with test tiles) and a read-only bind mount of it, as a data set
    shared on a cluster is; skipped where this process may not mount."""
    source, mounted = tmp_path / "source", tmp_path / "shared"
    prepare_dataset(synthetic_raw, source, val_fraction=0.25, test_fraction=0.25, workers=1)
    mounted.mkdir()
    done = subprocess.run(["mount", "--bind", "-o", "ro", str(source), str(mounted)],
                          capture_output=True, text=True, check=False)  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"cannot make a read-only bind mount here: {done.stderr.strip()}")
    try:
        yield mounted
    finally:
        # lazily: the test process may still map tile files of it
        subprocess.run(["umount", "-l", str(mounted)], check=False)


@pytest.mark.slow
def test_train_cross_validate_and_evaluate_on_a_read_only_folder(
    read_only, synthetic_raw, tmp_path, capsys
):
    with pytest.raises(OSError):  # it is read-only indeed
        (read_only / "probe").write_text("")
    folders = ["--checkpoint_dir", str(tmp_path / "ck"), "--log_dir", str(tmp_path / "logs")]
    for raw in (str(synthetic_raw), "none"):  # checked against its raw files, or as it is
        assert train_main([*TINY, "--raw_dir", raw, "--processed_dir", str(read_only),
                           *folders]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert out.count(f"{read_only} is read-only: used as it is, without a lock") == 1  # a process
    assert cross_validate_main([*TINY, "--folds", "2", "--raw_dir", "none", "--processed_dir",
                                str(read_only), "--output_dir", str(tmp_path / "cv"),
                                "--tile_pictures", "none"]) == 0  # fmt: skip
    assert evaluate_main(["--checkpoint_dir", str(tmp_path / "ck"), "--split", "test",
                          "--results_dir", str(tmp_path / "eval")]) == 0  # fmt: skip
    assert (tmp_path / "eval" / "metrics.json").is_file()
    # changing it is one line, not a traceback
    code = prepare_main(["--raw_dir", str(synthetic_raw), "--processed_dir", str(read_only),
                         "--val_fraction", "0.5"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1 and "not writable" in err and "Traceback" not in err


def test_failed_commands_change_no_data(synthetic_processed, synthetic_raw, tmp_path, capsys):
    manifest = (synthetic_processed / "manifest.json").read_bytes()
    with pytest.raises(SystemExit) as exited:  # an option error, before any work
        train_main([*TINY, "--raw_dir", str(synthetic_raw), "--processed_dir",
                    str(synthetic_processed), "--val_fraction", "0"])  # fmt: skip
    assert exited.value.code == 2
    assert "--limit_val_batches 0" in capsys.readouterr().err
    assert (synthetic_processed / "manifest.json").read_bytes() == manifest  # not re-split
    # a first preparation that fails (no tiles) leaves no folder that looks prepared
    empty = tmp_path / "empty_raw"
    empty.mkdir()
    assert prepare_main(["--raw_dir", str(empty), "--processed_dir", str(tmp_path / "p")]) == 1
    assert not (tmp_path / "p").exists()


def test_a_tile_refused_in_a_worker_is_one_error_and_leaves_no_folder(synthetic_copy, tmp_path):
    import numpy as np
    import tifffile

    from src.esd_data.cache import PrepareError

    raster = synthetic_copy / "Train" / "Tile6" / "L2A_20200811_B03.tif"
    tifffile.imwrite(raster, tifffile.imread(raster), compression="zlib")
    with tifffile.TiffFile(raster) as tif:  # headers fine, pixel data unreadable
        offset, size = tif.pages[0].dataoffsets[0], tif.pages[0].databytecounts[0]
    with raster.open("r+b") as handle:
        handle.seek(offset)
        handle.write(np.zeros(size, np.uint8).tobytes())
    with pytest.raises(
        PrepareError, match=r"(?s)Tile6.*L2A_20200811_B03\.tif: pixel data unreadable"
    ):
        prepare_requested(synthetic_copy, tmp_path / "p", PrepareRequest(), workers=2,
                          log=lambda _: None)  # fmt: skip
    assert not (tmp_path / "p").exists()


def test_an_impossible_split_leaves_the_prepared_folder_as_it_was(synthetic_raw, tmp_path):
    processed = tmp_path / "p"
    prepare_dataset(synthetic_raw, processed, val_fraction=0.25, workers=1)
    manifest = (processed / "manifest.json").read_bytes()
    with pytest.raises(ValueError, match="must be in"):
        prepare_dataset(synthetic_raw, processed, val_fraction=0.3, test_fraction=0.75, workers=1)
    assert (processed / "manifest.json").read_bytes() == manifest
