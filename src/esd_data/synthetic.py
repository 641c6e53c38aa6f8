"""Synthetic DFC2021 Track DSE tiles with the contest's file layout, dtypes and value ranges.

Every tile is drawn from a small physical story. Two spatially smooth random fields decide
where people live (a pixel-level built-up density) and where there is electricity (correlated
with settlement); thresholding them at per-tile random levels gives the 16×16 labels:

    1 settlement without electricity   2 no settlement, no electricity
    3 settlement with electricity      4 no settlement, with electricity

The sensors then see the same ground: built-up pixels raise the Sentinel-1 VV/VH backscatter
(with multiplicative speckle), flatten the optical spectrum in Sentinel-2 and Landsat 8
(vegetation: low red, high NIR; built-up: lower NIR/red ratio, higher SWIR; warmer in the
Landsat thermal bands), and electrified areas glow in the VIIRS night lights. Nuisances of the
real data are reproduced: clouds on some optical dates, all-zero VIIRS nights, no-data zeros in
Sentinel-2 B01/B09 and sensor noise everywhere.

Files are written with tifffile as uncompressed single-page 2-D TIFFs (their ImageDescription
carries `"synthetic": true`), each tile atomically: into a hidden temporary sibling folder that
is then renamed to `TileK`.
"""

from __future__ import annotations

import datetime as dt
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image
from scipy import ndimage

from src.esd_data.sensors import (
    CLASS_COLOURS,
    GROUND_TRUTH_FILE,
    GROUND_TRUTH_RGB_FILE,
    LABEL_GRID,
    LANDSAT8,
    SENSORS,
    SENTINEL1,
    SENTINEL2,
    VIIRS,
    SensorSpec,
)

COARSE_PER_CELL = 4
"""Resolution of the smooth random fields: 4×4 coarse pixels per label cell."""
COARSE_GRID = LABEL_GRID * COARSE_PER_CELL
SYNTHETIC_METADATA = {"synthetic": True}
"""Written into every TIFF's ImageDescription; marks a tile as safe to overwrite."""

# Surface spectra (reflectance × 10 000) in the order of SENTINEL2.bands:
#                       B01   B02   B03   B04   B05   B06   B07   B08   B8A   B09   B11   B12
S2_VEGETATION = np.array([300, 450, 800, 450, 1300, 2700, 3200, 3400, 3500, 3300, 1900, 900])
S2_SOIL = np.array([650, 850, 1250, 1650, 1900, 2100, 2250, 2400, 2500, 2450, 3300, 2800])
S2_BUILT = np.array([1150, 1300, 1450, 1600, 1700, 1750, 1800, 1850, 1870, 1850, 2600, 2400])
S2_CLOUD = np.array([8200, 8400, 8300, 8400, 8500, 8500, 8600, 8700, 8700, 12500, 6500, 5000])
S2_HAZE = np.array([300, 250, 180, 120, 80, 60, 50, 40, 40, 40, 10, 5])
S2_NODATA_BANDS = ("B01", "B09")
S2_MAX = 15_928
"""The largest Sentinel-2 value of the real Tile1; synthetic values saturate there."""

# Landsat 8 reflective bands B1…B8 from the Sentinel-2 surface (index into SENTINEL2.bands;
# B8 is the panchromatic band, the mean of blue, green and red).
L8_FROM_S2 = {
    "B1": (0,),
    "B2": (1,),
    "B3": (2,),
    "B4": (3,),
    "B5": (8,),
    "B6": (10,),
    "B7": (11,),
    "B8": (1, 2, 3),
}
L8_PATH = {"B1": 600, "B2": 500, "B3": 350, "B4": 200, "B5": 50, "B6": 0, "B7": 0, "B8": 350}
L8_DN_OFFSET, L8_DN_GAIN = 5_000.0, 4.0
"""DN = offset + gain × reflectance×10 000 (Landsat L1 rescaling: ρ = 2e-5·DN − 0.1, roughly)."""
L8_MIN, L8_MAX = 5_000.0, 46_000.0
L8_CLOUD_SCALE = 0.95
"""Landsat sees the Sentinel-2 cloud spectrum a little dimmer (top-of-atmosphere scaling)."""

S1_ENL = 4.4
"""Equivalent number of looks of Sentinel-1 IW GRDH: the shape of the gamma speckle."""
S1_MIN, S1_MAX = 5e-4, 9.9
VIIRS_MAX = 250


@dataclass(frozen=True)
class Scene:
    """The ground of one tile: labels and the per-pixel fields every sensor observes."""

    labels: np.ndarray
    """(16, 16) uint16, values 1..4."""
    built: np.ndarray
    """(H, W) built-up fraction in [0, 1]."""
    vegetation: np.ndarray
    """(H, W) vegetation fraction in [0, 1]; built + vegetation ≤ 1, the rest is bare soil."""
    texture: np.ndarray
    """(H, W) standardised fine-scale texture, static over dates."""
    moisture: np.ndarray
    """(H, W) standardised smooth soil-moisture field (SAR brightness)."""
    light: np.ndarray
    """(COARSE_GRID, COARSE_GRID) night-light emission at the VIIRS footprint scale."""

    @property
    def tile_px(self) -> int:
        """Side length of the tile in pixels."""
        return int(self.built.shape[0])


def tile_rng(seed: int, tile_index: int) -> np.random.Generator:
    """The generator of tile `tile_index` (1-based): independent of how many tiles are made."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(tile_index,)))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return (0.5 * (1.0 + np.tanh(0.5 * x))).astype(np.float32)


def _smooth_field(rng: np.random.Generator, n: int, sigma: float) -> np.ndarray:
    """An (n, n) Gaussian-smoothed white-noise field, standardised to mean 0 and std 1."""
    field = ndimage.gaussian_filter(rng.standard_normal((n, n)), sigma, mode="reflect")
    return ((field - field.mean()) / (field.std() + 1e-12)).astype(np.float32)


def _upsample(field: np.ndarray, tile_px: int) -> np.ndarray:
    """Bilinear resize of a square field to (tile_px, tile_px), pixel areas aligned."""
    if field.shape[0] == tile_px:
        return field.astype(np.float32, copy=False)
    out = ndimage.zoom(field, tile_px / field.shape[0], order=1, grid_mode=True, mode="nearest")
    return out.astype(np.float32, copy=False)


def cell_means(image: np.ndarray, grid: int = LABEL_GRID) -> np.ndarray:
    """Mean of a (H, W) image over each of the grid × grid label cells."""
    per_cell = image.shape[0] // grid
    return image.reshape(grid, per_cell, grid, per_cell).mean(axis=(1, 3))


def make_scene(rng: np.random.Generator, tile_px: int) -> Scene:
    """Draw the labels and surface fields of one tile."""
    settled_share = rng.uniform(0.15, 0.6)
    lit_share = rng.uniform(0.05, 0.6)
    rho = rng.uniform(0.4, 0.85)
    density = rng.uniform(0.55, 1.0)
    greenness = rng.uniform(0.35, 0.7)
    sigma = rng.uniform(3.0, 6.0)  # cluster size, in coarse pixels (4 per label cell)

    settle_c = _smooth_field(rng, COARSE_GRID, sigma)
    noise_c = _smooth_field(rng, COARSE_GRID, sigma)
    elec_c = rho * settle_c + np.sqrt(1.0 - rho**2) * noise_c
    settle_t = np.quantile(settle_c, 1.0 - settled_share)
    elec_t = np.quantile(elec_c, 1.0 - lit_share)

    fine_n = max(tile_px // 4, LABEL_GRID)
    texture = _upsample(_smooth_field(rng, fine_n, 1.0), tile_px)
    # Pixel-level chance of buildings: the smooth field, bilinearly blurred across cell
    # borders, plus fine texture. A cell counts as settled where it is mostly > 0.5.
    built_p = _sigmoid((_upsample(settle_c, tile_px) - settle_t) / 0.2 + 0.8 * texture)
    settled = cell_means(built_p) > 0.5
    lit_p = _sigmoid((elec_c - elec_t) / 0.15)
    electrified = cell_means(lit_p) > 0.5
    labels = (1 + (~settled) + 2 * electrified).astype(np.uint16)

    built = density * built_p
    green = _upsample(_smooth_field(rng, COARSE_GRID, 2.0 * sigma), tile_px)
    vegetation = np.clip(greenness + 0.15 * green - 0.08 * texture, 0.05, 0.95) * (1.0 - built)
    built_c = density * _sigmoid((settle_c - settle_t) / 0.2)
    light = lit_p * (rng.uniform(2.0, 5.0) + rng.uniform(20.0, 60.0) * built_c**1.5)
    moisture = _upsample(_smooth_field(rng, COARSE_GRID, sigma), tile_px)
    return Scene(
        labels,
        built.astype(np.float32),
        vegetation.astype(np.float32),
        texture,
        moisture,
        light.astype(np.float32),
    )


def _dates(spec: SensorSpec) -> list[dt.date]:
    return [dt.date.fromisoformat(day) for day in spec.reference_dates]


def _cloud(
    rng: np.random.Generator, tile_px: int, probability: float
) -> tuple[np.ndarray, np.ndarray] | None:
    """Cloud (opacity, brightness) maps of one optical date, or None when the date is clear.

    Opacity in [0, 1] is a thresholded smooth field; brightness (about 0.75…1.1) scales the
    cloud spectrum, brighter where the cloud is thick.
    """
    if rng.random() >= probability:
        return None
    cover = rng.uniform(0.05, 0.6)
    field = _smooth_field(rng, COARSE_GRID, rng.uniform(3.0, 8.0))
    threshold = np.quantile(field, 1.0 - cover)
    detail = _upsample(_smooth_field(rng, max(tile_px // 8, LABEL_GRID), 1.5), tile_px)
    thickness = (_upsample(field, tile_px) - threshold) / 0.6 + 0.3 * detail
    opacity = np.clip(thickness, 0.0, 1.0)
    brightness = np.clip(0.8 + 0.1 * thickness + 0.05 * detail, 0.75, 1.1)
    return opacity.astype(np.float32), brightness.astype(np.float32)


def surface_reflectance(scene: Scene) -> np.ndarray:
    """(12, H, W) Sentinel-2 surface reflectance × 10 000 of the scene's land-cover mixture."""
    soil = 1.0 - scene.built - scene.vegetation
    spectra = (S2_BUILT, S2_VEGETATION, S2_SOIL)
    fractions = (scene.built, scene.vegetation, soil)
    surface = sum(
        s.astype(np.float32)[:, None, None] * f[None]
        for s, f in zip(spectra, fractions, strict=True)
    )
    return surface * (1.0 + 0.05 * scene.texture)[None]


def _nodata_mask(rng: np.random.Generator, tile_px: int) -> np.ndarray:
    """Pixels with no data (0) in Sentinel-2 B01 and B09: an edge strip and/or scattered pixels."""
    mask = np.zeros((tile_px, tile_px), dtype=bool)
    if rng.random() < 0.7:
        length = rng.integers(tile_px // 8, tile_px // 2 + 1)
        start = rng.integers(0, tile_px - length + 1)
        width = rng.integers(1, 4)
        edge = rng.integers(4)
        rows = slice(0, width) if edge == 0 else slice(tile_px - width, tile_px)
        if edge < 2:
            mask[rows, start : start + length] = True
        else:
            mask[start : start + length, rows] = True
    if rng.random() < 0.3:
        mask |= rng.random((tile_px, tile_px)) < 2e-4
    return mask


def make_sentinel2(
    rng: np.random.Generator, scene: Scene, surface: np.ndarray
) -> dict[str, np.ndarray]:
    """Sentinel-2 L2A rasters: haze, clouds on some dates, noise and B01/B09 no-data zeros."""
    nodata = _nodata_mask(rng, scene.tile_px)
    cloud_probability = rng.uniform(0.0, 0.5)
    rasters = {}
    for date in _dates(SENTINEL2):
        gain, haze = rng.uniform(0.93, 1.07), rng.uniform(0.0, 1.0)
        image = surface * gain + (haze * S2_HAZE).astype(np.float32)[:, None, None]
        cloud = _cloud(rng, scene.tile_px, cloud_probability)
        if cloud is not None:
            opacity, brightness = cloud
            spectrum = S2_CLOUD.astype(np.float32)[:, None, None]
            image = image * (1.0 - opacity) + spectrum * (opacity * brightness)
        image += rng.standard_normal(image.shape, dtype=np.float32) * (15.0 + 0.015 * image)
        image = np.clip(np.rint(image), 1, S2_MAX).astype(np.uint16)
        for band, band_image in zip(SENTINEL2.bands, image, strict=True):
            if band in S2_NODATA_BANDS:
                band_image[nodata] = 0
            rasters[SENTINEL2.file_name(date, band)] = band_image
    return rasters


def make_landsat8(
    rng: np.random.Generator, scene: Scene, surface: np.ndarray
) -> dict[str, np.ndarray]:
    """Landsat 8 L1TP digital numbers (float32 holding integers), thermal warmer over built-up."""
    cloud_probability = rng.uniform(0.0, 0.5)
    rasters = {}
    for date in _dates(LANDSAT8):
        gain, haze = rng.uniform(0.93, 1.07), rng.uniform(0.5, 1.5)
        cloud = _cloud(rng, scene.tile_px, cloud_probability)
        opacity, brightness = (0.0, 0.0) if cloud is None else cloud
        bands = {}
        for band, indices in L8_FROM_S2.items():
            reflectance = surface[list(indices)].mean(axis=0) * gain + haze * L8_PATH[band]
            cloud_reflectance = S2_CLOUD[list(indices)].mean() * L8_CLOUD_SCALE * brightness
            mixed = reflectance * (1.0 - opacity) + cloud_reflectance * opacity
            bands[band] = L8_DN_OFFSET + L8_DN_GAIN * mixed
        bands["B9"] = 5_045.0 + 1_800.0 * opacity + np.zeros_like(scene.built)  # cirrus
        warm = rng.uniform(26_500.0, 30_500.0)
        ground = warm + 2_500.0 * scene.built - 1_500.0 * scene.vegetation
        ground = ground + 300.0 * scene.moisture
        bands["B10"] = ground * (1.0 - opacity) + (warm - 5_000.0) * opacity
        bands["B11"] = 0.885 * bands["B10"]
        for band in LANDSAT8.bands:
            noise = rng.standard_normal(scene.built.shape, dtype=np.float32)
            noise *= 12.0 if band == "B9" else 40.0
            dn = np.clip(np.rint(bands[band] + noise), L8_MIN, L8_MAX).astype(np.float32)
            rasters[LANDSAT8.file_name(date, band)] = dn
    return rasters


def make_sentinel1(rng: np.random.Generator, scene: Scene) -> dict[str, np.ndarray]:
    """Sentinel-1 linear backscatter: brighter over built-up, gamma speckle, bright scatterers."""
    db_base = {
        "VV": -13.0 + 2.0 * scene.vegetation + 9.0 * scene.built + 1.0 * scene.moisture,
        "VH": -20.0 + 4.0 * scene.vegetation + 6.0 * scene.built + 0.7 * scene.moisture,
    }
    shape = scene.built.shape
    rasters = {}
    for date in _dates(SENTINEL1):
        offset = rng.uniform(-0.5, 0.5)
        points = rng.random(shape, dtype=np.float32) < 0.004 * scene.built
        for band in SENTINEL1.bands:
            linear = 10.0 ** ((db_base[band] + offset) / 10.0)
            linear = linear * rng.standard_gamma(S1_ENL, shape, dtype=np.float32) / S1_ENL
            linear[points] *= rng.uniform(3.0, 20.0, size=int(points.sum())).astype(np.float32)
            rasters[SENTINEL1.file_name(date, band)] = np.clip(linear, S1_MIN, S1_MAX).astype(
                np.float32
            )
    return rasters


def make_viirs(rng: np.random.Generator, scene: Scene) -> dict[str, np.ndarray]:
    """VIIRS DNB night lights: blurry, per-night gain and offset, some all-zero nights."""
    dates = _dates(VIIRS)
    dark = set()
    if rng.random() < 0.35:
        dark = set(rng.choice(len(dates), size=rng.integers(1, 3), replace=False).tolist())
    rasters = {}
    for index, date in enumerate(dates):
        offset = rng.uniform(5.0, 11.0) if rng.random() < 0.15 else rng.uniform(-0.5, 1.0)
        radiance = offset + rng.uniform(0.5, 1.3) * scene.light
        radiance = radiance + rng.normal(0.0, 0.8, radiance.shape).astype(np.float32)
        if rng.random() < 0.1:  # a fire or flare, on this night only
            row, col = rng.integers(COARSE_GRID, size=2)
            radiance[row, col] += rng.uniform(50.0, 200.0)
        image = np.clip(np.rint(_upsample(radiance, scene.tile_px)), 0, VIIRS_MAX)
        if index in dark:
            image[:] = 0
        rasters[VIIRS.file_name(date, VIIRS.bands[0])] = image.astype(np.uint16)
    return rasters


def label_rgb(labels: np.ndarray, tile_px: int) -> np.ndarray:
    """The (tile_px, tile_px, 3) uint8 preview of a label grid, in the contest's colours."""
    palette = np.array(
        [[int(colour[i : i + 2], 16) for i in (1, 3, 5)] for colour in CLASS_COLOURS],
        dtype=np.uint8,
    )
    per_cell = tile_px // labels.shape[0]
    return np.repeat(np.repeat(palette[labels - 1], per_cell, axis=0), per_cell, axis=1)


def make_tile(rng: np.random.Generator, tile_px: int) -> dict[str, np.ndarray]:
    """All 100 arrays of one tile, keyed by file name (98 rasters, labels, RGB preview)."""
    if tile_px <= 0 or tile_px % LABEL_GRID:
        raise ValueError(f"tile_px must be a positive multiple of {LABEL_GRID}, got {tile_px}")
    scene = make_scene(rng, tile_px)
    surface = surface_reflectance(scene)
    arrays = {
        **make_viirs(rng, scene),
        **make_sentinel1(rng, scene),
        **make_sentinel2(rng, scene, surface),
        **make_landsat8(rng, scene, surface),
    }
    arrays[GROUND_TRUTH_FILE] = scene.labels
    arrays[GROUND_TRUTH_RGB_FILE] = label_rgb(scene.labels, tile_px)
    return arrays


def expected_file_names() -> list[str]:
    """The 100 file names of a contest tile, from the sensor specs (sorted)."""
    names = [
        spec.file_name(date, band)
        for spec in SENSORS
        for date in _dates(spec)
        for band in spec.bands
    ]
    return sorted([*names, GROUND_TRUTH_FILE, GROUND_TRUTH_RGB_FILE])


def is_synthetic_tile(tile_dir: Path) -> bool:
    """Whether `tile_dir` was written by this generator (its TIFFs carry the marker: the
    labels', or a raster's for an unlabelled tile)."""
    path = tile_dir / GROUND_TRUTH_FILE
    if not path.is_file():
        path = next(iter(sorted(tile_dir.glob("*.tif"))), path)
    if not path.is_file():
        return False
    try:
        with tifffile.TiffFile(path) as tif:
            return bool((tif.shaped_metadata or [{}])[0].get("synthetic"))
    except (OSError, ValueError, tifffile.TiffFileError):
        return False


def _write_arrays(folder: Path, arrays: dict[str, np.ndarray]) -> int:
    """Write the arrays into `folder` (TIFFs uncompressed, the preview as PNG); return bytes."""
    for name, array in arrays.items():
        if name.endswith(".png"):
            Image.fromarray(array).save(folder / name)
        else:
            tifffile.imwrite(folder / name, array, metadata=SYNTHETIC_METADATA)
    return sum((folder / name).stat().st_size for name in arrays)


def write_tile(tile_dir: Path, arrays: dict[str, np.ndarray]) -> int:
    """Write one tile atomically (temporary sibling, then rename); return the bytes written.

    An existing `tile_dir` is replaced whole, and only when it is a synthetic tile.
    """
    if tile_dir.exists() and not is_synthetic_tile(tile_dir):
        raise FileExistsError(
            f"{tile_dir} exists and is not a synthetic tile; refusing to replace it"
        )
    tile_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{tile_dir.name}.tmp-", dir=tile_dir.parent))
    try:
        n_bytes = _write_arrays(tmp, arrays)
        tmp.chmod(0o755)  # mkdtemp creates 0o700
        if tile_dir.exists():
            _replace_dir(tmp, tile_dir)
        else:
            tmp.rename(tile_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return n_bytes


def _replace_dir(new: Path, target: Path) -> None:
    """Swap the finished folder `new` in for `target`, restoring `target` if the swap fails."""
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    target.rename(old / target.name)
    try:
        new.rename(target)
    except OSError:
        (old / target.name).rename(target)
        raise
    finally:
        if not (old / target.name).exists() or target.exists():
            shutil.rmtree(old, ignore_errors=True)


def generate_synthetic_dataset(
    out: Path,
    n_tiles: int,
    seed: int,
    tile_px: int = 800,
    progress: Callable[[Path, int], None] | None = None,
    unlabelled: int = 0,
) -> list[Path]:
    """Write `out/Train/Tile1 … TileN` and, after them, `unlabelled` tiles of the same
    distribution without ground truth (as the contest's Val/ and Test/ tiles: they prepare
    into the predict split); return their folders.

    Tile k depends only on (seed, k, tile_px); `progress(tile_dir, bytes)` runs after each tile.
    """
    if n_tiles < 1:
        raise ValueError(f"n_tiles must be at least 1, got {n_tiles}")
    tile_dirs = []
    for index in range(1, n_tiles + unlabelled + 1):
        tile_dir = Path(out) / "Train" / f"Tile{index}"
        arrays = make_tile(tile_rng(seed, index), tile_px)
        if index > n_tiles:
            for name in (GROUND_TRUTH_FILE, GROUND_TRUTH_RGB_FILE):
                del arrays[name]
        n_bytes = write_tile(tile_dir, arrays)
        tile_dirs.append(tile_dir)
        if progress is not None:
            progress(tile_dir, n_bytes)
    return tile_dirs
