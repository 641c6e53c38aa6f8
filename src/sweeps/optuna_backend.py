"""Run a sweep file as an Optuna study: samplers, Hyperband pruning, persistent storage.

The mapping from W&B's format:

* method grid → every point of the grid queued once in the study when it is created (so
  several workers never run a point twice); random → `RandomSampler`; bayes → `TPESampler`,
  both seeded with `seed + number of trials already in the study + a worker offset` so that
  a resumed sweep and parallel workers do not repeat each other's samples;
* metric goal → study direction; `early_terminate: {type: hyperband}` →
  `HyperbandPruner(min_iter, max_iter or the largest max_epochs, eta)`, fed after each
  validation epoch by `PruningCallback` (step = epochs completed);
* uniform → `suggest_float`, log_uniform_values → `suggest_float(log=True)`, int_uniform →
  `suggest_int`, q_uniform → `suggest_float(step=q)`, values → `suggest_categorical` (lists and
  mappings as JSON text), value → fixed;
* `run_cap` and `count` cap the trials of the study, over all calls and workers.

The study lives in a journal file or an RDB (see `src.sweeps.study`), loaded if it exists:
a second call adds trials up to the totals, and a trial interrupted by Ctrl-C or whose worker
died is queued to run again first. With `objective="cv"`, a trial's value is the mean
`f1_class1` of a K-fold cross-validation, reported (and pruned) after each fold.
"""

from __future__ import annotations

import itertools
import secrets
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from src.cli import config_values
from src.sweeps.results import TABLE_FILE, records_from_study, write_results
from src.sweeps.spec import Parameter, SweepSpec, trial_config
from src.sweeps.study import (
    ERROR,
    INTERRUPTED,
    SURPLUS,
    WORKER,
    SweepError,
    counted_trials,
    open_storage,
    reap_dead_workers,
    requeue_stopped,
    this_worker,
    waiting_trials,
)
from src.training.config import ESDConfig

TrainFunction = Callable[..., dict[str, Any]]


# --------------------------------------------------------------------------------------------
# the file's parameters, sampler and pruner in Optuna's terms


def suggest(trial: optuna.Trial, parameters: dict[str, Parameter]) -> dict[str, Any]:
    """Sample each parameter with `trial` (constants as they are); the real values."""
    values: dict[str, Any] = {}
    for name, p in parameters.items():
        if p.distribution == "constant":
            values[name] = p.value
        elif p.distribution == "categorical":
            values[name] = p.decode(trial.suggest_categorical(name, p.choices))
        elif p.distribution == "int_uniform":
            values[name] = trial.suggest_int(name, int(p.min), int(p.max))  # type: ignore[arg-type]
        elif p.distribution == "uniform":
            values[name] = trial.suggest_float(name, p.min, p.max)  # type: ignore[arg-type]
        elif p.distribution == "log_uniform_values":
            values[name] = trial.suggest_float(name, p.min, p.max, log=True)  # type: ignore[arg-type]
        elif p.distribution == "q_uniform":
            values[name] = trial.suggest_float(name, p.min, p.max, step=p.q)  # type: ignore[arg-type]
        else:  # parse_sweep_spec admits no other distribution
            raise ValueError(f"{name}: unknown distribution {p.distribution}")
    return values


def make_sampler(spec: SweepSpec, seed: int) -> optuna.samplers.BaseSampler:
    """A seeded TPESampler for bayes, else a RandomSampler (a grid's points are all queued)."""
    if spec.method == "bayes":
        return optuna.samplers.TPESampler(seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)


def make_pruner(spec: SweepSpec, max_epochs: int) -> optuna.pruners.BasePruner:
    """HyperbandPruner from `early_terminate`, else no pruning."""
    rule = spec.early_terminate
    if rule is None:
        return optuna.pruners.NopPruner()
    return optuna.pruners.HyperbandPruner(
        min_resource=rule.min_iter,
        max_resource=rule.max_iter or max_epochs,
        reduction_factor=rule.eta,
    )


class MetricTracker(L.Callback):
    """Records the sweep metric after each validation epoch (and whether Ctrl-C stopped fit)."""

    def __init__(self, metric: str) -> None:
        self.metric = metric
        self.values: list[float] = []
        self.monitored: list[float] = []
        """The module's monitor (what checkpoints are chosen by), epoch by epoch."""
        self.interrupted = False

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = trainer.callback_metrics
        if trainer.sanity_checking or self.metric not in metrics:
            return
        self.values.append(float(metrics[self.metric]))
        monitor = getattr(pl_module.hparams, "monitor", None)
        if monitor in metrics:
            self.monitored.append(float(metrics[monitor]))
        self.report(trainer, len(self.values))

    def report(self, trainer: L.Trainer, epochs: int) -> None:
        """Hook for subclasses: called with the number of validation epochs so far."""

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        # Lightning turns Ctrl-C into SystemExit(1) after its teardown; remember the cause.
        self.interrupted = self.interrupted or isinstance(exception, KeyboardInterrupt)


class PruningCallback(MetricTracker):
    """Reports the metric to an Optuna trial each epoch; raises TrialPruned when told to.

    Lightning tears the trainer down and re-raises the exception from `fit`, so it reaches
    Optuna, which records the trial as PRUNED and goes on with the next one.
    """

    def __init__(self, trial: optuna.Trial, metric: str) -> None:
        super().__init__(metric)
        self.trial = trial

    def report(self, trainer: L.Trainer, epochs: int) -> None:
        value = self.values[-1]
        self.trial.report(value, epochs)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {epochs}: {self.metric}={value:.4g}")


# --------------------------------------------------------------------------------------------
# the study


@dataclass
class OptunaRun:
    """Where and how long a sweep runs: the options of one call (shared by its workers)."""

    storage: str
    study_name: str
    count: int | None = None
    """Total trials of the study (None: until run_cap, the grid's end or Ctrl-C)."""
    seed: int = 0
    max_failures: int = 3
    heartbeat_s: int = 30
    objective: str = "val"
    folds: int = 3
    selection: str = "inner"
    """How a cross-validated trial's folds choose their checkpoints (`CVConfig.selection`)."""
    output_dir: Path = Path("sweeps")
    worker: int = 0
    """This worker's index among the call's workers (offsets the sampler's seed)."""


def open_study(spec: SweepSpec, run: OptunaRun, max_epochs: int) -> optuna.Study:
    """Create the study (queueing a grid's points) or load it (same direction and metric)."""
    # Optuna's own "[I …] Trial 0 finished with value …" lines repeat what the results table
    # says, in its words (the value of a cross-validated trial is not a val score)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(run.storage, run.heartbeat_s)
    study = optuna.create_study(
        storage=storage,
        study_name=run.study_name,
        direction=spec.goal,
        pruner=make_pruner(spec, max_epochs if run.objective == "val" else run.folds),
        load_if_exists=True,
    )
    if study.direction.name.lower() != spec.goal:
        raise SweepError(
            f"study {run.study_name!r} in {run.storage} was created to "
            f"{study.direction.name.lower()}, but the sweep file says {spec.goal}: "
            "use another --study_name or --storage"
        )
    metric = study.user_attrs.get("metric")
    if metric is None:
        study.set_user_attr("metric", spec.metric)
        study.set_user_attr("sweep", spec.raw)
    elif metric != spec.metric:
        raise SweepError(
            f"study {run.study_name!r} optimises {metric}, but the sweep file says "
            f"{spec.metric}: use another --study_name or --storage"
        )
    _check_protocol(study, run)
    if spec.method == "grid" and not study.user_attrs.get("grid_queued"):
        names = list(spec.grid())
        for point in itertools.product(*spec.grid().values()):
            study.enqueue_trial(dict(zip(names, point, strict=True)), skip_if_exists=True)
        study.set_user_attr("grid_queued", True)
    study.sampler = make_sampler(spec, run.seed + len(study.trials) + 1000 * run.worker)
    return study


PROTOCOL = "protocol"
IDENTITY = "identity"


def run_protocol(run: OptunaRun) -> dict[str, Any]:
    """What a trial's value means: the objective, and for `cv` its folds and selection rule."""
    if run.objective == "cv":
        return {"objective": "cv", "folds": run.folds, "selection": run.selection}
    return {"objective": run.objective}


def _check_protocol(study: optuna.Study, run: OptunaRun) -> None:
    """Record the protocol (and a unique identity) with a new study; SweepError when a call
    would add trials of another protocol to an existing one, whose values would not compare."""
    wanted = run_protocol(run)
    recorded = study.user_attrs.get(PROTOCOL)
    if recorded is None:
        study.set_user_attr(PROTOCOL, wanted)
    elif recorded != wanted:
        described = ", ".join(f"{k} {v}" for k, v in recorded.items())
        asked = ", ".join(f"{k} {v}" for k, v in wanted.items())
        raise SweepError(
            f"study {run.study_name!r} in {run.storage} scores trials by {described}, not "
            f"{asked}: use the study's options, or another --study_name or --storage"
        )
    if IDENTITY not in study.user_attrs:
        study.set_user_attr(IDENTITY, secrets.token_hex(4))


def study_folder(study: optuna.Study, run: OptunaRun) -> Path:
    """The folder of this study's cross-validated trials: `<output_dir>/cv/<name>-<identity>`,
    so a new study (another storage, the journal moved away) never sees another's folds."""
    return run.output_dir / "cv" / f"{run.study_name}-{study.user_attrs[IDENTITY]}"


def trial_limit(spec: SweepSpec, run: OptunaRun) -> int | None:
    """The study's total: `count`, capped by run_cap (None: no total)."""
    limits = [v for v in (run.count, spec.run_cap) if v is not None]
    return min(limits) if limits else None


def grid_exhausted(spec: SweepSpec, study: optuna.Study) -> bool:
    """Whether a grid has no queued point left (its running points belong to workers)."""
    return spec.method == "grid" and waiting_trials(study) == 0


class _StopRules:
    """Stops this worker after repeated failures, or when its trial found the totals taken."""

    def __init__(self, max_failures: int) -> None:
        self.max_failures = max_failures
        self.failures = 0
        self.reason = ""
        self.full = False

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if trial.user_attrs.get(SURPLUS):
            self.full = True
            return
        self.failures = self.failures + 1 if trial.state == TrialState.FAIL else 0
        if self.failures >= self.max_failures:
            self.reason = f"{self.failures} trials in a row failed"
            study.stop()


class _SurplusTrialError(Exception):
    """A trial admitted beyond the study's total by a race between workers (not run)."""


def _admit(study: optuna.Study, trial: optuna.Trial, limit: int | None) -> None:
    """Record this worker on the trial; `_SurplusTrialError` if the totals are already taken."""
    trial.set_user_attr(WORKER, this_worker())
    if limit is None:
        return
    ahead = [t for t in counted_trials(study.get_trials(deepcopy=False)) if t.number < trial.number]
    if len(ahead) >= limit:
        trial.set_user_attr(SURPLUS, True)
        raise _SurplusTrialError


def make_objective(
    spec: SweepSpec, base: ESDConfig, train: TrainFunction, run: OptunaRun, limit: int | None
) -> Callable[[optuna.Trial], float]:
    """The objective: admit, sample, train `trial-<number>` (or cross-validate it), return
    the metric; a Ctrl-C or SIGTERM marks the trial interrupted."""

    def objective(trial: optuna.Trial) -> float:
        _admit(trial.study, trial, limit)
        main_thread = threading.current_thread() is threading.main_thread()
        handler = signal.getsignal(signal.SIGINT) if main_thread else None
        try:
            return _run_trial(trial, spec, base, train, run)
        except KeyboardInterrupt:
            trial.set_user_attr(INTERRUPTED, True)
            raise
        except optuna.TrialPruned:
            raise
        except Exception as error:  # a failure of the trial itself: counted, not re-run
            trial.set_user_attr(ERROR, f"{type(error).__name__}: {error}")
            raise
        finally:
            if main_thread:  # Lightning ignores SIGINT after a Ctrl-C; let the next one stop us
                signal.signal(signal.SIGINT, handler)

    return objective


def _run_trial(trial: optuna.Trial, spec: SweepSpec, base: ESDConfig, train: TrainFunction,
               run: OptunaRun) -> float:  # fmt: skip
    """Sample, train `trial-<number>` (or cross-validate it) and return its value: the metric
    of the checkpoint the trial exports (the best epoch by the run's monitor)."""
    values = suggest(trial, spec.parameters)
    config = trial_config(base, values, f"trial-{trial.number}")
    trial.set_user_attr("config", config_values(config))
    trial.set_user_attr("run_name", config.wandb_run_name)
    # A cross-validation reports per fold, so its callback only watches for Ctrl-C.
    cv = run.objective == "cv"
    callback = MetricTracker(spec.metric) if cv else PruningCallback(trial, spec.metric)
    try:
        if cv:
            return _cross_validated(trial, config, run, callback)
        results = train(config, extra_callbacks=[callback])
    except SystemExit as error:
        if callback.interrupted:  # Lightning's answer to Ctrl-C
            raise KeyboardInterrupt from error
        raise RuntimeError(f"training exited with status {error.code}") from error
    except optuna.TrialPruned:
        trial.set_user_attr("epochs", len(callback.values))
        raise
    trial.set_user_attr("epochs", len(callback.values))
    for key in ("best_model_path", "best_model_score"):
        trial.set_user_attr(key, results.get(key))
    tested = {k: v for k, v in results.items() if k.startswith("test_")}
    if tested:
        trial.set_user_attr("test_scores", tested)
    value = _exported_value(results, callback, spec.metric, config)
    if value is None:
        raise RuntimeError(f"training logged no {spec.metric} (logged: {sorted(results)})")
    return float(value)


def _exported_value(results: dict[str, Any], tracker: MetricTracker, metric: str,
                    config: ESDConfig) -> float | None:  # fmt: skip
    """The sweep metric at the epoch of the checkpoint the trial exports (its best by the
    monitor), not at the last epoch."""
    if metric == config.monitor and results.get("best_model_score") is not None:
        return float(results["best_model_score"])
    if tracker.monitored and len(tracker.monitored) == len(tracker.values):
        pick = max if config.monitor_mode == "max" else min
        best = pick(tracker.monitored)
        return tracker.values[tracker.monitored.index(best)]  # the first best, as Lightning
    return results.get(metric, tracker.values[-1] if tracker.values else None)


def _cross_validated(
    trial: optuna.Trial, config: ESDConfig, run: OptunaRun, callback: L.Callback
) -> float:
    """The mean `f1_class1` of a K-fold cross-validation of the trial's config, reported to
    Optuna (and pruned) after each fold; the fold scores go to the trial's attributes."""
    from src.cross_validation.config import CVConfig
    from src.cross_validation.run import cross_validate

    scores: list[float] = []

    def after_fold(model: str, fold: int, result: dict[str, Any]) -> None:
        scores.append(float(result["scores"]["f1_class1"]))
        trial.set_user_attr("fold_scores", list(scores))
        trial.report(float(np.mean(scores)), fold + 1)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned after fold {fold}: mean {np.mean(scores):.4g}")

    cv = CVConfig(
        folds=run.folds, model_type=[config.model_type], name=f"trial-{trial.number}",
        output_dir=study_folder(trial.study, run), selection=run.selection,
        tile_pictures="none",  # a trial's folds are scored, not looked at
    )  # fmt: skip
    summary = cross_validate(
        cv, config, log=lambda _: None, extra_callbacks=[callback], on_fold=after_fold,
        hyperparameters_chosen_by=f"the sweep {trial.study.study_name}",
    )  # fmt: skip
    epochs = [fold["selected_epoch"] + 1 for fold in summary["models"][0]["folds"]]
    trial.set_user_attr("epochs", round(float(np.median(epochs))))  # the folds' median
    return float(summary["models"][0]["mean"]["f1_class1"])


def run_optuna(
    spec: SweepSpec,
    base: ESDConfig,
    run: OptunaRun,
    train: TrainFunction | None = None,
    log: Callable[[str], None] = print,
) -> optuna.Study:
    """Run trials in the study until its totals are reached (by this worker and any others),
    the grid is done, trials keep failing, or Ctrl-C (KeyboardInterrupt propagates; the study
    keeps every finished trial). Returns the study."""
    if train is None:
        from src.training.train import train
    study = open_study(spec, run, spec.max_epochs(base))
    limit = trial_limit(spec, run)
    counted = len(counted_trials(study.get_trials(deepcopy=False)))
    goal = "the grid" if limit is None else f"{limit} trials in all"
    until = "Ctrl-C" if limit is None and spec.method != "grid" else goal
    log(f"optuna: study {run.study_name!r} in {run.storage}: {counted} trial(s), until {until}")
    if (limit is not None and counted >= limit) or grid_exhausted(spec, study):
        if spec.run_cap is not None and counted >= spec.run_cap:
            reason = f"run_cap {spec.run_cap} reached"
        elif grid_exhausted(spec, study):
            reason = "the grid is done"
        else:
            reason = f"--count {run.count} reached"
        log(f"optuna: nothing to run ({reason}; raise --count, run_cap or use a new study)")
        return study
    stop = _StopRules(run.max_failures)
    objective = make_objective(spec, base, train, run, limit)
    try:
        _run_trials(spec, run, study, objective, stop, limit, log)
    except (KeyboardInterrupt, SweepError):
        raise
    except Exception as error:  # noqa: BLE001  the storage failed under the sweep (deleted, corrupt)
        raise SweepError(
            f"the study's storage {run.storage} failed ({type(error).__name__}: {error}); the "
            f"finished trials are in {run.output_dir / TABLE_FILE}"
        ) from None
    if stop.reason:
        log(f"optuna: stopped: {stop.reason}")
    return study


def _run_trials(
    spec: SweepSpec,
    run: OptunaRun,
    study: optuna.Study,
    objective: Any,
    stop: _StopRules,
    limit: int | None,
    log: Callable[[str], None],
) -> None:
    """Trials until a total, the grid's end or a stop rule; the results table is written
    after every trial (so a storage lost later keeps what finished)."""
    while not stop.reason:
        for number in reap_dead_workers(study):
            log(f"optuna: trial {number} lost its worker process: marked failed")
        requeued = requeue_stopped(study)
        if requeued:
            log(f"optuna: {requeued} interrupted trial(s) queued to run again")
        trials = study.get_trials(deepcopy=False)
        if limit is not None and len(counted_trials(trials)) >= limit:
            break
        if spec.method == "grid" and grid_exhausted(spec, study):
            break
        study.optimize(objective, n_trials=1, catch=(Exception,), callbacks=[stop])
        write_results(run.output_dir, records_from_study(study, spec), spec, run.study_name,
                      log=lambda _: None)  # fmt: skip
        if stop.full:
            break
    reap_dead_workers(study)
