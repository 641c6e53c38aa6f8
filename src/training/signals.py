"""Ctrl-C and SIGTERM as one thing: the first of them becomes a KeyboardInterrupt in the main
thread, and the command exits with 128 + the signal's number (130, 143).

Lightning stops a training gracefully on a KeyboardInterrupt (its SIGTERM handlers compose
with the one installed here), so a run stopped either way is recorded as interrupted.
"""

from __future__ import annotations

import contextlib
import signal
import sys
from collections.abc import Callable, Iterator
from typing import TypeVar

T = TypeVar("T")


class StopSignal:
    """The signal (SIGINT or SIGTERM) that asked the command to stop, if any."""

    signum: int | None = None
    active: bool = False
    """Inside `stop_on_signals` (outside it, `check` stops nothing)."""

    @classmethod
    def check(cls) -> None:
        """KeyboardInterrupt when a stop signal came: the handler's own can be lost, since
        Python ignores an exception raised in a weakref callback or `__del__`, where the
        handler may happen to run (a training then calls this at every batch)."""
        if cls.active and cls.signum is not None:
            raise KeyboardInterrupt

    @classmethod
    def exit_status(cls) -> int:
        """128 + the signal's number (SIGINT when none was recorded: a plain Ctrl-C)."""
        return 128 + (cls.signum or signal.SIGINT)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[type[StopSignal]]:
    """Turn the first SIGINT or SIGTERM into a KeyboardInterrupt; restore the handlers after."""
    StopSignal.signum = None

    def stop(signum: int, frame: object) -> None:
        if StopSignal.signum is None:
            StopSignal.signum = signum
            raise KeyboardInterrupt

    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    was_active, StopSignal.active = StopSignal.active, True
    try:
        yield StopSignal
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        StopSignal.active = was_active


INTERRUPTED_RERUN = "interrupted: run the same command again to continue where it stopped"
"""What a command that trains in its own folder (cross-validation, self-training, refit) says
when it is stopped: its runs resume from their last checkpoints."""


def run_resumable(work: Callable[[], T], errors: tuple[type[Exception], ...]) -> T | int:
    """`work()`'s result, or the exit status of a command that trains in its own folder: 128 +
    the signal's number when stopped (saying to run it again), 1 after one line for `errors`."""
    with stop_on_signals():
        try:
            return work()
        except KeyboardInterrupt:
            print(INTERRUPTED_RERUN, file=sys.stderr)
            return StopSignal.exit_status()
        except errors as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
