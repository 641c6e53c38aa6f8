"""`ESDDataModule`: prepares the processed cache and serves the subtiles of each split."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from src.esd_data.augmentation import AugmentConfig, FlipRotate, NoiseBlur
from src.esd_data.cache import prepare_dataset
from src.esd_data.dataset import ESDDataset
from src.esd_data.manifest import BandSelection, Manifest
from src.esd_data.preprocessing import PreprocessConfig
from src.esd_data.sampler import EpochShuffleSampler
from src.esd_data.sensors import N_CLASSES
from src.esd_data.subtiles import check_tile_size_gt


class ESDDataModule(L.LightningDataModule):
    """Parent-tile-split subtiles of DFC2021 tiles for Lightning.

    `prepare_data` builds (or reuses) the processed cache from `raw_dir`; with `raw_dir=None`
    an already prepared `processed_dir` is used as it is. The loaders yield `X` as stored
    (float16); `on_after_batch_transfer`, which a Trainer calls, normalises it on the device.
    Training batches get `FlipRotate` in the workers and `NoiseBlur` on the device;
    validation, test and predict batches are only normalised.
    """

    def __init__(
        self,
        processed_dir: Path,
        raw_dir: Path | None = None,
        tile_size_gt: int = 4,
        bands: BandSelection | None = None,
        batch_size: int = 8,
        num_workers: int = 2,
        seed: int = 0,
        val_fraction: float = 0.2,
        test_fraction: float = 0.0,
        prepare_workers: int = 2,
        preprocessing: PreprocessConfig | None = None,
        augment: AugmentConfig | None = None,
        predict_split: str = "val",
    ) -> None:
        super().__init__()
        check_tile_size_gt(tile_size_gt)
        self.processed_dir = Path(processed_dir)
        self.raw_dir = Path(raw_dir) if raw_dir is not None else None
        self.tile_size_gt = tile_size_gt
        self.bands = bands
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.prepare_workers = prepare_workers
        self.preprocessing = preprocessing or PreprocessConfig()
        self.augment = augment if augment is not None else AugmentConfig()
        self.predict_split = predict_split
        self.batch_augment = NoiseBlur(self.augment)
        self.datasets: dict[str, ESDDataset] = {}

    def prepare_data(self) -> None:
        """Build or reuse the processed cache (runs once per node)."""
        if self.raw_dir is not None:
            prepare_dataset(
                self.raw_dir,
                self.processed_dir,
                self.tile_size_gt,
                self.seed,
                self.val_fraction,
                self.test_fraction,
                self.prepare_workers,
                self.preprocessing,
            )

    @property
    def manifest(self) -> Manifest:
        """The processed folder's manifest (after `prepare_data`)."""
        return Manifest.load(self.processed_dir)

    def inverse_class_frequencies(self) -> list[float]:
        """Per-class weights total / (4 · count) from the training tiles' labels (after prepare)."""
        manifest = self.manifest
        counts = np.zeros(N_CLASSES)
        for tile in manifest.split["train"]:
            labels = np.load(self.processed_dir / manifest.tiles[tile].labels)
            counts += np.bincount(labels.ravel() - 1, minlength=N_CLASSES)[:N_CLASSES]
        return (counts.sum() / (N_CLASSES * np.maximum(counts, 1))).tolist()

    def setup(self, stage: str | None = None) -> None:
        """Create the datasets of every split that has tiles."""
        manifest = self.manifest
        for split, tiles in manifest.split.items():
            if tiles and split not in self.datasets:
                transform = FlipRotate(self.augment) if split == "train" else None
                self.datasets[split] = ESDDataset(
                    self.processed_dir,
                    split,
                    self.tile_size_gt,
                    self.bands,
                    transform,
                    manifest,
                    seed=self.seed,
                    normalise=False,  # on the device, in on_after_batch_transfer
                )

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        if split not in self.datasets:
            raise ValueError(
                f"the processed data in {self.processed_dir} has no {split!r} tiles; "
                f"adjust val_fraction / test_fraction and prepare again"
            )
        dataset = self.datasets[split]
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=EpochShuffleSampler(len(dataset), self.seed) if shuffle else None,
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
            drop_last=False,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.predict_split, shuffle=False)

    def on_after_batch_transfer(self, batch: dict[str, Any], dataloader_idx: int) -> dict[str, Any]:
        """Normalise every batch on its device; add noise and blur to training batches.

        The loaders carry float16 as stored (half the bytes of float32 through worker shared
        memory); outside a Trainer call this hook on each batch yourself. The augmentation
        draws are seeded from (seed, global step, rank), so a resumed run repeats them.
        """
        batch["X"] = next(iter(self.datasets.values())).normalise_batch(batch["X"])
        trainer = self.trainer
        if trainer is not None and trainer.training:
            device = batch["X"].device
            key = (self.seed, trainer.global_step, trainer.global_rank, dataloader_idx)
            seed = int(np.random.SeedSequence(key).generate_state(1)[0])
            generator = torch.Generator(device=device).manual_seed(seed)
            batch["X"] = self.batch_augment(batch["X"], generator)
        return batch
