"""What determines a training's result, so that a stored result is reused only for the same.

`result_config(config)` is an `ESDConfig` without the options that do not change what is
learned (folders, hardware, loggers, run names) and without the hyper-parameters of other
model types; the data options are left out too, because the data's own identity (the
manifest's fingerprint) stands for them wherever a result is keyed. `config_hash` hashes any
such mapping; `differences` names what differs between two of them.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from src.cli import config_values
from src.models.registry import MODEL_TYPES, model_hparams
from src.training.config import ESDConfig

NOT_RESULT = frozenset(
    {
        "raw_dir", "processed_dir", "preprocessing", "split_seed", "val_fraction",
        "test_fraction", "num_workers", "prepare_workers", "data_on_device",
        "device_memory_share", "accelerator", "devices", "strategy", "num_nodes",
        "checkpoint_dir", "log_dir", "resume", "wandb_project", "wandb_run_name",
        "wandb_mode", "wandb_id", "progress", "fig_format", "dpi", "chosen_on",
    }
)  # fmt: skip
"""ESDConfig options that do not determine the result (the data options: see the module)."""
MODEL_OPTIONS = frozenset(name for model in MODEL_TYPES for name in model_hparams(model))


def result_config(config: ESDConfig) -> dict[str, Any]:
    """The options of `config` that determine what a training learns (see the module)."""
    own = set(model_hparams(config.model_type))
    return {
        name: value
        for name, value in config_values(config).items()
        if name not in NOT_RESULT and (name not in MODEL_OPTIONS or name in own)
    }


def config_hash(values: dict[str, Any]) -> str:
    """The SHA-256 of a configuration's canonical JSON."""
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()


def _flat(values: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(values, dict):
        flat: dict[str, Any] = {}
        for key, value in values.items():
            flat.update(_flat(value, f"{prefix}{key}."))
        return flat
    return {prefix.rstrip("."): values}


def differences(before: dict[str, Any], now: dict[str, Any], limit: int = 5) -> list[str]:
    """'name (X there, Y now)' for the first `limit` options that differ (nested names
    dotted, e.g. `training.learning_rate`)."""
    old, new = _flat(before), _flat(now)
    names = [name for name in {**old, **new} if old.get(name, "unset") != new.get(name, "unset")]
    shown = [f"{name} ({old.get(name, 'unset')!r} there, {new.get(name, 'unset')!r} now)"
             for name in names[:limit]]  # fmt: skip
    return shown + ([f"… {len(names) - limit} more"] if len(names) > limit else [])
