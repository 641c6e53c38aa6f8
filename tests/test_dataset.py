"""ESDDataset, subtiles, augmentation and ESDDataModule on prepared synthetic data."""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch

from src.esd_data.augmentation import AugmentConfig, FlipRotate, NoiseBlur
from src.esd_data.datamodule import ESDDataModule
from src.esd_data.dataset import ESDDataset
from src.esd_data.manifest import Manifest
from src.esd_data.sampler import EpochShuffleSampler
from src.esd_data.subtiles import VALID_TILE_SIZES, cut_subtiles, stitch_subtiles

NO_AUGMENT = AugmentConfig(hflip_p=0, vflip_p=0, rot90_p=0, noise_p=0, blur_p=0)


@pytest.mark.parametrize("t", [1, 2, 4, 8, 16])
def test_cut_and_stitch_reproduce_the_tile(synthetic_processed, t):
    image = np.load(synthetic_processed / "tiles" / "Tile5.npy")
    labels = np.load(synthetic_processed / "tiles" / "Tile5.labels.npy")
    per_side = 16 // t
    pieces = cut_subtiles(image, per_side)
    assert pieces.shape == (per_side**2, 99, 4 * t, 4 * t)
    last = per_side**2 - 1  # bottom-right subtile
    np.testing.assert_array_equal(pieces[last], image[:, -4 * t :, -4 * t :])
    if per_side > 1:  # first subtile of the second row
        np.testing.assert_array_equal(pieces[per_side], image[:, 4 * t : 8 * t, : 4 * t])
    np.testing.assert_array_equal(stitch_subtiles(pieces), image)
    np.testing.assert_array_equal(stitch_subtiles(cut_subtiles(labels, per_side)), labels)


def test_valid_tile_sizes_are_the_divisors_of_16():
    assert VALID_TILE_SIZES == (1, 2, 4, 8, 16)


@pytest.mark.parametrize("t", [2, 4])
def test_every_val_subtile_is_served_and_restitches_the_tile(synthetic_processed, t):
    manifest = Manifest.load(synthetic_processed)
    dataset = ESDDataset(synthetic_processed, "val", tile_size_gt=t)
    per_side = 16 // t
    assert len(dataset) == len(manifest.split["val"]) * per_side**2
    mean, std = manifest.normalisation(list(range(99)))
    for tile in manifest.split["val"]:
        items = [dataset[i] for i in range(len(dataset)) if dataset.index[i][0] == tile]
        assert [(item["row"], item["col"]) for item in items] == [
            (r, c) for r in range(per_side) for c in range(per_side)
        ]
        images = torch.stack([item["X"] for item in items]).numpy()
        labels = torch.stack([item["y"] for item in items]).numpy()
        assert images.dtype == np.float32 and images.shape[1:] == (99, 4 * t, 4 * t)
        assert labels.dtype == np.int64 and labels.shape[1:] == (t, t)
        stored = np.load(synthetic_processed / "tiles" / f"{tile}.npy").astype(np.float32)
        restored = stitch_subtiles(images) * std[:, None, None] + mean[:, None, None]
        np.testing.assert_allclose(restored, stored, atol=1e-5)
        truth = np.load(synthetic_processed / "tiles" / f"{tile}.labels.npy")
        np.testing.assert_array_equal(stitch_subtiles(labels), truth.astype(np.int64) - 1)


def test_normalised_training_data_has_zero_mean_unit_std(synthetic_processed):
    dataset = ESDDataset(synthetic_processed, "train")
    X = torch.stack([dataset[i]["X"] for i in range(len(dataset))]).double()
    mean, std = X.mean(dim=(0, 2, 3)), X.std(dim=(0, 2, 3))
    varying = torch.tensor(Manifest.load(synthetic_processed).std) != 1.0
    assert varying.sum() > 90
    assert mean.abs().max() < 1e-3
    assert (std[varying] - 1).abs().max() < 1e-3


def test_band_selection_resolves_names(synthetic_processed):
    dataset = ESDDataset(
        synthetic_processed, "val", bands={"sentinel2": ["B04", "B03", "B02"], "viirs": ["max"]}
    )
    assert dataset.channel_names[:4] == [
        f"sentinel2/{d}/B04" for d in ("2020-08-11", "2020-08-16", "2020-08-26", "2020-08-31")
    ]
    assert dataset.channel_names[-1] == "viirs/max/DNB" and len(dataset.channel_names) == 13
    assert dataset[0]["X"].shape[0] == 13
    full = ESDDataset(synthetic_processed, "val")
    index = full.channel_names.index("sentinel2/2020-08-26/B03")
    np.testing.assert_array_equal(
        dataset[7]["X"][dataset.channel_names.index("sentinel2/2020-08-26/B03")],
        full[7]["X"][index],
    )
    one_date = ESDDataset(synthetic_processed, "val", bands={"sentinel1": ["2020-08-04/VH"]})
    assert one_date.channel_names == ["sentinel1/2020-08-04/VH"]


def test_band_selection_errors_list_what_exists(synthetic_processed):
    with pytest.raises(ValueError, match=r"sentinel2 has no band or date 'B10'.*B8A"):
        ESDDataset(synthetic_processed, "val", bands={"sentinel2": ["B10"]})
    with pytest.raises(ValueError, match=r"unknown sensor 'modis'.*landsat8"):
        ESDDataset(synthetic_processed, "val", bands={"modis": None})


def test_flips_and_rotations_move_image_and_labels_together():
    labels = np.arange(16, dtype=np.uint8).reshape(4, 4)
    image = np.repeat(np.repeat(labels, 3, axis=0), 3, axis=1)[None].astype(np.float16)
    torch.manual_seed(0)
    for config in [
        AugmentConfig(hflip_p=1, vflip_p=0, rot90_p=0),
        AugmentConfig(hflip_p=0, vflip_p=1, rot90_p=0),
        AugmentConfig(hflip_p=0, vflip_p=0, rot90_p=1),
        AugmentConfig(),
    ]:
        for _ in range(8):
            x, y = FlipRotate(config)(image, labels)
            np.testing.assert_array_equal(x[0, 1::3, 1::3], y)
    x, y = FlipRotate(AugmentConfig(hflip_p=1, vflip_p=0, rot90_p=0))(image, labels)
    np.testing.assert_array_equal(y, labels[:, ::-1])


def test_noise_and_blur_change_only_what_they_should():
    x = torch.randn(6, 3, 20, 20)
    assert torch.equal(NoiseBlur(NO_AUGMENT)(x), x)
    noisy = NoiseBlur(AugmentConfig(noise_p=1, noise_std=0.5, blur_p=0))(x)
    assert (noisy - x).std().item() == pytest.approx(0.5, rel=0.1)
    blurred = NoiseBlur(AugmentConfig(noise_p=0, blur_p=1, blur_sigma=1.0))(x)
    assert blurred.std() < 0.6 * x.std()  # white noise loses most of its variance
    assert blurred.mean().item() == pytest.approx(x.mean().item(), abs=0.05)


def test_datamodule_prepares_and_serves_all_splits(synthetic_raw, tmp_path):
    module = ESDDataModule(
        tmp_path,
        raw_dir=synthetic_raw,
        batch_size=5,
        num_workers=0,
        val_fraction=0.25,
        test_fraction=0.25,
    )
    module.prepare_data()
    module.setup("fit")
    batch = next(iter(module.train_dataloader()))
    assert batch["X"].shape == (5, 99, 16, 16) and batch["y"].shape == (5, 4, 4)
    assert batch["y"].min() >= 0 and batch["y"].max() <= 3
    assert len(module.val_dataloader().dataset) == 3 * 16
    assert len(module.test_dataloader().dataset) == 3 * 16
    tiles = {split: set(ds.tiles) for split, ds in module.datasets.items()}
    assert not (tiles["train"] & tiles["val"]) and not (tiles["val"] & tiles["test"])
    assert not (tiles["train"] & tiles["test"])
    assert tiles["train"] | tiles["val"] | tiles["test"] == {f"Tile{n}" for n in range(1, 13)}


def test_validation_is_untransformed_and_training_is_augmented(synthetic_processed):
    module = ESDDataModule(
        synthetic_processed,
        batch_size=8,
        num_workers=0,
        augment=AugmentConfig(noise_p=1, noise_std=1.0),
    )
    module.setup("fit")

    class Probe(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(1, 1)
            self.seen = {"train": [], "val": []}

        def training_step(self, batch, _):
            self.seen["train"].append(batch["X"].std().item())
            return self.layer(batch["X"].mean().view(1, 1)).sum()

        def validation_step(self, batch, _):
            self.seen["val"].append(batch["X"].clone())

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.0)

    probe = Probe()
    trainer = L.Trainer(
        max_epochs=1,
        limit_train_batches=3,
        limit_val_batches=2,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(probe, datamodule=module)
    assert min(probe.seen["train"]) > 1.3  # unit-variance data plus unit-variance noise
    stored = next(iter(module.val_dataloader()))["X"]
    assert stored.dtype == torch.float16  # what crosses from the workers
    normalised = ESDDataset(synthetic_processed, "val")
    expected = torch.stack([normalised[i]["X"] for i in range(8)])
    assert torch.allclose(probe.seen["val"][0], expected, atol=1e-6)


def test_epoch_sampler_order_and_augmentation_depend_only_on_seed_and_epoch(synthetic_processed):
    sampler = EpochShuffleSampler(48, seed=5)
    first, second = list(sampler), list(sampler)
    assert sorted(i for i, _ in first) == list(range(48)) and {e for _, e in first} == {0}
    assert [i for i, _ in first] != [i for i, _ in second] and {e for _, e in second} == {1}
    sampler.set_epoch(1)
    assert list(sampler) == second
    dataset = ESDDataset(synthetic_processed, "train", transform=FlipRotate(AugmentConfig()))
    torch.manual_seed(123)  # global RNG state must not matter
    a = dataset[(7, 3)]["X"]
    torch.manual_seed(456)
    assert torch.equal(a, dataset[(7, 3)]["X"])
    variants = {dataset[(7, epoch)]["X"].sum().item() for epoch in range(12)}
    assert len(variants) > 1


def test_accumulated_micro_batches_get_their_own_noise(synthetic_processed):
    noise_only = AugmentConfig(hflip_p=0, vflip_p=0, rot90_p=0, noise_p=1, noise_std=1.0, blur_p=0)
    module = ESDDataModule(synthetic_processed, batch_size=4, num_workers=0, augment=noise_only)
    module.setup("fit")
    clean = ESDDataset(synthetic_processed, "train")
    position = {key: i for i, key in enumerate(clean.index)}

    class Probe(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(1, 1)
            self.noise = []

        def training_step(self, batch, _):
            keys = zip(batch["tile"], batch["row"].tolist(), batch["col"].tolist(), strict=True)
            originals = torch.stack([clean[position[key]]["X"] for key in keys])
            self.noise.append(batch["X"] - originals)
            return self.layer(batch["X"].mean().view(1, 1)).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.0)

    probe = Probe()
    trainer = L.Trainer(
        max_epochs=1, limit_train_batches=4, limit_val_batches=0, accumulate_grad_batches=2,
        logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, use_distributed_sampler=False,
    )  # fmt: skip
    trainer.fit(probe, datamodule=module)
    assert trainer.global_step == 2 and len(probe.noise) == 4
    assert all(n.std() == pytest.approx(1.0, abs=0.05) for n in probe.noise)
    # the two micro-batches of each optimiser step: independent draws, not the same noise
    for first, second in ((0, 1), (2, 3)):
        assert not torch.allclose(probe.noise[first], probe.noise[second], atol=0.1)


DIHEDRAL = {
    "identity": lambda a: a,
    "hflip": lambda a: np.flip(a, axis=-1),
    "vflip": lambda a: np.flip(a, axis=-2),
    "rot90": lambda a: np.rot90(a, 1, axes=(-2, -1)),
    "rot180": lambda a: np.rot90(a, 2, axes=(-2, -1)),
    "rot270": lambda a: np.rot90(a, 3, axes=(-2, -1)),
    "transpose": lambda a: np.swapaxes(a, -1, -2),
    "antitranspose": lambda a: np.rot90(np.swapaxes(a, -1, -2), 2, axes=(-2, -1)),
}


def test_training_batches_are_flipped_and_rotated_with_their_labels(synthetic_processed):
    module = ESDDataModule(synthetic_processed, batch_size=16, num_workers=0)  # default augment
    module.setup("fit")
    manifest = Manifest.load(synthetic_processed)
    tiles = manifest.split["train"]
    images = {t: np.load(synthetic_processed / manifest.tiles[t].image) for t in tiles}
    labels = {t: np.load(synthetic_processed / manifest.tiles[t].labels) for t in tiles}
    seen = []
    for batch in module.train_dataloader():  # one epoch, as the workers deliver it
        for k, tile in enumerate(batch["tile"]):
            row, col = int(batch["row"][k]), int(batch["col"][k])
            image = images[tile][:, row * 16 : (row + 1) * 16, col * 16 : (col + 1) * 16]
            truth = labels[tile][row * 4 : (row + 1) * 4, col * 4 : (col + 1) * 4] - 1
            x, y = batch["X"][k].numpy(), batch["y"][k].numpy()
            matches = [
                name
                for name, transform in DIHEDRAL.items()
                if np.array_equal(transform(image), x) and np.array_equal(transform(truth), y)
            ]
            assert len(matches) == 1, (tile, row, col, matches)  # image and labels moved together
            seen.append(matches[0])
    counts = {name: seen.count(name) for name in DIHEDRAL}
    assert len(seen) == 16 * len(tiles)
    assert min(counts.values()) >= 3, counts  # every flip and rotation occurs in one epoch
    assert counts["identity"] < 0.3 * len(seen), counts


@pytest.mark.parametrize("data_on_device", ["false", "true"])
def test_only_a_one_sample_last_training_batch_is_dropped(synthetic_processed, data_on_device):
    module = ESDDataModule(synthetic_processed, num_workers=0, data_on_device=data_on_device)
    module.setup("fit")
    items = len(module.datasets["train"])  # 144
    for batch_size in (13, 10):
        module.batch_size = batch_size
        sizes = [len(batch["y"]) for batch in module.train_dataloader()]
        expected = items // batch_size if items % batch_size == 1 else -(-items // batch_size)
        assert len(sizes) == expected and min(sizes) > 1
        assert sum(sizes) == items - (1 if items % batch_size == 1 else 0)
    module.batch_size = 13
    assert sum(len(b["y"]) for b in module.val_dataloader()) == len(module.datasets["val"])
