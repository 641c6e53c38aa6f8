"""The student's data: the labelled folder's split with pseudo-labelled tiles added to train.

Like a cross-validation's fold view, the student's folder holds only a manifest: the labelled
folder's tiles and the unlabelled tiles' image files by absolute path (nothing copied; a file
changed since is found by `Manifest.check_files`), the pseudo-labels in the self-training's
folder, the labelled training tiles' statistics. Val and test stay the labelled folder's, so
the student is chosen and scored on labelled tiles only.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from src.esd_data.manifest import Manifest, TileRecord
from src.esd_data.reader import tile_number


def pseudo_record(source: TileRecord, source_dir: Path) -> dict[str, Any]:
    """What the pseudo-label set stores of an unlabelled tile's image (absolute path, size,
    hashes), from which `student_manifest` makes its tile record."""
    return asdict(source.absolute(source_dir))


def student_manifest(
    labelled: Manifest, labelled_dir: Path, pseudo: dict[str, dict[str, Any]], pseudo_dir: Path
) -> Manifest:
    """The student's manifest: `labelled`'s train, val and test, and the tiles of `pseudo`
    (name → `pseudo_record`) in train with their labels `pseudo_dir/<name>.npy`."""
    kept = labelled.labelled_tiles()
    clash = sorted(set(pseudo) & set(labelled.tiles) & set(kept), key=tile_number)
    if clash:
        raise ValueError(f"pseudo-labelled tile(s) {', '.join(clash)} are labelled tiles' names")
    tiles = {name: labelled.tiles[name].absolute(labelled_dir) for name in kept}
    for name, values in pseudo.items():
        labels = str(Path(pseudo_dir).resolve() / f"{name}.npy")
        tiles[name] = TileRecord(**{**values, "labels": labels})
    split = {
        "train": sorted([*labelled.split["train"], *pseudo], key=tile_number),
        "val": list(labelled.split["val"]),
        "test": list(labelled.split["test"]),
        "predict": [],
    }
    return replace(labelled, split=split, tiles=tiles).sealed()
