"""Checkpoints written atomically in their own folder, whatever the file system.

Lightning's `TorchCheckpointIO` saves through an fsspec transaction: a temporary file in the
system's temporary folder, then a move, which across file systems is a copy. A process killed
during that copy leaves a truncated `last.ckpt`, the run's only resumable state. Here the
temporary file lies beside the checkpoint and is renamed over it, so a kill leaves the
previous checkpoint whole; a full or read-only folder is one line naming it (`OutputError`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins import TorchCheckpointIO

from src.atomic import atomic_path, is_output_error, output_error


class AtomicCheckpointIO(TorchCheckpointIO):
    """`TorchCheckpointIO` whose saves are a temporary file in the same folder, then a rename."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        with atomic_path(Path(path)) as temporary, temporary.open("wb") as handle:
            try:
                torch.save(checkpoint, handle)
            except RuntimeError as error:  # torch's writer wraps a full disk's OSError
                cause = error.__context__
                if isinstance(cause, OSError) and is_output_error(cause):
                    raise output_error(cause, Path(path), f"checkpoint {Path(path).name}") from None
                raise
            handle.flush()
            os.fsync(handle.fileno())
