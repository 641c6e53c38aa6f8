"""A cross-validation's shared outputs: every model's out-of-fold evaluation and learning
curves, the paired comparisons and the summary, written once every unit is done (by each
worker in turn) or by `--summarize` from the units finished so far.

A partial summary is written under other names (`partial_summary.json` and `.csv`, its
`partial` line and `missing` units first) and its printed table starts with that PARTIAL line:
`scripts.compare`, `scripts.report` and `scripts.evaluate --cv_dir` read `summary.json` and the
finished folds only, so none of them takes it for the complete one, and the complete summary
removes it. Its out-of-fold scores pool the finished units' held-out tiles (scored in a scratch
folder: the models' `oof/` folders are the complete run's); models compare on the same tiles
only.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any

from src.cross_validation.claims import open_claims
from src.cross_validation.config import CVConfig
from src.cross_validation.out_of_fold import repeated_out_of_fold
from src.cross_validation.summary import (
    PARTIAL_STEM,
    headline_order,
    model_summary,
    pair_models,
    write_summary,
)
from src.esd_data.manifest import Manifest
from src.evaluation.cv_record import (
    FOLD_RESULT_FILE,
    FOLDS_FILE,
    CVRecordError,
    read_json,
)
from src.visualization.learning_curves import plot_learning_curves

VAL_LABELS = {"inner": "inner val", "outer": "held-out val", "last": "val"}
"""What a fold's validation curve is, by selection rule: an inner split of its training
tiles, or its held-out tiles themselves (`last` validates nothing)."""

Results = dict[str, list[dict[str, Any] | None]]
"""Per model (in the plan's order), each unit's result in the order of their folders (None:
not finished)."""


def write_outputs(root: Path, plan: dict[str, Any], cv: CVConfig, results: Results,
                  manifest: Manifest, processed: Path) -> dict[str, Any]:  # fmt: skip
    """Write the outputs of `results`, complete or, when a unit is missing, partial; returns
    the summaries of the models (leaderboard order), their pairs and the printed summary."""
    missing = [
        {"model": name, "fold": k, **plan["units"][k], "tiles": plan["folds"][k]}
        for name, units in results.items()
        for k, result in enumerate(units)
        if result is None
    ]
    if missing:
        summaries = _partial(root, plan, cv, results, manifest, processed)
    else:
        for leftover in root.glob(f"{PARTIAL_STEM}.*"):  # the complete summary replaces it
            leftover.unlink()
        summaries = [_complete(root / name, reference_of(name, plan), plan, cv, units, manifest,
                               processed) for name, units in results.items()]  # fmt: skip
    summaries.sort(key=headline_order)
    pairs = pair_models(summaries, cv)
    printed = write_summary(root, summaries, pairs, plan, cv, missing)
    return {"models": summaries, "pairs": pairs, "printed": printed}


def _complete(
    model_dir: Path, reference: str | None, plan: dict[str, Any], cv: CVConfig,
    units: list[dict[str, Any]], manifest: Manifest, processed: Path,
) -> dict[str, Any]:  # fmt: skip
    """A model's summary, its out-of-fold outputs in `oof/` and its learning curves."""
    # an ablation variant's figures are drawn where pictures are looked at (`all`)
    figures = cv.tile_pictures == "all" or reference is None
    oof = repeated_out_of_fold(model_dir / "oof", model_dir, units, manifest, processed, cv,
                               figures)  # fmt: skip
    if figures:
        curves = {f"fold {r['fold']}": _metrics_csv(model_dir, r["fold"]) for r in units}
        plot_learning_curves(
            {k: v for k, v in curves.items() if v is not None},
            f"{model_dir.name}: learning curves of the {len(units)} folds",
            model_dir / "learning_curves.png",
            val_label=VAL_LABELS[cv.selection],
        )
    return model_summary(model_dir.name, reference, units, oof, cv.selection, plan)


def _partial(root: Path, plan: dict[str, Any], cv: CVConfig, results: Results,
             manifest: Manifest, processed: Path) -> list[dict[str, Any]]:  # fmt: skip
    """The summaries of the models with a finished unit, from those units (their out-of-fold
    outputs in a scratch folder); CVRecordError when no unit has finished."""
    summaries = []
    with tempfile.TemporaryDirectory(dir=root, prefix=".partial-") as scratch:
        for name, units in results.items():
            finished = [result for result in units if result is not None]
            if finished:
                oof = repeated_out_of_fold(Path(scratch) / name, root / name, units, manifest,
                                           processed, cv, figures=False)  # fmt: skip
                summaries.append(model_summary(name, reference_of(name, plan), finished, oof,
                                               cv.selection, plan))  # fmt: skip
    if not summaries:
        raise CVRecordError(
            f"no unit of {root} has finished: nothing to summarize (python -m "
            f"scripts.cross_validate --status {root} says where it stands)"
        )
    return summaries


def _metrics_csv(model_dir: Path, fold: int) -> Path | None:
    """The fold's `metrics.csv` (None when its logs are gone)."""
    return next((model_dir / f"fold_{fold}" / "logs").rglob("metrics.csv"), None)


def summarize_folder(root: Path, options: CVConfig) -> str:
    """`--summarize`: the outputs of the cross-validation in `root` from its finished units
    (its plan, options and data read from the folder; nothing trained); returns the printed
    summary. CVRecordError or ValueError in one line for a folder that cannot be summarized."""
    if not (root / FOLDS_FILE).is_file():
        raise CVRecordError(
            f"{root} is not a cross-validation's folder (no {FOLDS_FILE}): pass "
            f"<output_dir>/<name> of python -m scripts.cross_validate"
        )
    plan = read_json(root / FOLDS_FILE)
    processed = Path(plan["processed_dir"])
    try:
        manifest = Manifest.load(processed)
    except (OSError, ValueError) as error:
        raise CVRecordError(f"{root}'s processed folder cannot be read: {error}") from None
    if manifest.fingerprint != plan["data_fingerprint"]:
        raise CVRecordError(
            f"{processed} was prepared again since {root} ran (another data fingerprint): its "
            f"folds' tiles cannot be scored against it"
        )
    cv, units = recorded_options(plan, options), len(plan["folds"])
    results = {
        name: [_finished(root / name / f"fold_{k}", plan, name, k) for k in range(units)]
        for name in plan["configuration"]["models"]
    }
    with open_claims(root, plan, options.storage, options.lease_s, worker=False).turn():
        return write_outputs(root, plan, cv, results, manifest, processed)["printed"]


def recorded_options(plan: dict[str, Any], options: CVConfig) -> CVConfig:
    """The options the cross-validation of `plan` ran with (its protocol, and the outputs'
    options the first worker recorded; `options`' where the plan records none)."""
    models = plan["configuration"]["models"]
    protocol = next(iter(models.values()))["protocol"]
    full = [name for name, model in models.items() if reference_of(name, plan) is None]
    return dataclasses.replace(
        options,
        folds=protocol["folds"],
        repeats=plan["repeats"],
        seeds=len(plan["seeds"]),
        model_type=[models[name]["training"]["model_type"] for name in full],
        model_options=None,
        selection=protocol["selection"],
        inner_val_fraction=protocol.get("inner_val_fraction", options.inner_val_fraction),
        tta=protocol["tta"],
        decision=protocol.get("decision", "argmax"),
        **plan.get("outputs", {}),
    )


def _finished(fold_dir: Path, plan: dict[str, Any], name: str, k: int) -> dict[str, Any] | None:
    """The unit's result (None: not finished); CVRecordError when it was trained with other
    options than the plan's."""
    path = fold_dir / FOLD_RESULT_FILE
    if not path.is_file():
        return None
    result = read_json(path)
    model = plan["configuration"]["models"][name]
    wanted = {**model["training"], "seed": plan["units"][k]["seed"]}
    recorded = result.get("configuration", {})
    if recorded.get("training") != wanted or recorded.get("protocol") != model["protocol"]:
        raise CVRecordError(
            f"{path} holds results of another configuration than its cross-validation's "
            f"plan: delete {fold_dir} to train the fold again"
        )
    return result


def reference_of(name: str, plan: dict[str, Any]) -> str | None:
    """The full model the model `name` of `plan` is compared with: its model type for an
    ablation variant (`<model type>-<what>`, see `src.cross_validation.variants`), None for
    a full model."""
    model_type = plan["configuration"]["models"][name]["training"]["model_type"]
    return None if name == model_type else model_type
