"""Permutation importance of channel groups, on held-out tiles only.

For each group of channels (a sensor, a sensor's date, or a sensor's band across its dates)
the group's values, and those of every derived channel computed from them (a VIIRS date's
share of `viirs/max/DNB`, a band's spectral indices), are permuted between the subtiles of the
held-out tiles (every window gets the group from another window; the other channels stay),
the windows are predicted and restitched as `scripts.evaluate` does, and the drop of class-1
F1 and macro F1 from the unpermuted prediction is recorded: the drop of the counts pooled
over the seeded repeats with its 95 % paired bootstrap interval over tiles (one estimand),
and the std of the per-repeat drops. A checkpoint is scored on its own `val` or `test` tiles,
a cross-validation's model on each fold's held-out tiles (pooled out of fold, over every
repetition and seed); which tiles chose the models, and that no model trained on a scored
tile, is the held-out ledger's to say. A group the model does not read has importance 0.

Each part (one checkpoint on its held-out tiles: a cross-validation's fold) is a unit of work:
the same command started several times (on one machine, or on several sharing the folder with
working file locks) shares the parts as cross-validation workers share folds. A process claims
a part (`src.claims`), computes its baseline and permuted confusion matrices
into `<results_dir>.units/part_<k>.npz`, and once every part is there the results are written
(each process in turn, the same files); a dead process's part is computed by the next. The
units are reused by a later call only with the same evaluation and unchanged checkpoints.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from src.atomic import atomic_path, replaced_folder, write_json
from src.claims import Waiting, claimed, locked
from src.esd_data.dataset import ESDDataset
from src.esd_data.identity import DataIdentity
from src.esd_data.sensors import derived_followers, group_channels
from src.evaluation.bootstrap import (
    bootstrap_record,
    confusion,
    paired_difference,
    scores_of_confusion,
)
from src.evaluation.config import EvalConfig, ImportanceConfig
from src.evaluation.cv_record import read_fold_records, read_plan
from src.evaluation.evaluate import check_results_dir, processed_tiles, read_models
from src.evaluation.evaluator import Predictor
from src.evaluation.restitch import restitch_logits
from src.evaluation.tta import averaged_probabilities
from src.hardware import resolve_device
from src.held_out import Ledger
from src.progress import progress_disabled
from src.training.checkpoints import CheckpointError, load_module
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


def held_out_parts(config: ImportanceConfig) -> tuple[list[HeldOutPart], Ledger, str]:
    """The checkpoints, the held-out tiles each is scored on, the ledger of them all, and what
    they are. A cross-validation's folds (every repetition and seed of a repeated one) each
    score their held-out tiles, pooled per tile; several checkpoints must hold out distinct
    tiles (CheckpointError otherwise: one model at a time)."""
    if config.cv_dir is not None:
        records = read_fold_records(config.cv_dir)
        plan = read_plan(config.cv_dir)
        specs = [
            (r.checkpoint, EvalConfig(model_path=[r.checkpoint], processed_dir=r.folder / "data",
                                      split=r.scored_split), plan)
            for r in records
        ]  # fmt: skip
        what = f"the held-out tiles of each of the {len(records)} folds of {config.cv_dir}"
        if plan.get("repeats", 1) > 1 or len(plan.get("seeds", [0])) > 1:
            what += " (pooled: each tile's counts summed over the folds that held it out)"
    else:
        assert config.model_path is not None
        specs = [
            (p, EvalConfig(model_path=[p], split=config.split, processed_dir=config.processed_dir),
             None)
            for p in config.model_path
        ]  # fmt: skip
        what = f"each checkpoint's {config.split} tiles"
    parts, scorings = [], []
    for checkpoint, evaluation, cv_plan in specs:
        models = read_models([checkpoint], "", cv_plan)
        source = processed_tiles(evaluation, models)
        parts.append(HeldOutPart(checkpoint, models.identities[0], models.hparams[0],
                                 source.processed_dir, list(source.tiles)))  # fmt: skip
        scorings += source.ledger(models.members).parts
    if config.cv_dir is None:
        seen: dict[str, Path] = {}
        for part in parts:
            for tile in part.tiles:
                if tile in seen:
                    raise CheckpointError(
                        f"{tile} is held out by both {seen[tile]} and {part.checkpoint}: give "
                        f"one model's checkpoint, or a cross-validation's folds (--cv_dir)"
                    )
                seen[tile] = part.checkpoint
    ledger = Ledger(tuple(scorings))
    ledger.check()
    return parts, ledger, what


def _drop(baseline: np.ndarray, permuted: list[np.ndarray], resamples: int, seed: int) -> dict:
    """Each score's drop when the group is permuted: the score of the baseline's pooled counts
    minus that of the permuted counts pooled over the repeats, with the paired interval over
    tiles of that same difference; the std of the per-repeat drops says how much one
    permutation varies."""
    base = scores_of_confusion(baseline.sum(axis=0))
    record: dict[str, Any] = {}
    pooled = np.sum(permuted, axis=0)
    for score in DROPS:
        drops = [float(base[score] - scores_of_confusion(p.sum(axis=0))[score]) for p in permuted]
        paired = paired_difference(baseline * len(permuted), pooled, resamples, seed, score)
        record[score] = {
            "drop": paired["difference"],
            "interval": paired["interval"],
            "std": float(np.std(drops, ddof=1)) if len(drops) > 1 else 0.0,
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


def _pooled(tiles: list[str], matrices: np.ndarray) -> tuple[list[str], np.ndarray]:
    """Per-tile confusion matrices summed over the parts that scored the tile (tile order)."""
    order = list(dict.fromkeys(tiles))
    index = {tile: k for k, tile in enumerate(order)}
    pooled = np.zeros((len(order), *matrices.shape[1:]), dtype=matrices.dtype)
    np.add.at(pooled, [index[t] for t in tiles], matrices)
    return order, pooled


def _groups(channels: list[str], grouping: str) -> dict[str, tuple[list[str], list[str]]]:
    """Group → (its channels, the derived channels that follow them): a derived channel
    computed from a group's channel is permuted with it, so the group's information leaves
    the input entirely (a date's VIIRS image also moves `viirs/max/DNB`)."""
    return {
        name: (members, derived_followers(members, channels))
        for name, members in group_channels(channels, grouping).items()
    }


def _permutation_importance(config: ImportanceConfig, log: Callable[[str], None]) -> dict[str, Any]:
    parts, ledger, what = held_out_parts(config)
    device = resolve_device(config.accelerator)
    hparams = [part.hparams for part in parts]
    channels = list(hparams[0]["channels"])
    if any(list(hp["channels"]) != channels for hp in hparams):
        raise CheckpointError("the checkpoints read different channels: one model at a time")
    groups = {g: _groups(channels, g) for g in config.grouping}
    key = {
        "checkpoints": [str(part.checkpoint.resolve()) for part in parts],
        "processed_dirs": [str(part.processed_dir.resolve()) for part in parts],
        "tiles": [part.tiles for part in parts],
        "grouping": config.grouping, "repeats": config.repeats, "seed": config.seed,
        "bootstrap": [config.bootstrap_resamples, config.bootstrap_seed],
    }  # fmt: skip
    results_dir = config.results_dir or _default_results_dir(config, parts, hparams[0], key)
    check_results_dir(results_dir, key, "importance.json", "importance computation")
    work = [(g, name) for g in config.grouping for name in groups[g]]
    log(f"permuting {len(work)} channel group(s) over {len(ledger.scored)} held-out tiles")
    bar = tqdm(total=len(parts) * (1 + len(work)), desc="importance", unit="pass",
               disable=progress_disabled())  # fmt: skip

    def compute(index: int) -> dict[str, np.ndarray]:
        part = parts[index]
        predictor = Predictor(load_module(part.checkpoint, device), *part.identity.normalisation())
        windows = Windows(predictor, part, int(part.hparams["tile_size_gt"]))
        arrays = {"baseline": _confusions(predictor, windows, config.batch_size, device)}
        bar.update()
        for number, (grouping, name) in enumerate(work):
            members, derived = groups[grouping][name]
            moved = [channels.index(c) for c in members + derived]
            # The seed names the group and the part, so results do not depend on the order.
            digest = hashlib.sha256(f"{config.seed}/{index}/{grouping}/{name}".encode()).digest()
            rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
            arrays[f"work_{number}"] = np.array([
                _confusions(predictor, windows, config.batch_size, device, moved,
                            rng.permutation(len(windows.x)))
                for _ in range(config.repeats)
            ])  # fmt: skip
            bar.update()
        return arrays

    units = _units_folder(results_dir, key, parts)
    computed = _shared_parts(units, parts, compute, log)
    bar.close()
    baseline_parts = [arrays["baseline"] for arrays in computed]
    permuted_parts = {
        (grouping, name): [list(arrays[f"work_{number}"]) for arrays in computed]
        for number, (grouping, name) in enumerate(work)
    }
    part_tiles = [tile for part in parts for tile in part.tiles]
    tiles, baseline = _pooled(part_tiles, np.concatenate(baseline_parts))
    label = ledger.label
    result: dict[str, Any] = {
        "what": what,
        "optimistic": ledger.optimistic,
        "held_out": ledger.record(),
        "checkpoints": [str(part.checkpoint) for part in parts],
        "model_type": hparams[0]["model_type"],
        "tiles": tiles,
        "baseline": {k: float(v) for k, v in scores_of_confusion(baseline.sum(0)).items()},
        "method": "permutation of each channel group (and the derived channels computed from "
        "it) between the held-out subtiles",
        "repeats": config.repeats,
        "seed": config.seed,
        "bootstrap": bootstrap_record(config.bootstrap_resamples, config.bootstrap_seed, baseline),
        "groupings": {},
        "evaluation_key": key,
    }
    for grouping in config.grouping:
        rows = []
        for name, (members, derived) in groups[grouping].items():
            per_part = permuted_parts[(grouping, name)]
            permuted = [
                _pooled(part_tiles, np.concatenate([p[r] for p in per_part]))[1]
                for r in range(config.repeats)
            ]
            drop = _drop(baseline, permuted, config.bootstrap_resamples, config.bootstrap_seed)
            rows.append({"group": name, "channels": len(members), "derived": derived, **drop})
        rows.sort(key=lambda row: -row["f1_class1"]["drop"])
        result["groupings"][grouping] = rows
    with locked(units / LOCK_FILE), replaced_folder(results_dir) as staging:  # in turn
        for grouping, rows in result["groupings"].items():
            plot_importance(rows, grouping, result["baseline"]["f1_class1"],
                            staging / f"importance_{grouping}.png", label)  # fmt: skip
        _write_csv(staging / "importance.csv", result)
        write_json(staging / "importance.json", result)
    return result | {"results_dir": str(results_dir)}


LOCK_FILE = ".lock"


def _units_folder(results_dir: Path, key: dict[str, Any], parts: list[HeldOutPart]) -> Path:
    """`<results_dir>.units/`, its parts kept only when they were computed for `key` from
    the checkpoint files as they are now (size and time of each)."""
    folder = results_dir.with_name(f"{results_dir.name}.units")
    folder.mkdir(parents=True, exist_ok=True)
    files = [Path(part.checkpoint).stat() for part in parts]
    stamp = {"evaluation_key": key, "checkpoints": [[f.st_size, f.st_mtime_ns] for f in files]}
    with locked(folder / LOCK_FILE):
        recorded = folder / "key.json"
        if not recorded.is_file() or json.loads(recorded.read_text()) != stamp:
            for stale in folder.glob("part_*.npz"):
                stale.unlink()
            write_json(recorded, stamp)
    return folder


def _shared_parts(folder: Path, parts: list[HeldOutPart],
                  compute: Callable[[int], dict[str, np.ndarray]],
                  log: Callable[[str], None]) -> list[dict[str, np.ndarray]]:  # fmt: skip
    """Every part's arrays: read back when computed, computed when this process claims the
    part, waited for while another process holds it."""
    done: dict[int, dict[str, np.ndarray]] = {}
    pending = list(range(len(parts)))
    waiting = Waiting(log, "part(s) other processes are computing")
    while pending:
        held = []
        for index in pending:
            path = folder / f"part_{index}.npz"
            if not path.is_file():
                with claimed(folder / f"part_{index}") as mine:
                    if not mine:
                        held.append(index)
                        continue
                    if not path.is_file():  # not computed by another since we looked
                        started = time.perf_counter()
                        arrays = compute(index)
                        with atomic_path(path) as temporary, temporary.open("wb") as handle:
                            np.savez(handle, **arrays)
                        log(f"part {index + 1} of {len(parts)} ({parts[index].checkpoint}): "
                            f"computed by process {os.getpid()} in "
                            f"{time.perf_counter() - started:.1f} s")  # fmt: skip
            with np.load(path) as stored:
                done[index] = {name: stored[name] for name in stored.files}
        waiting.pause(len(held), len(pending))
        pending = held
    return [done[index] for index in range(len(parts))]


def _default_results_dir(config: ImportanceConfig, parts: list[HeldOutPart],
                         hparams: dict[str, Any], key: dict[str, Any]) -> Path:  # fmt: skip
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:8]
    if config.cv_dir is not None:
        return config.cv_dir / "importance" / digest
    run = parts[0].checkpoint.parent.name if len(parts) == 1 else f"{len(parts)}-checkpoints"
    return Path("data/importance") / hparams["model_type"] / f"{run}-{config.split}-{digest}"


def _write_csv(path: Path, result: dict[str, Any]) -> None:
    """One row per group: the drops with their intervals (empty below the tiles an interval
    needs), the derived channels that moved with it, and the held-out label."""
    label = result["held_out"]["label"]
    lines = ["grouping,group,channels,derived," + ",".join(
        f"drop_{s}_{k}" for s in DROPS for k in ("value", "low", "high", "std_over_repeats")
    ) + ",label"]  # fmt: skip
    for grouping, rows in result["groupings"].items():
        for row in rows:
            values = [
                "" if v is None else f"{v:.6f}"
                for s in DROPS
                for v in (row[s]["drop"], *(row[s]["interval"] or [None, None]), row[s]["std"])
            ]
            derived = " ".join(row["derived"])
            lines.append(f"{grouping},{row['group']},{row['channels']},{derived},"
                         + ",".join(values) + f",{label}")  # fmt: skip
    with atomic_path(path) as temporary:
        temporary.write_text("\n".join(lines) + "\n")


def format_importance(result: dict[str, Any]) -> str:
    """One table per grouping, most important first, with the intervals' tile count, the
    derived channels that moved with a group, and the held-out label."""
    held_out = result["held_out"]
    label = f" {held_out['label']}" if held_out["label"] else ""
    tiles = len(result["tiles"])
    note = result["bootstrap"].get("note")
    lines = [
        f"permutation importance on {result['what']} ({tiles} tiles; baseline f1_class1 "
        f"{result['baseline']['f1_class1']:.4f}{label}, f1_macro "
        f"{result['baseline']['f1_macro']:.4f}; {result['repeats']} permutations per group; "
        + (f"{note})" if note else f"95 % interval over {tiles} tiles)")
    ]
    for grouping, rows in result["groupings"].items():
        lines.append(f"by {grouping}:")
        lines.append(f"  {'group':<28}{'drop f1_class1':>26}{'drop f1_macro':>26}")
        for row in rows:
            cells = "".join(_drop_text(row[s]) for s in DROPS)
            moved = (
                f"  (with {', '.join(row['derived'])}, derived from it)" if row["derived"] else ""
            )
            lines.append(f"  {row['group']:<28}{cells}{moved}")
    if held_out["optimistic"]:
        lines.append(held_out["reason"])
    return "\n".join(lines)


def _drop_text(drop: dict[str, Any]) -> str:
    interval = drop["interval"]
    if interval is None:
        return f"{drop['drop']:>+9.4f}{'':17}"
    return f"{drop['drop']:>+9.4f} [{interval[0]:+.3f}, {interval[1]:+.3f}]"
