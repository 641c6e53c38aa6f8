"""`--resume CKPT`: the run a checkpoint belongs to, continued exactly as it was defined.

The checkpoint carries the run's whole `ESDConfig` (its `run_config` hyper-parameter, with the
run name and W&B id it ran under). Resuming restores all of it; only the options in
`MAY_CHANGE` (how long, where and on what hardware it runs) may be given anew. Any other
option given with a different value is an error, not a silently different run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from src.cli import plain
from src.esd_data.identity import DataIdentity
from src.training.checkpoints import CheckpointError, read_checkpoint
from src.training.config import ESDConfig

MAY_CHANGE = frozenset(
    {
        "resume",
        "max_epochs",
        "patience",
        "num_workers",
        "prepare_workers",
        "data_on_device",
        "device_memory_share",
        "accelerator",
        "devices",
        "strategy",
        "num_nodes",
        "precision",
        "limit_train_batches",
        "limit_val_batches",
        "raw_dir",
        "processed_dir",
        "log_dir",
        "checkpoint_dir",
        "wandb_mode",
        "progress",
    }
)
"""Options a resumed run may set anew (the data found there must still be the run's data;
the checkpoints stay in the folder of the resumed checkpoint)."""


EARLIER_BEHAVIOUR = {"galileo_time": "acquisition"}
"""Options added since a checkpoint may have been saved, with the value that behaves as runs
did before the option existed (so that such a checkpoint resumes as the run it was)."""


def saved_run_config(checkpoint: dict[str, Any], path: Path) -> dict[str, Any]:
    """The `ESDConfig` values a checkpoint was trained with."""
    saved = checkpoint["hyper_parameters"].get("run_config")
    if saved is None:
        raise CheckpointError(
            f"{path} does not record its run's configuration (an older checkpoint): resume "
            f"it by training again"
        )
    return {**EARLIER_BEHAVIOUR, **saved}


def check_same_data(saved: DataIdentity, now: DataIdentity) -> None:
    """ValueError naming what differs between a checkpoint's data and the data found now."""
    differing = [
        name
        for name in ("split", "channels", "mean", "std", "cell_px", "preprocessing")
        if getattr(saved, name) != getattr(now, name)
    ]
    tiles = [t for tiles in saved.split.values() for t in tiles]
    changed = [t for t in tiles if saved.tile_hashes.get(t) != now.tile_hashes.get(t)]
    if changed:
        differing.append(
            f"the pixels of {', '.join(changed[:5])}{' …' if len(changed) > 5 else ''}"
        )
    if differing:
        raise ValueError(
            f"the data in {now.processed_dir} differ from the data the resumed run was trained "
            f"on ({', '.join(differing)}): resume on the run's own data "
            f"({saved.processed_dir}), or start a new run"
        )


def resumed_config(resume: Path, given: dict[str, Any]) -> ESDConfig:
    """The config that continues `resume`'s run: its saved options, with those of `given`
    (the options given explicitly) that may change. ValueError for any that may not."""
    resume = Path(resume)
    if not resume.is_file():
        raise ValueError(f"resume checkpoint {resume} does not exist")
    saved = saved_run_config(read_checkpoint(resume), resume)
    conflicts = [
        f"--{name} {plain(value)!r} (the run has {saved.get(name)!r})"
        for name, value in sorted(given.items())
        if name not in MAY_CHANGE and plain(value) != saved.get(name)
    ]
    if conflicts:
        allowed = ", ".join(sorted(MAY_CHANGE - {"resume"}))
        raise ValueError(
            f"--resume continues {resume}'s run as it was defined: {'; '.join(conflicts)} "
            f"cannot change (only {allowed} can); drop the option or start a new run"
        )
    values = {**saved, **{k: v for k, v in given.items() if k in MAY_CHANGE}, "resume": resume}
    run_folder = resume.parent
    if run_folder.parent.name == saved["model_type"]:  # checkpoint_dir/<model_type>/<run>/
        values["checkpoint_dir"] = run_folder.parent.parent
    return ESDConfig(**values)
