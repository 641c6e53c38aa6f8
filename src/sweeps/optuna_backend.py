"""Run a sweep file as an Optuna study: samplers, Hyperband pruning, persistent storage.

The mapping from W&B's format:

* method grid → `GridSampler` over the `values`; random → `RandomSampler`; bayes →
  `TPESampler`, both seeded with `seed + number of trials already in the study` so that a
  resumed sweep does not repeat the first call's samples;
* metric goal → study direction; `early_terminate: {type: hyperband}` →
  `HyperbandPruner(min_iter, max_iter or the largest max_epochs, eta)`, fed after each
  validation epoch by `PruningCallback` (step = epochs completed);
* uniform → `suggest_float`, log_uniform_values → `suggest_float(log=True)`, int_uniform →
  `suggest_int`, q_uniform → `suggest_float(step=q)`, values → `suggest_categorical` (lists and
  mappings as JSON text), value → fixed;
* `run_cap` caps the finished trials of the study (over all calls), `count` those of one call.

The study lives in an RDB storage (default SQLite), loaded if it exists: a second call adds
trials, and a trial interrupted by Ctrl-C is queued to run again first.
"""

from __future__ import annotations

import signal
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import lightning as L
import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from src.cli import config_values
from src.sweeps.spec import Parameter, SweepSpec, trial_config
from src.training.config import ESDConfig

TrainFunction = Callable[..., dict[str, Any]]

INTERRUPTED = "interrupted"
REQUEUED = "requeued_trials"


class SweepError(RuntimeError):
    """A sweep cannot start or go on (a message for the user, not a traceback)."""


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
    """GridSampler, RandomSampler or a seeded TPESampler, from the file's method."""
    if spec.method == "grid":
        return optuna.samplers.GridSampler(spec.grid(), seed=seed)
    if spec.method == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


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
        self.interrupted = False

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or self.metric not in trainer.callback_metrics:
            return
        self.values.append(float(trainer.callback_metrics[self.metric]))
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
    """Where and how long a sweep runs: the options of one call."""

    storage: str
    study_name: str
    count: int | None = None
    seed: int = 0
    max_failures: int = 3


def open_storage(url: str) -> RDBStorage:
    """The RDB storage at `url`; stale trials of a killed process are failed and retried."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return RDBStorage(
                url,
                heartbeat_interval=60,
                grace_period=180,
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=1),
            )
    except Exception as error:  # any driver or URL error: tell the user
        raise SweepError(f"cannot open Optuna storage {url!r}: {error}") from error


def open_study(spec: SweepSpec, run: OptunaRun, max_epochs: int) -> optuna.Study:
    """Create the study or load it (the same direction and metric are required)."""
    storage = open_storage(run.storage)
    study = optuna.create_study(
        storage=storage,
        study_name=run.study_name,
        direction=spec.goal,
        pruner=make_pruner(spec, max_epochs),
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
    study.sampler = make_sampler(spec, run.seed + len(study.trials))
    return study


def _interrupted(trial: FrozenTrial) -> bool:
    return trial.state == TrialState.FAIL and bool(trial.user_attrs.get(INTERRUPTED))


def finished_trials(study: optuna.Study) -> int:
    """Trials that count against run_cap: finished, except those that Ctrl-C stopped."""
    return sum(t.state.is_finished() and not _interrupted(t) for t in study.trials)


def requeue_interrupted(study: optuna.Study) -> int:
    """Queue again, once, the parameters of trials that Ctrl-C stopped; how many were queued."""
    done = set(study.user_attrs.get(REQUEUED, []))
    again = [t for t in study.trials if _interrupted(t) and t.number not in done and t.params]
    for trial in again:
        study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
    if again:
        study.set_user_attr(REQUEUED, sorted(done | {t.number for t in again}))
    return len(again)


def _grid_left(spec: SweepSpec, study: optuna.Study) -> int:
    """Grid points not yet finished (trials that Ctrl-C stopped are not finished)."""
    names = sorted(spec.grid())
    done = {
        tuple(t.params.get(n) for n in names)
        for t in study.trials
        if t.state.is_finished() and not _interrupted(t)
    }
    total = 1
    for choices in spec.grid().values():
        total *= len(choices)
    return total - len(done)


def _waiting(study: optuna.Study) -> int:
    return sum(t.state == TrialState.WAITING for t in study.trials)


def trials_to_run(spec: SweepSpec, study: optuna.Study, count: int | None) -> int | None:
    """How many trials this call runs: count, capped by run_cap and the grid (None: no end)."""
    limits = [] if count is None else [count]
    if spec.run_cap is not None:
        limits.append(max(0, spec.run_cap - finished_trials(study)))
    if spec.method == "grid":
        limits.append(max(0, _grid_left(spec, study)) + _waiting(study))
    return min(limits) if limits else None


class _StopRules:
    """Stops the study at run_cap (other processes may share it) or after repeated failures."""

    def __init__(self, run_cap: int | None, max_failures: int) -> None:
        self.run_cap = run_cap
        self.max_failures = max_failures
        self.failures = 0
        self.reason = ""

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.failures = self.failures + 1 if trial.state == TrialState.FAIL else 0
        if self.failures >= self.max_failures:
            self.reason = f"{self.failures} trials in a row failed"
            study.stop()
        elif self.run_cap is not None and finished_trials(study) >= self.run_cap:
            self.reason = f"run_cap {self.run_cap} reached"
            study.stop()


def make_objective(
    spec: SweepSpec, base: ESDConfig, train: TrainFunction
) -> Callable[[optuna.Trial], float]:
    """The objective: sample, train `trial-<number>` with a PruningCallback, return the metric."""

    def objective(trial: optuna.Trial) -> float:
        values = suggest(trial, spec.parameters)
        config = trial_config(base, values, f"trial-{trial.number}")
        trial.set_user_attr("config", config_values(config))
        trial.set_user_attr("run_name", config.wandb_run_name)
        callback = PruningCallback(trial, spec.metric)
        main_thread = threading.current_thread() is threading.main_thread()
        handler = signal.getsignal(signal.SIGINT) if main_thread else None
        try:
            results = train(config, extra_callbacks=[callback])
        except SystemExit as error:
            if callback.interrupted:  # Lightning's answer to Ctrl-C
                trial.set_user_attr(INTERRUPTED, True)
                raise KeyboardInterrupt from error
            raise RuntimeError(f"training exited with status {error.code}") from error
        except KeyboardInterrupt:
            trial.set_user_attr(INTERRUPTED, True)
            raise
        except optuna.TrialPruned:
            trial.set_user_attr("epochs", len(callback.values))
            raise
        except Exception as error:
            trial.set_user_attr("error", f"{type(error).__name__}: {error}")
            raise
        finally:
            if main_thread:  # Lightning ignores SIGINT after a Ctrl-C; let the next one stop us
                signal.signal(signal.SIGINT, handler)
        trial.set_user_attr("epochs", len(callback.values))
        for key in ("best_model_path", "best_model_score"):
            trial.set_user_attr(key, results.get(key))
        value = results.get(spec.metric, callback.values[-1] if callback.values else None)
        if value is None:
            raise RuntimeError(f"training logged no {spec.metric} (logged: {sorted(results)})")
        return float(value)

    return objective


def run_optuna(
    spec: SweepSpec,
    base: ESDConfig,
    run: OptunaRun,
    train: TrainFunction | None = None,
    log: Callable[[str], None] = print,
) -> optuna.Study:
    """Run up to `run.count` trials in the study (KeyboardInterrupt propagates; the study keeps
    every finished trial). Returns the study."""
    if train is None:
        from src.training.train import train
    study = open_study(spec, run, spec.max_epochs(base))
    requeued = requeue_interrupted(study)
    if requeued:
        log(f"optuna: {requeued} interrupted trial(s) queued to run again")
    n_trials = trials_to_run(spec, study, run.count)
    existing = len(study.trials) - _waiting(study)
    log(
        f"optuna: study {run.study_name!r} in {run.storage}: {existing} trial(s) so far, "
        + ("running until Ctrl-C" if n_trials is None else f"running {n_trials} more")
    )
    if n_trials == 0:
        capped = spec.run_cap is not None and finished_trials(study) >= spec.run_cap
        reason = f"run_cap {spec.run_cap} reached" if capped else "the grid is done"
        log(f"optuna: nothing to run ({reason}; raise --count, run_cap or use a new study)")
        return study
    stop = _StopRules(spec.run_cap, run.max_failures)
    study.optimize(
        make_objective(spec, base, train),
        n_trials=n_trials,
        catch=(Exception,),
        callbacks=[stop],
        gc_after_trial=True,
    )
    if stop.reason:
        log(f"optuna: stopped: {stop.reason}")
    return study
