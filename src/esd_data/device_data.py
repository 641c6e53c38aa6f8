"""The device-resident data path: a split's tiles live on the accelerator, batches are cut there.

The loader path reads every subtile in CPU worker processes (memory-mapped read, copy, flips
and rotations, collation, a host-to-device copy). Here the selected channels of every tile of
a split are copied to the device once, as stored (float16), with their labels; a batch is then
cut from them by indexing (tile, row, column), flipped and rotated there, and handed to the
Trainer already on its device. Nothing else changes: the batches are the loader path's, key for
key and value for value, for the same seed.

- The order is the loader path's sampler itself (`EpochShuffleSampler` for training,
  `ShardSampler` for evaluation, with the same rank and world size), so DDP shards, the
  padding of the training shards and the epoch of a resumed run are the same.
- The flips and rotations are the dataset's own transform (`FlipRotate`), drawn per sample
  with the generator the dataset would seed for (seed, epoch, index): the transform is run
  on a 2×2 probe on the CPU, which tells which of the 8 dihedral images it makes, and that
  image is then made of the sample on the device, for all samples of a batch that share it
  at once. The result is exactly the loader path's sample.
- `X` is yielded as stored (float16, the loader path's dtype); `ESDDataModule.
  on_after_batch_transfer` normalises it on the device and adds noise and blur, as for the
  loader path, so a batch is treated the same whichever path made it.

On the CPU (how it is tested) the cutting goes through numpy views, which flip and rotate
without copying; on an accelerator through torch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from src.esd_data.dataset import IGNORE_LABEL, ESDDataset, sample_generator
from src.esd_data.manifest import Manifest
from src.esd_data.sampler import EpochShuffleSampler, ShardSampler

GIB = 2**30
DATA_ON_DEVICE_CHOICES = ("auto", "true", "false")


def parse_data_on_device(value: str | bool) -> str:
    """`auto`, `true` or `false` from those words or a bool (YAML reads `true` as a bool)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value).strip().lower()
    if text not in DATA_ON_DEVICE_CHOICES:
        raise ValueError(f"data_on_device must be auto, true or false, got {value!r}")
    return text


# --- which path -------------------------------------------------------------------------------


@dataclass(frozen=True)
class DataPath:
    """Which data path runs (`on_device`), on which device, and why (one line, `str()`)."""

    on_device: bool
    device: torch.device
    reason: str

    def __str__(self) -> str:
        return self.reason


def free_device_memory(device: torch.device) -> int | None:
    """Bytes free on a CUDA or MPS device (None for the CPU or when it cannot be told)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type == "mps":
        try:
            return int(torch.mps.recommended_max_memory() - torch.mps.driver_allocated_memory())
        except (AttributeError, RuntimeError):
            return None
    return None


def _gib(n: float) -> str:
    """Bytes in GiB (MiB below 1 GiB)."""
    return f"{n / GIB:.1f} GiB" if n >= GIB else f"{n / 2**20:.1f} MiB"


def decide_data_path(
    option: str | bool,
    device: torch.device | str,
    need_bytes: int,
    share: float,
    free_bytes: int | None = None,
) -> DataPath:
    """The data path for `option` (auto, true, false) on `device`, with its one-line reason.

    `auto` keeps the data on the device when the device is a GPU (CUDA or MPS) and
    `need_bytes` fit in `share` of its free memory (`free_bytes`, or asked of the device);
    on the CPU the loader workers run beside the model instead. `true` puts the data on
    any device, the CPU included; `false` always uses the loader workers.

    `auto` on CUDA asks the device for its free memory, which initialises CUDA in this
    process: strategies that fork processes afterwards (ddp_fork, ddp_notebook) need an
    explicit `true` or `false`.
    """
    option = parse_data_on_device(option)
    device = torch.device(device)
    if option == "false":
        return DataPath(False, device, "loader workers (data_on_device=false)")
    if option == "true" or device.type not in ("cuda", "mps"):
        if option == "auto":
            name = "the CPU" if device.type == "cpu" else device.type
            return DataPath(False, device, f"loader workers (accelerator is {name})")
        free = free_bytes
        if free is None and (device.type != "cuda" or torch.cuda.is_initialized()):
            free = free_device_memory(device)  # `true` never initialises CUDA itself
        room = "" if free is None else f" of {_gib(free)} free"
        return DataPath(
            True,
            device,
            f"on the device ({device}), {_gib(need_bytes)}{room} (data_on_device=true)",
        )
    free = free_bytes if free_bytes is not None else free_device_memory(device)
    if free is None:
        return DataPath(False, device, f"loader workers (the free memory of {device} is unknown)")
    if need_bytes > share * free:
        return DataPath(
            False,
            device,
            f"loader workers (the data need {_gib(need_bytes)}, more than share {share:g} of "
            f"the {_gib(free)} free on {device})",
        )
    return DataPath(
        True,
        device,
        f"on the device ({device}), {_gib(need_bytes)} of {_gib(free)} free (share {share:g})",
    )


def split_bytes(manifest: Manifest, channels: Sequence[int], splits: Sequence[str]) -> int:
    """Device bytes of the selected channels (float16) and labels (int64) of those splits' tiles."""
    height, width = manifest.tile_shape
    per_tile = len(channels) * height * width * 2 + (height // manifest.cell_px) ** 2 * 8
    tiles = {tile for split in splits for tile in manifest.split.get(split, [])}
    return len(tiles) * per_tile


# --- dihedral images ------------------------------------------------------------------------

PROBE = np.arange(4).reshape(2, 2)
"""A 2×2 grid of distinct values: its image under a flip or rotation names that transform."""


def _dihedral_numpy(a: np.ndarray, element: int) -> np.ndarray:
    """Element `element` = 4·h + k: mirror the columns if h, then rotate by k quarter turns."""
    h, k = divmod(element, 4)
    if h:
        a = a[..., ::-1]
    return np.rot90(a, k, axes=(-2, -1)) if k else a


def _dihedral_torch(a: torch.Tensor, element: int) -> torch.Tensor:
    h, k = divmod(element, 4)
    if h:
        a = a.flip(-1)
    return torch.rot90(a, k, dims=(-2, -1)) if k else a


ELEMENTS = {
    np.ascontiguousarray(_dihedral_numpy(PROBE, e)).tobytes(): e for e in range(8)
}  # the 8 distinct images of the probe


def dihedral_elements(
    transform: Any, seed: int, indices: Sequence[int], epochs: Sequence[int]
) -> np.ndarray:
    """Which dihedral element (4·h + k) `transform` applies to each (index, epoch).

    The transform itself is run on a 2×2 probe (image and labels), with the generator the
    dataset seeds for that sample, so its draws and their order are exactly the loader path's.
    """
    out = np.empty(len(indices), dtype=np.int64)
    image = PROBE[None]
    for n, (index, epoch) in enumerate(zip(indices, epochs, strict=True)):
        x, y = transform(image, PROBE, sample_generator(seed, int(epoch), int(index)))
        y = np.ascontiguousarray(y)
        element = ELEMENTS.get(y.tobytes())
        if element is None or not np.array_equal(np.asarray(x)[0], y):
            raise ValueError(
                f"{type(transform).__name__} is not a flip or rotation of image and labels "
                f"together: the device data path cannot apply it"
            )
        out[n] = element
    return out


def _to(values: np.ndarray, device: torch.device) -> torch.Tensor:
    """A small index array on `device`, copied without waiting for the device's queued work."""
    return torch.from_numpy(np.ascontiguousarray(values)).to(device, non_blocking=True)


def apply_dihedral(elements: np.ndarray, *batches: torch.Tensor) -> None:
    """Each sample of every batch (B, …, H, W) under its element, in place, one group per
    element (images and their labels together, sharing the index tensors)."""
    for element in np.unique(elements):
        if element == 0:
            continue
        chosen = _to(np.flatnonzero(elements == element), batches[0].device)
        for batch in batches:
            turned = _dihedral_torch(batch.index_select(0, chosen), int(element))
            batch.index_copy_(0, chosen, turned)


# --- cutting ----------------------------------------------------------------------------------


def cut_windows(
    images: torch.Tensor,
    tiles: Sequence[int],
    tops: Sequence[int],
    lefts: Sequence[int],
    size: int,
) -> torch.Tensor:
    """Windows (B, C, size, size) of `images` (N, C, H, W) at pixel origins on their device.

    Window b is `images[tiles[b], :, tops[b]:tops[b]+size, lefts[b]:lefts[b]+size]`: subtiles
    of a grid or overlapping windows alike. One copy (a single kernel on a GPU; on the CPU,
    numpy's copy of the same views is several times faster, see `DeviceTiles`).
    """
    return torch.stack(
        [
            images[n, :, top : top + size, left : left + size]
            for n, top, left in zip(tiles, tops, lefts, strict=True)
        ]
    )


class DeviceTiles:
    """The selected channels of every tile of an `ESDDataset`'s split, resident on `device`.

    `images` (N, C, H, W) as stored (float16) and `labels` (N, 16, 16) int64 in 0..3 (−1
    without ground truth), N the dataset's tiles in its order. `batch` cuts items of the
    dataset by their index, with the dataset's transform (flips and rotations) for each
    (index, epoch), and returns the loader path's collated batch on the device. The dataset
    gives the geometry (subtile size, window origins, overlap), channels and index.
    `numpy_cut` (default: on the CPU) cuts through numpy views instead of torch.
    """

    def __init__(
        self, dataset: ESDDataset, device: torch.device | str, numpy_cut: bool | None = None
    ) -> None:
        self.dataset = dataset
        self.device = torch.device(device)
        self.numpy_cut = self.device.type == "cpu" if numpy_cut is None else numpy_cut
        if self.numpy_cut and self.device.type != "cpu":
            raise ValueError(f"numpy_cut needs the CPU, not {self.device}")
        self.tile_size_gt = dataset.tile_size_gt
        self.cell_px = dataset.manifest.cell_px
        self.window_px = self.tile_size_gt * self.cell_px
        height, width = dataset.manifest.tile_shape
        channels = len(dataset.channels)
        images = labels = None
        for n, tile in enumerate(dataset.tiles):
            image, truth = dataset._open(tile)  # memory-mapped, as the loader path reads it
            pixels = torch.from_numpy(np.array(image[dataset._channel_index], order="C"))
            if images is None:
                images = torch.empty(
                    (len(dataset.tiles), channels, height, width),
                    dtype=pixels.dtype,
                    device=self.device,
                )
                labels = torch.empty(
                    (len(dataset.tiles), height // self.cell_px, width // self.cell_px),
                    dtype=torch.int64,
                    device=self.device,
                )
            images[n].copy_(pixels)
            if truth is None:
                labels[n].fill_(IGNORE_LABEL)
            else:
                labels[n].copy_(torch.from_numpy(truth.astype(np.int64) - 1))
        if images is None or labels is None:
            raise ValueError("the split has no tiles to put on the device")
        self.images, self.labels = images, labels
        position = {tile: n for n, tile in enumerate(dataset.tiles)}
        self._tile = np.array([position[tile] for tile, _, _ in dataset.index], dtype=np.int64)
        self._row = np.array([row for _, row, _ in dataset.index], dtype=np.int64)
        self._col = np.array([col for _, _, col in dataset.index], dtype=np.int64)
        self._origins = np.asarray(dataset.origins, dtype=np.int64)
        self.transform = None if _is_identity(dataset.transform) else dataset.transform

    @property
    def nbytes(self) -> int:
        """Device bytes held (images and labels)."""
        return self.images.nbytes + self.labels.nbytes

    def __len__(self) -> int:
        return len(self._tile)

    def batch(self, indices: Sequence[int], epochs: Sequence[int] | int = 0) -> dict[str, Any]:
        """Items `indices` (in `epochs`: the epoch of each, or one for all) as one batch.

        The loader path's collated batch of `dataset[(index, epoch)]` with `normalise=False`:
        `X` float16 (B, C, S, S), `y` int64 (B, t, t), `tile` a list of names, `row`, `col`
        int64 (B,), all on the device.
        """
        indices = np.asarray(indices, dtype=np.int64)
        epochs = np.broadcast_to(np.asarray(epochs, dtype=np.int64), indices.shape)
        tiles, rows, cols = self._tile[indices], self._row[indices], self._col[indices]
        tops, lefts = self._origins[rows], self._origins[cols]
        elements = (
            None
            if self.transform is None
            else dihedral_elements(self.transform, self.dataset.seed, indices, epochs)
        )
        t, px = self.tile_size_gt, self.cell_px
        if self.numpy_cut:
            X, y = self._cut_numpy(tiles, tops, lefts, elements)
        else:
            n = tiles.tolist()
            X = cut_windows(self.images, n, (tops * px).tolist(), (lefts * px).tolist(), px * t)
            y = cut_windows(self.labels[:, None], n, tops.tolist(), lefts.tolist(), t).squeeze(1)
            if elements is not None:
                apply_dihedral(elements, X, y)
        names = self.dataset.tiles
        return {
            "X": X,
            "y": y,
            "tile": [names[n] for n in tiles],
            "row": _to(rows, self.device),
            "col": _to(cols, self.device),
        }

    def _cut_numpy(
        self, tiles: np.ndarray, tops: np.ndarray, lefts: np.ndarray, elements: np.ndarray | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The CPU cut: views (flips and rotations included), then one copy each."""
        images, labels = self.images.numpy(), self.labels.numpy()
        t, px, size = self.tile_size_gt, self.cell_px, self.window_px
        xs, ys = [], []
        for b, (n, top, left) in enumerate(zip(tiles, tops, lefts, strict=True)):
            x = images[n, :, top * px : top * px + size, left * px : left * px + size]
            y = labels[n, top : top + t, left : left + t]
            if elements is not None and elements[b]:
                x, y = _dihedral_numpy(x, int(elements[b])), _dihedral_numpy(y, int(elements[b]))
            xs.append(x)
            ys.append(y)
        return torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys))


def _is_identity(transform: Any) -> bool:
    """No transform, or a `FlipRotate` whose probabilities are all 0 (nothing to draw)."""
    if transform is None:
        return True
    config = getattr(transform, "config", None)
    names = ("hflip_p", "vflip_p", "rot90_p")
    return config is not None and all(getattr(config, name, 1) == 0 for name in names)


class DeviceLoader:
    """Batches of `DeviceTiles` in a sampler's order: what `train_dataloader()` etc. return.

    Not a DataLoader: an iterable with `len` (batches) and the `sampler` whose
    `set_epoch` Lightning calls before every training epoch. The sampler is read when the
    first batch is asked for, so creating the iterator (Lightning does, before `set_epoch`)
    draws nothing. Keys are the sampler's: `(index, epoch)` from `EpochShuffleSampler`,
    an index (epoch 0) from `ShardSampler`; the last batch may be short, as with the loader,
    or dropped with `drop_last`.
    """

    def __init__(
        self,
        tiles: DeviceTiles,
        batch_size: int,
        sampler: EpochShuffleSampler | ShardSampler,
        drop_last: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.tiles = tiles
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.sampler = sampler
        self.batch_sampler = None  # Lightning looks for one, as on a DataLoader
        self.dataset = tiles.dataset

    def __len__(self) -> int:
        if self.drop_last:
            return len(self.sampler) // self.batch_size
        return -(-len(self.sampler) // self.batch_size)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        keys = list(self.sampler)
        indices = np.array([k[0] if isinstance(k, tuple) else k for k in keys], dtype=np.int64)
        epochs = np.array([k[1] if isinstance(k, tuple) else 0 for k in keys], dtype=np.int64)
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            stop = start + self.batch_size
            yield self.tiles.batch(indices[start:stop], epochs[start:stop])
