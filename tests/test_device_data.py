"""The device data path (`src.esd_data.device_data`) against the loader path, on the CPU.

Same seed, same split: the same batches (X after normalisation, y, tile/row/col) epoch after
epoch, with augmentation off and on; flip and rotation frequencies, noise std and the
alignment of labels with a cell-coded image; DDP shards and the starting epoch; training
metrics and exact resume; and which path `auto` picks, and the line saying so.
"""

from __future__ import annotations

import dataclasses
import itertools
import shutil
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from src.esd_data.augmentation import AugmentConfig, FlipRotate
from src.esd_data.datamodule import ESDDataModule
from src.esd_data.dataset import ESDDataset
from src.esd_data.device_data import (
    DeviceLoader,
    DeviceTiles,
    cut_windows,
    decide_data_path,
    parse_data_on_device,
)
from src.esd_data.manifest import Manifest
from src.esd_data.sampler import EpochShuffleSampler, ShardSampler
from src.training.train import train
from tests.test_training import assert_same_run, tiny_config

# One torch thread per process (see conftest): the same results, without OpenMP contention.
pytestmark = pytest.mark.usefixtures("one_torch_thread")

FEW_BANDS = {"sentinel2": ["B04", "B03", "B02", "B08"], "viirs": None}  # 26 channels
NO_AUGMENT = AugmentConfig(hflip_p=0, vflip_p=0, rot90_p=0, noise_p=0, blur_p=0)
FLIPS_ONLY = AugmentConfig(noise_p=0, blur_p=0)


def modules(processed: Path, augment: AugmentConfig, batch_size: int = 8, **kwargs):
    """(loader path, device path) datamodules on the same data, set up for fitting."""
    pair = []
    for on_device in ("false", "true"):
        module = ESDDataModule(
            processed,
            batch_size=batch_size,
            num_workers=0,
            augment=augment,
            data_on_device=on_device,
            **kwargs,
        )
        module.setup("fit")
        pair.append(module)
    return pair


def keys_of(batches) -> list[tuple[str, int, int]]:
    """(tile, row, col) of every item of the batches, in order."""
    return [
        (tile, int(row), int(col))
        for batch in batches
        for tile, row, col in zip(batch["tile"], batch["row"], batch["col"], strict=True)
    ]


def assert_same_batches(loader_batches, device_batches, normalise=None) -> int:
    """Every batch equal, key for key (X after `normalise` when given); the batch count."""
    count = 0
    for a, b in zip(loader_batches, device_batches, strict=True):
        assert a["tile"] == b["tile"]
        for key in ("y", "row", "col"):
            assert torch.equal(a[key], b[key].cpu()), key
        xa, xb = (a["X"], b["X"]) if normalise is None else (normalise(a["X"]), normalise(b["X"]))
        assert xa.dtype == xb.dtype and torch.equal(xa, xb.cpu())
        count += 1
    return count


# --- the same batches -----------------------------------------------------------------------


@pytest.mark.parametrize("augment", [NO_AUGMENT, FLIPS_ONLY], ids=["no augmentation", "flips"])
def test_device_path_yields_the_loader_batches_epoch_after_epoch(synthetic_processed, augment):
    loader, device = modules(synthetic_processed, augment, batch_size=5)
    normalise = next(iter(loader.datasets.values())).normalise_batch
    for split in ("train", "val"):
        a, b = getattr(loader, f"{split}_dataloader")(), getattr(device, f"{split}_dataloader")()
        assert isinstance(a, DataLoader) and isinstance(b, DeviceLoader) and len(a) == len(b)
        seen = []
        for _ in range(2):  # both loaders advance to the next epoch by themselves
            batches = list(b)
            assert assert_same_batches(a, batches, normalise) == len(a)
            seen.append(keys_of(batches))
        if split == "train":
            assert seen[0] != seen[1]  # a new order each epoch, the same one on both paths
            assert sorted(seen[0]) == sorted(seen[1])
        else:
            assert seen[0] == seen[1]  # evaluation in order


def test_torch_cut_equals_numpy_cut_with_flips(synthetic_processed):
    """The accelerator's code (torch stack, grouped flips and rotations) on the CPU."""
    dataset = ESDDataset(
        synthetic_processed, "train", transform=FlipRotate(FLIPS_ONLY), seed=3, normalise=False
    )
    numpy_tiles = DeviceTiles(dataset, "cpu")
    torch_tiles = DeviceTiles(dataset, "cpu", numpy_cut=False)
    sampler = EpochShuffleSampler(len(dataset), seed=3)
    loader = DataLoader(dataset, batch_size=16, sampler=sampler)
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        reference = list(loader)
        for tiles in (numpy_tiles, torch_tiles):
            other = EpochShuffleSampler(len(dataset), seed=3)
            other.set_epoch(epoch)
            assert_same_batches(reference, DeviceLoader(tiles, 16, other))


@pytest.mark.parametrize("numpy_cut", [True, False])
def test_overlapping_windows_are_cut_as_the_dataset_cuts_them(synthetic_processed, numpy_cut):
    dataset = ESDDataset(synthetic_processed, "val", tile_size_gt=8, stride_gt=3, normalise=False)
    assert dataset.origins == [0, 3, 6, 8]  # the last window flush with the edge
    tiles = DeviceTiles(dataset, "cpu", numpy_cut=numpy_cut)
    for rank in range(2):
        expected = DataLoader(dataset, batch_size=7, sampler=ShardSampler(len(dataset), rank, 2))
        got = DeviceLoader(tiles, 7, ShardSampler(len(dataset), rank, 2))
        assert assert_same_batches(expected, got) == len(expected)


def test_cut_windows_takes_the_pixels_at_each_origin():
    images = torch.arange(3 * 2 * 10 * 12, dtype=torch.float32).reshape(3, 2, 10, 12)
    windows = cut_windows(images, [2, 0, 2], [0, 5, 3], [7, 1, 0], 4)
    assert windows.shape == (3, 2, 4, 4)
    for b, (n, top, left) in enumerate([(2, 0, 7), (0, 5, 1), (2, 3, 0)]):
        assert torch.equal(windows[b], images[n, :, top : top + 4, left : left + 4])


# --- DDP shards and the epoch ---------------------------------------------------------------


def fake_trainer(rank: int, world_size: int, epoch: int = 0) -> SimpleNamespace:
    """What the datamodule reads from a Trainer: rank, world size, device, restored epoch."""
    progress = SimpleNamespace(current=SimpleNamespace(processed=epoch))
    return SimpleNamespace(
        global_rank=rank,
        world_size=world_size,
        strategy=SimpleNamespace(root_device=torch.device("cpu")),
        fit_loop=SimpleNamespace(epoch_progress=progress),
        training=False,
    )


def test_each_rank_gets_the_loader_paths_shard_from_the_restored_epoch(synthetic_processed):
    world_size, epoch = 3, 4
    loader, device = modules(synthetic_processed, FLIPS_ONLY, batch_size=4)
    train_size = len(device.datasets["train"])
    keys = {"train": [], "val": []}
    for rank in range(world_size):
        for module in (loader, device):
            module.trainer = fake_trainer(rank, world_size, epoch)
        for split in keys:
            a = getattr(loader, f"{split}_dataloader")()
            b = getattr(device, f"{split}_dataloader")()
            assert len(b) == len(a)  # batches in this rank's shard
            batches = list(b)  # the first iteration: the restored epoch, not epoch 0
            assert_same_batches(a, batches)
            keys[split].append(keys_of(batches))
        order = EpochShuffleSampler(train_size, 0, rank, world_size).indices(epoch)
        index = device.datasets["train"].index
        assert keys["train"][rank] == [index[i] for i in order]
    per_rank = -(-train_size // world_size)
    assert [len(k) for k in keys["train"]] == [per_rank] * world_size  # padded: equal steps
    assert len(set(itertools.chain(*keys["train"]))) == train_size
    val = list(itertools.chain(*keys["val"]))
    assert sorted(val) == sorted(device.datasets["val"].index)  # every window exactly once


# --- augmentation statistics and alignment --------------------------------------------------


def dihedral_probabilities() -> dict[bytes, Fraction]:
    """Where each cell of a 4×4 subtile comes from (flat index), by outcome, with its exact
    probability: flip columns (½), flip rows (½), then k = 1..3 quarter turns (½, uniform)."""
    grid = np.arange(16).reshape(4, 4)
    half = Fraction(1, 2)
    outcome: dict[bytes, Fraction] = {}
    for h, v, k in itertools.product((0, 1), (0, 1), range(4)):
        g = grid[:, ::-1] if h else grid
        g = g[::-1, :] if v else g
        key = np.ascontiguousarray(np.rot90(g, k)).tobytes()
        probability = half * half * (1 - half if k == 0 else half / 3)
        outcome[key] = outcome.get(key, Fraction(0)) + probability
    return outcome


@pytest.fixture(scope="module")
def cell_coded(synthetic_processed, tmp_path_factory) -> Path:
    """A copy of the processed folder whose labels number the cells (1..256, row-major) and
    whose image holds 256·(c mod 4) + label in channel c of every pixel of that cell."""
    folder = Path(shutil.copytree(synthetic_processed, tmp_path_factory.mktemp("coded") / "p"))
    manifest = Manifest.load(folder)
    labels = np.arange(1, 257, dtype=np.uint16).reshape(16, 16)
    offsets = 256 * (np.arange(len(manifest.channels)) % 4)
    pixels = np.kron(labels, np.ones((manifest.cell_px,) * 2, dtype=np.uint16))
    image = (offsets[:, None, None] + pixels[None]).astype(np.float16)
    for record in manifest.tiles.values():
        np.save(folder / record.image, image)
        np.save(folder / record.labels, labels)
    return folder


@pytest.mark.parametrize("numpy_cut", [True, False])
def test_labels_follow_every_flip_and_rotation_with_loader_frequencies(cell_coded, numpy_cut):
    dataset = ESDDataset(
        cell_coded, "train", transform=FlipRotate(AugmentConfig()), seed=7, normalise=False
    )
    tiles = DeviceTiles(dataset, "cpu", numpy_cut=numpy_cut)
    sampler = EpochShuffleSampler(len(dataset), seed=7)
    expected = dihedral_probabilities()
    counts = dict.fromkeys(expected, 0)
    px = Manifest.load(cell_coded).cell_px
    for _ in range(6):  # 6 epochs of 144 subtiles, deterministic seeds: cannot flake
        for batch in DeviceLoader(tiles, 16, sampler):
            X, y = batch["X"].numpy().astype(np.int64), batch["y"].numpy() + 1
            cells = X[:, :, px // 2 :: px, px // 2 :: px]  # one pixel of every label cell
            whole = np.repeat(np.repeat(cells, px, axis=2), px, axis=3)
            assert (whole == X).all()  # every cell one value: cut on cell boundaries
            offsets = 256 * (np.arange(X.shape[1]) % 4)
            assert (cells == offsets[None, :, None, None] + y[:, None]).all()  # aligned
            for k in range(len(y)):
                row, col = int(batch["row"][k]), int(batch["col"][k])
                grid = np.arange(16).reshape(4, 4)
                original = 1 + (row * 4 + grid // 4) * 16 + col * 4 + grid % 4
                # y is a dihedral image of the subtile's cell numbers: which one?
                sources = [np.frombuffer(key, dtype=grid.dtype).reshape(4, 4) for key in expected]
                matches = [
                    key
                    for key, source in zip(expected, sources, strict=True)
                    if np.array_equal(original.ravel()[source], y[k])
                ]
                assert len(matches) == 1
                counts[matches[0]] += 1
    n = sum(counts.values())
    assert n == 6 * len(dataset)
    chi2 = sum((counts[k] - n * float(p)) ** 2 / (n * float(p)) for k, p in expected.items())
    assert chi2 < 24.3, (chi2, counts)  # 7 degrees of freedom, P(chi2 > 24.3) = 0.001


class Recorder(L.LightningModule):
    """Keeps every training and validation batch as the step sees it."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)
        self.seen: dict[str, list] = {"train": [], "val": []}

    def _keep(self, stage: str, batch) -> None:
        kept = {k: v.clone() if torch.is_tensor(v) else list(v) for k, v in batch.items()}
        self.seen[stage].append(kept)

    def training_step(self, batch, _):
        self._keep("train", batch)
        return self.layer(batch["X"].mean().view(1, 1)).sum()

    def validation_step(self, batch, _):
        self._keep("val", batch)

    def predict_step(self, batch, _):
        return {k: v.clone() if torch.is_tensor(v) else list(v) for k, v in batch.items()}

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def fit_recorder(module: ESDDataModule, **trainer_options) -> Recorder:
    recorder = Recorder()
    options = {
        "max_epochs": 2, "limit_train_batches": 5, "limit_val_batches": 2, "logger": False,
        "enable_checkpointing": False, "enable_progress_bar": False,
        "enable_model_summary": False, "use_distributed_sampler": False, "accelerator": "cpu",
        **trainer_options,
    }  # fmt: skip
    L.Trainer(**options).fit(recorder, datamodule=module)
    return recorder


def test_under_a_trainer_both_paths_give_the_same_augmented_batches(synthetic_processed):
    """Default augmentation (flips, rotations, noise, blur), limited batches, two epochs."""
    loader, device = modules(synthetic_processed, AugmentConfig(noise_p=0.5, blur_p=0.3))
    seen = [fit_recorder(module).seen for module in (loader, device)]
    assert [len(s["train"]) for s in seen] == [10, 10]
    assert len(seen[0]["val"]) == 2 + 2 * 2  # sanity check, then each epoch
    for stage in ("train", "val"):
        assert_same_batches(seen[0][stage], seen[1][stage])
    first, second = seen[1]["train"][0], seen[1]["train"][5]  # epoch 0 and 1, batch 0
    assert first["tile"] != second["tile"] or not torch.equal(first["row"], second["row"])


def test_validate_and_predict_loops_take_the_same_device_batches(synthetic_processed):
    seen = []
    for module in modules(synthetic_processed, AugmentConfig(), batch_size=7):
        recorder = Recorder()
        trainer = L.Trainer(
            accelerator="cpu", logger=False, enable_progress_bar=False,
            enable_model_summary=False, limit_predict_batches=3,
        )  # fmt: skip
        trainer.validate(recorder, datamodule=module)
        seen.append((recorder.seen["val"], trainer.predict(recorder, datamodule=module)))
    (val_a, predict_a), (val_b, predict_b) = seen
    assert assert_same_batches(val_a, val_b) == 7  # 48 validation subtiles, unaugmented
    assert assert_same_batches(predict_a, predict_b) == 3


def test_noise_on_device_batches_has_its_std_and_probability(synthetic_processed):
    noise = AugmentConfig(hflip_p=0, vflip_p=0, rot90_p=0, noise_p=0.5, noise_std=0.5, blur_p=0)
    _, device = modules(synthetic_processed, noise)
    recorder = fit_recorder(device, max_epochs=1, limit_train_batches=18, limit_val_batches=0)
    clean = ESDDataset(synthetic_processed, "train")
    position = {key: i for i, key in enumerate(clean.index)}
    differences = []
    for batch in recorder.seen["train"]:
        keys = zip(batch["tile"], batch["row"].tolist(), batch["col"].tolist(), strict=True)
        originals = torch.stack([clean[position[key]]["X"] for key in keys])
        differences.extend(batch["X"] - originals)
    noisy = [d for d in differences if d.abs().max() > 1e-4]
    assert len(differences) == len(clean) == 144
    assert 50 <= len(noisy) <= 94  # about half of 144 (sd 6)
    assert torch.cat([d.flatten() for d in noisy]).std().item() == pytest.approx(0.5, rel=0.03)


# --- training -------------------------------------------------------------------------------


def test_training_metrics_equal_between_paths_and_auto_says_which(
    synthetic_processed, tmp_path, capsys
):
    results = {}
    for name, option in (("auto", "auto"), ("device", "true")):
        config = tiny_config(
            tmp_path / name,
            synthetic_processed,
            max_epochs=1,
            augment=False,
            data_on_device=option,
            bands=FEW_BANDS,
        )
        results[name] = train(config)
        output = capsys.readouterr().out
        line = "data: loader workers (accelerator is the CPU)"
        assert (line in output) == (option == "auto"), output[-2000:]
        assert ("data: on the device (cpu)" in output) == (option == "true"), output[-2000:]
    loader, device = results["auto"], results["device"]
    for key in ("val_f1_class1", "val_loss", "val_acc_overall", "train_loss", "train_f1_class1"):
        assert loader[key] == device[key], key
    assert_same_run(loader, device, tmp_path / "auto" / "logs", tmp_path / "device" / "logs")


def test_resume_is_exact_with_the_device_path(synthetic_processed, tmp_path):
    options = {  # default augmentation; 6 of the 18 batches per epoch
        "data_on_device": "true", "learning_rate": 3e-3, "bands": FEW_BANDS,
        "limit_train_batches": 6,
    }  # fmt: skip
    straight = train(tiny_config(tmp_path / "a", synthetic_processed, max_epochs=2, **options))
    first = tiny_config(tmp_path / "b", synthetic_processed, max_epochs=1, **options)
    results_first = train(first)
    resumed = dataclasses.replace(
        first, max_epochs=2, resume=Path(results_first["last_model_path"])
    )
    results_resumed = train(resumed)
    assert_same_run(straight, results_resumed, tmp_path / "a" / "logs", tmp_path / "b" / "logs")


# --- which path -----------------------------------------------------------------------------


def test_auto_picks_the_loader_on_the_cpu_and_when_the_data_do_not_fit(synthetic_processed):
    module = ESDDataModule(synthetic_processed, num_workers=0)  # auto by default
    module.setup("fit")
    path = module.choose_data_path()
    assert not path.on_device and str(path) == "loader workers (accelerator is the CPU)"
    assert isinstance(module.train_dataloader(), DataLoader)
    need = module.device_bytes()
    manifest = Manifest.load(synthetic_processed)
    tiles = sum(len(v) for k, v in manifest.split.items() if k in ("train", "val", "test"))
    assert need == tiles * (99 * 64 * 64 * 2 + 16 * 16 * 8)
    gpu, free = torch.device("cuda", 0), 40 * 2**30
    small = decide_data_path("auto", gpu, need, share=need / free / 2, free_bytes=free)
    assert not small.on_device
    assert "more than share" in str(small) and "40.0 GiB free on cuda:0" in str(small)
    fits = decide_data_path("auto", gpu, need, share=0.5, free_bytes=free)
    assert (
        fits.on_device
        and str(fits) == "on the device (cuda:0), 9.3 MiB of 40.0 GiB free (share 0.5)"
    )
    assert decide_data_path("auto", "mps", need, 0.5, free_bytes=free).on_device
    assert not decide_data_path("false", gpu, need, 0.5, free_bytes=free).on_device
    forced = decide_data_path("true", "cpu", need, share=1e-9)
    assert forced.on_device and "data_on_device=true" in str(forced)


def test_data_on_device_values():
    assert [parse_data_on_device(v) for v in ("auto", "TRUE", "false", True, False)] == [
        "auto", "true", "false", "true", "false",
    ]  # fmt: skip
    with pytest.raises(ValueError, match="auto, true or false"):
        parse_data_on_device("gpu")
    with pytest.raises(ValueError, match="device_memory_share"):
        ESDDataModule(Path("nowhere"), device_memory_share=0.0)
