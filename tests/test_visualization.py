"""Exploration and evaluation figures: panels, saved files, colours and the numbers they show."""

from __future__ import annotations

import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from matplotlib.axes import Axes
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from PIL import Image
from sklearn.metrics import roc_auc_score

from src.esd_data.preprocessing import PreprocessConfig, preprocess_tile
from src.esd_data.reader import RawTile, read_tile
from src.esd_data.sensors import CLASS_COLOURS, CLASS_NAMES, SENTINEL2
from src.esd_data.synthetic import generate_synthetic_dataset
from src.visualization import evaluation_plots as ev
from src.visualization import plot_utils as pu

CONTEST_RGBA = {
    1: (1.0, 0.0, 0.0, 1.0),
    2: (0.0, 0.0, 1.0, 1.0),
    3: (1.0, 1.0, 0.0, 1.0),
    4: (0xB2 / 255, 0x66 / 255, 1.0, 1.0),
}


@pytest.fixture(scope="module")
def raw_tile(tmp_path_factory: pytest.TempPathFactory) -> RawTile:
    """One synthetic 64-pixel tile (4 px per label cell)."""
    out = tmp_path_factory.mktemp("viz") / "raw"
    generate_synthetic_dataset(out, n_tiles=1, seed=0, tile_px=64)
    return read_tile(out / "Train" / "Tile1")


@pytest.fixture(scope="module")
def processed(raw_tile: RawTile) -> tuple[np.ndarray, list[str]]:
    return preprocess_tile(raw_tile, PreprocessConfig())


def all_class_labels(seed: int = 0) -> np.ndarray:
    """A 16×16 label map holding every class 1..4."""
    labels = np.random.default_rng(seed).integers(1, 5, size=(16, 16))
    labels[0, :4] = [1, 2, 3, 4]
    return labels


def assert_saved_png(figure: Figure, path: Path) -> None:
    """`path` is an RGB(A) PNG of figsize × dpi pixels, with no temporary left beside it."""
    width, height = figure.get_size_inches() * figure.dpi
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.mode in {"RGB", "RGBA"}
        assert image.size == (round(width), round(height))
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def rendered(figure: Figure) -> np.ndarray:
    """The figure drawn to an (H, W, 4) uint8 RGBA array."""
    figure.canvas.draw()
    return np.asarray(figure.canvas.buffer_rgba())


def pixel_at(image: np.ndarray, ax: Axes, x: float, y: float) -> np.ndarray:
    """RGB of the rendered pixel at data coordinates (x, y) of `ax`."""
    display_x, display_y = ax.transData.transform((x, y))
    return image[int(image.shape[0] - display_y), int(display_x), :3]


def to_uint8(colour: str) -> np.ndarray:
    return np.round(np.array(to_rgba(colour)[:3]) * 255).astype(np.uint8)


# --- colours and true colour ------------------------------------------------------------------


def test_label_colormap_maps_labels_to_contest_colours() -> None:
    cmap, norm = pu.label_colormap()
    mapped = cmap(norm(np.arange(1, 5)))
    assert np.allclose(mapped, [CONTEST_RGBA[k] for k in range(1, 5)])
    assert [to_rgba(c) for c in CLASS_COLOURS] == [tuple(m) for m in mapped]


def test_true_colour_stretches_percentiles_to_0_and_1() -> None:
    rng = np.random.default_rng(1)
    rgb = rng.gamma(2.0, 500.0, size=(3, 50, 40))
    out = pu.true_colour(rgb)
    assert out.shape == (50, 40, 3)
    assert out.min() >= 0.0 and out.max() <= 1.0
    for c in range(3):
        low, high = np.percentile(rgb[c], (2, 98))
        assert np.allclose(out[..., c], np.clip((rgb[c] - low) / (high - low), 0, 1))
        assert np.percentile(out[..., c], 2) == pytest.approx(0.0, abs=1e-3)
        assert np.percentile(out[..., c], 98) == pytest.approx(1.0, abs=1e-3)
    assert np.array_equal(pu.true_colour(np.moveaxis(rgb, 0, -1)), out)


def test_true_colour_of_a_stack_picks_b04_b03_b02(raw_tile: RawTile) -> None:
    stack = raw_tile.sensors["sentinel2"]
    out = pu.true_colour(stack, date_index=1)
    assert out.shape == (64, 64, 3)
    assert out.dtype.kind == "f" and out.min() >= 0.0 and out.max() <= 1.0
    bands = [stack.bands.index(b) for b in ("B04", "B03", "B02")]
    assert np.array_equal(out, pu.true_colour(stack.data[1, bands]))
    assert np.array_equal(out, pu.true_colour(stack.data, date_index=1))
    assert stack.bands == SENTINEL2.bands


def test_true_colour_survives_constant_band() -> None:
    rgb = np.random.default_rng(2).random((3, 16, 16))
    rgb[1] = 7.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = pu.true_colour(rgb)
    assert np.all(np.isfinite(out))
    assert np.all(out[..., 1] == 0.0)
    assert out[..., 0].max() == 1.0


def test_true_colour_rejects_unknown_shapes() -> None:
    with pytest.raises(ValueError, match="shape"):
        pu.true_colour(np.zeros((5, 8, 8)))


# --- exploration figures ----------------------------------------------------------------------


def test_plot_viirs_dates(raw_tile: RawTile, tmp_path: Path) -> None:
    path = tmp_path / "out" / "viirs.png"
    figure = pu.plot_viirs_dates(raw_tile, save_to=path)
    n_dates = len(raw_tile.sensors["viirs"].dates)
    assert len(figure.axes) == n_dates + 1  # one panel per night and a colour bar
    titles = [ax.get_title() for ax in figure.axes[:n_dates]]
    assert titles == [d.isoformat() for d in raw_tile.sensors["viirs"].dates]
    norms = {id(ax.images[0].norm) for ax in figure.axes[:n_dates]}
    assert len(norms) == 1  # a shared colour scale
    assert_saved_png(figure, path)


def test_plot_sentinel2_dates(raw_tile: RawTile, tmp_path: Path) -> None:
    path = tmp_path / "s2.png"
    figure = pu.plot_sentinel2_dates(raw_tile, save_to=path)
    stack = raw_tile.sensors["sentinel2"]
    assert len(figure.axes) == len(stack.dates)
    for t, ax in enumerate(figure.axes):
        assert ax.get_title() == stack.dates[t].isoformat()
        assert np.allclose(ax.images[0].get_array(), pu.true_colour(stack, t))
    assert_saved_png(figure, path)


def test_plot_sentinel1_dates_in_decibels(raw_tile: RawTile, tmp_path: Path) -> None:
    path = tmp_path / "s1.png"
    figure = pu.plot_sentinel1_dates(raw_tile, save_to=path)
    stack = raw_tile.sensors["sentinel1"]
    n = len(stack.dates)
    assert len(figure.axes) == 2 * n + 2  # VV and VH rows, one colour bar each
    vh_first = figure.axes[n]
    assert vh_first.get_title().startswith("VH")
    expected = 10 * np.log10(np.maximum(stack.data[0, stack.bands.index("VH")], 1e-4))
    assert np.allclose(vh_first.images[0].get_array(), expected)
    assert_saved_png(figure, path)


def test_to_decibels_floors_zero() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        db = pu.to_decibels(np.array([0.0, 1.0, 0.1, np.nan]))
    assert db[:3].tolist() == pytest.approx([-40.0, 0.0, -10.0])
    assert np.isnan(db[3])


def test_plot_histograms_default_channels(
    raw_tile: RawTile, processed: tuple[np.ndarray, list[str]], tmp_path: Path
) -> None:
    stack, names = processed
    path = tmp_path / "hist.png"
    figure = pu.plot_histograms(raw_tile, stack, names, save_to=path)
    default = pu.default_histogram_channels(raw_tile)
    assert [c.split("/")[0] for c in default] == ["viirs", "sentinel1", "sentinel2", "landsat8"]
    assert [c.split("/")[2] for c in default] == ["DNB", "VV", "B04", "B4"]
    assert len(figure.axes) == 2 * len(default)
    # the raw histogram counts every pixel of the raw band, the processed one the channel's
    for row, channel in enumerate(default):
        raw_ax, processed_ax = figure.axes[2 * row], figure.axes[2 * row + 1]
        assert channel in raw_ax.get_title() and "raw" in raw_ax.get_title()
        assert sum(p.get_height() for p in raw_ax.patches) == 64 * 64
        values = stack[names.index(channel)]
        assert processed_ax.get_xlim()[0] <= values.min()
        assert processed_ax.get_xlim()[1] >= values.max()
    assert_saved_png(figure, path)


def test_plot_histograms_chosen_channels(
    raw_tile: RawTile, processed: tuple[np.ndarray, list[str]]
) -> None:
    stack, names = processed
    figure = pu.plot_histograms(raw_tile, stack, names, channels=["viirs/max/DNB", names[-1]])
    assert len(figure.axes) == 4
    with pytest.raises(ValueError, match="not among"):
        pu.plot_histograms(raw_tile, stack, names, channels=["sentinel2/1999-01-01/B04"])


def test_plot_ground_truth_own_figure_and_given_axes(raw_tile: RawTile, tmp_path: Path) -> None:
    path = tmp_path / "gt.png"
    figure = pu.plot_ground_truth(raw_tile.ground_truth, title="Tile1", save_to=path)
    assert len(figure.axes) == 1
    assert [t.get_text() for t in figure.legends[0].get_texts()] == [
        f"{k} {name}" for k, name in enumerate(CLASS_NAMES, 1)
    ]
    assert_saved_png(figure, path)

    host = pu.new_figure((8, 4))
    left, right = host.subplots(1, 2)
    assert pu.plot_ground_truth(all_class_labels(), ax=right) is host
    assert len(host.axes) == 2 and right.images and not left.images
    assert right.get_legend() is not None
    with pytest.raises(ValueError, match="outside"):
        pu.plot_ground_truth(np.zeros((16, 16), dtype=int))


# --- evaluation figures -----------------------------------------------------------------------


def test_tile_prediction_panels_and_colours(raw_tile: RawTile, tmp_path: Path) -> None:
    truth = all_class_labels(1)
    prediction = all_class_labels(2)
    rgb = pu.true_colour(raw_tile.sensors["sentinel2"])
    path = tmp_path / "tiles" / "Tile7.png"
    figure = ev.plot_tile_prediction(rgb, truth, prediction, "Tile7", 0.8123, save_to=path)
    assert [ax.get_title() for ax in figure.axes][:3] == [
        "Sentinel-2 true colour",
        "ground truth",
        "prediction",
    ]
    assert len(figure.axes) == 4
    assert figure.get_suptitle() == "Tile7 — class-1 F1 0.812"
    assert figure.get_size_inches()[0] == pytest.approx(16.0)
    assert 100 <= figure.dpi <= 120
    image = rendered(figure)
    prediction_ax, error_ax = figure.axes[2], figure.axes[3]
    for (row, col), label in np.ndenumerate(prediction):
        got = pixel_at(image, prediction_ax, col, row)
        assert np.array_equal(got, to_uint8(CLASS_COLOURS[label - 1])), (row, col, label)
        wrong = truth[row, col] != label
        got = pixel_at(image, error_ax, col, row)
        assert np.array_equal(got, to_uint8(ev.ERROR_COLOURS[int(wrong)])), (row, col)
    assert f"{int((truth != prediction).sum())} of 256" in error_ax.get_title()
    legend_texts = [t.get_text() for t in figure.legends[0].get_texts()]
    assert legend_texts == [f"{k} {name}" for k, name in enumerate(CLASS_NAMES, 1)]
    assert [t.get_text() for t in error_ax.get_legend().get_texts()] == ["correct", "wrong"]
    assert_saved_png(figure, path)


def test_tile_prediction_without_rgb_truth_or_score(tmp_path: Path) -> None:
    path = tmp_path / "Tile3.png"
    figure = ev.plot_tile_prediction(None, None, all_class_labels(), "Tile3", None, save_to=path)
    assert [ax.get_title() for ax in figure.axes] == ["prediction"]
    assert figure.get_suptitle() == "Tile3"  # unlabelled: no score at all
    assert_saved_png(figure, path)
    figure = ev.plot_tile_prediction(None, all_class_labels(), all_class_labels(), "T", np.nan)
    assert len(figure.axes) == 3 and figure.get_suptitle().endswith("n/a")
    with pytest.raises(ValueError, match="shape"):
        ev.plot_tile_prediction(None, np.ones((8, 8), int), all_class_labels(), "T", 0.5)
    probability = np.linspace(0, 1, 256).reshape(16, 16)
    labels = all_class_labels()
    figure = ev.plot_tile_prediction(None, labels, labels, "T", 0.5, probability=probability,
                                     model="UNet demo, TTA d4")  # fmt: skip
    assert [ax.get_title() for ax in figure.axes if ax.get_title()] == [
        "ground truth", "prediction", "class-1 probability", "errors: 0 of 256 cells"
    ]  # fmt: skip
    assert figure.get_suptitle() == "T — class-1 F1 0.500 — UNet demo, TTA d4"


def test_confusion_matrix_counts_and_row_normalised(tmp_path: Path) -> None:
    matrix = np.array([[50, 3, 2, 1], [4, 100, 0, 6], [0, 0, 0, 0], [1, 2, 3, 40]])
    path = tmp_path / "confusion.png"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        figure = ev.plot_confusion_matrix(matrix, CLASS_NAMES, save_to=path)
        rendered(figure)
    assert len(figure.axes) == 2
    counts_ax, normalised_ax = figure.axes
    assert [int(t.get_text()) for t in counts_ax.texts] == matrix.ravel().tolist()
    expected = np.zeros((4, 4))
    nonzero = matrix.sum(axis=1) > 0
    expected[nonzero] = matrix[nonzero] / matrix[nonzero].sum(axis=1, keepdims=True)
    shown = np.array([float(t.get_text()) for t in normalised_ax.texts]).reshape(4, 4)
    assert np.allclose(shown, expected, atol=0.005)
    assert np.allclose(normalised_ax.images[0].get_array(), expected)
    assert np.all(shown[2] == 0.0)
    assert_saved_png(figure, path)


def test_row_normalise_zero_matrix_has_no_nan() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = ev.row_normalise(np.zeros((4, 4)))
        figure = ev.plot_confusion_matrix(np.zeros((4, 4), dtype=int), CLASS_NAMES)
        rendered(figure)
    assert np.array_equal(out, np.zeros((4, 4)))


def test_one_vs_rest_auc_matches_sklearn() -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, size=200)  # class 3 absent
    p = rng.dirichlet(np.ones(4), size=200)
    p[np.arange(200), y] += rng.random(200)
    p /= p.sum(axis=1, keepdims=True)
    aucs = ev.one_vs_rest_auc(y, p)
    assert set(aucs) == {0, 1, 2, 3}
    for k in range(3):
        assert aucs[k] == pytest.approx(roc_auc_score(y == k, p[:, k]))
    assert aucs[3] is None
    single = ev.one_vs_rest_auc(np.zeros(5, dtype=int), np.full((5, 4), 0.25))
    assert single == {0: None, 1: None, 2: None, 3: None}


def test_plot_roc_curves_marks_absent_class(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    y = rng.integers(0, 3, size=120)
    p = rng.dirichlet(np.ones(4), size=120)
    path = tmp_path / "roc.png"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        figure = ev.plot_roc_curves(y, p, CLASS_NAMES, save_to=path)
        rendered(figure)
    assert len(figure.axes) == 1
    texts = [t.get_text() for t in figure.axes[0].get_legend().get_texts()]
    aucs = ev.one_vs_rest_auc(y, p)
    for k in range(3):
        assert f"{k + 1} {CLASS_NAMES[k]} (AUC {aucs[k]:.3f})" in texts
    assert f"4 {CLASS_NAMES[3]} (absent)" in texts
    assert_saved_png(figure, path)


# --- saving -----------------------------------------------------------------------------------


def test_atomic_save_overwrites_and_honours_suffix(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "figure.pdf"
    figure = pu.plot_ground_truth(all_class_labels(), save_to=target)
    pu.save_figure(figure, target)  # overwrite
    assert target.read_bytes().startswith(b"%PDF")
    assert [p.name for p in target.parent.iterdir()] == ["figure.pdf"]


def test_figures_render_in_worker_threads(tmp_path: Path) -> None:
    def work(i: int) -> Path:
        path = tmp_path / f"tile{i}.png"
        ev.plot_tile_prediction(None, all_class_labels(i), all_class_labels(i + 1), "T", 0.5, path)
        return path

    with ThreadPoolExecutor(max_workers=2) as pool:
        paths = list(pool.map(work, range(4)))
    for path in paths:
        with Image.open(path) as image:
            assert image.size[0] == round(3 * ev.PANEL_WIDTH * pu.DEFAULT_DPI)
