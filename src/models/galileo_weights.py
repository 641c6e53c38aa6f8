"""Galileo's pretrained encoder from a folder the user names (never downloaded).

The folder is the authors' release of an encoder (github.com/nasaharvest/galileo, folder
`data/models/nano`): `config.json`, whose `model.encoder` gives the architecture, and
`encoder.pt`, its state dict. Every problem is one line naming the file and what to do.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import torch

from src.models.galileo_encoder import NANO, SPACE_TIME, TIME, EncoderArchitecture, GalileoEncoder
from src.models.pretrained import read_state_dict

CONFIG_FILE = "config.json"
ENCODER_FILE = "encoder.pt"
NORMALIZATION_FILE = "normalization.json"
WEIGHTS_SOURCE = (
    "github.com/nasaharvest/galileo (data/models/nano/config.json, data/models/nano/encoder.pt, "
    "config/normalization.json)"
)
FOLDER_FILES = (CONFIG_FILE, ENCODER_FILE, NORMALIZATION_FILE)


def check_weights_folder(folder: str | os.PathLike[str] | None) -> Path:
    """The folder as a Path; ValueError unless it holds the three `FOLDER_FILES`."""
    if folder is None:
        raise ValueError(
            f"--pretrained Galileo reads its encoder from --weights_path DIR, a local folder "
            f"with {', '.join(FOLDER_FILES)} (nothing is downloaded; get them from "
            f"{WEIGHTS_SOURCE})"
        )
    path = Path(folder)
    missing = [name for name in FOLDER_FILES if not (path / name).is_file()]
    if missing:
        found = sorted(p.name for p in path.iterdir()) if path.is_dir() else None
        where = f"it holds {found}" if found is not None else "it is not a folder"
        raise ValueError(
            f"Galileo weights folder {path} lacks {', '.join(missing)} ({where}); it must "
            f"hold {', '.join(FOLDER_FILES)} from {WEIGHTS_SOURCE}"
        )
    return path


def read_architecture(config_file: Path) -> EncoderArchitecture:
    """The encoder architecture of a Galileo `config.json`; ValueError naming the file."""
    try:
        encoder = json.loads(config_file.read_text())["model"]["encoder"]
        values = {field.name: encoder[field.name] for field in dataclasses.fields(NANO)}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as error:
        raise ValueError(
            f"{config_file} is not a Galileo config.json with model.encoder "
            f"({type(error).__name__}: {error})"
        ) from None
    architecture = EncoderArchitecture(**values)
    if architecture != NANO:
        raise ValueError(
            f"{config_file} describes the encoder {values}; esd builds Galileo nano "
            f"({dataclasses.asdict(NANO)}): use the nano release"
        )
    return architecture


def to_encoder_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The authors' encoder state dict in `GalileoEncoder`'s names: a `.backbone` infix
    dropped (some releases have it), each block's q, k and v maps joined into timm's `qkv`."""
    state = {key.replace(".backbone", ""): value for key, value in state.items()}
    joined: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        prefix, _, leaf = key.rpartition(".")
        if prefix.endswith(".attn.q"):
            base = prefix[: -len(".q")]
            parts = [state.get(f"{base}.{name}.{leaf}") for name in ("q", "k", "v")]
            if any(part is None for part in parts):
                continue  # reported as missing by the strict load
            joined[f"{base}.qkv.{leaf}"] = torch.cat(parts, dim=0)
        elif not prefix.endswith((".attn.k", ".attn.v")):
            joined[key] = value
    return joined


def load_pretrained_encoder(encoder: GalileoEncoder, folder: str | os.PathLike[str]) -> None:
    """Load the encoder in `folder` into `encoder`; ValueError naming the file on any problem."""
    path = check_weights_folder(folder)
    read_architecture(path / CONFIG_FILE)
    weights = path / ENCODER_FILE
    state = to_encoder_state(read_state_dict(weights))
    own = encoder.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [
        f"{key} {tuple(state[key].shape)} (expected {tuple(own[key].shape)})"
        for key in sorted(set(own) & set(state))
        if state[key].shape != own[key].shape
    ]
    problems = [
        f"{what} {', '.join(keys[:3])}{' …' if len(keys) > 3 else ''}"
        for what, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
        if keys
    ]
    if problems:
        raise ValueError(
            f"{weights} does not fit Galileo nano's encoder ({'; '.join(problems)}): is it the "
            f"{ENCODER_FILE} of {WEIGHTS_SOURCE}?"
        )
    encoder.load_state_dict(state, strict=True)


def read_pretraining_statistics(folder: Path) -> dict[str, tuple[list[float], list[float]]]:
    """Per input kind (`"13"` space-time, `"6"` time bands) the pretraining mean and std."""
    path = folder / NORMALIZATION_FILE
    try:
        values = json.loads(path.read_text())
        stats = {key: (list(values[key]["mean"]), list(values[key]["std"])) for key in ("13", "6")}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as error:
        raise ValueError(
            f"{path}: no Galileo pretraining statistics ({type(error).__name__}: {error}); the "
            f"folder needs the one of {WEIGHTS_SOURCE}"
        ) from None
    for key, size in (("13", len(SPACE_TIME.bands)), ("6", len(TIME.bands))):
        if len(stats[key][0]) != size or len(stats[key][1]) != size:
            raise ValueError(f"{path}: {key!r} must hold {size} means and stds")
    return stats
