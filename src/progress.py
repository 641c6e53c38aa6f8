"""Progress bars on a terminal only (a log file gets no bars), unless asked for or off.

`ESD_PROGRESS=1` shows them anywhere and `ESD_PROGRESS=0` nowhere; the commands' `--progress`
flag sets it.
"""

from __future__ import annotations

import os
import sys

PROGRESS_VARIABLE = "ESD_PROGRESS"


def show_progress() -> bool:
    """Whether progress bars are shown: as `ESD_PROGRESS` says, else on a terminal."""
    setting = os.environ.get(PROGRESS_VARIABLE, "")
    if setting in ("0", "1"):
        return setting == "1"
    return sys.stderr.isatty()


def progress_disabled(nothing_to_do: bool = False) -> bool:
    """tqdm's `disable` for a bar of this process."""
    return nothing_to_do or not show_progress()


def set_progress(progress: bool | None) -> None:
    """Show (True), hide (False) or leave to the terminal (None) the bars of this process and
    of the processes it starts."""
    if progress is None:
        os.environ.pop(PROGRESS_VARIABLE, None)
    else:
        os.environ[PROGRESS_VARIABLE] = "1" if progress else "0"
