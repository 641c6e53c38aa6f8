"""What a cross-validation trains on the same folds: each model type, and its ablations.

`--ablate sensors` adds, per model type, the model trained without each sensor and with each
sensor alone; `--ablate dates` the model trained without each acquisition date of each sensor
(one `sensor/date` channel group at a time). Every variant is the full model's configuration
with another band selection, so that its paired comparison with the full model (on the same
folds and tiles) says what that sensor or date is worth: retraining, not permuting.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from src.esd_data.manifest import Manifest
from src.esd_data.sensors import derived_followers, group_channels
from src.training.config import ESDConfig

Ablation = Literal["none", "sensors", "dates"]


@dataclass(frozen=True)
class Variant:
    """One trained configuration: its name (folder and leaderboard row), its training options
    and the full model it is compared with (None for a full model)."""

    name: str
    config: ESDConfig
    reference: str | None = None


def _bands(channels: list[str]) -> dict[str, list[str]]:
    """The band selection of exactly these channels (`date/band` names per sensor)."""
    selection: dict[str, list[str]] = {}
    for name in channels:
        sensor, date, band = name.split("/")
        selection.setdefault(sensor, []).append(f"{date}/{band}")
    return selection


def _ablations(channels: list[str], ablate: Ablation) -> list[tuple[str, list[str]]]:
    """(suffix, kept channels) of every ablation of `channels`."""
    if ablate == "sensors":
        groups = group_channels(channels, "sensor")
        without = [(f"without-{s}", [c for c in channels if c not in g]) for s, g in groups.items()]
        alone = [(f"only-{sensor}", group) for sensor, group in groups.items()]
        return without + alone
    groups = group_channels(channels, "date")
    return [
        (f"without-{group.replace('/', '-')}",
         [c for c in channels if c not in members + derived_followers(members, channels)])
        for group, members in groups.items()
    ]  # fmt: skip


def model_variants(
    model_configs: dict[str, ESDConfig], ablate: Ablation, base: ESDConfig, manifest: Manifest
) -> list[Variant]:
    """Each model type's full configuration (`model_configs`: model type → its training
    options) and, with `ablate`, its ablations (duplicates of a channel set already listed,
    and empty ones, left out); a date left out takes the derived channels computed from it
    (`viirs/max/DNB`) with it. ValueError when the selected channels have a single group to
    ablate."""
    variants = []
    for model_type, full in model_configs.items():
        variants.append(Variant(model_type, full))
        if ablate == "none":
            continue
        channels = [manifest.channels[i] for i in manifest.select_channels(base.bands)]
        level = "sensor" if ablate == "sensors" else "date"
        if len(group_channels(channels, level)) < 2:
            raise ValueError(
                f"--ablate {ablate} needs at least two {level}s among the selected channels "
                f"(--bands {base.bands}): there is nothing to leave out"
            )
        seen = {tuple(channels)}
        for suffix, kept in _ablations(channels, ablate):
            if not kept or tuple(kept) in seen:
                continue
            seen.add(tuple(kept))
            config = dataclasses.replace(full, bands=_bands(kept))
            variants.append(Variant(f"{model_type}-{suffix}", config, reference=model_type))
    return variants
