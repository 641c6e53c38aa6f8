"""Silence third-party messages that tell a user of `scripts.train` nothing.

Each filter names the message it drops; everything else (the GPU line, Lightning's warnings
about real problems, our own output) still reaches the user.
"""

from __future__ import annotations

import logging
import warnings

LIGHTNING_INFO_DROPPED = (
    "💡 Tip:",  # an advertisement for another logger
    "Trainer already configured with model summary callbacks",  # ours is the summary shown
    "TPU available:",  # never on the machines this runs on
    "was configured so 100% of the batches",  # the default, said twice per run
)
WARNINGS_DROPPED = (
    r".*isinstance\(treespec, LeafSpec\)` is deprecated.*",  # inside Lightning, not our code
    # Epoch metrics are synchronised by torchmetrics before they are logged (see train.py).
    r".*when logging on epoch level in distributed.*",
    # A run without validation (--limit_val_batches 0, cross-validation's --selection last)
    # keeps its learning rate under the plateau schedule; the README says so, once.
    r".*ReduceLROnPlateau conditioned on metric .* which is not available.*",
    # esd's run folder holds the run's own status.json when the CSV logger starts (a folder
    # of another run is refused before, see run_folder.claim_run): nothing would be deleted.
    r".*Experiment logs directory .* exists and is not empty.*",
)


class _DropMessages(logging.Filter):
    def __init__(self, fragments: tuple[str, ...]) -> None:
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(fragment in message for fragment in self.fragments)


_FILTER = _DropMessages(LIGHTNING_INFO_DROPPED)


def quiet_third_party() -> None:
    """Install the filters (idempotent)."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
    for pattern in WARNINGS_DROPPED:
        warnings.filterwarnings("ignore", message=pattern)
