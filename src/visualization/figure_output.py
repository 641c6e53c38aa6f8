"""Where figures go and how: the `--fig_format` and `--dpi` of every command that draws.

`FigureOptions` is the dataclass the commands' configs inherit (one definition of the two
flags); `figure_output` applies them within a block (as environment variables, which the
processes started there inherit), and `figure_file` gives a figure's file name in the chosen
format.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from src.cli import config_field

FigureFormat = Literal["png", "pdf", "svg"]
FIGURE_FORMATS = ("png", "pdf", "svg")
FORMAT_VARIABLE = "ESD_FIG_FORMAT"
DPI_VARIABLE = "ESD_FIG_DPI"
DEFAULT_DPI = 110
"""Resolution of created figures and of saved files (pixels = figsize × dpi)."""


@dataclass
class FigureOptions:
    """The file format and resolution of every figure a command writes."""

    fig_format: FigureFormat = config_field(
        "png", "file format of the figures: png, pdf or svg (vector, for papers)"
    )
    dpi: int = config_field(DEFAULT_DPI, "resolution of saved figures in dots per inch")

    def __post_init__(self) -> None:
        if self.dpi < 10:
            raise ValueError(f"dpi must be at least 10, got {self.dpi}")


@contextmanager
def figure_output(options: FigureOptions) -> Iterator[None]:
    """Within the block, write figures in `options`' format and dpi (then as before)."""
    previous = {name: os.environ.get(name) for name in (FORMAT_VARIABLE, DPI_VARIABLE)}
    os.environ[FORMAT_VARIABLE] = options.fig_format
    os.environ[DPI_VARIABLE] = str(options.dpi)
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def figure_format() -> str:
    """The chosen figure format (png unless set)."""
    chosen = os.environ.get(FORMAT_VARIABLE, "png")
    return chosen if chosen in FIGURE_FORMATS else "png"


def figure_dpi() -> int:
    """The chosen dpi of saved figures."""
    try:
        return int(os.environ.get(DPI_VARIABLE, DEFAULT_DPI))
    except ValueError:
        return DEFAULT_DPI


def figure_file(path: Path | str) -> Path:
    """`path` in the chosen figure format: a `.png` name (the commands' default names) gets
    the chosen format's suffix; another suffix, asked for explicitly, is kept."""
    path = Path(path)
    return path.with_suffix(f".{figure_format()}") if path.suffix in ("", ".png") else path


def find_figure(path: Path | str) -> Path | None:
    """The figure written for `path` in whichever format it was (None when there is none)."""
    for suffix in FIGURE_FORMATS:
        candidate = Path(path).with_suffix(f".{suffix}")
        if candidate.is_file():
            return candidate
    return None
