"""Galileo: the encoder against the authors' reference implementation, the weights folder's
errors, the DSE channels as Galileo's inputs, freezing, and the command line.

The weights and the reference come from the folder that `ESD_GALILEO_DIR` names (`.ci/run`
points it at ../shared/models/galileo-nano); the reference is imported here, in tests only.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from src.esd_data.cache import prepare_dataset
from src.esd_data.manifest import Manifest
from src.esd_data.preprocessing import PreprocessConfig
from src.models.galileo import GalileoSegmentation
from src.models.galileo_encoder import GalileoEncoder, GalileoInputs
from src.models.galileo_weights import load_pretrained_encoder, to_encoder_state
from src.models.pretrained import read_state_dict
from src.training.checkpoints import load_module
from src.training.config import ESDConfig
from src.training.resume import saved_run_config
from tests.test_train_cli import train_main  # noqa: F401 (the fixture, shared)

GALILEO_VARIABLE = "ESD_GALILEO_DIR"
# The reference's band order and groups (its README), written out here independently.
SPACE_TIME_BANDS = [
    "VV",
    "VH",
    "B2",
    "B3",
    "B4",
    "B5",
    "B6",
    "B7",
    "B8",
    "B8A",
    "B11",
    "B12",
    "NDVI",
]
close = functools.partial(torch.testing.assert_close, atol=1e-5, rtol=1e-4)
"""float32 computations against float64 ones."""
GROUPS = ["S1", "S2_RGB", "S2_Red_Edge", "S2_NIR_10m", "S2_NIR_20m", "S2_SWIR", "NDVI"]


@pytest.fixture(scope="session")
def galileo_dir() -> Path:
    value = os.environ.get(GALILEO_VARIABLE)
    if not value:
        pytest.skip(f"{GALILEO_VARIABLE} is not set: it must name the Galileo nano folder")
    folder = Path(value)
    if not (folder / "encoder.pt").is_file():
        pytest.skip(f"{GALILEO_VARIABLE}={folder} holds no encoder.pt")
    return folder


@pytest.fixture(scope="module")
def reference(galileo_dir: Path):
    path = galileo_dir / "reference" / "single_file_galileo.py"
    spec = importlib.util.spec_from_file_location("reference_galileo", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.Encoder.load_from_folder(galileo_dir, torch.device("cpu")).eval()


@pytest.fixture(scope="module")
def encoder(galileo_dir: Path) -> GalileoEncoder:
    model = GalileoEncoder()
    load_pretrained_encoder(model, galileo_dir)
    return model.eval()


def _random_batch(size: int, patch: int, dates: int, generator: torch.Generator):
    """Reference-layout inputs with random values and random per-group masks (one group
    missing everywhere), the masks at pixel resolution constant over each patch."""
    batch, h = 2, size // patch

    def rand(*shape):
        return torch.randn(*shape, generator=generator)

    def masks(*shape):
        return (torch.rand(*shape, generator=generator) < 0.5).float()

    token_masks = [
        masks(batch, h, h, dates, 7),
        masks(batch, h, h, 3),
        masks(batch, dates, 3),
        masks(batch, 4),
    ]
    token_masks[0][..., 2] = 1.0
    return (
        [
            rand(batch, size, size, dates, 13),
            rand(batch, size, size, 16),
            rand(batch, dates, 6),
            rand(batch, 18),
        ],
        token_masks,
        torch.randint(0, 12, (batch, dates), generator=generator),
    )


@pytest.mark.parametrize(
    ("size", "patch", "exit_after"), [(16, 4, None), (16, 8, None), (24, 3, None), (24, 6, 2)]
)
def test_encoder_matches_the_reference(reference, encoder, size, patch, exit_after):
    values, masks, months = _random_batch(size, patch, 3, torch.Generator().manual_seed(size))

    def pixels(mask):  # the reference reads masks at pixel resolution
        return mask.repeat_interleave(patch, 1).repeat_interleave(patch, 2)

    with torch.no_grad():
        expected = reference(
            *values,
            pixels(masks[0]),
            pixels(masks[1]),
            *masks[2:],
            months,
            patch_size=patch,
            input_resolution_m=20,
            exit_after=exit_after,
        )
        space_time, space, time, static = values
        ours = encoder(
            GalileoInputs(
                space_time.permute(0, 3, 4, 1, 2),
                space.permute(0, 3, 1, 2),
                time,
                static,
                *(m.bool() for m in masks),
                months,
            ),
            patch_size=patch,
            input_resolution_m=20,
            exit_after=exit_after,
        )
    for kind, reference_tokens in zip(("s_t", "sp", "t", "st"), expected[:4], strict=True):
        assert ours.tokens[kind].shape == reference_tokens.shape
        torch.testing.assert_close(ours.tokens[kind], reference_tokens, atol=5e-5, rtol=1e-4)
    # present tokens differ from each other: the comparison is not one of constants
    assert ours.tokens["s_t"][~ours.masks["s_t"]].std(dim=0).mean() > 0.01


def test_a_fresh_encoder_has_the_releases_fixed_encodings(galileo_dir):
    release = to_encoder_state(read_state_dict(galileo_dir / "encoder.pt"))
    fresh = GalileoEncoder().state_dict()
    for key in ("pos_embed", "month_embed.weight"):
        torch.testing.assert_close(fresh[key], release[key], atol=1e-5, rtol=0)


def _weights_copy(galileo_dir: Path, folder: Path) -> Path:
    folder.mkdir()
    for name in ("config.json", "encoder.pt", "normalization.json"):
        shutil.copyfile(galileo_dir / name, folder / name)
    return folder


def _one_line_error(folder: Path) -> str:
    with pytest.raises(ValueError) as error:
        load_pretrained_encoder(GalileoEncoder(), folder)
    message = str(error.value)
    assert "\n" not in message
    return message


def test_bad_weights_folders_give_one_line_errors_naming_the_file(galileo_dir, tmp_path):
    folder = _weights_copy(galileo_dir, tmp_path / "weights")
    weights = folder / "encoder.pt"
    weights.write_bytes(weights.read_bytes()[:100_000])  # truncated
    assert str(weights) in _one_line_error(folder)

    state = read_state_dict(galileo_dir / "encoder.pt")
    state["blocks.1.mlp.fc1.weight"] = state["blocks.1.mlp.fc1.weight"][:256]
    torch.save(state, weights)
    message = _one_line_error(folder)
    assert str(weights) in message and "blocks.1.mlp.fc1.weight" in message

    del state["blocks.1.mlp.fc1.weight"]
    torch.save(state, weights)
    assert "missing blocks.1.mlp.fc1.weight" in _one_line_error(folder)

    config = json.loads((galileo_dir / "config.json").read_text())
    config["model"]["encoder"]["embedding_size"] = 192
    (folder / "config.json").write_text(json.dumps(config))
    assert str(folder / "config.json") in _one_line_error(folder)

    (folder / "encoder.pt").unlink()
    message = _one_line_error(folder)
    assert str(folder) in message and "encoder.pt" in message
    # the command line says so before any data is prepared
    with pytest.raises(ValueError, match=r"lacks encoder\.pt"):
        ESDConfig(model_type="Galileo", pretrained=True, weights_path=folder)


S2 = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12"]


def _dse_channels(s2_bands: list[str] = S2) -> list[str]:
    """Two Sentinel-1 dates, one Sentinel-2 date (another day), one VIIRS date (the S1's
    first) with its maximum projection, one Landsat 8 date."""
    return [
        "viirs/2020-08-04/DNB",
        "viirs/max/DNB",
        *(f"sentinel1/{d}/{b}" for d in ("2020-07-23", "2020-08-04") for b in ("VV", "VH")),
        *(f"sentinel2/2020-08-11/{b}" for b in s2_bands),
        "landsat8/2020-07-29/B1",
        "landsat8/2020-07-29/B2",
    ]


def _standardised(channels, generator, size: int = 10):
    physical = torch.rand(2, len(channels), size, size, generator=generator, dtype=torch.float64)
    for i, name in enumerate(channels):
        if name.startswith("sentinel1"):
            physical[:, i] = -25 + 20 * physical[:, i]  # dB
        elif name.startswith("sentinel2"):
            physical[:, i] = 5000 * physical[:, i]
        else:
            physical[:, i] = 50 * physical[:, i]
    mean = torch.rand(len(channels), generator=generator, dtype=torch.float64) * 100
    std = 1 + torch.rand(len(channels), generator=generator, dtype=torch.float64) * 10
    x = (physical - mean[:, None, None]) / std[:, None, None]
    return physical, x.float(), (mean.tolist(), std.tolist())


def test_dse_channels_become_galileos_normalised_inputs(galileo_dir):
    channels = _dse_channels()
    physical, x, stats = _standardised(channels, torch.Generator().manual_seed(1))

    def pretrained(resolution_m: int) -> GalileoSegmentation:
        return GalileoSegmentation(channels, 4, cell_px=10, input_stats=stats, pretrained=True,
                                   weights_path=galileo_dir, patch_size=5,
                                   resolution_m=resolution_m, time="acquisition")  # fmt: skip

    model = pretrained(50)
    inputs = model.encoder_inputs(x)
    norm = json.loads((galileo_dir / "normalization.json").read_text())
    dates = ["2020-07-23", "2020-08-04", "2020-08-11"]
    assert inputs.months[0].tolist() == [6, 7, 7]

    def expected(channel: str, band: str) -> torch.Tensor:
        i = SPACE_TIME_BANDS.index(band)
        mean, std = norm["13"]["mean"][i], norm["13"]["std"][i]
        return (physical[:, channels.index(channel)] - (mean - 2 * std)) / (4 * std)

    for t, date in enumerate(dates[:2]):
        for band in ("VV", "VH"):
            got = inputs.space_time[:, t, SPACE_TIME_BANDS.index(band)].double()
            close(got, expected(f"sentinel1/{date}/{band}", band))
    for ours, galileo in (("B02", "B2"), ("B08", "B8"), ("B8A", "B8A"), ("B12", "B12")):
        got = inputs.space_time[:, 2, SPACE_TIME_BANDS.index(galileo)].double()
        close(got, expected(f"sentinel2/2020-08-11/{ours}", galileo))
    nir, red = (physical[:, channels.index(f"sentinel2/2020-08-11/{b}")] for b in ("B08", "B04"))
    got = inputs.space_time[:, 2, SPACE_TIME_BANDS.index("NDVI")].double()
    close(got, (nir - red) / (nir + red))
    # at 100 m (2×2 pixels a token), NDVI is each pixel's, averaged, as in pretraining at 10 m
    coarse = pretrained(100)
    per_pixel = torch.nn.functional.avg_pool2d(((nir - red) / (nir + red))[:, None], 2)[:, 0]
    got = coarse.encoder_inputs(x).space_time[:, 2, SPACE_TIME_BANDS.index("NDVI")].double()
    close(got, per_pixel)
    # each sensor's groups are missing at the dates it has no image
    missing = inputs.space_time_mask[0, 0, 0]  # (T, G)
    s2_groups = [GROUPS.index(g) for g in GROUPS[1:]]
    assert missing[:2, 0].logical_not().all() and missing[2, 0]
    assert missing[:2, s2_groups].all() and missing[2, s2_groups].logical_not().all()
    # VIIRS: one value per date, the mean radiance, only on its date
    v = 5  # avg_rad among the time bands
    mean, std = norm["6"]["mean"][v], norm["6"]["std"][v]
    radiance = physical[:, channels.index("viirs/2020-08-04/DNB")].mean(dim=(1, 2))
    close(inputs.time[:, 1, v].double(), (radiance - (mean - 2 * std)) / (4 * std))
    assert inputs.time_mask[0, :, 2].tolist() == [True, False, True]
    assert inputs.time_mask[..., :2].all() and inputs.space_mask.all() and inputs.static_mask.all()
    # B01 and B09 are not Galileo bands: the model ignores them
    other = x.clone()
    other[
        :, [channels.index("sentinel2/2020-08-11/B01"), channels.index("sentinel2/2020-08-11/B09")]
    ] += 3
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(other), model(x))
        changed = x.clone()
        changed[:, channels.index("sentinel2/2020-08-11/B05")] += 3
        assert not torch.allclose(model(changed), model(x))


def test_monthly_time_averages_each_sensors_images_of_a_month(galileo_dir):
    """Two months: Sentinel-1 once in each, Sentinel-2 twice in August (never in July), VIIRS
    once in each; the encoder sees one step per month, each sensor's images of it averaged."""
    s2 = ["B02", "B03", "B04", "B08"]
    channels = [
        "viirs/2020-07-30/DNB",
        "viirs/2020-08-04/DNB",
        *(f"sentinel1/{d}/{b}" for d in ("2020-07-23", "2020-08-04") for b in ("VV", "VH")),
        *(f"sentinel2/{d}/{b}" for d in ("2020-08-11", "2020-08-16") for b in s2),
    ]
    physical, x, stats = _standardised(channels, torch.Generator().manual_seed(3))
    model = GalileoSegmentation(
        channels, 4, cell_px=10, input_stats=stats, pretrained=True, weights_path=galileo_dir,
        patch_size=5, resolution_m=50, time="monthly",
    )  # fmt: skip
    inputs = model.encoder_inputs(x)
    norm = json.loads((galileo_dir / "normalization.json").read_text())
    assert inputs.months[0].tolist() == [6, 7] and inputs.space_time.shape[1] == 2

    def normalised(values: torch.Tensor, band: str) -> torch.Tensor:
        i = SPACE_TIME_BANDS.index(band)
        mean, std = norm["13"]["mean"][i], norm["13"]["std"][i]
        return (values - (mean - 2 * std)) / (4 * std)

    def image(name: str) -> torch.Tensor:
        return physical[:, channels.index(name)]

    for t, date in enumerate(("2020-07-23", "2020-08-04")):
        got = inputs.space_time[:, t, SPACE_TIME_BANDS.index("VH")].double()
        close(got, normalised(image(f"sentinel1/{date}/VH"), "VH"))
    composite = {
        b: (image(f"sentinel2/2020-08-11/{b}") + image(f"sentinel2/2020-08-16/{b}")) / 2 for b in s2
    }
    close(inputs.space_time[:, 1, SPACE_TIME_BANDS.index("B2")].double(),
          normalised(composite["B02"], "B2"))  # fmt: skip
    nir, red = composite["B08"], composite["B04"]
    close(inputs.space_time[:, 1, SPACE_TIME_BANDS.index("NDVI")].double(),
          (nir - red) / (nir + red))  # fmt: skip
    missing = inputs.space_time_mask[0, 0, 0]  # (months, groups)
    assert not missing[:, GROUPS.index("S1")].any()
    assert missing[0, GROUPS.index("S2_RGB")] and not missing[1, GROUPS.index("S2_RGB")]
    assert missing[:, GROUPS.index("S2_Red_Edge")].all()  # B05–B07 not selected
    assert not inputs.time_mask[0, :, 2].any()
    v = 5  # avg_rad among the time bands
    mean, std = norm["6"]["mean"][v], norm["6"]["std"][v]
    for t, date in enumerate(("2020-07-30", "2020-08-04")):
        radiance = image(f"viirs/{date}/DNB").mean(dim=(1, 2))
        close(inputs.time[:, t, v].double(), (radiance - (mean - 2 * std)) / (4 * std))
    # fifteen acquisitions in two months are two steps, within pretraining's twelve
    many = [f"sentinel1/2020-0{7 + d // 10}-{1 + d % 10 * 3:02d}/VV" for d in range(15)]
    assert len(GalileoSegmentation(many, 4, cell_px=10, time="monthly").steps) == 2
    assert len(GalileoSegmentation(many, 4, cell_px=10, time="acquisition").steps) == 15


def test_a_run_saved_before_galileo_time_resumes_on_its_acquisition_timeline(galileo_dir):
    """A checkpoint without `galileo_time` was trained with one step per date: resuming it
    must rebuild that model (its normalisation buffers have one row per date)."""
    saved = {"model_type": "Galileo", "galileo_patch_size": 5}
    config = saved_run_config({"hyper_parameters": {"run_config": saved}}, Path("old.ckpt"))
    assert config["galileo_time"] == "acquisition"
    assert ESDConfig().galileo_time == "monthly"  # new runs: as pretrained


def test_a_band_outside_the_selection_masks_its_group():
    channels = _dse_channels([b for b in S2 if b != "B06"])
    model = GalileoSegmentation(channels, 4, cell_px=10, patch_size=5, resolution_m=50)
    _, x, _ = _standardised(channels, torch.Generator().manual_seed(2))
    inputs = model.encoder_inputs(x)
    assert inputs.space_time_mask[..., GROUPS.index("S2_Red_Edge")].all()
    assert not inputs.space_time_mask[..., 2, GROUPS.index("S2_RGB")].any()
    assert not any(
        p.requires_grad for p in model.encoder.space_time_embed["S2_Red_Edge"].parameters()
    )
    assert model(x).shape == (2, 4, 1, 1)


@pytest.mark.parametrize("freeze", [0.0, 0.5, 1.0])
def test_every_trainable_parameter_learns_and_frozen_ones_do_not(freeze):
    # DDP requires every trainable parameter to get a gradient in each step.
    channels = _dse_channels()
    model = GalileoSegmentation(
        channels, 4, cell_px=10, freeze_backbone=freeze, patch_size=5, resolution_m=50
    )
    _, x, _ = _standardised(channels, torch.Generator().manual_seed(3))
    model(x).sum().backward()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable.values())
    encoder = {n for n in trainable if n.startswith("encoder.")}
    blocks = {n.split(".")[2] for n in encoder if n.startswith("encoder.blocks.")}
    assert blocks == {0.0: {"0", "1", "2", "3"}, 0.5: {"2", "3"}, 1.0: set()}[freeze]
    assert (len(encoder) == 0) == (freeze == 1.0)
    assert any(n.startswith("head.") for n in trainable)


@pytest.mark.parametrize("cells", [1, 2, 4])
def test_every_subtile_size(cells):
    channels = _dse_channels()
    model = GalileoSegmentation(channels, 4, cell_px=10, patch_size=5, resolution_m=50).eval()
    x = torch.randn(1, len(channels), 10 * cells, 10 * cells)
    assert model(x).shape == (1, 4, cells, cells)


def test_galileo_refuses_a_selection_without_a_band_it_reads():
    """Validity channels, or B01/B09, alone leave the encoder nothing: refused, not trained."""
    for channels in (
        ["sentinel2/2020-08-11/valid", "sentinel1/2020-08-04/valid", "viirs/2020-08-04/DNB"],
        ["sentinel2/2020-08-11/B01", "sentinel2/2020-08-11/B09"],
        ["viirs/2020-08-04/DNB", "landsat8/2020-07-29/B1"],
    ):
        with pytest.raises(ValueError, match="Galileo needs a Sentinel-1 or Sentinel-2 band"):
            GalileoSegmentation(channels, 4, cell_px=10)
    GalileoSegmentation(["sentinel1/2020-08-04/VH", "sentinel2/2020-08-11/valid"], 4, cell_px=10)


def test_resolution_and_patch_must_tile_a_label_cell():
    with pytest.raises(ValueError, match="multiple of 50"):
        GalileoSegmentation(_dse_channels(), 4, cell_px=10, resolution_m=75)
    with pytest.raises(ValueError, match="divisor of 500"):
        GalileoSegmentation(_dse_channels(), 4, cell_px=10, resolution_m=100, patch_size=3)


NO_DATA_FILE = "L2A_20200826_B04.tif"
"""The Sentinel-2 raster of every tile of `physical_processed` with no data in its corner."""


@pytest.fixture(scope="module")
def physical_processed(synthetic_raw: Path, tmp_path_factory) -> Path:
    """`synthetic_raw` prepared with the physical-units recipe (4 px, 125 m per label cell)
    and validity channels, every tile's Sentinel-2 B04 of 2020-08-26 without data (0) in its
    first 8×8 pixels (a subtile of 2×2 cells)."""
    raw = Path(shutil.copytree(synthetic_raw, tmp_path_factory.mktemp("no_data") / "raw"))
    for path in raw.rglob(NO_DATA_FILE):
        values = tifffile.imread(path)
        values[:8, :8] = 0
        tifffile.imwrite(path, values)
    processed = tmp_path_factory.mktemp("physical")
    prepare_dataset(
        raw,
        processed,
        tile_size_gt=4,
        val_fraction=0.25,
        workers=1,
        preprocessing=PreprocessConfig(recipe="physical", valid_masks=True),
    )
    return processed


@pytest.mark.slow
def test_galileo_trains_frozen_and_unfrozen_and_evaluates_without_its_weights(
    galileo_dir,
    physical_processed,
    synthetic_processed,
    tmp_path,
    train_main,  # noqa: F811
):
    from scripts.evaluate import main as evaluate_main

    weights = _weights_copy(galileo_dir, tmp_path / "weights")
    release = to_encoder_state(read_state_dict(weights / "encoder.pt"))
    key = "blocks.3.attn.qkv.weight"
    # two-cell subtiles, two training batches and one validation batch: the flow, not a score
    flags = [
        "--model_type", "Galileo", "--raw_dir", "none", "--wandb_mode", "disabled",
        "--tile_size_gt", "2", "--galileo_resolution_m", "250", "--galileo_patch_size", "2",
        "--limit_train_batches", "2", "--limit_val_batches", "1",
        "--pretrained", "--weights_path", str(weights),
    ]  # fmt: skip
    trained = {}
    for freeze, time in (("1", "monthly"), ("0", "acquisition")):
        run = tmp_path / freeze
        code, out, err = train_main(
            run, *flags, "--processed_dir", str(physical_processed), "--freeze_backbone", freeze,
            "--galileo_time", time,
        )  # fmt: skip
        assert code == 0, err[-3000:]
        assert "Galileo reads the" not in out  # it masks them
        checkpoint = torch.load(run / "checkpoints/Galileo/cli/last.ckpt", weights_only=True)
        trained[freeze] = checkpoint["state_dict"]
    assert torch.equal(trained["1"][f"model.encoder.{key}"], release[key])
    assert not torch.allclose(trained["0"][f"model.encoder.{key}"], release[key])
    # the validity channels reach the model: the values filled in the no-data corner of the
    # 26th change nothing, a measured value of another date does
    module = load_module(tmp_path / "1/checkpoints/Galileo/cli/last.ckpt")
    channels = module.hparams.channels
    assert "sentinel2/2020-08-26/valid" in channels and not module.model.unmasked_channels()
    stored = torch.from_numpy(np.load(physical_processed / "tiles" / "Tile1.npy")).float()
    assert (stored[channels.index("sentinel2/2020-08-26/valid"), :8, :8] == 0).all()
    model = module.model
    x = (stored[None, :, :8, :8] - model.input_mean[:, None, None]) / model.input_std[:, None, None]
    features = model.token_features
    with torch.no_grad():
        filled = x.clone()
        filled[:, channels.index("sentinel2/2020-08-26/B04")] += 5
        torch.testing.assert_close(features(filled), features(x))
        measured = x.clone()
        measured[:, channels.index("sentinel2/2020-08-11/B04")] += 5
        assert not torch.allclose(features(measured), features(x))
    steps = {run: state["model.band_scale"].shape[0] for run, state in trained.items()}
    assert steps["1"] < steps["0"]  # the synthetic dates share months
    shutil.rmtree(weights)
    # the weights are in the checkpoint: the run resumes without its weights folder, and one
    # saved before --galileo_time existed (no such option recorded) on its acquisition dates
    last = tmp_path / "0/checkpoints/Galileo/cli/last.ckpt"
    checkpoint = torch.load(last, weights_only=True)
    for options in ("run_config", "model_hparams"):
        del checkpoint["hyper_parameters"][options]["galileo_time"]
    torch.save(checkpoint, last)
    code, _, err = train_main(tmp_path / "0", "--resume", str(last), "--max_epochs", "2")
    assert code == 0, err[-3000:]
    assert torch.load(last, weights_only=True)["epoch"] == 1  # it went on to a second epoch
    results = tmp_path / "evaluation"
    assert (
        evaluate_main(
            [
                "--model_path",
                str(tmp_path / "0/checkpoints/Galileo/cli/last.ckpt"),
                "--results_dir",
                str(results),
                "--accelerator",
                "cpu",
            ]
        )
        == 0
    )
    scores = json.loads((results / "metrics.json").read_text())
    assert np.isfinite(scores["overall"]["f1_class1"])
    # a folder of the course recipe is refused, saying what to do
    code, _, err = train_main(
        tmp_path / "course",
        "--model_type",
        "Galileo",
        "--raw_dir",
        "none",
        "--processed_dir",
        str(synthetic_processed),
        "--galileo_resolution_m",
        "250",
        "--galileo_patch_size",
        "2",
    )
    assert code != 0 and "recipe: physical" in err


def _galileo_note(train_main, run: Path, processed: Path, *flags: str) -> str:  # noqa: F811
    """The line a one-batch Galileo training prints about filled no-data ('' without)."""
    code, out, err = train_main(
        run, "--model_type", "Galileo", "--raw_dir", "none", "--processed_dir", str(processed),
        "--wandb_mode", "disabled", "--tile_size_gt", "2", "--galileo_resolution_m", "250",
        "--galileo_patch_size", "2", "--max_epochs", "1", "--limit_train_batches", "1",
        "--limit_val_batches", "0", *flags,
    )  # fmt: skip
    assert code == 0, err[-2000:]
    return next((line for line in out.splitlines() if "no-data pixel(s)" in line), "")


def test_galileo_says_when_it_reads_filled_no_data_and_how_to_mask_it(
    synthetic_copy,
    physical_processed,
    tmp_path,
    train_main,  # noqa: F811
):
    """Counted in the channels Galileo reads only: the synthetic tiles' B01/B09 no-data (which
    it does not read) says nothing; B04's does, until its validity channel is selected."""
    labelled = len(Manifest.load(physical_processed).labelled_tiles())
    # a folder without validity channels: the synthetic B01/B09 no-data only, then B04's
    plain = tmp_path / "plain"
    physical = PreprocessConfig(recipe="physical")
    prepare_dataset(synthetic_copy, plain, tile_size_gt=4, val_fraction=0.25, workers=1,
                    preprocessing=physical)  # fmt: skip
    assert _galileo_note(train_main, tmp_path / "a", plain) == ""
    for path in synthetic_copy.rglob(NO_DATA_FILE):
        values = tifffile.imread(path)
        values[:8, :8] = 0
        tifffile.imwrite(path, values)
    prepare_dataset(synthetic_copy, plain, tile_size_gt=4, val_fraction=0.25, workers=1,
                    preprocessing=physical)  # fmt: skip
    note = _galileo_note(train_main, tmp_path / "b", plain)
    assert f"reads the {64 * labelled} no-data pixel(s)" in note, note
    assert "--preprocessing '{recipe: physical, valid_masks: true}'" in note
    # a folder with them, Sentinel-2's left out of --bands: select them
    bands = "{sentinel1: null, sentinel2: [B02, B03, B04, B08], viirs: [DNB, valid]}"
    note = _galileo_note(train_main, tmp_path / "c", physical_processed, "--bands", bands)
    assert f"reads the {64 * labelled} no-data pixel(s)" in note
    assert "add valid to --bands" in note


class StopAfterFoldError(Exception):
    pass


@pytest.mark.slow
def test_an_interrupted_galileo_cross_validation_completes_without_its_weights_folder(
    galileo_dir, physical_processed, tmp_path, capsys
):
    from scripts.cross_validate import main as cross_validate_main
    from src.cross_validation import run as cv_run

    weights = _weights_copy(galileo_dir, tmp_path / "weights")
    release = to_encoder_state(read_state_dict(weights / "encoder.pt"))
    argv = [
        "--model_type", "Galileo", "--folds", "2", "--selection", "last", "--raw_dir", "none",
        "--processed_dir", str(physical_processed), "--output_dir", str(tmp_path / "cv"),
        "--tile_size_gt", "2", "--galileo_resolution_m", "250", "--galileo_patch_size", "2",
        "--limit_train_batches", "2", "--max_epochs", "1", "--num_workers", "0",
        "--wandb_mode", "disabled", "--tile_pictures", "none", "--freeze_backbone", "1",
        "--pretrained", "--weights_path", str(weights),
    ]  # fmt: skip

    def stop(model, fold, result):
        raise StopAfterFoldError

    original = cv_run.cross_validate
    with pytest.raises(StopAfterFoldError):  # interrupted once fold 0 is done
        cv_run.cross_validate = lambda cv, base, **kw: original(cv, base, on_fold=stop)
        try:
            from scripts import cross_validate as command

            command.main(argv)
        finally:
            cv_run.cross_validate = original
    shutil.rmtree(weights)  # the folder is gone; the CV kept a copy of what its folds start from
    assert cross_validate_main(argv) == 0, capsys.readouterr().err[-2000:]
    (fold_1,) = (tmp_path / "cv").glob("*/Galileo/fold_1/checkpoints/Galileo/fold_1/last.ckpt")
    state = torch.load(fold_1, weights_only=True)["state_dict"]
    key = "blocks.3.attn.qkv.weight"
    assert torch.equal(state[f"model.encoder.{key}"], release[key])  # from the release, frozen


def test_an_older_timm_is_one_line_naming_the_installed_version(monkeypatch):
    from src.models import checks
    from src.training.config import ESDConfig

    assert checks.timm_problem() is None  # the installed one is new enough
    monkeypatch.setattr(checks.metadata, "version", lambda name: "1.0.25")
    with pytest.raises(ValueError, match=r"timm 1\.0\.26 or newer \(installed: 1\.0\.25\)"):
        ESDConfig(model_type="Galileo")
    with pytest.raises(ValueError, match=r"installed: 1\.0\.25"):  # not an ImportError
        ESDConfig(model_type="Galileo", pretrained=True, weights_path=Path("missing"))
    from src.models import galileo_encoder

    monkeypatch.setattr(galileo_encoder, "TIMM_PROBLEM", checks.timm_problem())
    with pytest.raises(ValueError, match=r"installed: 1\.0\.25"):  # building one, e.g. to load
        galileo_encoder.GalileoEncoder()


def _with_validity(channels: list[str]) -> list[str]:
    """`channels` and a validity channel for each Sentinel-1, Sentinel-2 and VIIRS date."""
    dated = {
        name.rsplit("/", 1)[0]
        for name in channels
        if not name.startswith(("viirs/max", "landsat8"))
    }
    return channels + [f"{date}/valid" for date in sorted(dated)]


def _standardised_with_validity(channels, valid, generator, size: int = 10):
    """`_standardised`, with the validity channels' physical values taken from `valid`
    (channel → (B, H, W) of 0 and 1; 1 for the others)."""
    physical, _, (mean, std) = _standardised(channels, generator, size)
    for i, name in enumerate(channels):
        if name.endswith("/valid"):
            physical[:, i] = valid.get(name, torch.ones_like(physical[:, i]))
    x = (physical - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    return physical, x.float(), (mean, std)


def test_no_data_pixels_are_masked_not_filled(galileo_dir):
    """Validity channels (`valid_masks`): a no-data pixel never reaches Galileo. At 100 m (2×2
    pixels pooled) and 5×5 pooled pixels a token, on 20×20 pixels (2×2 tokens): Sentinel-2 has
    no data over the whole of token (0, 0), in 3 of the 4 pixels pooled at (5, 5) and in all
    4 pooled at (6, 6) of token (1, 1); VIIRS has no data in a corner of sample 0 and nowhere
    in sample 1."""
    channels = _with_validity(_dse_channels())
    s2_valid = torch.ones(2, 20, 20, dtype=torch.float64)
    s2_valid[:, :10, :10] = 0
    s2_valid[:, 10:12, 10:12] = 0
    s2_valid[:, 11, 11] = 1
    s2_valid[:, 12:14, 12:14] = 0
    viirs_valid = torch.ones_like(s2_valid)
    viirs_valid[0, :5, :5] = 0
    viirs_valid[1] = 0
    valid = {"sentinel2/2020-08-11/valid": s2_valid, "viirs/2020-08-04/valid": viirs_valid}
    generator = torch.Generator().manual_seed(4)
    physical, x, stats = _standardised_with_validity(channels, valid, generator, size=20)
    model = GalileoSegmentation(channels, 4, cell_px=10, input_stats=stats, pretrained=True,
                                weights_path=galileo_dir, patch_size=5, resolution_m=100,
                                time="acquisition").eval()  # fmt: skip
    inputs = model.encoder_inputs(x)
    norm = json.loads((galileo_dir / "normalization.json").read_text())
    b2 = SPACE_TIME_BANDS.index("B2")
    mean, std = norm["13"]["mean"][b2], norm["13"]["std"][b2]
    b02 = physical[:, channels.index("sentinel2/2020-08-11/B02")]
    got = inputs.space_time[:, 2, b2].double() * (4 * std) + (mean - 2 * std)  # physical
    # a pooled pixel is the mean of its pixels that have data
    close(got[:, 5, 5], b02[:, 11, 11])
    close(got[:, 7, 7], b02[:, 14:16, 14:16].mean(dim=(1, 2)))
    # one without any takes its token's mean of the others
    pooled = torch.nn.functional.avg_pool2d(b02[:, None], 2)[:, 0]
    pooled[:, 5, 5] = b02[:, 11, 11]
    others = torch.ones(5, 5, dtype=torch.bool)
    others[1, 1] = False
    close(got[:, 6, 6], pooled[:, 5:10, 5:10][:, others].mean(dim=1))
    # a token without data masks the date's Sentinel-2 groups there, and only there
    mask = inputs.space_time_mask[:, :, :, 2]  # (B, h, w, groups) at the Sentinel-2 date
    s2_groups = [GROUPS.index(g) for g in GROUPS[1:]]
    assert mask[:, 0, 0][:, s2_groups].all()
    assert not mask[:, 0, 1][:, s2_groups].any() and not mask[:, 1, 1][:, s2_groups].any()
    assert not inputs.space_time_mask[..., :2, GROUPS.index("S1")].any()
    # VIIRS: the mean radiance of the pixels that have data; none at all: missing
    v = 5
    viirs_mean, viirs_std = norm["6"]["mean"][v], norm["6"]["std"][v]
    radiance = physical[0, channels.index("viirs/2020-08-04/DNB")][viirs_valid[0] > 0].mean()
    close(
        inputs.time[0, 1, v].double(), (radiance - (viirs_mean - 2 * viirs_std)) / (4 * viirs_std)
    )
    assert inputs.time_mask[:, 1, 2].tolist() == [False, True]
    # so the values filled in at no-data pixels change nothing, while a measured one does
    filled = x.clone()
    s2 = [
        i
        for i, name in enumerate(channels)
        if name.startswith("sentinel2/") and "valid" not in name
    ]
    no_data = (s2_valid == 0)[:, None].expand(-1, len(s2), -1, -1)
    filled[:, s2] = torch.where(no_data, filled[:, s2] + 50, filled[:, s2])
    viirs = channels.index("viirs/2020-08-04/DNB")
    filled[:, viirs] = torch.where(
        viirs_valid == 0, filled[:, viirs] + 50, filled[:, viirs]
    ).float()
    encoder_only = GalileoSegmentation(
        [c for c in channels if not c.startswith(("viirs/max", "landsat8"))], 4, cell_px=10,
        input_stats=([stats[0][i] for i, c in enumerate(channels)
                      if not c.startswith(("viirs/max", "landsat8"))],
                     [stats[1][i] for i, c in enumerate(channels)
                      if not c.startswith(("viirs/max", "landsat8"))]),
        pretrained=True, weights_path=galileo_dir, patch_size=5, resolution_m=100,
        time="acquisition",
    ).eval()  # fmt: skip
    keep = [i for i, c in enumerate(channels) if not c.startswith(("viirs/max", "landsat8"))]
    with torch.no_grad():
        # the VIIRS branch reads every VIIRS pixel (with its validity channel): without it,
        # Galileo's output ignores the filled values
        features = encoder_only.token_features
        torch.testing.assert_close(features(filled[:, keep]), features(x[:, keep]))
        measured = x.clone()
        measured[:, s2[3], 15, 15] += 50  # B04 at a pixel with data
        assert not torch.allclose(features(measured[:, keep]), features(x[:, keep]))


def test_validity_channels_of_full_data_change_nothing(galileo_dir):
    """Validity channels that say every pixel has data give Galileo the inputs it gets without
    them; in a monthly composite, a pixel without data on one date takes the other's value."""
    channels = [
        "viirs/2020-08-04/DNB",
        *(f"sentinel1/2020-08-04/{b}" for b in ("VV", "VH")),
        *(f"sentinel2/{d}/{b}" for d in ("2020-08-11", "2020-08-16") for b in S2),
    ]
    masked = _with_validity(channels)
    physical, x, stats = _standardised_with_validity(masked, {}, torch.Generator().manual_seed(5))
    plain = [masked.index(c) for c in channels]
    build = functools.partial(GalileoSegmentation, out_channels=4, cell_px=10, pretrained=True,
                              weights_path=galileo_dir, patch_size=5, resolution_m=50,
                              time="monthly")  # fmt: skip
    with_validity = build(masked, input_stats=stats)
    without = build(channels, input_stats=([stats[0][i] for i in plain],
                                           [stats[1][i] for i in plain]))  # fmt: skip
    assert not with_validity.unmasked_channels() and len(without.unmasked_channels()) == 23
    ours, theirs = with_validity.encoder_inputs(x), without.encoder_inputs(x[:, plain])
    for field in ("space_time", "time", "space_time_mask", "time_mask", "months"):
        torch.testing.assert_close(getattr(ours, field), getattr(theirs, field))
    # the 11th has no data at (2, 3): August's composite there is the 16th's image alone
    valid = torch.ones(2, 10, 10, dtype=torch.float64)
    valid[:, 2, 3] = 0
    physical, x, stats = _standardised_with_validity(
        masked, {"sentinel2/2020-08-11/valid": valid}, torch.Generator().manual_seed(5)
    )
    inputs = build(masked, input_stats=stats).encoder_inputs(x)
    norm = json.loads((galileo_dir / "normalization.json").read_text())
    b2 = SPACE_TIME_BANDS.index("B2")
    mean, std = norm["13"]["mean"][b2], norm["13"]["std"][b2]
    got = inputs.space_time[:, 0, b2].double() * (4 * std) + (mean - 2 * std)
    image = {
        d: physical[:, masked.index(f"sentinel2/{d}/B02")] for d in ("2020-08-11", "2020-08-16")
    }
    close(got[:, 2, 3], image["2020-08-16"][:, 2, 3])
    close(got[:, 4, 4], (image["2020-08-11"][:, 4, 4] + image["2020-08-16"][:, 4, 4]) / 2)
