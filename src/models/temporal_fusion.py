"""A multi-temporal sensor-fusion network built from the channel names.

In the spirit of the DFC2021 Track DSE winners (per-sensor branches, temporal aggregation,
late fusion). Channels are named `sensor/date/band` (e.g. `sentinel2/2020-08-11/B04`); a
date-less field of letters (e.g. `viirs/max/DNB`, the VIIRS maximum projection) marks a
static channel. From the names alone (no hard-coded indexes):

* per sensor (sorted by name), the dates (ISO order) and bands (natural order: B08, B8A, B09,
  B11) are parsed; every date must have the same set of bands. A non-persistent index buffer
  gathers the sensor's channels into frames (B·T, bands, H, W), whatever the input order;
* a frame encoder, its weights shared over the sensor's T dates, turns each frame into
  features (width, h, w): a non-overlapping s×s patch conv with stride s (BatchNorm, ReLU)
  drops the resolution early to about `FEATURE_PX_PER_CELL` (10) feature pixels per label
  cell side (s = `stem_stride(cell_px)`: 5 for 50-pixel cells, 1 for cells of 10 pixels or
  fewer), then `depth` 3×3 conv blocks (BatchNorm, ReLU, optional Dropout2d);
* the T feature maps are aggregated per pixel by `temporal`:
  - "attention": a 1×1 conv scores every date at every pixel, a softmax over the dates gives
    weights (so a cloudy or empty date can be down-weighted) and the features are averaged
    with them; the weights of the last forward are in `attention_weights`;
  - "mean": the plain mean over the dates;
  - "convgru": a ConvGRU (3×3 gates) run over the dates in date order, its last hidden state;
  - "ltae": date-aware attention in the manner of L-TAE / U-TAE: the day of the year of each
    date is encoded (sinusoids) and added to the features, and learned per-head queries attend
    over the dates, so the model knows *when* each image was taken (`DateAttentionPool`);
  attention and mean are invariant to the order of the dates (no date embedding);
* the static channels, if any, go through their own small frame encoder (width // 2);
* fusion: the branches' features are concatenated, mixed by a 1×1 and a 3×3 conv block
  (2·width channels), average-pooled by cell_px / s to the label grid, then a 3×3 conv (no
  BatchNorm, so a 1×1 grid trains at batch 1) and a 1×1 conv give one logit vector per cell.

The parameter names do not depend on the channel order, so a state dict is portable between
selections with the same sensors, dates and bands in another order.
"""

from __future__ import annotations

import datetime
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from src.models.checks import check_input_size, check_positive_int

TEMPORAL_AGGREGATORS: tuple[str, ...] = ("attention", "mean", "convgru", "ltae")
LTAE_HEADS = 4
"""Attention heads of the date-aware aggregator (each with its own learned query)."""
LTAE_KEY_SIZE = 8
"""Size of each head's keys and query."""
DAY_PERIOD = 1000.0
"""Longest period of the sinusoidal encoding of the acquisition day (as in L-TAE/U-TAE)."""
FEATURE_PX_PER_CELL = 10
"""Feature pixels per label cell side the stem aims at (fewer only if cell_px is smaller)."""

_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def band_sort_key(band: str) -> tuple[str | int, ...]:
    """Natural sort key: digit runs compare as numbers (B02 < B08 < B8A < B09 < B11)."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", band))


def _is_iso_date(field: str) -> bool:
    if not _ISO_DATE.fullmatch(field):
        return False
    try:
        datetime.date.fromisoformat(field)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class SensorLayout:
    """One sensor's dates (ISO order), bands (natural order) and channel index per (date, band)."""

    dates: tuple[str, ...]
    bands: tuple[str, ...]
    indexes: tuple[tuple[int, ...], ...]


@dataclass(frozen=True)
class ChannelLayout:
    """The parsed channel names: temporal sensors (sorted by name) and static channel indexes."""

    sensors: dict[str, SensorLayout]
    static: tuple[int, ...]


def _split_channel(name: str) -> tuple[str, str, str]:
    parts = name.split("/")
    if len(parts) != 3 or not all(parts):
        raise ValueError(f"channel {name!r} is not named 'sensor/date/band'")
    sensor, field, band = parts
    if "." in sensor:
        raise ValueError(f"channel {name!r}: a sensor name may not contain '.'")
    if not _is_iso_date(field) and not field.isalpha():
        raise ValueError(
            f"channel {name!r}: {field!r} is neither an ISO date (YYYY-MM-DD) nor a date-less "
            "name of letters such as 'max'"
        )
    return sensor, field, band


def _sensor_layout(sensor: str, by_date: dict[str, dict[str, int]]) -> SensorLayout:
    dates = tuple(sorted(by_date))
    reference = set(by_date[dates[0]])
    differing = [date for date in dates if set(by_date[date]) != reference]
    if differing:
        described = "; ".join(
            f"{date}: {sorted(by_date[date], key=band_sort_key)}" for date in (dates[0], *differing)
        )
        raise ValueError(
            f"sensor {sensor!r}: every date must have the same bands, but dates {differing} "
            f"differ from {dates[0]} ({described})"
        )
    bands = tuple(sorted(reference, key=band_sort_key))
    indexes = tuple(tuple(by_date[date][band] for band in bands) for date in dates)
    return SensorLayout(dates, bands, indexes)


def parse_channels(channels: Sequence[str]) -> ChannelLayout:
    """Group `sensor/date/band` names into sensors → dates → bands, and the static channels."""
    duplicates = sorted(name for name, count in Counter(channels).items() if count > 1)
    if duplicates:
        raise ValueError(f"duplicate channel names: {duplicates}")
    temporal: dict[str, dict[str, dict[str, int]]] = {}
    static: list[tuple[tuple[str, str, tuple[str | int, ...]], int]] = []
    for index, name in enumerate(channels):
        sensor, field, band = _split_channel(name)
        if _is_iso_date(field):
            temporal.setdefault(sensor, {}).setdefault(field, {})[band] = index
        else:
            static.append(((sensor, field, band_sort_key(band)), index))
    sensors = {sensor: _sensor_layout(sensor, temporal[sensor]) for sensor in sorted(temporal)}
    return ChannelLayout(sensors, tuple(index for _, index in sorted(static)))


def stem_stride(cell_px: int) -> int:
    """The largest divisor s of cell_px leaving ≥ min(cell_px, FEATURE_PX_PER_CELL) px per cell."""
    check_positive_int("cell_px", cell_px)
    target = min(cell_px, FEATURE_PX_PER_CELL)
    return max(s for s in range(1, cell_px + 1) if cell_px % s == 0 and cell_px // s >= target)


class ConvBlock(nn.Sequential):
    """Conv (same padding, no bias) → BatchNorm → ReLU, then Dropout2d if dropout > 0."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, dropout: float):
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        ]
        if dropout > 0:
            layers.append(nn.Dropout2d(dropout))
        super().__init__(*layers)


class FrameEncoder(nn.Sequential):
    """(N, bands, H, W) → (N, width, H/stride, W/stride): patch conv stem, then 3×3 blocks."""

    def __init__(self, bands: int, width: int, depth: int, stride: int, dropout: float) -> None:
        super().__init__(
            nn.Conv2d(bands, width, kernel_size=stride, stride=stride, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            *(ConvBlock(width, width, 3, dropout) for _ in range(depth)),
        )


class AttentionPool(nn.Module):
    """Per-pixel softmax attention over dates: (B, T, C, h, w) → (B, C, h, w), (B, T, h, w)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.score = nn.Conv2d(width, 1, kernel_size=1)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch, dates, _, height, width = features.shape
        scores = self.score(features.flatten(0, 1)).view(batch, dates, height, width)
        weights = scores.softmax(dim=1)
        return (weights.unsqueeze(2) * features).sum(dim=1), weights


class MeanPool(nn.Module):
    """The mean over the dates: (B, T, C, h, w) → (B, C, h, w) (no weights)."""

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return features.mean(dim=1), None


class ConvGRUPool(nn.Module):
    """A ConvGRU over the dates in T order: (B, T, C, h, w) → its last hidden state (B, C, h, w)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.gates = nn.Conv2d(2 * width, 2 * width, kernel_size=3, padding=1)
        self.candidate = nn.Conv2d(2 * width, width, kernel_size=3, padding=1)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        hidden = torch.zeros_like(features[:, 0])
        for frame in features.unbind(dim=1):
            gates = torch.sigmoid(self.gates(torch.cat([frame, hidden], dim=1)))
            update, reset = gates.chunk(2, dim=1)
            candidate = torch.tanh(self.candidate(torch.cat([frame, reset * hidden], dim=1)))
            hidden = (1 - update) * hidden + update * candidate
        return hidden, None


def day_encoding(days: torch.Tensor, size: int) -> torch.Tensor:
    """Sinusoidal encoding (T, size) of acquisition days (T,): sines and cosines of the day
    at periods from 2π to `DAY_PERIOD`·2π, as in the Transformer and L-TAE."""
    half = torch.arange(0, size, 2, dtype=torch.float32)
    frequency = DAY_PERIOD ** (-half / size)
    angles = days.float()[:, None] * frequency[None, :]
    encoding = torch.zeros(len(days), size)
    encoding[:, 0::2] = torch.sin(angles)
    encoding[:, 1::2] = torch.cos(angles[:, : size // 2])
    return encoding


def day_of_year(date: str) -> int:
    """The day of the year (1–366) of an ISO date."""
    return datetime.date.fromisoformat(date).timetuple().tm_yday


class DateAttentionPool(nn.Module):
    """Date-aware attention over a sensor's dates, in the manner of L-TAE (Garnot & Landrieu,
    2020) and U-TAE: (B, T, C, h, w) → (B, C, h, w), (B, T, h, w).

    Each pixel's features of date t get the sinusoidal encoding of t's day of the year added;
    every one of `LTAE_HEADS` heads compares its learned query with the keys (a linear map of
    the encoded features) of the T dates, and its softmax weights average its share of the
    channels. The weights returned are the mean over the heads. The days are a buffer made from
    the sensor's own dates (its channel names), so the output depends on when the images were
    taken, and on no other sensor's dates.
    """

    def __init__(self, width: int, dates: Sequence[str]) -> None:
        super().__init__()
        if width % LTAE_HEADS:
            raise ValueError(f"ltae needs a width divisible by {LTAE_HEADS}, got {width}")
        days = torch.tensor([day_of_year(date) for date in dates])
        self.register_buffer("encoding", day_encoding(days, width), persistent=False)
        self.norm = nn.GroupNorm(1, width)
        self.keys = nn.Conv2d(width, LTAE_HEADS * LTAE_KEY_SIZE, kernel_size=1)
        self.queries = nn.Parameter(torch.randn(LTAE_HEADS, LTAE_KEY_SIZE) * 0.1)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch, dates, channels, height, width = features.shape
        encoded = features + self.encoding.to(features.dtype)[None, :, :, None, None]
        keys = self.keys(self.norm(encoded.flatten(0, 1)))
        keys = keys.view(batch, dates, LTAE_HEADS, LTAE_KEY_SIZE, height, width)
        scores = torch.einsum("btnkhw,nk->btnhw", keys, self.queries) / LTAE_KEY_SIZE**0.5
        weights = scores.softmax(dim=1)  # (B, T, heads, h, w)
        values = encoded.view(batch, dates, LTAE_HEADS, channels // LTAE_HEADS, height, width)
        pooled = (weights.unsqueeze(3) * values).sum(dim=1)
        return pooled.reshape(batch, channels, height, width), weights.mean(dim=2)


def _make_aggregator(temporal: str, width: int, dates: Sequence[str]) -> nn.Module:
    """The aggregator named `temporal` (already checked to be one of TEMPORAL_AGGREGATORS)."""
    if temporal == "attention":
        return AttentionPool(width)
    if temporal == "ltae":
        return DateAttentionPool(width, dates)
    if temporal == "convgru":
        return ConvGRUPool(width)
    return MeanPool()


class SensorBranch(nn.Module):
    """Gathers one sensor's frames, encodes each date (shared weights) and aggregates over time."""

    def __init__(
        self,
        layout: SensorLayout,
        width: int,
        depth: int,
        stride: int,
        dropout: float,
        temporal: str,
    ) -> None:
        super().__init__()
        self.n_dates = len(layout.dates)
        self.n_bands = len(layout.bands)
        index = torch.tensor(layout.indexes, dtype=torch.long).flatten()
        self.register_buffer("index", index, persistent=False)
        self.encoder = FrameEncoder(self.n_bands, width, depth, stride, dropout)
        self.aggregate = _make_aggregator(temporal, width, layout.dates)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch, _, height, width = x.shape
        frames = x.index_select(1, self.index).reshape(
            batch * self.n_dates, self.n_bands, height, width
        )
        features = self.encoder(frames)
        return self.aggregate(features.view(batch, self.n_dates, *features.shape[1:]))


class StaticBranch(nn.Module):
    """Gathers the date-less channels (e.g. `viirs/max/DNB`) and encodes them."""

    def __init__(
        self, indexes: Sequence[int], width: int, depth: int, stride: int, dropout: float
    ) -> None:
        super().__init__()
        self.register_buffer("index", torch.tensor(indexes, dtype=torch.long), persistent=False)
        self.encoder = FrameEncoder(len(indexes), width, depth, stride, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x.index_select(1, self.index))


class TemporalFusion(nn.Module):
    """Per-sensor temporal branches, late fusion: (B, C, H, W) → (B, out, H/cell_px, W/cell_px).

    `sensor_dates[sensor]` lists the dates in the order of the T axis; after a forward with
    temporal="attention" or "ltae", `attention_weights[sensor]` holds that sensor's (detached)
    weights (B, T, H/s, W/s), non-negative and summing to 1 over T (empty for the others).
    """

    def __init__(
        self,
        channels: Sequence[str],
        out_channels: int,
        cell_px: int,
        width: int = 32,
        depth: int = 2,
        temporal: str = "attention",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        for name, value in (
            ("out_channels", out_channels),
            ("cell_px", cell_px),
            ("width", width),
            ("depth", depth),
        ):
            check_positive_int(name, value)
        if temporal not in TEMPORAL_AGGREGATORS:
            raise ValueError(
                f"temporal must be one of {list(TEMPORAL_AGGREGATORS)}, got {temporal!r}"
            )
        if (
            isinstance(dropout, bool)
            or not isinstance(dropout, int | float)
            or not 0 <= dropout < 1
        ):
            raise ValueError(f"dropout must be a number in [0, 1), got {dropout!r}")
        if not channels:
            raise ValueError("TemporalFusion needs at least one channel")
        layout = parse_channels(channels)

        self.channels = tuple(channels)
        self.in_channels = len(channels)
        self.cell_px = cell_px
        self.stem_stride = stem_stride(cell_px)
        self.temporal = temporal
        self.sensor_dates = {sensor: list(s.dates) for sensor, s in layout.sensors.items()}
        self.sensor_bands = {sensor: list(s.bands) for sensor, s in layout.sensors.items()}
        self.attention_weights: dict[str, torch.Tensor] = {}

        self.branches = nn.ModuleDict(
            {
                sensor: SensorBranch(
                    sensor_layout, width, depth, self.stem_stride, dropout, temporal
                )
                for sensor, sensor_layout in layout.sensors.items()
            }
        )
        static_width = max(1, width // 2)
        self.static_branch = (
            StaticBranch(layout.static, static_width, depth, self.stem_stride, dropout)
            if layout.static
            else None
        )
        fused = width * len(self.branches) + (static_width if layout.static else 0)
        fusion_width = 2 * width
        self.fusion = nn.Sequential(
            ConvBlock(fused, fusion_width, 1, 0.0),
            ConvBlock(fusion_width, fusion_width, 3, dropout),
        )
        self.pool = nn.AvgPool2d(cell_px // self.stem_stride)
        self.head = nn.Sequential(
            nn.Conv2d(fusion_width, fusion_width, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(fusion_width, out_channels, kernel_size=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input_size(x, self.cell_px)
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f"expected {self.in_channels} input channels ({self.channels[0]}, …), "
                f"got {x.shape[1]}"
            )
        features = []
        weights: dict[str, torch.Tensor] = {}
        for sensor, branch in self.branches.items():
            pooled, sensor_weights = branch(x)
            features.append(pooled)
            if sensor_weights is not None:
                weights[sensor] = sensor_weights.detach()
        if self.static_branch is not None:
            features.append(self.static_branch(x))
        self.attention_weights = weights
        return self.head(self.pool(self.fusion(torch.cat(features, dim=1))))


def build_temporal_fusion(
    in_channels: int,
    cell_px: int,
    out_channels: int,
    *,
    channels: Sequence[str],
    tf_width: int = 32,
    tf_depth: int = 2,
    temporal: str = "attention",
    tf_dropout: float = 0.0,
) -> nn.Module:
    """Build a TemporalFusion for the named `channels` (there must be `in_channels` of them)."""
    check_positive_int("in_channels", in_channels)
    if len(channels) != in_channels:
        raise ValueError(
            f"TemporalFusion got {len(channels)} channel names for in_channels={in_channels}"
        )
    return TemporalFusion(
        channels,
        out_channels,
        cell_px,
        width=tf_width,
        depth=tf_depth,
        temporal=temporal,
        dropout=tf_dropout,
    )
