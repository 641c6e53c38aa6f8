"""Read training checkpoints: clear errors, the module without its weights files, provenance."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from src.esd_data.identity import DataIdentity
from src.held_out import Member
from src.models.registry import without_pretrained_loading
from src.training.module import DATA_IDENTITY_KEY, ESDSegmentation


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable, or does not fit the data it is used with."""


def read_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint's contents (on the CPU), with a clear error for a missing or corrupt file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({type(error).__name__}: {error}); is it a "
            f"checkpoint written by scripts.train, and complete?"
        ) from error
    if not isinstance(checkpoint, dict) or "hyper_parameters" not in checkpoint:
        raise CheckpointError(f"{path} is not a checkpoint written by scripts.train")
    return checkpoint


def data_identity(checkpoint: dict[str, Any], path: Path) -> DataIdentity:
    """The `DataIdentity` stored in a checkpoint; CheckpointError for one without it."""
    values = checkpoint.get(DATA_IDENTITY_KEY)
    if values is None:
        raise CheckpointError(
            f"{path} does not record the data it was trained on (a checkpoint of an older "
            f"esd): retrain it with python -m scripts.train"
        )
    return DataIdentity.from_dict(values)


def held_out_member(checkpoint: dict[str, Any], path: Path) -> Member:
    """The checkpoint as a member of the held-out ledger: its training tiles and, when its
    run validated, its val tiles, which chose its epoch (best checkpoint, early stopping, the
    plateau schedule; a sweep's trials are also chosen among on them)."""
    identity = data_identity(checkpoint, path)
    hparams = checkpoint["hyper_parameters"]
    run = hparams.get("run_config") or {}
    hashes = identity.tile_hashes
    validated = run.get("limit_val_batches", 1.0) != 0
    chose = identity.split.get("val", []) if validated else []
    member = Member(
        str(path),
        {tile: hashes[tile] for tile in identity.split.get("train", [])},
        {tile: hashes[tile] for tile in chose},
        f"its epoch, by {hparams.get('monitor', 'the monitored metric')} on its val split"
        if chose
        else "",
        str(Path(identity.raw_dir).resolve()),
    )
    chooser = run.get("chosen_on")  # its settings, chosen by a sweep on these tiles
    if chooser:
        tiles = member.in_own_folder(chooser["tiles"], chooser.get("raw_dir", ""))
        member = member.choosing(tiles, f"its settings, by {chooser['by']}")
    for teacher in (run.get("pseudo_labels") or {}).get("teachers", []):
        member = member.taught_by(Member.from_dict(teacher))
    return member


def check_weights_fit(module: torch.nn.Module, checkpoint: dict[str, Any], path: Path) -> None:
    """CheckpointError, before any training, when the checkpoint's weights do not fit the
    module its run builds (a replaced or damaged file)."""
    try:
        module.load_state_dict(checkpoint.get("state_dict", {}), strict=True)
    except RuntimeError as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CheckpointError(
            f"{path}: its weights do not fit the {type(module).__name__} its run builds "
            f"({reason}); is it this run's checkpoint, and complete?"
        ) from None


def load_module(path: Path, device: torch.device | str = "cpu") -> ESDSegmentation:
    """The trained module in eval mode on `device`.

    Its weights come from the checkpoint, so weights files named in its hyper-parameters
    (`pretrained`, `weights_path`) are not read: a checkpoint evaluates on any machine.
    """
    checkpoint = read_checkpoint(path)
    hparams = checkpoint["hyper_parameters"]
    model_hparams = without_pretrained_loading(dict(hparams.get("model_hparams") or {}))
    try:
        module = ESDSegmentation.load_from_checkpoint(
            path, map_location=device, model_hparams=model_hparams, weights_only=True
        )
    except (RuntimeError, KeyError, TypeError, ValueError) as error:
        raise CheckpointError(
            f"checkpoint {path} does not fit this version's {hparams.get('model_type')} "
            f"({type(error).__name__}: {error})"
        ) from error
    return module.eval()
