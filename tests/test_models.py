"""Tests of the segmentation models and their registry (CPU only, nothing downloaded).

FCN-ResNet101 (~52M parameters) is built only a handful of times, in module-scoped fixtures,
and run on tiny inputs.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.segmentation import fcn_resnet101

from src.models.fcn_resnet_transfer import (
    BACKBONE_BLOCKS,
    FCNResnetTransfer,
    adapt_first_conv_weight,
    default_weights_file,
    frozen_block_names,
)
from src.models.registry import MODEL_TYPES, build_model, model_hparams
from src.models.segmentation_cnn import SegmentationCNN, default_pool_sizes
from src.models.unet import UNet

CELL_PX = 5
N_CLASSES = 4
FULL_CHANNELS = 99
REDUCED_CHANNELS = 3
SMALL_MODELS = ("SegmentationCNN", "UNet")


def _assert_grid_outputs(model: nn.Module, in_channels: int, cell_px: int, batch: int) -> None:
    for t in (1, 2, 4):
        x = torch.randn(batch, in_channels, t * cell_px, t * cell_px)
        out = model(x)
        assert out.shape == (batch, N_CLASSES, t, t)
        assert torch.isfinite(out).all()


def train_losses(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, lr: float, steps: int
) -> list[float]:
    """Adam on one fixed batch; the cross-entropy loss of each step."""
    model.train()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


# --- SegmentationCNN and UNet -------------------------------------------------------------


@pytest.mark.parametrize("in_channels", [FULL_CHANNELS, REDUCED_CHANNELS])
@pytest.mark.parametrize("model_type", SMALL_MODELS)
def test_small_models_output_label_grid(model_type: str, in_channels: int) -> None:
    torch.manual_seed(0)
    model = build_model(model_type, in_channels, CELL_PX, embedding_size=8)
    _assert_grid_outputs(model.train(), in_channels, CELL_PX, batch=2)
    with torch.no_grad():
        _assert_grid_outputs(model.eval(), in_channels, CELL_PX, batch=1)


@pytest.mark.parametrize("model_type", SMALL_MODELS)
def test_small_models_training_lowers_loss(model_type: str) -> None:
    torch.manual_seed(0)
    model = build_model(model_type, 6, CELL_PX)
    x = torch.randn(2, 6, 2 * CELL_PX, 2 * CELL_PX)
    y = torch.randint(0, N_CLASSES, (2, 2, 2))
    losses = train_losses(model, x, y, lr=1e-2, steps=15)
    assert losses[-1] < 0.5 * losses[0], losses


def test_segmentation_cnn_structure() -> None:
    model = SegmentationCNN(7, 4, depth=3, embedding_size=16, pool_sizes=[5, 2], kernel_size=5)
    assert model.cell_px == 10
    assert len(model.encoders) == 2
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 2 * 3 + 1  # depth convs per encoder, then the 1×1 head
    assert all(c.out_channels == 16 for c in convs[:-1])  # constant width
    assert all(c.kernel_size == (5, 5) for c in convs[:-1])
    assert convs[-1].kernel_size == (1, 1)
    pools = [m for m in model.modules() if isinstance(m, nn.MaxPool2d)]
    assert [p.kernel_size for p in pools] == [5, 2]


def test_segmentation_cnn_without_pooling_is_per_pixel() -> None:
    model = build_model("SegmentationCNN", 3, 1)
    assert model.pool_sizes == ()
    assert model(torch.randn(2, 3, 3, 3)).shape == (2, N_CLASSES, 3, 3)


@pytest.mark.parametrize(
    ("cell_px", "n_encoders", "cells_h", "cells_w"),
    [(10, 3, 4, 4), (40, 3, 1, 1), (40, 4, 5, 1), (1, 3, 3, 5), (7, 2, 3, 1)],
)
def test_unet_handles_any_input_size(
    cell_px: int, n_encoders: int, cells_h: int, cells_w: int
) -> None:
    # e.g. H = 40 and 200: odd maps on the way down are cropped/padded back on the way up.
    model = UNet(3, N_CLASSES, n_encoders=n_encoders, embedding_size=4, cell_px=cell_px)
    x = torch.randn(2, 3, cells_h * cell_px, cells_w * cell_px)
    assert model(x).shape == (2, N_CLASSES, cells_h, cells_w)


def test_unet_output_is_the_cell_average_of_pixel_logits() -> None:
    torch.manual_seed(0)
    model = UNet(3, N_CLASSES, n_encoders=2, embedding_size=4, cell_px=5).eval()
    x = torch.randn(1, 3, 10, 10)
    with torch.no_grad():
        pixel_logits = model.head(_unet_features(model, x))
        out = model(x)
    expected = pixel_logits[:, :, :5, 5:].mean(dim=(-2, -1))
    torch.testing.assert_close(out[:, :, 0, 1], expected)


def _unet_features(model: UNet, x: torch.Tensor) -> torch.Tensor:
    x = model.stem(x)
    skips = [x]
    for down in model.downs:
        x = down(x)
        skips.append(x)
    skips.pop()
    for up in model.ups:
        x = up(x, skips.pop())
    return x


@pytest.mark.parametrize(
    "model",
    [
        SegmentationCNN(3, 4, pool_sizes=[5, 2], embedding_size=4),
        UNet(3, 4, embedding_size=4, cell_px=10),
    ],
    ids=["SegmentationCNN", "UNet"],
)
def test_input_not_multiple_of_cell_size_is_rejected(model: nn.Module) -> None:
    with pytest.raises(ValueError, match="not a multiple of the label cell size"):
        model(torch.randn(1, 3, 15, 20))


def test_small_model_arguments_are_validated() -> None:
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        SegmentationCNN(3, 4, kernel_size=4)
    with pytest.raises(ValueError, match="depth must be a positive integer"):
        SegmentationCNN(3, 4, depth=0)
    with pytest.raises(ValueError, match="pool size"):
        SegmentationCNN(3, 4, pool_sizes=[5, 0])
    with pytest.raises(ValueError, match="n_encoders must be a positive integer"):
        UNet(3, 4, n_encoders=0)
    with pytest.raises(ValueError, match="cell_px must be a positive integer"):
        UNet(3, 4, cell_px=0)


# --- registry ---------------------------------------------------------------------------


def test_model_types() -> None:
    expected = {"SegmentationCNN", "FCNResnetTransfer", "UNet", "TemporalFusion", "SMP", "Galileo"}
    assert set(MODEL_TYPES) == expected


def test_unknown_model_type_lists_known_names() -> None:
    with pytest.raises(ValueError, match="unknown model_type 'ResNet'") as error:
        build_model("ResNet", 3, CELL_PX)
    for name in MODEL_TYPES:
        assert name in str(error.value)
    with pytest.raises(ValueError, match="known model types"):
        model_hparams("ResNet")


@pytest.mark.parametrize(
    ("cell_px", "expected"),
    [
        (50, [5, 5, 2]),
        (10, [5, 2]),
        (4, [2, 2]),
        (1, []),
        (8, [2, 2, 2]),
        (12, [3, 2, 2]),
        (49, [7, 7]),
        (13, [13]),
    ],
)
def test_default_pool_sizes(cell_px: int, expected: list[int]) -> None:
    assert default_pool_sizes(cell_px) == expected
    assert math.prod(expected) == cell_px


def test_default_pool_sizes_rejects_non_positive() -> None:
    with pytest.raises(ValueError, match="cell_px must be a positive integer"):
        default_pool_sizes(0)


def test_registry_derives_pool_sizes_from_cell_px() -> None:
    model = build_model("SegmentationCNN", 3, 10)
    assert isinstance(model, SegmentationCNN)
    assert model.pool_sizes == (5, 2)
    model = build_model("SegmentationCNN", 3, 10, pool_sizes=[2, 5])
    assert model.pool_sizes == (2, 5)


def test_registry_rejects_pool_sizes_not_multiplying_to_cell_px() -> None:
    with pytest.raises(ValueError, match=r"multiply to 25.*cell_px=50"):
        build_model("SegmentationCNN", 3, 50, pool_sizes=[5, 5])


def test_model_hparams_and_defaults() -> None:
    assert model_hparams("SegmentationCNN") == {
        "depth",
        "embedding_size",
        "pool_sizes",
        "kernel_size",
    }
    assert model_hparams("UNet") == {"n_encoders", "embedding_size"}
    assert model_hparams("FCNResnetTransfer") == {
        "pretrained",
        "weights_path",
        "freeze_backbone",
    }
    cnn = build_model("SegmentationCNN", 3, 50)
    convs = [m for m in cnn.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 3 * 2 + 1 and convs[0].out_channels == 64
    assert convs[0].kernel_size == (3, 3)
    unet = build_model("UNet", 3, 50)
    assert isinstance(unet, UNet)
    assert len(unet.downs) == 2 and unet.stem[0].out_channels == 32
    assert unet.cell_px == 50


def test_registry_rejects_unknown_hparams_and_filters_shared_ones() -> None:
    with pytest.raises(ValueError, match=r"UNet does not take hyper-parameter\(s\) \['depth'\]"):
        build_model("UNet", 3, CELL_PX, depth=3)
    shared = {"depth": 1, "embedding_size": 4, "n_encoders": 1, "freeze_backbone": True}
    for model_type in SMALL_MODELS:
        accepted = model_hparams(model_type)
        model = build_model(
            model_type, 3, CELL_PX, **{k: v for k, v in shared.items() if k in accepted}
        )
        assert model(torch.randn(2, 3, CELL_PX, CELL_PX)).shape == (2, N_CLASSES, 1, 1)


def test_registry_validates_sizes() -> None:
    with pytest.raises(ValueError, match="in_channels must be a positive integer"):
        build_model("UNet", 0, CELL_PX)
    with pytest.raises(ValueError, match="cell_px must be a positive integer"):
        build_model("SegmentationCNN", 3, 0)


def test_registry_out_channels() -> None:
    model = build_model("SegmentationCNN", 3, CELL_PX, out_channels=7)
    assert model(torch.randn(1, 3, CELL_PX, CELL_PX)).shape == (1, 7, 1, 1)


# --- FCNResnetTransfer: cheap checks (no network built) --------------------------------------


def test_adapt_first_conv_weight() -> None:
    weight = torch.randn(8, 3, 7, 7)
    torch.testing.assert_close(adapt_first_conv_weight(weight, 3), weight)
    torch.testing.assert_close(adapt_first_conv_weight(weight, 1), weight.sum(1, keepdim=True))
    for in_channels in (2, 4, 5, 99):
        adapted = adapt_first_conv_weight(weight, in_channels)
        assert adapted.shape == (8, in_channels, 7, 7)
        for i in range(in_channels):
            torch.testing.assert_close(adapted[:, i], weight[:, i % 3] * 3 / in_channels)
    with pytest.raises(ValueError, match="RGB conv weights"):
        adapt_first_conv_weight(torch.randn(8, 4, 7, 7), 6)


def test_frozen_block_names() -> None:
    assert BACKBONE_BLOCKS == ("bn1", "layer1", "layer2", "layer3", "layer4")
    assert frozen_block_names(False) == ()
    assert frozen_block_names(True) == BACKBONE_BLOCKS
    assert frozen_block_names(1.0) == BACKBONE_BLOCKS
    assert frozen_block_names(0.2) == ("bn1",)
    assert frozen_block_names(0.1) == ("bn1",)
    assert frozen_block_names(0.4) == ("bn1", "layer1")
    assert frozen_block_names(0.5) == ("bn1", "layer1", "layer2")
    assert frozen_block_names(0.6) == ("bn1", "layer1", "layer2")


@pytest.mark.parametrize("freeze_backbone", [0.0, -0.5, 1.5, "yes", None])
def test_invalid_freeze_backbone(freeze_backbone: object) -> None:
    with pytest.raises(ValueError, match="freeze_backbone must be"):
        FCNResnetTransfer(3, 4, CELL_PX, freeze_backbone=freeze_backbone)  # type: ignore[arg-type]


def test_fcn_argument_validation() -> None:
    with pytest.raises(ValueError, match="weights_path is only read when pretrained=True"):
        FCNResnetTransfer(3, 4, CELL_PX, weights_path="weights.pth")
    with pytest.raises(ValueError, match="cell_px must be a positive integer"):
        FCNResnetTransfer(3, 4, 0)
    with pytest.raises(ValueError, match="in_channels must be a positive integer"):
        FCNResnetTransfer(0, 4, CELL_PX)


def test_missing_weights_path_gives_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "no_such_weights.pth"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))) as error:
        FCNResnetTransfer(3, 4, CELL_PX, pretrained=True, weights_path=missing)
    assert "weights_path" in str(error.value)
    assert "Nothing is downloaded" in str(error.value)


def test_missing_hub_cache_weights_gives_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    expected = tmp_path / "hub" / "checkpoints" / "fcn_resnet101_coco-7ecb50ca.pth"
    assert default_weights_file() == expected
    with pytest.raises(FileNotFoundError, match=re.escape(str(expected))) as error:
        FCNResnetTransfer(3, 4, CELL_PX, pretrained=True)
    assert "torch hub cache" in str(error.value)
    assert "weights_path" in str(error.value)


def test_malformed_weights_file_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "not_fcn.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, path)
    with pytest.raises(ValueError, match="is not an FCN-ResNet101 state dict"):
        FCNResnetTransfer(3, 4, CELL_PX, pretrained=True, weights_path=path)
    path.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="could not read"):
        FCNResnetTransfer(3, 4, CELL_PX, pretrained=True, weights_path=path)


# --- FCNResnetTransfer: built networks (module-scoped, tiny inputs) ---------------------------


@pytest.fixture(scope="module")
def reference_state(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Path, dict[str, torch.Tensor]]]:
    """A stand-in for the COCO checkpoint: same keys (aux classifier, 21 classes), random values."""
    torch.manual_seed(1)
    reference = fcn_resnet101(weights=None, weights_backbone=None, aux_loss=True)
    state = reference.state_dict()
    del reference
    for key, value in state.items():  # make BatchNorm entries distinguishable from the defaults
        if key.endswith(("running_var", "bn1.weight")) or re.search(r"bn\d\.weight$", key):
            value.uniform_(0.5, 1.5)
        elif key.endswith(("running_mean", "bias")):
            value.normal_(0.0, 0.1)
    path = tmp_path_factory.mktemp("fcn_weights") / "fcn_resnet101_coco-7ecb50ca.pth"
    torch.save(state, path)
    yield path, state
    path.unlink()  # ~200 MB: do not leave it in the pytest temp folders


@pytest.fixture(scope="module")
def fcn_rgb(
    reference_state: tuple[Path, dict[str, torch.Tensor]],
    tmp_path_factory: pytest.TempPathFactory,
) -> FCNResnetTransfer:
    """3 channels, pretrained weights found in the (temporary) torch hub cache."""
    path, _ = reference_state
    torch_home = tmp_path_factory.mktemp("torch_home")
    checkpoints = torch_home / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / path.name).symlink_to(path)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TORCH_HOME", str(torch_home))
        return FCNResnetTransfer(REDUCED_CHANNELS, N_CLASSES, CELL_PX, pretrained=True)


@pytest.fixture(scope="module")
def fcn_6_frozen(reference_state: tuple[Path, dict[str, torch.Tensor]]) -> FCNResnetTransfer:
    path, _ = reference_state
    return FCNResnetTransfer(
        6, N_CLASSES, CELL_PX, pretrained=True, weights_path=path, freeze_backbone=True
    )


@pytest.fixture(scope="module")
def fcn_9_partly_frozen(
    reference_state: tuple[Path, dict[str, torch.Tensor]],
) -> FCNResnetTransfer:
    path, _ = reference_state
    return FCNResnetTransfer(
        9, N_CLASSES, CELL_PX, pretrained=True, weights_path=str(path), freeze_backbone=0.4
    )


@pytest.fixture(scope="module")
def fcn_full_channels() -> FCNResnetTransfer:
    torch.manual_seed(0)
    return FCNResnetTransfer(FULL_CHANNELS, N_CLASSES, CELL_PX)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("fixture", "in_channels"), [("fcn_full_channels", FULL_CHANNELS), ("fcn_rgb", 3)]
)
def test_fcn_outputs_label_grid(
    request: pytest.FixtureRequest, fixture: str, in_channels: int
) -> None:
    model = request.getfixturevalue(fixture).eval()
    with torch.no_grad():
        _assert_grid_outputs(model, in_channels, CELL_PX, batch=1)
        with pytest.raises(ValueError, match="not a multiple of the label cell size"):
            model(torch.randn(1, in_channels, 12, 10))


@pytest.mark.slow
def test_fcn_rgb_loads_pretrained_weights_unchanged(
    fcn_rgb: FCNResnetTransfer, reference_state: tuple[Path, dict[str, torch.Tensor]]
) -> None:
    _, reference = reference_state
    assert fcn_rgb.model.aux_classifier is None
    loaded = fcn_rgb.model.state_dict()
    for key, value in loaded.items():
        if key.startswith("classifier.4."):  # 21 VOC classes in the checkpoint, 4 here
            assert value.shape[0] == N_CLASSES
            assert value.shape != reference[key].shape
        else:
            assert torch.equal(value, reference[key]), key
    assert not any(key.startswith("aux_classifier.") for key in loaded)
    assert fcn_rgb.frozen_blocks == ()
    assert all(p.requires_grad for p in fcn_rgb.parameters())


@pytest.mark.slow
@pytest.mark.parametrize(
    ("fixture", "in_channels"), [("fcn_6_frozen", 6), ("fcn_9_partly_frozen", 9)]
)
def test_fcn_first_conv_adaptation_preserves_rgb_response(
    request: pytest.FixtureRequest,
    reference_state: tuple[Path, dict[str, torch.Tensor]],
    fixture: str,
    in_channels: int,
) -> None:
    _, reference = reference_state
    model: FCNResnetTransfer = request.getfixturevalue(fixture)
    conv1 = model.model.backbone.conv1
    assert conv1.in_channels == in_channels
    torch.manual_seed(2)
    rgb = torch.randn(2, 3, 16, 16)
    repeated = rgb.repeat(1, in_channels // 3, 1, 1)  # channel i is RGB channel i mod 3
    with torch.no_grad():
        expected = F.conv2d(rgb, reference["backbone.conv1.weight"], stride=2, padding=3)
        actual = conv1(repeated)
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)
    # Everything after conv1 is the checkpoint's.
    torch.testing.assert_close(
        model.model.backbone.layer1[0].conv1.weight, reference["backbone.layer1.0.conv1.weight"]
    )


@pytest.mark.slow
def test_fcn_freeze_backbone_true(fcn_6_frozen: FCNResnetTransfer) -> None:
    backbone = fcn_6_frozen.model.backbone
    assert fcn_6_frozen.frozen_blocks == BACKBONE_BLOCKS
    for name, parameter in backbone.named_parameters():
        assert parameter.requires_grad == (name == "conv1.weight"), name
    assert all(p.requires_grad for p in fcn_6_frozen.model.classifier.parameters())


@pytest.mark.slow
def test_fcn_freeze_backbone_fraction(fcn_9_partly_frozen: FCNResnetTransfer) -> None:
    # 0.4 of the 5 blocks (bn1, layer1, layer2, layer3, layer4) → bn1 and layer1.
    backbone = fcn_9_partly_frozen.model.backbone
    assert fcn_9_partly_frozen.frozen_blocks == ("bn1", "layer1")
    for name, parameter in backbone.named_parameters():
        frozen = name.startswith(("bn1.", "layer1."))
        assert parameter.requires_grad != frozen, name
    assert backbone.conv1.weight.requires_grad
    assert all(p.requires_grad for p in fcn_9_partly_frozen.model.classifier.parameters())


@pytest.mark.slow
def test_fcn_training_lowers_loss() -> None:
    # cell 8, 2×2 cells: the 16×16 input keeps a 2×2 map at FCN's output stride of 8.
    torch.manual_seed(0)
    model = build_model("FCNResnetTransfer", 3, 8)
    assert isinstance(model, FCNResnetTransfer)
    x = torch.randn(2, 3, 16, 16)
    y = torch.randint(0, N_CLASSES, (2, 2, 2))
    losses = train_losses(model, x, y, lr=1e-3, steps=10)
    assert math.isfinite(losses[-1])
    assert losses[-1] < 0.5 * losses[0], losses
