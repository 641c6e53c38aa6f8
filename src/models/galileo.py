"""`GalileoSegmentation`: the Galileo encoder on the DSE sensors, with a head to the label grid.

The inputs are the prepared, standardised channels (`sensor/date/band`, physical-units
recipe); the model turns them back into physical units with the statistics they were
standardised with (`input_stats`, kept as buffers, so a checkpoint needs nothing else) and maps
them onto Galileo's inputs (`galileo_encoder`):

* one time axis (`time`): "monthly", as Galileo was pretrained, one step per calendar month
  of the Sentinel-1, Sentinel-2 and VIIRS dates, each sensor's images of the month averaged
  band by band (a monthly composite); or "acquisition", one step per date of any of them, in
  date order. Each step carries its month; a sensor's band groups are missing (masked) at
  the steps it has no image;
* space-time bands: Sentinel-1 VV, VH (dB); Sentinel-2 B02–B12 without B01 and B09
  (reflectance × 10 000); NDVI = (B08 − B04) / (B08 + B04) computed from them per pixel (as
  pretraining computed it at 10 m), then averaged to the token resolution; a band group
  with a band outside the selection is missing. The pixels are first averaged to
  `resolution_m` metres (a label cell is 500 m), then cut into patches of `patch_size`;
* time bands: VIIRS radiance averaged over the input (Galileo takes one value per date); ERA5
  and TerraClimate are missing, as are all space and static bands;
* normalisation as in pretraining, (x − (mean − 2·std)) / (4·std) per band, NDVI as is, with
  the pretraining statistics (`normalization.json`) when the encoder is pretrained and the
  training data's own per-channel statistics when it starts from random weights;
* no data masked, not filled, where the channels include the dates' validity channels
  (`…/valid`, `PreprocessConfig.valid_masks`): composites and averages take only the pixels
  with data, a pooled pixel without any takes its token's mean of the others, a token without
  any marks the date's band groups missing there, and a VIIRS step without any is missing.

The head sees, per token, the mean of the encoder's present tokens of that place (its dates and
band groups, and the VIIRS date tokens), and beside it two small convolutional branches at the
same grid: VIIRS at full spatial detail (every date and the maximum projection), and Landsat 8
(Galileo has no Landsat input). A 1×1 conv mixes them, an average over each label cell's
tokens and two convs give the logits. Other channels (B01, B09, spectral indices) are unused.
"""

from __future__ import annotations

import datetime
import math
import os
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from src.esd_data.sensors import VALID_BAND
from src.models.checks import check_input_size, check_positive_int
from src.models.galileo_encoder import (
    NANO,
    SPACE,
    SPACE_TIME,
    STATIC,
    TIME,
    GalileoEncoder,
    GalileoInputs,
)
from src.models.galileo_weights import (
    check_weights_folder,
    load_pretrained_encoder,
    read_pretraining_statistics,
)
from src.models.pretrained import check_pretrained_options
from src.models.temporal_fusion import ChannelLayout, SensorLayout, parse_channels

CELL_M = 500
"""Ground size of a label cell (metres)."""
S1_BANDS = {"VV": "VV", "VH": "VH"}
S2_BANDS = {"B02": "B2", "B03": "B3", "B04": "B4", "B05": "B5", "B06": "B6", "B07": "B7",
            "B08": "B8", "B8A": "B8A", "B11": "B11", "B12": "B12"}  # fmt: skip
"""esd's band names → Galileo's, per sensor."""
NDVI_BANDS = ("B08", "B04")
BRANCH_WIDTH = 16
"""Features of the VIIRS and the Landsat 8 branches."""
HEAD_WIDTH = 64
GALILEO_SENSORS = {"sentinel1": S1_BANDS, "sentinel2": S2_BANDS}
VIIRS, LANDSAT = "viirs", "landsat8"


def _month(date: str) -> int:
    return datetime.date.fromisoformat(date).month - 1


TIMELINES = ("acquisition", "monthly")
"""Galileo's time axis: one step per acquisition date (every sensor's dates, in order), or
one per calendar month, each sensor's images of the month averaged, as Galileo was pretrained
(monthly composites, at most 12 steps)."""


def _valid_channel(layout: SensorLayout, channel_indexes: Sequence[int]) -> int | None:
    """The index of a date's validity channel (`…/valid`) among its `channel_indexes`."""
    if VALID_BAND not in layout.bands:
        return None
    return channel_indexes[layout.bands.index(VALID_BAND)]


def _month_start(date: str) -> str:
    return f"{date[:7]}-01"


def _masked_mean(
    values: torch.Tensor, valid: torch.Tensor | None, reduce: Callable[[torch.Tensor], torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`reduce` (a weighted average: linear, weights ≥ 0) of `values` over their `valid` (0 or
    1) entries only, 0 where none is valid, and where some is (1, else 0); with `valid` None
    (every entry valid), `reduce(values)` and None."""
    if valid is None:
        return reduce(values), None
    weight = reduce(valid)
    has = weight > 0
    mean = torch.where(has, reduce(values * valid) / torch.where(has, weight, 1), 0)
    return mean, has.to(values.dtype)


def _pool(values: torch.Tensor, size: int) -> torch.Tensor:
    """(B, T, K, H, W) averaged over `size`×`size` pixels."""
    pooled = F.avg_pool2d(values.flatten(1, 2), size)
    return pooled.view(*values.shape[:3], *pooled.shape[-2:])


def _spatial_mean(values: torch.Tensor) -> torch.Tensor:
    return values.mean(dim=(-2, -1))


class GalileoSegmentation(nn.Module):
    """(B, C, H, W) standardised channels → (B, out, H / cell_px, W / cell_px) (module doc)."""

    def __init__(
        self,
        channels: Sequence[str],
        out_channels: int,
        cell_px: int,
        input_stats: tuple[Sequence[float], Sequence[float]] | None = None,
        pretrained: bool = False,
        weights_path: str | os.PathLike[str] | None = None,
        freeze_backbone: bool | float = False,
        patch_size: int = 5,
        resolution_m: int = 100,
        exit_layer: int | None = None,
        time: str = "acquisition",
    ) -> None:
        super().__init__()
        check_pretrained_options(pretrained, weights_path)
        if time not in TIMELINES:
            raise ValueError(f"time must be one of {TIMELINES}, got {time!r}")
        self.time = time
        for name, value in (("patch_size", patch_size), ("resolution_m", resolution_m)):
            check_positive_int(name, value)
        native_m = CELL_M / cell_px
        pool = resolution_m / native_m
        tokens_per_cell = CELL_M / (resolution_m * patch_size)
        if pool != int(pool) or tokens_per_cell != int(tokens_per_cell):
            raise ValueError(
                f"Galileo resolution_m={resolution_m} and patch_size={patch_size} must tile a "
                f"{CELL_M} m label cell of {cell_px} pixels ({native_m:g} m each): resolution_m "
                f"a multiple of {native_m:g} and resolution_m·patch_size a divisor of {CELL_M}"
            )
        if exit_layer is not None and not 1 <= exit_layer <= NANO.depth:
            raise ValueError(f"exit_layer must be in 1…{NANO.depth} or None, got {exit_layer}")
        self.channels = tuple(channels)
        self.cell_px, self.pool, self.patch_size = cell_px, int(pool), patch_size
        self.resolution_m, self.exit_layer = resolution_m, exit_layer
        self.tokens_per_cell = int(tokens_per_cell)
        layout = parse_channels(channels)
        sensors = layout.sensors
        if not any(
            band in names
            for sensor, names in GALILEO_SENSORS.items()
            if sensor in sensors
            for band in sensors[sensor].bands
        ):
            raise ValueError(
                "Galileo needs a Sentinel-1 or Sentinel-2 band it reads (VV, VH, B02–B08, B8A, "
                "B11, B12): none selected"
            )
        self.dates = sorted(
            {d for s in (*GALILEO_SENSORS, VIIRS) if s in sensors for d in sensors[s].dates}
        )
        self._map_inputs(layout)
        n = len(self.channels)
        mean, std = input_stats if input_stats is not None else ([0.0] * n, [1.0] * n)
        if len(mean) != n or len(std) != n:
            raise ValueError(f"input_stats must give {n} means and stds, got {len(mean)}")
        self.register_buffer("input_mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("input_std", torch.tensor(std, dtype=torch.float32))

        self.encoder = GalileoEncoder(NANO)
        if pretrained:
            folder = check_weights_folder(weights_path)
            stats = read_pretraining_statistics(folder)
            load_pretrained_encoder(self.encoder, folder)
        else:
            stats = None
        self._register_normalisation(stats)
        self._freeze_unused()
        self.frozen_blocks = self._freeze(freeze_backbone)

        self.viirs_index = self._sensor_channels(layout, VIIRS)
        self.landsat_index = self._sensor_channels(layout, LANDSAT)
        self.viirs_branch = self._branch(len(self.viirs_index), kernel=1)
        self.landsat_branch = self._branch(len(self.landsat_index), kernel=patch_size)
        fused = NANO.embedding_size + BRANCH_WIDTH * (
            (self.viirs_branch is not None) + (self.landsat_branch is not None)
        )
        self.head = nn.Sequential(
            nn.Conv2d(fused, HEAD_WIDTH, kernel_size=1),
            nn.ReLU(inplace=True),
            nn.AvgPool2d(self.tokens_per_cell),
            nn.Conv2d(HEAD_WIDTH, HEAD_WIDTH, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(HEAD_WIDTH, out_channels, kernel_size=1),
        )

    def _map_inputs(self, layout: ChannelLayout) -> None:
        """Index buffers from the channel names onto Galileo's bands (−1: not selected)."""
        bands = SPACE_TIME.bands
        index = torch.full((len(self.dates), len(bands)), -1, dtype=torch.long)
        valid_index = torch.full_like(index, -1)
        for sensor, names in GALILEO_SENSORS.items():
            if sensor not in layout.sensors:
                continue
            sensor_layout = layout.sensors[sensor]
            for date, channel_indexes in zip(
                sensor_layout.dates, sensor_layout.indexes, strict=True
            ):
                t = self.dates.index(date)
                for band, channel in zip(sensor_layout.bands, channel_indexes, strict=True):
                    if band in names:
                        index[t, bands.index(names[band])] = channel
                if sensor == "sentinel2" and set(NDVI_BANDS) <= set(sensor_layout.bands):
                    index[t, bands.index("NDVI")] = 0  # computed, see forward
                valid = _valid_channel(sensor_layout, channel_indexes)
                if valid is not None:
                    read = [b for b, name in enumerate(bands) if name in names.values()]
                    read += [bands.index("NDVI")] if sensor == "sentinel2" else []
                    valid_index[t, read] = valid
        self.ndvi_bands = (bands.index(S2_BANDS["B08"]), bands.index(S2_BANDS["B04"]))
        self.register_buffer("space_time_index", index, persistent=False)
        self.register_buffer(
            "space_time_valid_index", torch.where(index >= 0, valid_index, -1), persistent=False
        )
        viirs_time = torch.full((len(self.dates),), -1, dtype=torch.long)
        viirs_valid = torch.full_like(viirs_time, -1)
        viirs = layout.sensors.get(VIIRS)
        if viirs is not None and "DNB" in viirs.bands:  # not only its validity channels
            for date, channel_indexes in zip(viirs.dates, viirs.indexes, strict=True):
                t = self.dates.index(date)
                viirs_time[t] = channel_indexes[viirs.bands.index("DNB")]
                valid = _valid_channel(viirs, channel_indexes)
                viirs_valid[t] = -1 if valid is None else valid
        self.register_buffer("viirs_time_index", viirs_time, persistent=False)
        self.register_buffer("viirs_valid_index", viirs_valid, persistent=False)
        for name in ("space_time", "viirs"):
            self._register_validity_gather(name, getattr(self, f"{name}_valid_index"))
        self._register_timeline(index, viirs_time)

    def _register_timeline(self, index: torch.Tensor, viirs_time: torch.Tensor) -> None:
        """The time axis the encoder sees: the dates themselves, or their months, with the
        weights that average each sensor's band over its images of a month (`composite`,
        (months, dates, bands); `viirs_composite`, (months, dates)), and what is present."""
        present = index >= 0
        viirs_present = viirs_time >= 0
        if self.time == "acquisition":
            steps = self.dates
            self.composite, self.viirs_composite = None, None
        else:
            steps = sorted({_month_start(d) for d in self.dates})
            member = torch.tensor([[_month_start(d) == m for d in self.dates] for m in steps])
            weights = member[:, :, None] & present[None]  # (months, dates, bands)
            weights = weights.float() / weights.sum(dim=1, keepdim=True).clamp(min=1)
            viirs = (member & viirs_present[None]).float()
            self.register_buffer("composite", weights, persistent=False)
            self.register_buffer(
                "viirs_composite", viirs / viirs.sum(dim=1, keepdim=True).clamp(min=1),
                persistent=False,
            )  # fmt: skip
            present = weights.sum(dim=1) > 0
            viirs_present = viirs.sum(dim=1) > 0
        if len(steps) > NANO.max_sequence_length:
            raise ValueError(
                f"Galileo takes at most {NANO.max_sequence_length} time steps; the Sentinel-1, "
                f"Sentinel-2 and VIIRS channels have {len(steps)} ({self.time}): select fewer"
            )
        self.steps = list(steps)
        missing = torch.stack(
            [(~present[:, group]).any(dim=1) for _, group in SPACE_TIME.group_slices()], dim=1
        )
        self.register_buffer("present", present, persistent=False)
        self.register_buffer("space_time_missing", missing, persistent=False)
        time_missing = torch.ones(len(steps), len(TIME.groups), dtype=torch.bool)
        time_missing[:, [g for g, _ in TIME.groups].index("VIIRS")] = ~viirs_present
        self.register_buffer("time_missing", time_missing, persistent=False)
        self.register_buffer("viirs_present", viirs_present, persistent=False)
        months = torch.tensor([_month(step) for step in steps])
        self.register_buffer("months", months, persistent=False)

    def _to_steps(self, per_date: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
        """Values on the date axis (dim 1, of the dates) onto the time axis: as they are, or
        averaged over each month's images (`weights`, (months, dates[, bands]))."""
        if weights is None:
            return per_date
        if weights.dim() == 3:
            return torch.einsum("mtk,btk...->bmk...", weights, per_date)
        return torch.einsum("mt,bt...->bm...", weights, per_date)

    def _register_normalisation(self, stats: dict[str, tuple[list, list]] | None) -> None:
        """Per space-time band and for VIIRS: the (mean, std) of the pretraining normalisation
        (`stats`), or, from random weights, the training data's statistics of each channel."""
        steps = (len(self.steps), len(SPACE_TIME.bands))
        if stats is not None:
            mean = torch.tensor(stats["13"][0]).expand(steps).clone()
            std = torch.tensor(stats["13"][1]).expand(steps).clone()
            viirs = TIME.bands.index("avg_rad")
            viirs_mean = torch.full((len(self.steps),), stats["6"][0][viirs])
            viirs_std = torch.full((len(self.steps),), stats["6"][1][viirs])
        else:  # each step's: a month's, the mean of its images' channels' statistics
            index = self.space_time_index.clamp(min=0)
            viirs_index = self.viirs_time_index.clamp(min=0)
            mean = self._to_steps(self.input_mean[index][None], self.composite)[0]
            std = self._to_steps(self.input_std[index][None], self.composite)[0]
            viirs_mean = self._to_steps(self.input_mean[viirs_index][None], self.viirs_composite)[0]
            viirs_std = self._to_steps(self.input_std[viirs_index][None], self.viirs_composite)[0]
            std = torch.where(self.present, std, 1.0)  # absent: never used, kept finite
            viirs_std = torch.where(self.viirs_present, viirs_std, 1.0)
        # (x − (mean − 2·std)) / (4·std) as x·scale + shift; NDVI (−1…1) as it is
        ndvi = SPACE_TIME.bands.index("NDVI")
        scale, shift = 1 / (4 * std), (2 * std - mean) / (4 * std)
        scale[:, ndvi], shift[:, ndvi] = 1.0, 0.0
        self.register_buffer("band_scale", scale.float())
        self.register_buffer("band_shift", shift.float())
        viirs_shift = (2 * viirs_std - viirs_mean) / (4 * viirs_std)
        self.register_buffer("viirs_scale", (1 / (4 * viirs_std)).float())
        self.register_buffer("viirs_shift", viirs_shift.float())

    def _freeze_unused(self) -> None:
        """No gradient for the projections of inputs esd never gives (nor DDP waiting on it)."""
        given = {"VIIRS"} if bool(self.viirs_present.any()) else set()
        given |= {
            group
            for (group, _), missing in zip(
                SPACE_TIME.groups, self.space_time_missing.all(dim=0), strict=True
            )
            if not missing
        }
        for kind in (SPACE_TIME, SPACE, TIME, STATIC):
            for group, projection in self.encoder.projections(kind).items():
                if group not in given:
                    projection.requires_grad_(False)
        for kind in (SPACE, STATIC):
            getattr(self.encoder, f"{kind.name}_channel_embed").requires_grad_(False)

    def _freeze(self, freeze_backbone: bool | float) -> tuple[str, ...]:
        """Freeze the projections, encodings and the first ⌈fraction · depth⌉ blocks (all of
        the encoder at 1); the names of what is frozen."""
        valid = isinstance(freeze_backbone, int | float) and 0 <= freeze_backbone <= 1
        if not valid:
            raise ValueError(f"freeze_backbone must be a bool or in [0, 1], got {freeze_backbone}")
        fraction = float(freeze_backbone)
        if fraction == 0:
            return ()
        depth = self.encoder.architecture.depth
        n_blocks = math.ceil(fraction * depth - 1e-9)
        frozen: list[nn.Module] = [self.encoder.projections(kind) for kind in (SPACE_TIME, TIME)]
        frozen += list(self.encoder.blocks[:n_blocks])
        names = ["projections", *(f"blocks.{i}" for i in range(n_blocks))]
        if n_blocks == depth:
            frozen.append(self.encoder.norm)
            names.append("norm")
        for module in frozen:
            module.requires_grad_(False)
        for kind in (SPACE_TIME, TIME):
            getattr(self.encoder, f"{kind.name}_channel_embed").requires_grad_(False)
        return tuple(names)

    def _sensor_channels(self, layout: ChannelLayout, sensor: str) -> list[int]:
        """Every channel index of `sensor`: its dates, then its date-less channels (VIIRS's
        maximum projection)."""
        dated = layout.sensors[sensor].indexes if sensor in layout.sensors else ()
        static = [i for i in layout.static if self.channels[i].split("/")[0] == sensor]
        return [i for date in dated for i in date] + static

    @staticmethod
    def _branch(n_inputs: int, kernel: int) -> nn.Module | None:
        if not n_inputs:
            return None
        return nn.Sequential(
            nn.Conv2d(n_inputs, BRANCH_WIDTH, kernel_size=kernel, stride=kernel),
            nn.ReLU(inplace=True),
        )

    def unmasked_channels(self) -> list[str]:
        """The channels the encoder reads as measurements without a validity channel of their
        date to mask their no-data with (NDVI is computed from B08 and B04)."""
        read = (self.space_time_index >= 0) & (self.space_time_valid_index < 0)
        read[:, SPACE_TIME.bands.index("NDVI")] = False
        viirs = (self.viirs_time_index >= 0) & (self.viirs_valid_index < 0)
        indexes = {*self.space_time_index[read].tolist(), *self.viirs_time_index[viirs].tolist()}
        return [self.channels[i] for i in sorted(indexes)]

    def _register_validity_gather(self, name: str, index: torch.Tensor) -> None:
        """For `_valid_pixels`: the validity channels `index` names (`{name}_valid_channels`,
        sorted) and, per entry of `index`, its position among them (`{name}_valid_position`;
        one past the last for −1: a plane of ones)."""
        used = index[index >= 0].unique()
        position = torch.where(index >= 0, torch.searchsorted(used, index.clamp(min=0)), len(used))
        self.register_buffer(f"{name}_valid_channels", used, persistent=False)
        self.register_buffer(f"{name}_valid_position", position, persistent=False)

    def _valid_pixels(self, x: torch.Tensor, name: str) -> torch.Tensor | None:
        """(B, *index.shape, H, W), `index` being `{name}_valid_index`: 1 where its validity
        channel says the pixel has data (every pixel where it is −1); None when there is
        nothing to mask: no validity channel, or data everywhere in the batch (the unmasked
        computation is the same)."""
        used = getattr(self, f"{name}_valid_channels")
        if not used.numel():
            return None
        std, mean = self.input_std[used, None, None], self.input_mean[used, None, None]
        valid = x.index_select(1, used) * std + mean > 0.5
        if bool(valid.all()):
            return None
        planes = torch.cat([valid.to(x.dtype), x.new_ones(x.shape[0], 1, *x.shape[-2:])], dim=1)
        position = getattr(self, f"{name}_valid_position")
        return planes.index_select(1, position.flatten()).view(
            x.shape[0], *position.shape, *x.shape[-2:]
        )

    def encoder_inputs(self, x: torch.Tensor) -> GalileoInputs:
        """Galileo's normalised inputs and masks for a batch of standardised channels."""
        batch = x.shape[0]
        dates, bands = self.space_time_index.shape
        index = self.space_time_index.clamp(min=0).flatten()
        physical = x.index_select(1, index) * self.input_std[index, None, None]
        physical = physical + self.input_mean[index, None, None]
        physical = physical.view(batch, dates, bands, *physical.shape[-2:])
        valid = self._valid_pixels(x, "space_time")
        # a month's images averaged, each pixel over the images that have data there
        physical, valid = _masked_mean(physical, valid, lambda t: self._to_steps(t, self.composite))
        # NDVI of each pixel, as in pretraining (10 m), then averaged with the bands
        nir, red = (physical[:, :, band] for band in self.ndvi_bands)
        total = nir + red
        ndvi = torch.where(total != 0, (nir - red) / torch.where(total != 0, total, 1), 0)
        physical = physical.clone()
        physical[:, :, SPACE_TIME.bands.index("NDVI")] = ndvi.clamp(-1, 1)
        if self.pool > 1:
            physical, valid = _masked_mean(physical, valid, lambda t: _pool(t, self.pool))
        token_valid = None
        if valid is not None:  # a token's no-data pixels take its other pixels' mean
            token_mean, token_valid = _masked_mean(
                physical, valid, lambda t: _pool(t, self.patch_size)
            )
            spread = token_mean.repeat_interleave(self.patch_size, -2)
            spread = spread.repeat_interleave(self.patch_size, -1)
            physical = torch.where(valid > 0, physical, spread)
        scale, shift = self.band_scale[..., None, None], self.band_shift[..., None, None]
        space_time = physical * scale + shift
        space_time = space_time * self.present[..., None, None]
        h, w = space_time.shape[-2] // self.patch_size, space_time.shape[-1] // self.patch_size
        time, time_mask = self._time_inputs(x)
        return GalileoInputs(
            space_time=space_time,
            space=x.new_zeros(batch, len(SPACE.bands), *space_time.shape[-2:]),
            time=time,
            static=x.new_zeros(batch, len(STATIC.bands)),
            space_time_mask=self._space_time_mask(token_valid, (batch, h, w)),
            space_mask=x.new_ones(batch, h, w, len(SPACE.groups), dtype=torch.bool),
            time_mask=time_mask,
            static_mask=x.new_ones(batch, len(STATIC.groups), dtype=torch.bool),
            months=self.months.expand(batch, -1),
        )

    def _space_time_mask(
        self, token_valid: torch.Tensor | None, grid: tuple[int, int, int]
    ) -> torch.Tensor:
        """(B, h, w, T, groups): a group is missing where its sensor has no image at that step,
        where a band of it is not selected, or where a band of it has no data in the token
        (`token_valid`, (B, T, bands, h, w))."""
        missing = self.space_time_missing.expand(*grid, -1, -1)
        if token_valid is None:
            return missing
        no_data = torch.stack(
            [(token_valid[:, :, group] == 0).any(dim=2) for _, group in SPACE_TIME.group_slices()],
            dim=2,
        )  # (B, T, groups, h, w)
        return missing | no_data.permute(0, 3, 4, 1, 2)

    def _time_inputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Galileo's time bands (B, T, bands), VIIRS's mean radiance over the input's pixels
        that have data, and their mask (B, T, groups): missing without a VIIRS image, or
        without a pixel of data, at that step."""
        viirs_index = self.viirs_time_index.clamp(min=0)
        valid = self._valid_pixels(x, "viirs")
        viirs, has = _masked_mean(x.index_select(1, viirs_index), valid, _spatial_mean)
        viirs = viirs * self.input_std[viirs_index] + self.input_mean[viirs_index]
        viirs, has = _masked_mean(viirs, has, lambda t: self._to_steps(t, self.viirs_composite))
        viirs = viirs * self.viirs_scale + self.viirs_shift
        present = self.viirs_present if has is None else self.viirs_present & (has > 0)
        time = x.new_zeros(x.shape[0], len(self.steps), len(TIME.bands))
        time[..., TIME.bands.index("avg_rad")] = viirs * present
        time_mask = self.time_missing.expand(x.shape[0], -1, -1).clone()
        time_mask[..., [g for g, _ in TIME.groups].index("VIIRS")] = ~present
        return time, time_mask

    def token_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, D, h, w): per place, the mean of the encoder's present tokens (its dates and band
        groups, and the time tokens)."""
        out = self.encoder(
            self.encoder_inputs(x), self.patch_size, self.resolution_m, self.exit_layer
        )
        place = out.tokens["s_t"].flatten(3, 4)  # (B, h, w, T·G, D)
        present = (~out.masks["s_t"]).flatten(3, 4).to(place.dtype)
        time = out.tokens["t"].flatten(1, 2)  # (B, T·G, D)
        time_present = (~out.masks["t"]).flatten(1, 2).to(time.dtype)
        total = torch.einsum("bhwnd,bhwn->bhwd", place, present)
        total = total + torch.einsum("bnd,bn->bd", time, time_present)[:, None, None]
        count = present.sum(dim=3) + time_present.sum(dim=1)[:, None, None]
        return (total / count.clamp(min=1)[..., None]).permute(0, 3, 1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input_size(x, self.cell_px)
        if x.shape[1] != len(self.channels):
            raise ValueError(f"expected {len(self.channels)} input channels, got {x.shape[1]}")
        features = [self.token_features(x)]
        if self.viirs_branch is not None:
            viirs = F.avg_pool2d(x[:, self.viirs_index], self.pool * self.patch_size)
            features.append(self.viirs_branch(viirs))
        if self.landsat_branch is not None:
            landsat = x[:, self.landsat_index]
            features.append(self.landsat_branch(F.avg_pool2d(landsat, self.pool)))
        return self.head(torch.cat(features, dim=1))


def build_galileo(
    in_channels: int,
    cell_px: int,
    out_channels: int,
    *,
    channels: Sequence[str],
    input_stats: tuple[Sequence[float], Sequence[float]] | None = None,
    pretrained: bool = False,
    weights_path: str | os.PathLike[str] | None = None,
    freeze_backbone: bool | float = False,
    galileo_patch_size: int = 5,
    galileo_resolution_m: int = 100,
    galileo_exit_layer: int | None = None,
    galileo_time: str = "acquisition",
) -> nn.Module:
    """Build a GalileoSegmentation for the named `channels` (the registry's builder)."""
    if len(channels) != in_channels:
        raise ValueError(f"Galileo got {len(channels)} channel names for {in_channels} channels")
    return GalileoSegmentation(
        channels,
        out_channels,
        cell_px,
        input_stats=input_stats,
        pretrained=pretrained,
        weights_path=weights_path,
        freeze_backbone=freeze_backbone,
        patch_size=galileo_patch_size,
        resolution_m=galileo_resolution_m,
        exit_layer=galileo_exit_layer,
        time=galileo_time,
    )
