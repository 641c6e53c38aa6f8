"""Training runs, from their log folders (`status.json`, `metrics.csv`, `hparams.yaml`) and
checkpoint folders (`*.ckpt`), `<model_type>/<run>` in both."""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path
from typing import Any

import yaml

from src.esd_data.preparation import runs_of
from src.run_listing.records import DataUse, Listed, current_fingerprint, data_use, short
from src.training.run_folder import read_status

METRICS_FILE = "metrics.csv"
HPARAMS_FILE = "hparams.yaml"
"""Written by Lightning's CSV logger beside `metrics.csv`: the module's hyper-parameters,
the run's whole configuration (`run_config`) among them."""
RUN_SCORE = "val_f1_class1"


def runs(logs: list[Path], checkpoints: list[Path]) -> list[Listed]:
    """One run per log folder (with its checkpoint folder), then one per checkpoint folder
    that no log folder claims."""
    left = list(checkpoints)
    found = []
    for log in logs:
        config = logged_config(log)
        folder = _checkpoint_folder(log, config, left)
        if folder in left:
            left.remove(folder)
        found.append(_run(log, log, folder or _beside(config, "checkpoint_dir", log), config))
    return found + [_run(folder, None, folder, None) for folder in left]


def _checkpoint_folder(
    log: Path, config: dict[str, Any] | None, candidates: list[Path]
) -> Path | None:
    """The checkpoint folder, among `candidates`, of the run logged in `log`: the one its
    configuration names, else the only one of the same `<model_type>/<run>`."""
    same = [c for c in candidates if (c.parent.name, c.name) == (log.parent.name, log.name)]
    named = _beside(config, "checkpoint_dir", log)
    chosen = next((c for c in same if named is not None and c.resolve() == named.resolve()), None)
    if chosen is None and len(same) == 1:
        chosen = same[0]
    return chosen


def _beside(config: dict[str, Any] | None, option: str, folder: Path) -> Path | None:
    """The run's other folder (`checkpoint_dir` or `log_dir`), `<model_type>/<run>` as
    `folder`, where its configuration puts it (None when not there)."""
    root = (config or {}).get(option)
    other = None if not root else Path(root) / folder.parent.name / folder.name
    return other if other is not None and other.is_dir() else None


def logged_config(log: Path) -> dict[str, Any] | None:
    """The run's configuration from its logged hyper-parameters (None when not there)."""
    try:
        values = yaml.safe_load((log / HPARAMS_FILE).read_text())
    except (OSError, yaml.YAMLError):
        return None
    config = values.get("run_config") if isinstance(values, dict) else None
    return config if isinstance(config, dict) else None


def _checkpoint_file(folder: Path | None) -> Path | None:
    """The run's `last.ckpt`, else its newest checkpoint."""
    if folder is None:
        return None
    if (folder / "last.ckpt").is_file():
        return folder / "last.ckpt"
    files = sorted(folder.glob("*.ckpt"), key=lambda p: p.stat().st_mtime)
    return files[-1] if files else None


class _Checkpoint:
    """A run's checkpoint, read once, when first needed (nothing when unreadable)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._contents: dict[str, Any] | None = None
        self._read = path is None

    def contents(self) -> dict[str, Any] | None:
        if not self._read:
            from src.training.checkpoints import read_checkpoint

            self._read = True
            with contextlib.suppress(ValueError):
                self._contents = read_checkpoint(self.path)  # type: ignore[arg-type]
        return self._contents

    def config(self) -> dict[str, Any] | None:
        """The run's saved configuration."""
        from src.training.resume import saved_run_config

        contents = self.contents()
        with contextlib.suppress(ValueError):
            return None if contents is None else saved_run_config(contents, self.path)  # type: ignore[arg-type]
        return None

    def data(self) -> DataUse | None:
        """The processed folder and fingerprint recorded in the checkpoint."""
        from src.training.checkpoints import data_identity

        contents = self.contents()
        with contextlib.suppress(ValueError):
            if contents is not None:
                identity = data_identity(contents, self.path)  # type: ignore[arg-type]
                return data_use(identity.processed_dir, identity.fingerprint)
        return None


def _run(anchor: Path, log: Path | None, folder: Path | None,
         config: dict[str, Any] | None) -> Listed:  # fmt: skip
    """A run, found at `anchor`, from its log folder and/or checkpoint folder."""
    checkpoint = _Checkpoint(_checkpoint_file(folder))
    config = config or checkpoint.config()
    if log is None and folder is not None:
        log = _beside(config, "log_dir", folder)
    data = _run_data(config, folder, checkpoint)
    return Listed(
        kind="run",
        name=anchor.name,
        path=anchor,
        status=run_status(read_status(log) if log is not None else {}),
        score=_run_score(log),
        config=config,
        data=[data] if data is not None else [],
    )


def run_status(state: dict[str, Any]) -> str:
    """'finished, 4 epochs', 'failed after 1 epoch (error)', 'running on host (process id)'…
    from a run's `status.json` (as `read_status` reads it)."""
    status = state.get("status")
    if status is None:
        return "no status"
    epochs = state.get("epochs_completed")
    done = "" if epochs is None else f"{epochs} epoch{'s' if epochs != 1 else ''}"
    if status == "running":
        where = f"running on {state.get('host')} (process {state.get('pid')})"
        return where + (f", {done} done" if done else "")
    if done:
        status += f", {done}" if status == "finished" else f" after {done}"
    if state.get("error"):
        status += f" ({short(state['error'], 70)})"
    return status


def _run_score(log: Path | None) -> dict[str, Any] | None:
    """The best epoch's validation class-1 F1 (OPTIMISTIC: its val tiles chose that epoch)."""
    if log is None or not (log / METRICS_FILE).is_file():
        return None
    from src.visualization.learning_curves import epoch_metrics

    try:
        values = epoch_metrics(log / METRICS_FILE).get(RUN_SCORE)
    except (OSError, ValueError):
        return None
    if not values:
        return None
    epoch, value = max(values, key=lambda pair: pair[1])
    return {"name": f"best {RUN_SCORE}", "value": value, "epoch": epoch, "optimistic": True}


def _run_data(config: dict[str, Any] | None, folder: Path | None,
              checkpoint: _Checkpoint) -> DataUse | None:  # fmt: skip
    """The processed folder the run trained on and its fingerprint then: the folder's record
    of the runs trained on its present build, else the run's checkpoint."""
    processed = (config or {}).get("processed_dir")
    if processed and folder is not None:
        now = current_fingerprint(processed)
        where = str(folder.resolve())
        if now is not None and any(r["where"] == where for r in runs_of(Path(processed), now)):
            return data_use(processed, now)
    return checkpoint.data() or (data_use(processed, None) if processed else None)


def result_values(saved: dict[str, Any]) -> dict[str, Any]:
    """The options of a saved run configuration that determine its result (`result_config`);
    the saved values but the ones `result_config` never keeps when they no longer make an
    `ESDConfig` (an option of an older version)."""
    from src.training.config import ESDConfig, weights_checked_later
    from src.training.result_config import NOT_RESULT, result_config
    from src.training.resume import EARLIER_BEHAVIOUR

    known = {f.name for f in dataclasses.fields(ESDConfig)}
    values = {k: v for k, v in {**EARLIER_BEHAVIOUR, **saved}.items() if k in known}
    try:
        with weights_checked_later():
            return result_config(ESDConfig(**{**values, "resume": None}))
    except (TypeError, ValueError):
        return {k: v for k, v in saved.items() if k not in NOT_RESULT}
