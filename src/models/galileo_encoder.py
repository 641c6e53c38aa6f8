"""The Galileo encoder (Tseng et al., "Galileo: Learning Global & Local Features of Many
Remote Sensing Modalities", ICML 2025), written for esd so that the authors' pretrained
weights load into it unchanged.

Inputs come in four kinds (`GalileoInputs`), each a set of bands split into band groups
(`TOKEN_KINDS`): space-time (Sentinel-1, Sentinel-2 and NDVI per date), space (SRTM, Dynamic
World, WorldCereal), time (ERA5, TerraClimate, VIIRS: one value per date) and static
(LandScan, location, …). Every band group of every place (a patch of `patch_size` pixels) and
date is one token of `embedding_size`:

* spatial groups go through a patch convolution whose kernel (learnt at `max_patch_size`) is
  resized to the patch size asked for by pseudo-inverse resizing (FlexiViT; timm's
  `PatchEmbedResamplerFixedOrigSize`), the others through a linear map;
* a quarter of the embedding each encodes the band group (learnt), the date's position in the
  sequence and its month (fixed sinusoids), and the place (2-D sinusoids whose frequency scales
  with the ground size of a token, so patches of any resolution share one metric); a kind
  without time or space gets zeros in that quarter;
* the tokens that the masks mark missing are taken out before the transformer blocks (timm
  ViT blocks) and come back as zeros, so a missing band group or date costs nothing and
  influences nothing; the final LayerNorm is applied to every token.

Masks are given per band group at token resolution: `space_time` (B, h, w, T, G) with
h = H / patch_size, True where the token is missing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from src.models.checks import timm_problem

TIMM_PROBLEM = timm_problem()
"""Why the installed timm cannot run Galileo (None when it can): said, in one line, when an
encoder is built, never as an import error of this module."""
if TIMM_PROBLEM is None:  # names an older timm lacks
    from timm.layers.patch_embed import PatchEmbedResamplerFixedOrigSize
    from timm.models.vision_transformer import Block

BASE_GSD_M = 10.0
"""Ground size (metres) at which a token's spatial encoding has unit spacing per patch."""


@dataclass(frozen=True)
class TokenKind:
    """One kind of input: its band groups (in order) and whether it has space and time axes."""

    name: str
    groups: tuple[tuple[str, tuple[str, ...]], ...]
    spatial: bool
    timed: bool

    @property
    def bands(self) -> tuple[str, ...]:
        """Every band of the kind, group after group."""
        return tuple(band for _, bands in self.groups for band in bands)

    def group_slices(self) -> list[tuple[str, slice]]:
        """(group, slice of its bands in `bands`), in group order."""
        slices, start = [], 0
        for group, bands in self.groups:
            slices.append((group, slice(start, start + len(bands))))
            start += len(bands)
        return slices


_DW = ("water", "trees", "grass", "flooded_vegetation", "crops", "shrub_and_scrub", "built",
       "bare", "snow_and_ice")  # fmt: skip
_WC = ("temporarycrops", "maize", "wintercereals", "springcereals", "irrigation")
SPACE_TIME = TokenKind(
    "s_t",
    (
        ("S1", ("VV", "VH")),
        ("S2_RGB", ("B2", "B3", "B4")),
        ("S2_Red_Edge", ("B5", "B6", "B7")),
        ("S2_NIR_10m", ("B8",)),
        ("S2_NIR_20m", ("B8A",)),
        ("S2_SWIR", ("B11", "B12")),
        ("NDVI", ("NDVI",)),
    ),
    spatial=True,
    timed=True,
)
SPACE = TokenKind(
    "sp",
    (
        ("SRTM", ("elevation", "slope")),
        ("DW", tuple(f"DW_{c}" for c in _DW)),
        ("WC", tuple(f"WC_{c}" for c in _WC)),
    ),
    spatial=True,
    timed=False,
)
TIME = TokenKind(
    "t",
    (
        ("ERA5", ("temperature_2m", "total_precipitation_sum")),
        ("TC", ("def", "soil", "aet")),
        ("VIIRS", ("avg_rad",)),
    ),
    spatial=False,
    timed=True,
)
STATIC = TokenKind(
    "st",
    (
        ("LS", ("b1",)),
        ("location", ("x", "y", "z")),
        ("DW_static", tuple(f"DW_{c}_static" for c in _DW)),
        ("WC_static", tuple(f"WC_{c}_static" for c in _WC)),
    ),
    spatial=False,
    timed=False,
)
TOKEN_KINDS: tuple[TokenKind, ...] = (SPACE_TIME, SPACE, TIME, STATIC)
_PROJECTIONS = {"s_t": "space_time_embed", "sp": "space_embed", "t": "time_embed",
                "st": "static_embed"}  # fmt: skip
"""Attribute of each kind's projections (the names of the authors' state dict)."""


@dataclass(frozen=True)
class EncoderArchitecture:
    """The constructor arguments of `config.json`'s `model.encoder` that shape the weights."""

    embedding_size: int = 128
    depth: int = 4
    num_heads: int = 8
    mlp_ratio: float = 4.0
    max_sequence_length: int = 24
    max_patch_size: int = 8


NANO = EncoderArchitecture()
"""Galileo nano (1.04 M parameters), the architecture esd builds."""


@dataclass
class GalileoInputs:
    """One batch for the encoder: values, masks per band group (True: missing) and months.

    `space_time` (B, T, 13, H, W), `space` (B, 16, H, W), `time` (B, T, 6), `static` (B, 18),
    bands in `TOKEN_KINDS` order, normalised as in pretraining; masks at token resolution:
    `space_time_mask` (B, h, w, T, 7), `space_mask` (B, h, w, 3), `time_mask` (B, T, 3),
    `static_mask` (B, 4); `months` (B, T) in 0–11.
    """

    space_time: torch.Tensor
    space: torch.Tensor
    time: torch.Tensor
    static: torch.Tensor
    space_time_mask: torch.Tensor
    space_mask: torch.Tensor
    time_mask: torch.Tensor
    static_mask: torch.Tensor
    months: torch.Tensor

    def values(self, kind: TokenKind) -> torch.Tensor:
        return {"s_t": self.space_time, "sp": self.space, "t": self.time, "st": self.static}[
            kind.name
        ]

    def mask(self, kind: TokenKind) -> torch.Tensor:
        masks = {"s_t": self.space_time_mask, "sp": self.space_mask, "t": self.time_mask,
                 "st": self.static_mask}  # fmt: skip
        return masks[kind.name]


def sincos_encoding(positions: torch.Tensor, size: int) -> torch.Tensor:
    """(..., size) sines then cosines of `positions` at frequencies 10000^(−i / (2·size)),
    i < size / 2 (the authors' 1-D encoding)."""
    frequencies = 10000.0 ** -(torch.arange(size // 2, device=positions.device) / size / 2.0)
    angles = positions.to(torch.float32)[..., None] * frequencies
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


def spatial_encoding(height: int, width: int, size: int, gsd_ratio: float, device=None):
    """(height, width, size): the column's encoding, then the row's, each `size` / 2 wide,
    of positions scaled by `gsd_ratio` (a token's ground size / `BASE_GSD_M`)."""
    rows = torch.arange(height, device=device, dtype=torch.float32)[:, None].expand(height, width)
    cols = torch.arange(width, device=device, dtype=torch.float32)[None, :].expand(height, width)
    return torch.cat(
        [
            sincos_encoding(cols * gsd_ratio, size // 2),
            sincos_encoding(rows * gsd_ratio, size // 2),
        ],
        dim=-1,
    )


def month_table(size: int) -> torch.Tensor:
    """(12, size): sin(2π·m / 12) in the first half, cos in the second, for months m = 0–11."""
    angles = torch.arange(12, dtype=torch.float32) * (2 * math.pi / 12)
    half = size // 2
    return torch.cat(
        [angles.sin()[:, None].expand(12, half), angles.cos()[:, None].expand(12, half)], 1
    )


class PatchEmbedding(nn.Module):
    """(N, C, H, W) → (N, D, H / p, W / p) with the `base` kernel resized to p × p."""

    def __init__(self, in_channels: int, embedding_size: int, base: int) -> None:
        super().__init__()
        self.base = base
        self.proj = nn.Conv2d(in_channels, embedding_size, kernel_size=base, stride=base)
        self.resample = PatchEmbedResamplerFixedOrigSize((base, base))

    def forward(self, x: torch.Tensor, patch_size: int) -> torch.Tensor:
        weight = self.proj.weight
        if patch_size != self.base:
            weight = self.resample(weight, (patch_size, patch_size))
        return F.conv2d(x, weight, self.proj.bias, stride=patch_size)


@dataclass
class GalileoTokens:
    """The encoder's output per kind (B, h, w, T, G, D), (B, h, w, G, D), (B, T, G, D),
    (B, G, D), with the masks it was given (True: missing, the token is LayerNorm(0))."""

    tokens: dict[str, torch.Tensor]
    masks: dict[str, torch.Tensor]


class GalileoEncoder(nn.Module):
    """The Galileo encoder (module docstring); parameter names are the authors', except that
    each block's separate q, k, v maps are timm's one `qkv` (see `galileo_weights`)."""

    def __init__(self, architecture: EncoderArchitecture = NANO) -> None:
        if TIMM_PROBLEM:
            raise ValueError(TIMM_PROBLEM)
        super().__init__()
        self.architecture = architecture
        size = architecture.embedding_size
        if size % 8:
            raise ValueError(f"embedding_size must be a multiple of 8, got {size}")
        quarter = size // 4
        self.quarter = quarter
        for kind in TOKEN_KINDS:
            projections = nn.ModuleDict(
                {
                    group: PatchEmbedding(len(bands), size, architecture.max_patch_size)
                    if kind.spatial
                    else nn.Linear(len(bands), size)
                    for group, bands in kind.groups
                }
            )
            setattr(self, _PROJECTIONS[kind.name], projections)
            channel = nn.Parameter(torch.zeros(len(kind.groups), quarter))
            self.register_parameter(f"{kind.name}_channel_embed", channel)
        positions = torch.arange(architecture.max_sequence_length)
        self.register_buffer("pos_embed", sincos_encoding(positions, quarter))
        self.month_embed = nn.Embedding.from_pretrained(month_table(quarter), freeze=True)
        self.blocks = nn.ModuleList(
            Block(
                size,
                architecture.num_heads,
                architecture.mlp_ratio,
                qkv_bias=True,
                norm_layer=nn.LayerNorm,
            )
            for _ in range(architecture.depth)
        )
        self.norm = nn.LayerNorm(size)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    def projections(self, kind: TokenKind) -> nn.ModuleDict:
        """The patch convolutions or linear maps of `kind`'s band groups."""
        return getattr(self, _PROJECTIONS[kind.name])

    def _project(self, kind: TokenKind, x: torch.Tensor, mask: torch.Tensor, patch_size: int):
        """`kind`'s tokens (…, G, D), zeros for a group that is missing everywhere."""
        lead = [x.shape[0], *(x.shape[1:2] if kind.timed else ())]
        if kind.spatial:
            height, width = x.shape[-2:]
            if height % patch_size or width % patch_size:
                raise ValueError(
                    f"{kind.name} input {height}×{width} is not a multiple of patch_size "
                    f"{patch_size}"
                )
            lead[1:1] = [height // patch_size, width // patch_size]
        if tuple(mask.shape) != (*lead, len(kind.groups)):
            raise ValueError(
                f"{kind.name} mask {tuple(mask.shape)} does not match its tokens "
                f"{(*lead, len(kind.groups))} (masks are per band group at token resolution)"
            )
        groups = []
        for index, (group, bands) in enumerate(kind.group_slices()):
            shape = (*mask.shape[:-1], self.architecture.embedding_size)
            if bool(mask[..., index].all()):
                groups.append(x.new_zeros(shape))
                continue
            projection = self.projections(kind)[group]
            if not kind.spatial:
                groups.append(projection(x[..., bands]))
                continue
            part = x[:, :, bands] if kind.timed else x[:, bands]
            flat = part.flatten(0, 1) if kind.timed else part
            out = projection(flat, patch_size)  # (N, D, h, w)
            if kind.timed:
                out = out.view(x.shape[0], x.shape[1], *out.shape[1:]).permute(0, 3, 4, 1, 2)
            else:
                out = out.permute(0, 2, 3, 1)
            groups.append(out)
        return torch.stack(groups, dim=-2)

    def _encodings(self, kind: TokenKind, shape: torch.Size, months: torch.Tensor, gsd: float):
        """The (…, G, D) encodings of `kind`'s tokens of `shape` (see the module docstring)."""
        *lead, groups, _ = shape
        quarter = self.quarter
        device = months.device
        zeros = torch.zeros(quarter, device=device)

        def broadcast(part: torch.Tensor, axes: str) -> torch.Tensor:
            # part's axes are named by `axes` among b, h, w, t, g; others are broadcast.
            names = "b" + ("hw" if kind.spatial else "") + ("t" if kind.timed else "") + "g"
            view = [1] * len(names) + [quarter]
            for axis, length in zip(axes, part.shape[:-1], strict=True):
                view[names.index(axis)] = length
            return part.reshape(view).expand(*lead, groups, quarter)

        channel = broadcast(getattr(self, f"{kind.name}_channel_embed"), "g")
        parts = [channel]
        if kind.timed:
            time = months.shape[1]
            parts += [
                broadcast(self.pos_embed[:time], "t"),
                broadcast(self.month_embed(months), "bt"),
            ]
        else:
            parts += [broadcast(zeros[None], "g")] * 2
        if kind.spatial:
            height, width = lead[1], lead[2]
            space = spatial_encoding(height, width, quarter, gsd, device)
            parts.append(broadcast(space, "hw"))
        else:
            parts.append(broadcast(zeros[None], "g"))
        return torch.cat(parts, dim=-1)

    def _attend(self, tokens: torch.Tensor, missing: torch.Tensor, depth: int) -> torch.Tensor:
        """The first `depth` blocks over each sample's present tokens (missing ones removed,
        then returned as zeros)."""
        present = ~missing
        order = torch.argsort(missing.to(torch.uint8), dim=1, stable=True)
        count = int(present.sum(dim=1).max())
        index = order[:, :count]
        valid = present.gather(1, index)
        gather = index[..., None].expand(-1, -1, tokens.shape[-1])
        x = tokens.gather(1, gather)
        # a sample with no present token attends to its padding (its output is discarded)
        attend = valid | ~valid.any(dim=1, keepdim=True)
        for block in self.blocks[:depth]:
            x = block(x, attn_mask=attend[:, None, None, :])
        x = torch.where(valid[..., None], x, torch.zeros_like(x))
        return torch.zeros_like(tokens).scatter(1, gather, x)

    def forward(
        self,
        inputs: GalileoInputs,
        patch_size: int,
        input_resolution_m: float = BASE_GSD_M,
        exit_after: int | None = None,
    ) -> GalileoTokens:
        """Tokens of every kind after `exit_after` blocks (None: all), then the LayerNorm."""
        depth = self.architecture.depth if exit_after is None else exit_after
        if not 1 <= depth <= self.architecture.depth:
            raise ValueError(f"exit_after must be in 1…{self.architecture.depth}, got {exit_after}")
        if inputs.months.shape[1] > self.architecture.max_sequence_length:
            raise ValueError(
                f"{inputs.months.shape[1]} dates exceed the encoder's "
                f"{self.architecture.max_sequence_length}"
            )
        gsd = input_resolution_m * patch_size / BASE_GSD_M
        shapes, flat_tokens, flat_masks = {}, [], []
        for kind in TOKEN_KINDS:
            mask = inputs.mask(kind).bool()
            tokens = self._project(kind, inputs.values(kind), mask, patch_size)
            tokens = tokens + self._encodings(kind, tokens.shape, inputs.months, gsd)
            shapes[kind.name] = tokens.shape
            flat_tokens.append(tokens.flatten(1, -2))
            flat_masks.append(mask.flatten(1))
        sequence = self._attend(torch.cat(flat_tokens, 1), torch.cat(flat_masks, 1), depth)
        sequence = self.norm(sequence)
        out, start = {}, 0
        for kind in TOKEN_KINDS:
            shape = shapes[kind.name]
            length = math.prod(shape[1:-1])
            out[kind.name] = sequence[:, start : start + length].reshape(shape)
            start += length
        return GalileoTokens(out, {kind.name: inputs.mask(kind).bool() for kind in TOKEN_KINDS})
