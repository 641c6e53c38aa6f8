"""Tests of TemporalFusion and SMPSegmentation (CPU only, tiny sizes, nothing downloaded)."""

from __future__ import annotations

import math
import random
import re
from pathlib import Path

import pytest
import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from src.esd_data.sensors import MAX_PROJECTION_DATE, SENSORS, SENSORS_BY_NAME
from src.models import fcn_resnet_transfer, pretrained
from src.models.smp_model import SMP_ARCHS, SMPSegmentation, build_smp
from src.models.temporal_fusion import (
    TEMPORAL_AGGREGATORS,
    AttentionPool,
    ConvGRUPool,
    MeanPool,
    TemporalFusion,
    build_temporal_fusion,
    parse_channels,
    stem_stride,
)
from tests.test_models import train_losses

N_CLASSES = 4
FIVE_ARCHS = ("unet", "unetplusplus", "deeplabv3plus", "fpn", "segformer")
LIGHT_ENCODER = {"segformer": "mit_b0"}  # the others use resnet18
FIRST_CONV = {"resnet18": "conv1", "mit_b0": "patch_embed1.proj"}

VIIRS_DATES = ("2020-08-08", "2020-08-11", "2020-08-12")
S1_DATES = ("2020-07-23", "2020-08-04")
S2_DATES = ("2020-08-11", "2020-08-16")
L8_DATES = ("2020-07-29", "2020-08-14")
S2_BANDS = ("B02", "B08", "B8A", "B11")


def small_channels(
    viirs_max: bool = True,
    landsat8: bool = True,
    s2_dates: tuple[str, ...] = S2_DATES,
) -> list[str]:
    """A small selection shaped like the real channels (sensor by sensor, date-major)."""
    names = [f"viirs/{date}/DNB" for date in VIIRS_DATES]
    if viirs_max:
        names.append(f"viirs/{MAX_PROJECTION_DATE}/DNB")
    names += [f"sentinel1/{date}/{band}" for date in S1_DATES for band in ("VV", "VH")]
    names += [f"sentinel2/{date}/{band}" for date in s2_dates for band in S2_BANDS]
    if landsat8:
        names += [f"landsat8/{date}/{band}" for date in L8_DATES for band in ("B2", "B10")]
    return names


def real_channels() -> list[str]:
    """The 99 channel names of the real data set, in the preprocessing's order."""
    names = []
    for spec in SENSORS:
        names += [
            f"{spec.name}/{date}/{band}" for date in spec.reference_dates for band in spec.bands
        ]
        if spec.name == "viirs":
            names += [f"viirs/{MAX_PROJECTION_DATE}/{band}" for band in spec.bands]
    return names


def tiny_fusion(channels: list[str], cell_px: int = 2, **kwargs: object) -> TemporalFusion:
    kwargs = {"tf_width": 4, "tf_depth": 1, **kwargs}
    model = build_temporal_fusion(len(channels), cell_px, N_CLASSES, channels=channels, **kwargs)
    assert isinstance(model, TemporalFusion)
    return model


def permuted(
    channels: list[str], x: torch.Tensor, order: list[int]
) -> tuple[list[str], torch.Tensor]:
    """The channel names and input channels both reordered by `order`."""
    return [channels[i] for i in order], x[:, order]


# --- TemporalFusion: parsing the channel names ---------------------------------------------


def test_parse_channels_groups_sensors_dates_bands() -> None:
    channels = small_channels()
    shuffled = random.Random(0).sample(channels, len(channels))
    layout = parse_channels(shuffled)
    assert list(layout.sensors) == ["landsat8", "sentinel1", "sentinel2", "viirs"]
    s2 = layout.sensors["sentinel2"]
    assert s2.dates == S2_DATES
    assert s2.bands == ("B02", "B08", "B8A", "B11")  # natural order, not a string sort
    assert layout.sensors["landsat8"].bands == ("B2", "B10")
    for sensor, sensor_layout in layout.sensors.items():
        for date, indexes in zip(sensor_layout.dates, sensor_layout.indexes, strict=True):
            names = [shuffled[i] for i in indexes]
            assert names == [f"{sensor}/{date}/{band}" for band in sensor_layout.bands]
    assert [shuffled[i] for i in layout.static] == ["viirs/max/DNB"]


def test_real_channel_names() -> None:
    channels = real_channels()
    assert len(channels) == 99
    model = tiny_fusion(channels)
    for spec in SENSORS:
        assert model.sensor_dates[spec.name] == list(spec.reference_dates)
        assert set(model.sensor_bands[spec.name]) == set(spec.bands)
    for sensor in ("sentinel2", "landsat8"):  # natural band order: B08, B8A, B09; B9, B10, B11
        assert model.sensor_bands[sensor] == list(SENSORS_BY_NAME[sensor].bands)
    assert model.static_branch is not None
    assert model.static_branch.index.tolist() == [channels.index("viirs/max/DNB")]
    # The index buffers are not part of the state dict.
    assert not any(key.endswith("index") for key in model.state_dict())


@pytest.mark.parametrize(("cell_px", "expected"), [(50, 5), (20, 2), (10, 1), (5, 1), (2, 1)])
def test_stem_stride(cell_px: int, expected: int) -> None:
    assert stem_stride(cell_px) == expected


def test_mismatched_bands_across_dates_are_rejected() -> None:
    channels = [c for c in small_channels() if c != "sentinel2/2020-08-16/B11"]
    with pytest.raises(ValueError, match=r"sensor 'sentinel2'.*\['2020-08-16'\]"):
        tiny_fusion(channels)
    extra = [*small_channels(), "sentinel1/2020-08-04/HH"]
    with pytest.raises(ValueError, match=r"sensor 'sentinel1'.*\['2020-08-04'\]"):
        tiny_fusion(extra)


@pytest.mark.parametrize(
    ("channels", "message"),
    [
        (["viirs/2020-08-08"], "is not named 'sensor/date/band'"),
        (["viirs//DNB"], "is not named 'sensor/date/band'"),
        (["viirs/2020-13-08/DNB"], "neither an ISO date"),
        (["viirs/20200808/DNB"], "neither an ISO date"),
        (["viirs/2020-08-08/DNB", "viirs/2020-08-08/DNB"], "duplicate channel names"),
        (["vi.irs/2020-08-08/DNB"], "may not contain '.'"),
    ],
)
def test_bad_channel_names_are_rejected(channels: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        tiny_fusion(channels)


def test_fusion_arguments_are_validated() -> None:
    channels = small_channels()
    with pytest.raises(ValueError, match="got 20 channel names for in_channels=17"):
        build_temporal_fusion(17, 2, N_CLASSES, channels=channels)
    with pytest.raises(ValueError, match="temporal must be one of"):
        tiny_fusion(channels, temporal="lstm")
    with pytest.raises(ValueError, match="dropout must be"):
        tiny_fusion(channels, tf_dropout=1.0)
    with pytest.raises(ValueError, match="width must be a positive integer"):
        tiny_fusion(channels, tf_width=0)
    model = tiny_fusion(channels)
    with pytest.raises(ValueError, match="expected 20 input channels"):
        model(torch.randn(1, 17, 4, 4))
    with pytest.raises(ValueError, match="not a multiple of the label cell size"):
        model(torch.randn(1, 20, 5, 4))


# --- TemporalFusion: outputs -------------------------------------------------------------


@pytest.mark.parametrize("temporal", TEMPORAL_AGGREGATORS)
@pytest.mark.parametrize("cell_px", [2, 4, 10])
def test_fusion_outputs_label_grid(temporal: str, cell_px: int) -> None:
    torch.manual_seed(0)
    channels = small_channels()
    model = tiny_fusion(channels, cell_px, temporal=temporal, tf_dropout=0.1)
    for t in (1, 2, 4, 8):
        x = torch.randn(2, len(channels), t * cell_px, t * cell_px)
        out = model.train()(x)
        assert out.shape == (2, N_CLASSES, t, t)
        with torch.no_grad():
            assert model.eval()(x[:1]).shape == (1, N_CLASSES, t, t)


def test_fusion_at_the_real_cell_size() -> None:
    model = tiny_fusion(small_channels(), 50).eval()
    assert model.stem_stride == 5
    with torch.no_grad():
        for t in (1, 2):
            assert model(torch.randn(1, 20, 50 * t, 50 * t)).shape == (1, N_CLASSES, t, t)
    assert model.attention_weights["sentinel2"].shape == (1, 2, 20, 20)


@pytest.mark.parametrize(
    ("channels", "sensors", "static"),
    [
        (small_channels(landsat8=False), ["sentinel1", "sentinel2", "viirs"], True),
        (
            small_channels(s2_dates=("2020-08-16",)),
            ["landsat8", "sentinel1", "sentinel2", "viirs"],
            True,
        ),
        (small_channels(viirs_max=False), ["landsat8", "sentinel1", "sentinel2", "viirs"], False),
        (["viirs/max/DNB", "sentinel2/2020-08-11/B04"], ["sentinel2"], True),
    ],
    ids=["no-landsat8", "one-s2-date", "no-viirs-max", "one-date-and-static"],
)
def test_fusion_on_channel_selections(
    channels: list[str], sensors: list[str], static: bool
) -> None:
    torch.manual_seed(0)
    model = tiny_fusion(channels)
    assert list(model.sensor_dates) == sensors
    assert (model.static_branch is not None) == static
    losses = train_losses(
        model, torch.randn(2, len(channels), 4, 4), torch.zeros(2, 2, 2, dtype=torch.long), 1e-2, 2
    )
    assert all(math.isfinite(loss) for loss in losses)
    assert set(model.attention_weights) == set(sensors)


@pytest.mark.parametrize("temporal", TEMPORAL_AGGREGATORS)
def test_every_channel_reaches_the_output(temporal: str) -> None:
    torch.manual_seed(0)
    channels = random.Random(2).sample(small_channels(), len(small_channels()))
    model = tiny_fusion(channels, temporal=temporal).eval()
    x = torch.randn(2, len(channels), 4, 4, requires_grad=True)
    model(x).sum().backward()
    assert x.grad is not None
    assert (x.grad.abs().sum(dim=(0, 2, 3)) > 0).all()


@pytest.mark.parametrize("temporal", TEMPORAL_AGGREGATORS)
def test_permuting_dates_with_their_names_keeps_the_output(temporal: str) -> None:
    torch.manual_seed(0)
    channels = small_channels()
    x = torch.randn(2, len(channels), 8, 8)  # every date differs
    model = tiny_fusion(channels, temporal=temporal)
    train_losses(model, x, torch.randint(0, N_CLASSES, (2, 4, 4)), 1e-2, 2)  # non-trivial BN
    # Swap the two Sentinel-2 dates and reverse the VIIRS dates (bands stay within their date).
    s2 = [[channels.index(f"sentinel2/{d}/{b}") for b in S2_BANDS] for d in S2_DATES]
    viirs = [channels.index(f"viirs/{d}/DNB") for d in VIIRS_DATES]
    swap = dict(zip(s2[0] + s2[1], s2[1] + s2[0], strict=True))
    swap.update(zip(viirs, reversed(viirs), strict=True))
    new_channels, new_x = permuted(channels, x, [swap.get(i, i) for i in range(len(channels))])
    assert new_channels != channels
    same = tiny_fusion(new_channels, temporal=temporal)
    same.load_state_dict(model.state_dict())  # a state dict is portable across channel orders
    model.eval()
    same.eval()
    with torch.no_grad():
        expected = model(x)
        torch.testing.assert_close(same(new_x), expected, rtol=1e-5, atol=1e-6)
        # Under the old names the model sees each sensor's dates in another order: only an
        # order-invariant aggregation gives the same output.
        reordered = model(new_x)
        if temporal in ("convgru", "ltae"):  # the order, or the dates, matter
            assert not torch.allclose(reordered, expected, rtol=1e-3, atol=1e-4)
        else:
            torch.testing.assert_close(reordered, expected, rtol=1e-5, atol=1e-6)
        # The inputs matter: swapping two bands of every Sentinel-2 date changes the output.
        band_swap = dict(zip(s2[0][:2] + s2[1][:2], s2[0][1::-1] + s2[1][1::-1], strict=True))
        swapped = x[:, [band_swap.get(i, i) for i in range(len(channels))]]
        assert not torch.allclose(model(swapped), expected, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("pool", [AttentionPool(6), MeanPool()], ids=["attention", "mean"])
def test_aggregator_is_invariant_to_date_order(pool: nn.Module) -> None:
    torch.manual_seed(0)
    features = torch.randn(2, 5, 6, 3, 3)
    order = [3, 0, 4, 2, 1]
    pooled, weights = pool(features)
    pooled_permuted, weights_permuted = pool(features[:, order])
    torch.testing.assert_close(pooled_permuted, pooled)
    if weights is not None:
        torch.testing.assert_close(weights_permuted, weights[:, order])


def test_convgru_depends_on_date_order() -> None:
    # The check above would catch an order-dependent aggregator: the ConvGRU is one.
    torch.manual_seed(0)
    pool = ConvGRUPool(6)
    features = torch.randn(2, 5, 6, 3, 3)
    pooled, weights = pool(features)
    assert weights is None
    assert not torch.allclose(pool(features[:, [3, 0, 4, 2, 1]])[0], pooled, atol=1e-4)


def test_attention_weights_are_a_distribution_over_the_dates() -> None:
    torch.manual_seed(0)
    channels = small_channels(s2_dates=("2020-08-16",))
    shuffled = random.Random(1).sample(channels, len(channels))
    model = tiny_fusion(shuffled, cell_px=2).eval()
    assert model.attention_weights == {}
    with torch.no_grad():
        model(torch.randn(3, len(channels), 8, 12))
    assert model.sensor_dates == {
        "landsat8": list(L8_DATES),
        "sentinel1": list(S1_DATES),
        "sentinel2": ["2020-08-16"],
        "viirs": list(VIIRS_DATES),
    }
    for sensor, weights in model.attention_weights.items():
        assert weights.shape == (3, len(model.sensor_dates[sensor]), 8, 12)
        assert not weights.requires_grad
        assert (weights >= 0).all()
        torch.testing.assert_close(weights.sum(dim=1), torch.ones(3, 8, 12))
    torch.testing.assert_close(model.attention_weights["sentinel2"], torch.ones(3, 1, 8, 12))
    assert not torch.allclose(
        model.attention_weights["viirs"], torch.full((3, 3, 8, 12), 1 / 3), atol=1e-3
    )


def test_date_aware_attention_knows_when_each_image_was_taken() -> None:
    torch.manual_seed(0)
    channels = small_channels()
    model = tiny_fusion(channels, temporal="ltae")
    x = torch.randn(2, len(channels), 8, 8)
    train_losses(model, x, torch.randint(0, N_CLASSES, (2, 4, 4)), 1e-2, 2)  # non-trivial BN
    model.eval()

    def renamed(names: dict[str, str]) -> TemporalFusion:
        """The same weights, the same pixels, under other date names."""
        other = tiny_fusion([names.get(c, c) for c in channels], temporal="ltae").eval()
        other.load_state_dict(model.state_dict())
        return other

    # Sentinel-1 acquired two months earlier (same order): only its branch, and the output, change.
    earlier = renamed({f"sentinel1/{d}/{b}": f"sentinel1/2020-0{5 + k}-1{k}/{b}"
                       for k, d in enumerate(S1_DATES) for b in ("VV", "VH")})  # fmt: skip
    # VIIRS's dates permuted among its images: only the VIIRS branch changes.
    cycle = dict(zip(VIIRS_DATES, VIIRS_DATES[1:] + VIIRS_DATES[:1], strict=True))
    permuted_viirs = renamed({f"viirs/{d}/DNB": f"viirs/{cycle[d]}/DNB" for d in VIIRS_DATES})
    with torch.no_grad():
        expected = model(x)
        for other, changed in ((earlier, "sentinel1"), (permuted_viirs, "viirs")):
            assert (other(x) - expected).abs().max() > 1e-6  # (exactly equal if dates were ignored)
            for sensor, branch in model.branches.items():
                same = torch.equal(other.branches[sensor](x)[0], branch(x)[0])
                assert same == (sensor != changed), (changed, sensor)
    for sensor, weights in model.attention_weights.items():  # a picture of the dates attended
        assert weights.shape == (2, len(model.sensor_dates[sensor]), 8, 8)
        torch.testing.assert_close(weights.sum(dim=1), torch.ones(2, 8, 8))


@pytest.mark.parametrize("temporal", ["mean", "convgru"])
def test_no_attention_weights_without_attention(temporal: str) -> None:
    model = tiny_fusion(small_channels(), temporal=temporal)
    model(torch.randn(2, 20, 4, 4))
    assert model.attention_weights == {}


def _planted_batch(generator: torch.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """3 dates × 2 bands; date 2020-01-02 encodes the label of each 2×2 cell, the others are
    N(0, 1) noise of the same scale."""
    labels = torch.randint(0, N_CLASSES, (n, 4, 4), generator=generator)
    signal = torch.stack([labels % 2, labels // 2], dim=1).float() * 2 - 1
    signal = signal.repeat_interleave(2, dim=-1).repeat_interleave(2, dim=-2)
    informative = signal + 0.3 * torch.randn(signal.shape, generator=generator)
    noise = [torch.randn(signal.shape, generator=generator) for _ in range(2)]
    return torch.cat([noise[0], informative, noise[1]], dim=1), labels


def test_attention_prefers_the_informative_date() -> None:
    # A fresh batch every step, so the model cannot memorise the noise dates. Over seeds 0-9
    # the informative date ends with a mean weight of 0.46-0.62 (uniform would be 1/3).
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(1)
    channels = [f"s/2020-01-0{day}/{band}" for day in (1, 2, 3) for band in ("a", "b")]
    model = TemporalFusion(channels, N_CLASSES, cell_px=2, width=8, depth=1).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-2)
    for _ in range(60):
        x, y = _planted_batch(generator, 8)
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        model(_planted_batch(generator, 16)[0])
    mean_weights = model.attention_weights["s"].mean(dim=(0, 2, 3))
    assert mean_weights[1] > 0.4, mean_weights
    assert mean_weights[1] > max(mean_weights[0], mean_weights[2]) + 0.1, mean_weights


@pytest.mark.parametrize("temporal", TEMPORAL_AGGREGATORS)
def test_fusion_training_lowers_loss(temporal: str) -> None:
    torch.manual_seed(0)
    channels = small_channels()
    model = tiny_fusion(channels, cell_px=4, temporal=temporal, tf_width=8)
    x = torch.randn(2, len(channels), 8, 8)
    y = torch.randint(0, N_CLASSES, (2, 2, 2))
    losses = train_losses(model, x, y, lr=1e-2, steps=15)
    assert losses[-1] < 0.5 * losses[0], losses


# --- SMPSegmentation ---------------------------------------------------------------------


def test_smp_archs_and_names() -> None:
    assert set(FIVE_ARCHS) <= set(SMP_ARCHS)
    assert "dpt" not in SMP_ARCHS
    model = build_smp(3, 2, N_CLASSES, smp_arch="DeepLabV3Plus", smp_encoder="resnet18")
    assert isinstance(model, SMPSegmentation)
    assert model.arch == "deeplabv3plus"
    assert model.divisor == 16
    with pytest.raises(ValueError, match="unknown smp architecture 'SegNet'") as error:
        build_smp(3, 2, N_CLASSES, smp_arch="SegNet")
    assert all(arch in str(error.value) for arch in FIVE_ARCHS)
    with pytest.raises(ValueError, match="'dpt' is not supported"):
        build_smp(3, 2, N_CLASSES, smp_arch="dpt")
    with pytest.raises(ValueError, match=r"unknown smp encoder 'resnet7'.*resnet34.*'tu-<timm"):
        build_smp(3, 2, N_CLASSES, smp_encoder="resnet7")
    with pytest.raises(ValueError, match="unknown smp encoder 'tu-no_such_model'"):
        build_smp(3, 2, N_CLASSES, smp_encoder="tu-no_such_model")


@pytest.mark.parametrize("cell_px", [2, 5])
def test_smp_unet_outputs_label_grid(cell_px: int) -> None:
    torch.manual_seed(0)
    model = build_smp(5, cell_px, N_CLASSES, smp_encoder="resnet18").train()
    with torch.no_grad():
        for t in (1, 2, 4, 8):
            assert model(torch.randn(2, 5, t * cell_px, t * cell_px)).shape == (2, N_CLASSES, t, t)


@pytest.mark.parametrize(
    ("arch", "cell_px", "t"),
    [
        ("UnetPlusPlus", 4, 2),
        ("deeplabv3plus", 2, 8),
        ("fpn", 5, 4),
        ("segformer", 4, 4),
        ("segformer", 2, 1),
        ("pan", 2, 2),
        ("pspnet", 4, 1),
    ],
)
def test_smp_archs_output_label_grid(arch: str, cell_px: int, t: int) -> None:
    torch.manual_seed(0)
    encoder = LIGHT_ENCODER.get(arch.lower(), "resnet18")
    model = build_smp(5, cell_px, N_CLASSES, smp_arch=arch, smp_encoder=encoder).train()
    with torch.no_grad():
        out = model(torch.randn(2, 5, t * cell_px, t * cell_px))
    assert out.shape == (2, N_CLASSES, t, t)
    assert torch.isfinite(out).all()


def test_smp_output_is_the_cell_average_of_the_cropped_pixel_logits() -> None:
    torch.manual_seed(0)
    model = build_smp(3, 4, N_CLASSES, smp_encoder="resnet18").eval()
    x = torch.randn(1, 3, 8, 12)
    with torch.no_grad():
        pixels = model.model(F.pad(x, [10, 10, 12, 12]))[..., 12:20, 10:22]
        out = model(x)
    torch.testing.assert_close(out[:, :, 1, 2], pixels[:, :, 4:8, 8:12].mean(dim=(-2, -1)))


def _rgb_encoder_file(path: Path, arch: str, encoder: str) -> dict[str, torch.Tensor]:
    """An RGB smp encoder's state dict, BatchNorm statistics made distinguishable, saved."""
    torch.manual_seed(1)
    rgb = smp.create_model(arch, encoder_name=encoder, encoder_weights=None, in_channels=3)
    state = rgb.encoder.state_dict()
    for key, value in state.items():
        if key.endswith("running_var"):
            value.uniform_(0.5, 1.5)
        elif key.endswith(("running_mean", "bias")):
            value.normal_(0.0, 0.1)
    if path.suffix == ".safetensors":
        save_file(state, path)
    else:
        torch.save(state, path)
    return state


@pytest.mark.parametrize(
    ("arch", "encoder", "in_channels"), [("unet", "resnet18", 6), ("segformer", "mit_b0", 9)]
)
def test_smp_pretrained_first_conv_preserves_rgb_response(
    tmp_path: Path, arch: str, encoder: str, in_channels: int
) -> None:
    path = tmp_path / f"{encoder}.pth"
    reference = _rgb_encoder_file(path, arch, encoder)
    model = build_smp(
        in_channels,
        2,
        N_CLASSES,
        smp_arch=arch,
        smp_encoder=encoder,
        pretrained=True,
        weights_path=path,
    )
    assert isinstance(model, SMPSegmentation)
    first = f"{FIRST_CONV[encoder]}.weight"
    assert model.adapted_keys == [first]
    conv = model.model.encoder.get_submodule(FIRST_CONV[encoder])
    assert conv.in_channels == in_channels
    torch.manual_seed(2)
    rgb = torch.randn(2, 3, 16, 16)
    repeated = rgb.repeat(1, in_channels // 3, 1, 1)  # channel i is RGB channel i mod 3
    bias = reference.get(f"{FIRST_CONV[encoder]}.bias")
    with torch.no_grad():
        expected = F.conv2d(rgb, reference[first], bias, stride=conv.stride, padding=conv.padding)
        actual = conv(repeated)
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)
    for key, value in model.model.encoder.state_dict().items():
        if key != first:
            assert torch.equal(value, reference[key]), key


def test_smp_rgb_safetensors_weights_load_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    reference = _rgb_encoder_file(path, "fpn", "resnet18")
    model = build_smp(
        3,
        2,
        N_CLASSES,
        smp_arch="fpn",
        smp_encoder="resnet18",
        pretrained=True,
        weights_path=str(path),
    )
    assert model.adapted_keys == []
    for key, value in model.model.encoder.state_dict().items():
        assert torch.equal(value, reference[key]), key


def test_first_conv_adapter_is_shared() -> None:
    assert fcn_resnet_transfer.adapt_first_conv_weight is pretrained.adapt_first_conv_weight
    weight = torch.randn(4, 3, 3, 3)
    adapted = pretrained.adapt_first_conv_weight(weight, 3)
    torch.testing.assert_close(adapted, weight)
    assert adapted.data_ptr() != weight.data_ptr()


def test_smp_missing_weights_file_fails_before_building(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_build(*args: object, **kwargs: object) -> nn.Module:
        raise AssertionError("the model was built before the weights file was checked")

    monkeypatch.setattr(smp, "create_model", no_build)
    missing = tmp_path / "no_such_encoder.pth"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))) as error:
        build_smp(6, 2, N_CLASSES, smp_encoder="resnet18", pretrained=True, weights_path=missing)
    assert "Nothing is downloaded" in str(error.value)


def test_smp_bad_weights_files_are_rejected(tmp_path: Path) -> None:
    def build(path: Path, encoder: str = "resnet18", in_channels: int = 6) -> nn.Module:
        return build_smp(
            in_channels, 2, N_CLASSES, smp_encoder=encoder, pretrained=True, weights_path=path
        )

    text = tmp_path / "text.pth"
    text.write_text("not a checkpoint")
    with pytest.raises(ValueError, match=f"could not read {re.escape(str(text))}"):
        build(text)
    listed = tmp_path / "list.pth"
    torch.save([torch.zeros(2)], listed)
    with pytest.raises(ValueError, match="is not a state dict"):
        build(listed)
    other = tmp_path / "fc.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, other)
    with pytest.raises(ValueError, match=f"{re.escape(str(other))} is not a state dict of this"):
        build(other)
    resnet18 = tmp_path / "resnet18.pth"
    state = _rgb_encoder_file(resnet18, "unet", "resnet18")
    with pytest.raises(ValueError, match="missing keys"):
        build(resnet18, encoder="resnet34")
    whole = tmp_path / "whole.pth"
    torch.save({f"encoder.{key}": value for key, value in state.items()}, whole)
    with pytest.raises(ValueError, match=r"model.encoder.state_dict\(\)"):
        build(whole)
    four = tmp_path / "four.pth"
    torch.save({**state, "conv1.weight": torch.zeros(64, 4, 7, 7)}, four)
    with pytest.raises(ValueError, match=r"'conv1.weight' has shape \(64, 4, 7, 7\)"):
        build(four)
    with pytest.raises(ValueError, match="pretrained=True needs weights_path"):
        build_smp(6, 2, N_CLASSES, pretrained=True)
    with pytest.raises(ValueError, match="weights_path is only read when pretrained=True"):
        build_smp(6, 2, N_CLASSES, weights_path=resnet18)


def test_smp_training_lowers_loss() -> None:
    torch.manual_seed(0)
    model = build_smp(5, 4, N_CLASSES, smp_encoder="resnet18")
    x = torch.randn(2, 5, 8, 8)
    y = torch.randint(0, N_CLASSES, (2, 2, 2))
    losses = train_losses(model, x, y, lr=1e-3, steps=6)
    assert losses[-1] < 0.5 * losses[0], losses
