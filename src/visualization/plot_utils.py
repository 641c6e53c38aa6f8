"""Figures for exploring a raw DFC2021 tile and its preprocessing.

Every plotting function builds its own `matplotlib.figure.Figure` with an Agg canvas (no
pyplot global state, so it works headless and in worker threads), returns it and, when
`save_to` is given, also writes it atomically (temporary file in the same folder, then a
rename). `label_colormap` is the single colour scheme of every label map: labels 1..4 in
the contest's colours.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import BoundaryNorm, ListedColormap, Normalize, PowerNorm
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from src.atomic import atomic_path
from src.esd_data.reader import RawTile, SensorStack
from src.esd_data.sensors import CLASS_COLOURS, CLASS_NAMES, N_CLASSES, SENSORS, SENTINEL2
from src.visualization.figure_output import DEFAULT_DPI, figure_dpi, figure_file

TRUE_COLOUR_BANDS = ("B04", "B03", "B02")
"""Sentinel-2 red, green and blue bands."""
S1_DB_FLOOR = 1e-4
"""Linear backscatter floor before 10·log10 (−40 dB), so zeros do not give −inf."""
HISTOGRAM_BANDS = {"viirs": "DNB", "sentinel1": "VV", "sentinel2": "B04", "landsat8": "B4"}
"""The band per sensor that `plot_histograms` shows by default (first date of each)."""


def new_figure(figsize: tuple[float, float], **kwargs: object) -> Figure:
    """A Figure with an Agg canvas attached (drawable to a pixel buffer), no pyplot involved."""
    kwargs.setdefault("dpi", DEFAULT_DPI)
    figure = Figure(figsize=figsize, **kwargs)  # type: ignore[arg-type]
    FigureCanvasAgg(figure)
    return figure


def save_figure(figure: Figure, save_to: Path | str, dpi: float | None = None) -> Path:
    """Write `figure` atomically to `save_to`, creating its folder; format from the suffix.

    The format is passed explicitly because the temporary file's name does not end in the
    target's suffix; a target without a suffix is written as PNG.
    """
    target = Path(save_to)
    file_format = target.suffix.lstrip(".").lower() or "png"
    # SVG text stays text: searchable, and editable in a paper's figure editor
    with atomic_path(target) as temporary, matplotlib.rc_context({"svg.fonttype": "none"}):
        figure.savefig(temporary, format=file_format, dpi=dpi or figure.dpi)
    return target


def finish_figure(figure: Figure, save_to: Path | str | None) -> Figure:
    """Save `figure` (when `save_to` is given) at the chosen dpi, a `.png` name in the chosen
    format (see `src.visualization.figure_output.figure_file`); return it."""
    if save_to is not None:
        save_figure(figure, figure_file(save_to), dpi=figure_dpi())
    return figure


def label_colormap() -> tuple[ListedColormap, BoundaryNorm]:
    """Colour map and norm that draw labels 1..4 in the contest's colours (CLASS_COLOURS)."""
    cmap = ListedColormap(list(CLASS_COLOURS), name="dfc2021_labels")
    norm = BoundaryNorm(np.arange(0.5, N_CLASSES + 1), cmap.N)
    return cmap, norm


def class_legend_handles(class_names: Sequence[str] = CLASS_NAMES) -> list[Patch]:
    """Legend patches `k name` for labels 1..4 in the contest's colours."""
    return [
        Patch(facecolor=colour, edgecolor="black", linewidth=0.5, label=f"{k} {name}")
        for k, (colour, name) in enumerate(zip(CLASS_COLOURS, class_names, strict=True), 1)
    ]


def check_labels(labels: np.ndarray, what: str = "labels") -> np.ndarray:
    """`labels` as a 2-D integer array with values 1..4, or a ValueError naming `what`."""
    array = np.asarray(labels)
    if array.ndim != 2:
        raise ValueError(f"{what} must be a 2-D label map, got shape {array.shape}")
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)) or np.any(array != np.round(array)):
            raise ValueError(f"{what} must hold integer labels 1..{N_CLASSES}")
    elif array.dtype.kind not in "iu":
        raise ValueError(f"{what} must hold integer labels, got dtype {array.dtype}")
    array = array.astype(np.int64)
    bad = np.unique(array[(array < 1) | (array > N_CLASSES)])
    if bad.size:
        raise ValueError(f"{what} hold values {bad.tolist()} outside 1..{N_CLASSES}")
    return array


def _stretch(channel: np.ndarray, percentiles: tuple[float, float]) -> np.ndarray:
    """Map the channel's low/high percentiles to 0/1 and clip; constant or empty gives 0."""
    x = np.asarray(channel, dtype=np.float64)
    finite = np.isfinite(x)
    out = np.zeros(x.shape, dtype=np.float64)
    if not finite.any():
        return out
    low, high = np.percentile(x[finite], percentiles)
    if high > low:
        np.divide(x - low, high - low, out=out, where=finite)
        np.clip(out, 0.0, 1.0, out=out)
    return out


def true_colour(
    sentinel2: SensorStack | np.ndarray,
    date_index: int = 0,
    percentiles: tuple[float, float] = (2, 98),
) -> np.ndarray:
    """Sentinel-2 true colour (B04, B03, B02) of one date, percentile-stretched per channel.

    `sentinel2` is a SensorStack (bands picked by name), a (T, B, H, W) array in the order of
    `SENTINEL2.bands`, or an RGB image as (H, W, 3) or (3, H, W). Returns (H, W, 3) floats in
    [0, 1]: each channel's `percentiles` map to 0 and 1; a constant channel becomes 0.
    """
    low, high = percentiles
    if not 0 <= low < high <= 100:
        raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, got {percentiles}")
    if isinstance(sentinel2, SensorStack):
        missing = [b for b in TRUE_COLOUR_BANDS if b not in sentinel2.bands]
        if missing:
            raise ValueError(f"{sentinel2.sensor} stack lacks bands {missing} for true colour")
        indices = [sentinel2.bands.index(b) for b in TRUE_COLOUR_BANDS]
        rgb = sentinel2.data[date_index, indices]
    else:
        array = np.asarray(sentinel2)
        if array.ndim == 4 and array.shape[1] == len(SENTINEL2.bands):
            rgb = array[date_index, [SENTINEL2.bands.index(b) for b in TRUE_COLOUR_BANDS]]
        elif array.ndim == 3 and array.shape[-1] == 3:
            rgb = np.moveaxis(array, -1, 0)
        elif array.ndim == 3 and array.shape[0] == 3:
            rgb = array
        else:
            raise ValueError(
                f"expected a Sentinel-2 SensorStack, a (T, {len(SENTINEL2.bands)}, H, W) array "
                f"or an RGB (H, W, 3) / (3, H, W) array, got shape {array.shape}"
            )
    return np.stack([_stretch(c, percentiles) for c in rgb], axis=-1)


def _grid(n: int) -> tuple[int, int]:
    cols = math.ceil(math.sqrt(n))
    return math.ceil(n / cols), cols


def hide_ticks(ax: Axes) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def _require_dates(stack: SensorStack) -> None:
    if not stack.dates:
        raise ValueError(f"the {stack.sensor} stack has no dates to plot")


def plot_viirs_dates(raw_tile: RawTile, save_to: Path | str | None = None) -> Figure:
    """One panel per VIIRS night (date as title) on a shared square-root colour scale.

    The scale runs from 0 to the 99.5th percentile of all nights (brighter pixels saturate),
    so the faint lights that dominate the data stay visible; one colour bar for all panels.
    """
    stack = raw_tile.sensors["viirs"]
    _require_dates(stack)
    data = stack.data[:, 0].astype(np.float64)
    finite = data[np.isfinite(data)]
    vmax = float(np.percentile(finite, 99.5)) if finite.size else 1.0
    norm = PowerNorm(0.5, vmin=0.0, vmax=max(vmax, 1.0), clip=True)
    rows, cols = _grid(len(stack.dates))
    figure = new_figure((3.0 * cols + 1.2, 3.0 * rows + 0.5), layout="constrained")
    axes = figure.subplots(rows, cols, squeeze=False)
    image = None
    for index, ax in enumerate(axes.ravel()):
        if index >= len(stack.dates):
            figure.delaxes(ax)
            continue
        image = ax.imshow(data[index], cmap="magma", norm=norm, interpolation="nearest")
        ax.set_title(stack.dates[index].isoformat())
        hide_ticks(ax)
    figure.colorbar(image, ax=axes.ravel().tolist(), label="DNB radiance (raw)", extend="max")
    figure.suptitle(f"{raw_tile.tile_id}: VIIRS night lights")
    return finish_figure(figure, save_to)


def plot_sentinel2_dates(raw_tile: RawTile, save_to: Path | str | None = None) -> Figure:
    """Sentinel-2 true colour (B04/B03/B02, 2–98 % stretch) of every date, side by side."""
    stack = raw_tile.sensors["sentinel2"]
    _require_dates(stack)
    n = len(stack.dates)
    figure = new_figure((3.2 * n, 3.8), layout="constrained")
    for index, ax in enumerate(figure.subplots(1, n, squeeze=False).ravel()):
        ax.imshow(true_colour(stack, index), interpolation="nearest")
        ax.set_title(stack.dates[index].isoformat())
        hide_ticks(ax)
    figure.suptitle(f"{raw_tile.tile_id}: Sentinel-2 true colour")
    return finish_figure(figure, save_to)


def to_decibels(linear: np.ndarray, floor: float = S1_DB_FLOOR) -> np.ndarray:
    """10·log10 of linear backscatter floored at `floor`; non-finite pixels become NaN."""
    x = np.asarray(linear, dtype=np.float64)
    finite = np.isfinite(x)
    out = np.full(x.shape, np.nan)
    out[finite] = 10.0 * np.log10(np.maximum(x[finite], floor))
    return out


def plot_sentinel1_dates(raw_tile: RawTile, save_to: Path | str | None = None) -> Figure:
    """Sentinel-1 VV (top row) and VH (bottom row) in dB per date; one colour scale per row."""
    stack = raw_tile.sensors["sentinel1"]
    _require_dates(stack)
    n = len(stack.dates)
    figure = new_figure((3.0 * n + 1.4, 6.6), layout="constrained")
    axes = figure.subplots(2, n, squeeze=False)
    for row, band in enumerate(("VV", "VH")):
        decibels = to_decibels(stack.data[:, stack.bands.index(band)])
        finite = decibels[np.isfinite(decibels)]
        low, high = np.percentile(finite, (2, 98)) if finite.size else (-40.0, 0.0)
        norm = Normalize(vmin=low, vmax=high if high > low else low + 1.0)
        image = None
        for t, ax in enumerate(axes[row]):
            image = ax.imshow(decibels[t], cmap="gray", norm=norm, interpolation="nearest")
            ax.set_title(f"{band} {stack.dates[t].isoformat()}")
            hide_ticks(ax)
        axes[row, 0].set_ylabel(band)
        figure.colorbar(image, ax=axes[row].tolist(), label=f"{band} (dB)", extend="both")
    figure.suptitle(f"{raw_tile.tile_id}: Sentinel-1 backscatter")
    return finish_figure(figure, save_to)


def default_histogram_channels(raw_tile: RawTile) -> list[str]:
    """First date's VIIRS DNB, Sentinel-1 VV, Sentinel-2 B04 and Landsat 8 B4 channel names."""
    names = []
    for spec in SENSORS:
        stack = raw_tile.sensors.get(spec.name)
        band = HISTOGRAM_BANDS.get(spec.name)
        if stack is not None and stack.dates and band in stack.bands:
            names.append(f"{spec.name}/{stack.dates[0].isoformat()}/{band}")
    return names


def raw_channel(raw_tile: RawTile, channel: str) -> np.ndarray:
    """The raw (H, W) values behind a processed channel name `sensor/YYYY-MM-DD/band`.

    `viirs/max/DNB` (the maximum projection) gives the per-pixel maximum over all dates.
    """
    parts = channel.split("/")
    if len(parts) != 3 or parts[0] not in raw_tile.sensors:
        raise ValueError(f"{channel!r} is not a channel name of the form sensor/date/band")
    sensor, date, band = parts
    stack = raw_tile.sensors[sensor]
    if band not in stack.bands:
        raise ValueError(f"{channel!r}: {sensor} has no band {band!r} (bands {stack.bands})")
    b = stack.bands.index(band)
    if date == "max":
        return stack.data[:, b].max(axis=0)
    dates = [d.isoformat() for d in stack.dates]
    if date not in dates:
        raise ValueError(f"{channel!r}: {sensor} has no date {date} (dates {dates})")
    return stack.data[dates.index(date), b]


def plot_histograms(
    raw_tile: RawTile,
    processed: np.ndarray,
    channel_names: list[str],
    channels: list[str] | None = None,
    save_to: Path | str | None = None,
) -> Figure:
    """Histograms of raw (left) and preprocessed (right) values, one row per channel.

    `processed` is the (C, H, W) output of `preprocess_tile` and `channel_names` its names;
    `channels` picks the rows (default `default_histogram_channels`). Counts are on a log
    scale, since VIIRS and the clipped tails pile up in single bins.
    """
    processed = np.asarray(processed)
    if processed.ndim != 3 or processed.shape[0] != len(channel_names):
        raise ValueError(
            f"processed must be (C, H, W) with C = len(channel_names) = {len(channel_names)}, "
            f"got shape {processed.shape}"
        )
    chosen = default_histogram_channels(raw_tile) if channels is None else list(channels)
    if not chosen:
        raise ValueError("no channels to plot")
    unknown = [c for c in chosen if c not in channel_names]
    if unknown:
        raise ValueError(f"channels {unknown} are not among the processed channel names")
    figure = new_figure((10.0, 2.6 * len(chosen) + 0.6), layout="constrained")
    axes = figure.subplots(len(chosen), 2, squeeze=False)
    for row, channel in enumerate(chosen):
        raw = np.asarray(raw_channel(raw_tile, channel), dtype=np.float64)
        after = np.asarray(processed[channel_names.index(channel)], dtype=np.float64)
        for ax, values, stage, colour in (
            (axes[row, 0], raw, "raw", "tab:blue"),
            (axes[row, 1], after, "preprocessed", "tab:orange"),
        ):
            values = values[np.isfinite(values)]
            ax.hist(values, bins=64, color=colour, log=True)
            ax.set_title(f"{channel} ({stage})", fontsize=9)
            ax.set_ylabel("pixels")
    figure.suptitle(f"{raw_tile.tile_id}: value distributions before and after preprocessing")
    return finish_figure(figure, save_to)


def plot_ground_truth(
    labels: np.ndarray,
    title: str | None = None,
    ax: Axes | None = None,
    save_to: Path | str | None = None,
    legend: bool = True,
) -> Figure:
    """Draw a label map (values 1..4) in the contest's colours, with a class legend.

    With `ax`, draw into it and return its figure (the caller owns the layout); otherwise a
    new figure is made. `legend=False` leaves the legend out (for figures with a shared one).
    """
    labels = check_labels(labels)
    cmap, norm = label_colormap()
    own_figure = ax is None
    if ax is None:
        figure = new_figure((4.4, 6.0), layout="constrained")
        ax = figure.add_subplot()
    else:
        figure = ax.get_figure(root=True)
    ax.imshow(labels, cmap=cmap, norm=norm, interpolation="nearest")
    hide_ticks(ax)
    if title is not None:
        ax.set_title(title)
    if legend and own_figure:
        figure.legend(
            handles=class_legend_handles(), loc="outside lower center", fontsize=9, frameon=False
        )
    elif legend:
        ax.legend(
            handles=class_legend_handles(),
            loc="upper center",
            bbox_to_anchor=(0.5, -0.02),
            fontsize=8,
            frameon=False,
        )
    return finish_figure(figure, save_to)
