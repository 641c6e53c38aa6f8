"""Permutation importance of channel groups, on held-out tiles only.

For each group of channels (a sensor, a sensor's date, or a sensor's band across its dates)
the group's values are permuted between the subtiles of the held-out tiles (every window
gets the group from another window; the other channels stay), the windows are predicted and
restitched as `scripts.evaluate` does, and the drop of class-1 F1 and macro F1 from the
unpermuted prediction is recorded: its mean over the seeded repeats, the std over them, and
a 95 % paired bootstrap interval over tiles. A checkpoint is scored on its own `val` or `test`
tiles, a cross-validation's model on each fold's held-out tiles (pooled out of fold); the
tiles a model trained on are never read. A group the model does not read has importance 0.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from src.atomic import atomic_path, replaced_folder, write_json
from src.esd_data.dataset import ESDDataset
from src.esd_data.identity import DataIdentity
from src.esd_data.sensors import group_channels
from src.evaluation.bootstrap import (
    bootstrap_record,
    confusion,
    paired_difference,
    scores_of_confusion,
)
from src.evaluation.config import EvalConfig, ImportanceConfig
from src.evaluation.cv_record import read_fold_records
from src.evaluation.evaluate import check_results_dir, processed_tiles
from src.evaluation.evaluator import Predictor
from src.evaluation.restitch import restitch_logits
from src.evaluation.tta import averaged_probabilities
from src.hardware import resolve_device
from src.progress import progress_disabled
from src.training.checkpoints import CheckpointError, data_identity, load_module, read_checkpoint
from src.visualization.evaluation_plots import plot_importance
from src.visualization.figure_output import figure_output

DROPS = ("f1_class1", "f1_macro")
"""The scores whose drop is recorded."""


@dataclass(frozen=True)
class HeldOutPart:
    """One checkpoint (its data identity and hyper-parameters, read once) and the held-out
    tiles of its processed folder it is scored on."""

    checkpoint: Path
    identity: DataIdentity
    hparams: dict[str, Any]
    processed_dir: Path
    tiles: list[str]


class Windows:
    """Every window of a part's tiles, as stored (float16), with their places and truths."""

    def __init__(self, predictor: Predictor, part: HeldOutPart, tile_size_gt: int) -> None:
        dataset = ESDDataset(
            part.processed_dir, "predict", tile_size_gt, bands=predictor.channels,
            tiles=part.tiles, normalise=False,
        )  # fmt: skip
        items = [dataset[k] for k in range(len(dataset))]
        self.x = torch.stack([item["X"] for item in items])
        self.rows = [item["row"] for item in items]
        self.cols = [item["col"] for item in items]
        self.origins = dataset.origins
        self.per_tile = len(dataset.origins) ** 2
        self.tiles = part.tiles
        self.truths = [dataset.tile_labels(tile) for tile in part.tiles]
        if any(truth is None for truth in self.truths):
            raise CheckpointError("permutation importance needs labelled tiles")


def _confusions(
    predictor: Predictor, windows: Windows, batch_size: int, device: torch.device,
    channels: list[int] | None = None, permutation: np.ndarray | None = None,
) -> np.ndarray:  # fmt: skip
    """Per-tile confusion matrices of the prediction of `windows`, with `channels` taken
    from the windows `permutation` names (none: as they are)."""
    probabilities = []
    with torch.no_grad():
        for start in range(0, len(windows.x), batch_size):
            batch = windows.x[start : start + batch_size].clone()
            if channels is not None and permutation is not None:
                donors = torch.as_tensor(permutation[start : start + batch_size])
                batch[:, channels] = windows.x[donors][:, channels]
            x = predictor.normalise(batch.to(device))
            probabilities.append(averaged_probabilities(predictor.module, x, "none").cpu().numpy())
    stacked = np.concatenate(probabilities)
    matrices = []
    for k, truth in enumerate(windows.truths):
        window = slice(k * windows.per_tile, (k + 1) * windows.per_tile)
        tile = restitch_logits(stacked[window], windows.rows[window], windows.cols[window],
                               windows.origins)  # fmt: skip
        matrices.append(confusion(truth, tile.argmax(axis=0) + 1))
    return np.array(matrices)


OPTIMISTIC_NOTE = (
    "; these tiles chose the checkpoints' epoch (validation split or --selection outer), so "
    "the baseline scores are OPTIMISTIC: use --split test or a cross-validation with "
    "--selection inner or last"
)


def held_out_parts(config: ImportanceConfig) -> tuple[list[HeldOutPart], str, bool]:
    """The checkpoints and their held-out tiles, what they are, and whether those tiles chose
    the checkpoints' epoch (optimistic); CheckpointError when two parts share a tile (one
    model at a time, or a cross-validation's folds)."""
    if config.cv_dir is not None:
        records = read_fold_records(config.cv_dir)
        specs = [
            (
                r.checkpoint,
                EvalConfig(
                    model_path=[r.checkpoint], processed_dir=r.folder / "data", split=r.scored_split
                ),
            )
            for r in records
        ]
        optimistic = any(r.scored_split == "val" for r in records)
        what = f"the held-out tiles of each of the {len(specs)} folds of {config.cv_dir}"
    else:
        assert config.model_path is not None
        specs = [
            (p, EvalConfig(model_path=[p], split=config.split, processed_dir=config.processed_dir))
            for p in config.model_path
        ]
        optimistic = config.split == "val"
        what = f"each checkpoint's {config.split} tiles"
    parts = []
    for checkpoint, evaluation in specs:
        saved = read_checkpoint(checkpoint)  # once: what is needed is kept, not the weights
        identity = data_identity(saved, checkpoint)
        source = processed_tiles(evaluation, [identity])
        parts.append(HeldOutPart(checkpoint, identity, saved["hyper_parameters"],
                                 source.processed_dir, list(source.tiles)))  # fmt: skip
        del saved
    seen: dict[str, Path] = {}
    for part in parts:
        for tile in part.tiles:
            if tile in seen:
                raise CheckpointError(
                    f"{tile} is held out by both {seen[tile]} and {part.checkpoint}: give one "
                    f"model's checkpoint, or a cross-validation's folds (--cv_dir)"
                )
            seen[tile] = part.checkpoint
    return parts, what + (OPTIMISTIC_NOTE if optimistic else ""), optimistic


def _drop(baseline: np.ndarray, permuted: list[np.ndarray], resamples: int, seed: int) -> dict:
    """Mean and std over repeats of each score's drop, and its paired interval over tiles."""
    base = scores_of_confusion(baseline.sum(axis=0))
    record: dict[str, Any] = {}
    pooled = np.sum(permuted, axis=0)
    for score in DROPS:
        drops = [float(base[score] - scores_of_confusion(p.sum(axis=0))[score]) for p in permuted]
        paired = paired_difference(baseline * len(permuted), pooled, resamples, seed, score)
        record[score] = {
            "mean": float(np.mean(drops)),
            "std": float(np.std(drops, ddof=1)) if len(drops) > 1 else 0.0,
            "interval": paired["interval"],
            "repeats": drops,
        }
    return record


def permutation_importance(
    config: ImportanceConfig, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Compute and write `importance.json`, `importance.csv` and one bar chart per grouping
    into the results folder; returns what `importance.json` holds."""
    with figure_output(config):
        return _permutation_importance(config, log)


def _permutation_importance(config: ImportanceConfig, log: Callable[[str], None]) -> dict[str, Any]:
    parts, what, optimistic = held_out_parts(config)
    device = resolve_device(config.accelerator)
    hparams = [part.hparams for part in parts]
    channels = list(hparams[0]["channels"])
    if any(list(hp["channels"]) != channels for hp in hparams):
        raise CheckpointError("the checkpoints read different channels: one model at a time")
    groups = {g: group_channels(channels, g) for g in config.grouping}
    key = {
        "checkpoints": [str(part.checkpoint.resolve()) for part in parts],
        "processed_dirs": [str(part.processed_dir.resolve()) for part in parts],
        "tiles": [part.tiles for part in parts],
        "grouping": config.grouping, "repeats": config.repeats, "seed": config.seed,
        "bootstrap": [config.bootstrap_resamples, config.bootstrap_seed],
    }  # fmt: skip
    results_dir = config.results_dir or _default_results_dir(config, parts, hparams[0], key)
    check_results_dir(results_dir, key, "importance.json", "importance computation")
    log(f"permutation importance on {what}: {sum(len(p.tiles) for p in parts)} tiles")
    baseline_parts, permuted_parts = [], {}
    work = [(g, name) for g in config.grouping for name in groups[g]]
    bar = tqdm(total=len(parts) * (1 + len(work)), desc="importance", unit="pass",
               disable=progress_disabled())  # fmt: skip
    for index, part in enumerate(parts):
        predictor = Predictor(load_module(part.checkpoint, device), *part.identity.normalisation())
        windows = Windows(predictor, part, int(part.hparams["tile_size_gt"]))
        baseline_parts.append(_confusions(predictor, windows, config.batch_size, device))
        bar.update()
        for grouping, name in work:
            members = [channels.index(c) for c in groups[grouping][name]]
            # The seed names the group and the part, so results do not depend on the order.
            digest = hashlib.sha256(f"{config.seed}/{index}/{grouping}/{name}".encode()).digest()
            rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
            repeats = [
                _confusions(
                    predictor,
                    windows,
                    config.batch_size,
                    device,
                    members,
                    rng.permutation(len(windows.x)),
                )
                for _ in range(config.repeats)
            ]
            permuted_parts.setdefault((grouping, name), []).append(repeats)
            bar.update()
    bar.close()
    baseline = np.concatenate(baseline_parts)
    tiles = [tile for part in parts for tile in part.tiles]
    result: dict[str, Any] = {
        "what": what,
        "optimistic": optimistic,
        "checkpoints": [str(part.checkpoint) for part in parts],
        "model_type": hparams[0]["model_type"],
        "tiles": tiles,
        "baseline": {k: float(v) for k, v in scores_of_confusion(baseline.sum(0)).items()},
        "method": "permutation of each channel group between the held-out subtiles",
        "repeats": config.repeats,
        "seed": config.seed,
        "bootstrap": bootstrap_record(
            config.bootstrap_resamples, config.bootstrap_seed, len(tiles)
        ),
        "groupings": {},
        "evaluation_key": key,
    }
    for grouping in config.grouping:
        rows = []
        for name in groups[grouping]:
            per_part = permuted_parts[(grouping, name)]
            permuted = [np.concatenate([p[r] for p in per_part]) for r in range(config.repeats)]
            drop = _drop(baseline, permuted, config.bootstrap_resamples, config.bootstrap_seed)
            rows.append({"group": name, "channels": len(groups[grouping][name]), **drop})
        rows.sort(key=lambda row: -row["f1_class1"]["mean"])
        result["groupings"][grouping] = rows
    with replaced_folder(results_dir) as staging:
        for grouping, rows in result["groupings"].items():
            plot_importance(rows, grouping, result["baseline"]["f1_class1"],
                            staging / f"importance_{grouping}.png")  # fmt: skip
        _write_csv(staging / "importance.csv", result)
        write_json(staging / "importance.json", result)
    return result | {"results_dir": str(results_dir)}


def _default_results_dir(config: ImportanceConfig, parts: list[HeldOutPart],
                         hparams: dict[str, Any], key: dict[str, Any]) -> Path:  # fmt: skip
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:8]
    if config.cv_dir is not None:
        return config.cv_dir / "importance" / digest
    run = parts[0].checkpoint.parent.name if len(parts) == 1 else f"{len(parts)}-checkpoints"
    return Path("data/importance") / hparams["model_type"] / f"{run}-{config.split}-{digest}"


def _write_csv(path: Path, result: dict[str, Any]) -> None:
    lines = ["grouping,group,channels," + ",".join(
        f"drop_{s}_{k}" for s in DROPS for k in ("mean", "std", "low", "high"))]  # fmt: skip
    for grouping, rows in result["groupings"].items():
        for row in rows:
            values = [
                v for s in DROPS for v in (row[s]["mean"], row[s]["std"], *row[s]["interval"])
            ]
            lines.append(f"{grouping},{row['group']},{row['channels']},"
                         + ",".join(f"{v:.6f}" for v in values))  # fmt: skip
    with atomic_path(path) as temporary:
        temporary.write_text("\n".join(lines) + "\n")


def format_importance(result: dict[str, Any]) -> str:
    """One table per grouping, most important first."""
    lines = [
        f"permutation importance on {result['what']} ({len(result['tiles'])} tiles; baseline "
        f"f1_class1 {result['baseline']['f1_class1']:.4f}, f1_macro "
        f"{result['baseline']['f1_macro']:.4f}; {result['repeats']} permutations per group; "
        f"95 % interval over tiles)"
    ]
    for grouping, rows in result["groupings"].items():
        lines.append(f"by {grouping}:")
        lines.append(f"  {'group':<28}{'drop f1_class1':>26}{'drop f1_macro':>26}")
        for row in rows:
            cells = "".join(
                f"{row[s]['mean']:>+9.4f} [{row[s]['interval'][0]:+.3f}, "
                f"{row[s]['interval'][1]:+.3f}]"
                for s in DROPS
            )
            lines.append(f"  {row['group']:<28}{cells}")
    return "\n".join(lines)
