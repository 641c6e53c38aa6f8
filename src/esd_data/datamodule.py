"""`ESDDataModule`: prepares the processed cache and serves the subtiles of each split."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from src.esd_data.augmentation import AugmentConfig, FlipRotate, NoiseBlur
from src.esd_data.cache import PrepareSummary
from src.esd_data.dataset import ESDDataset
from src.esd_data.device_data import (
    DataPath,
    DeviceLoader,
    DeviceTiles,
    decide_data_path,
    parse_data_on_device,
    split_bytes,
)
from src.esd_data.manifest import BandSelection, Manifest
from src.esd_data.preparation import PrepareRequest, prepare_requested
from src.esd_data.sampler import EpochShuffleSampler, ShardSampler
from src.esd_data.sensors import N_CLASSES, VALID_BAND
from src.esd_data.subtiles import check_tile_size_gt


class ESDDataModule(L.LightningDataModule):
    """Parent-tile-split subtiles of DFC2021 tiles for Lightning.

    `prepare_data` builds (or reuses) the processed cache from `raw_dir` with the given
    `preprocessing` overrides, `split_seed`, `val_fraction` and `test_fraction`; each left
    None is as the folder was prepared (see `src.esd_data.preparation`; for a new folder the
    defaults, with `seed` as the split seed). With
    `raw_dir=None` an already prepared `processed_dir` is used as it is, after checking every
    tile file against the manifest. The loaders yield `X` as stored (float16);
    `on_after_batch_transfer`, which a Trainer calls, normalises it on the device. Training
    batches get `FlipRotate` in the workers and `NoiseBlur` on the device; validation, test
    and predict batches are only normalised. Under DDP each rank loads its own shard (the
    Trainer must run with `use_distributed_sampler=False`): training shards are padded to
    equal length, evaluation shards are not, so every subtile is scored exactly once.

    `data_on_device` chooses the data path (`choose_data_path` says which and why): `false`
    the loader workers; `true` the device path (`src.esd_data.device_data`: every tile of a
    split copied once to the device, batches cut, flipped and rotated there, no workers);
    `auto` the device path when the device is a GPU and the selected channels of the train,
    val and test tiles fit in `device_memory_share` of its free memory. Both paths give the
    same batches for the same seed (same order, shards, flips and rotations, and `X` as
    stored for `on_after_batch_transfer`). The device is the Trainer's, or `device` (default
    the CPU) without one.
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
        preprocessing: dict[str, Any] | None = None,
        split_seed: int | None = None,
        val_fraction: float | None = None,
        test_fraction: float | None = None,
        prepare_workers: int = 2,
        augment: AugmentConfig | None = None,
        predict_split: str = "val",
        data_on_device: str | bool = "auto",
        device_memory_share: float = 0.5,
        device: torch.device | str | None = None,
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
        self.prepare_request = PrepareRequest(
            preprocessing=preprocessing,
            split_seed=split_seed,
            val_fraction=val_fraction,
            test_fraction=test_fraction,
            new_folder_seed=seed,
        )
        self.prepare_workers = prepare_workers
        self.augment = augment if augment is not None else AugmentConfig()
        self.predict_split = predict_split
        self.batch_augment = NoiseBlur(self.augment)
        self.datasets: dict[str, ESDDataset] = {}
        self.summary: PrepareSummary | None = None
        self.data_on_device = parse_data_on_device(data_on_device)
        if not 0.0 < device_memory_share <= 1.0:
            raise ValueError(f"device_memory_share must be in (0, 1], got {device_memory_share}")
        self.device_memory_share = device_memory_share
        self.device = torch.device(device) if device is not None else None
        self.data_path: DataPath | None = None
        self._device_tiles: dict[str, DeviceTiles] = {}

    def prepare_data(self) -> None:
        """Build or reuse the processed cache, or check it when there is no `raw_dir`.

        Safe to call from several processes at once: they prepare the folder once.
        """
        if self.raw_dir is not None:
            self.summary = prepare_requested(
                self.raw_dir, self.processed_dir, self.prepare_request, self.prepare_workers
            )
            return
        manifest = self.manifest
        if manifest.purpose != "training":
            raise ValueError(
                f"{self.processed_dir} was prepared for evaluation (every tile unsplit): "
                f"train on a folder prepared by scripts.prepare"
            )
        manifest.check_files(self.processed_dir)

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
        names = next(iter(self.datasets.values())).channel_names if self.datasets else []
        validity = [i for i, name in enumerate(names) if name.endswith(f"/{VALID_BAND}")]
        self.batch_augment.validity = validity

    def teardown(self, stage: str | None = None) -> None:
        """Free the tiles the device path holds (a later loader loads its split again)."""
        self._device_tiles.clear()

    def _target_device(self) -> torch.device:
        """Where batches go: the Trainer's device, else `device`, else the CPU."""
        trainer = self.trainer
        if trainer is not None:
            return trainer.strategy.root_device
        return self.device or torch.device("cpu")

    def device_bytes(self) -> int:
        """Device memory the device path takes: the selected channels of the train, val and
        test tiles as stored (float16) and their labels (after prepare)."""
        manifest = self.manifest
        channels = manifest.select_channels(self.bands)
        return split_bytes(manifest, channels, ("train", "val", "test"))

    def choose_data_path(self, device: torch.device | str | None = None) -> DataPath:
        """Decide (and remember) the data path on `device` (default: as `_target_device`);
        `str()` of the result is one line saying which path runs and why (after prepare)."""
        device = torch.device(device) if device is not None else self._target_device()
        need = 0 if self.data_on_device == "false" else self.device_bytes()
        self.data_path = decide_data_path(
            self.data_on_device, device, need, self.device_memory_share
        )
        return self.data_path

    def _path(self) -> DataPath:
        device = self._target_device()
        if self.data_path is None or self.data_path.device != device:
            self.choose_data_path(device)
        assert self.data_path is not None
        return self.data_path

    def _tiles_on(self, split: str, device: torch.device) -> DeviceTiles:
        tiles = self._device_tiles.get(split)
        if tiles is None or tiles.device != device:
            self._device_tiles.pop(split, None)  # free the old copy first
            tiles = self._device_tiles[split] = DeviceTiles(self.datasets[split], device)
        return tiles

    def _shard(self) -> tuple[int, int]:
        """(rank, world size) of this process in the Trainer's run (0, 1 without one)."""
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def _starting_epoch(self) -> int:
        """The epoch the Trainer trains next (after a resume: the restored one).

        Loader workers start fetching as soon as the loader's iterator exists, and Lightning
        makes it before it calls `set_epoch` (and before `current_epoch` reflects a restored
        checkpoint), so the sampler must start at the right epoch by itself.
        """
        if self.trainer is None:
            return 0
        return int(self.trainer.fit_loop.epoch_progress.current.processed)

    def _loader(self, split: str, shuffle: bool) -> DataLoader | DeviceLoader:
        if split not in self.datasets:
            raise ValueError(
                f"the processed data in {self.processed_dir} has no {split!r} tiles; "
                f"adjust val_fraction / test_fraction and prepare again"
            )
        dataset = self.datasets[split]
        rank, world_size = self._shard()
        sampler: EpochShuffleSampler | ShardSampler
        if shuffle:
            sampler = EpochShuffleSampler(len(dataset), self.seed, rank, world_size)
            sampler.set_epoch(self._starting_epoch())
        else:
            sampler = ShardSampler(len(dataset), rank, world_size)
        # A training batch of one sample breaks BatchNorm after global pooling (smp's
        # DeepLabV3+, PSPNet): drop such a last batch, and only such a one.
        drop_last = shuffle and len(sampler) % self.batch_size == 1 and len(sampler) > 1
        path = self._path()
        if path.on_device:
            tiles = self._tiles_on(split, path.device)
            return DeviceLoader(tiles, self.batch_size, sampler, drop_last=drop_last)
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
            drop_last=drop_last,
        )

    def train_dataloader(self) -> DataLoader | DeviceLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader | DeviceLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader | DeviceLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader | DeviceLoader:
        return self._loader(self.predict_split, shuffle=False)

    def on_after_batch_transfer(self, batch: dict[str, Any], dataloader_idx: int) -> dict[str, Any]:
        """Normalise every batch on its device; add noise and blur to training batches.

        The loaders carry float16 as stored (half the bytes of float32 through worker shared
        memory), and so does the device path (already on the device); outside a Trainer call
        this hook on each batch yourself. The augmentation
        draws are seeded from (seed, epoch, batch index in the epoch, rank), so a resumed run
        repeats them and the micro-batches of one accumulated step get their own.
        """
        batch["X"] = next(iter(self.datasets.values())).normalise_batch(batch["X"])
        trainer = self.trainer
        if trainer is not None and trainer.training:
            device = batch["X"].device
            # The hook runs before the loop counts the batch: its index is batch_idx + 1.
            index = trainer.fit_loop.epoch_loop.batch_idx + 1
            key = (self.seed, trainer.current_epoch, index, trainer.global_rank, dataloader_idx)
            seed = int(np.random.SeedSequence(key).generate_state(1)[0])
            generator = torch.Generator(device=device).manual_seed(seed)
            batch["X"] = self.batch_augment(batch["X"], generator)
        return batch
