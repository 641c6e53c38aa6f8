"""Experiment loggers: always a CSV log on disk, plus W&B online, offline or not at all."""

from __future__ import annotations

import netrc
import os
import sys
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger

WandbMode = Literal["auto", "online", "offline", "disabled"]


def wandb_logged_in() -> bool:
    """Whether a W&B API key is configured (WANDB_API_KEY or ~/.netrc); no network is used."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc().authenticators(host or "api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def resolve_wandb_mode(mode: WandbMode) -> str:
    """`online` only when logged in (else `offline`, with a note); `auto` picks the same way."""
    if mode in ("offline", "disabled"):
        return mode
    if wandb_logged_in() and os.environ.get("WANDB_MODE") != "offline":
        return "online"
    if mode == "online":
        print(
            "W&B: not logged in (run `wandb login`), logging offline instead; upload later "
            "with `wandb sync`",
            file=sys.stderr,
        )
    return "offline"


def build_loggers(
    log_dir: Path,
    model_type: str,
    run_name: str,
    wandb_mode: WandbMode,
    wandb_project: str,
    config: dict[str, Any],
) -> list[Logger]:
    """A CSVLogger (`log_dir/<model_type>/<run_name>/metrics.csv`) and, unless disabled, W&B.

    W&B offline runs go to `log_dir/wandb/offline-run-*` (upload them with `wandb sync`).
    """
    loggers: list[Logger] = [CSVLogger(log_dir, name=model_type, version=run_name)]
    mode = resolve_wandb_mode(wandb_mode)
    if mode == "disabled":
        return loggers
    Path(log_dir).mkdir(parents=True, exist_ok=True)
    import wandb

    loggers.append(
        WandbLogger(
            project=wandb_project,
            name=run_name,
            save_dir=str(log_dir),
            offline=mode == "offline",
            config=config,
            settings=wandb.Settings(mode=mode, init_timeout=60, silent=True),
        )
    )
    return loggers
