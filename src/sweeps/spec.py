"""Sweep files in W&B's format: parse, validate against `ESDConfig`, build each trial's config.

A sweep file is YAML with the keys of a W&B sweep configuration::

    method: bayes                      # grid, random or bayes
    metric: {name: val_f1_class1, goal: maximize}
    parameters:                        # names are ESDConfig fields
      model_type: {values: [UNet, SegmentationCNN]}
      learning_rate: {distribution: log_uniform_values, min: 1.0e-4, max: 1.0e-2}
      max_epochs: {value: 10}
    early_terminate: {type: hyperband, min_iter: 2, eta: 3}
    run_cap: 30

`load_sweep_file` checks everything before a trial starts and raises one `SweepSpecError`
that lists every problem: unknown keys, parameter names that are not `ESDConfig` fields,
reserved names, bad ranges and distributions, values that `ESDConfig` rejects (type, choices,
its `__post_init__` validation), a metric that training never logs, unknown methods and goals.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from src.cli import is_number, plain, strip_optional, text_number_hint, type_problem
from src.training.config import ESDConfig
from src.training.metrics import logged_metric_names

METHODS = ("grid", "random", "bayes")
GOALS = ("maximize", "minimize")
DISTRIBUTIONS = (
    "constant",
    "categorical",
    "uniform",
    "int_uniform",
    "log_uniform_values",
    "q_uniform",
)
RANGE_DISTRIBUTIONS = ("uniform", "int_uniform", "log_uniform_values", "q_uniform")
TOP_LEVEL_KEYS = (
    "method",
    "metric",
    "parameters",
    "early_terminate",
    "run_cap",
    "name",
    "description",
    "project",
    "entity",
)
UNSUPPORTED_TOP_LEVEL = {
    "program": "trials run in-process through scripts.train.train(); remove it",
    "command": "trials run in-process through scripts.train.train(); remove it",
}
PARAMETER_KEYS = ("value", "values", "min", "max", "distribution", "q")
EARLY_TERMINATE_KEYS = ("type", "min_iter", "max_iter", "eta", "s")
RESERVED_PARAMETERS = {
    "wandb_run_name": "each trial is named trial-<number>",
    "checkpoint_dir": "set it once on the command line (default: <output_dir>/checkpoints)",
    "log_dir": "set it once on the command line (default: <output_dir>/logs)",
    "resume": "a sweep trains every trial from scratch",
}
RUN_FIELDS = ("wandb_run_name", "checkpoint_dir", "log_dir", "resume", "wandb_mode")
"""Fields that describe where one trial ran, not how it trained (left out of best configs)."""


class SweepSpecError(ValueError):
    """Every problem found in a sweep file, one per line."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.problems = list(problems)
        count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
        lines = "\n".join(f"  - {problem}" for problem in problems)
        super().__init__(f"sweep file {source}: {count} (nothing was run):\n{lines}")


@dataclass(frozen=True)
class Parameter:
    """One swept (or fixed) ESDConfig field.

    `values` holds the real choices of a categorical parameter; `choices` the same choices as
    Optuna can store them (None, bool, int, float, str: lists and mappings become JSON text).
    """

    name: str
    distribution: str
    value: Any = None
    values: tuple[Any, ...] = ()
    min: float | None = None
    max: float | None = None
    q: float | None = None

    @property
    def is_range(self) -> bool:
        return self.distribution in RANGE_DISTRIBUTIONS

    @property
    def choices(self) -> tuple[Any, ...]:
        return tuple(encode_choice(v) for v in self.values)

    def decode(self, choice: Any) -> Any:
        """The real value of a categorical choice as Optuna stored it."""
        for value, encoded in zip(self.values, self.choices, strict=True):
            if type(encoded) is type(choice) and encoded == choice:
                return value
        raise ValueError(f"{self.name}: {choice!r} is not one of {list(self.choices)}")


@dataclass(frozen=True)
class EarlyTerminate:
    """W&B's `early_terminate: {type: hyperband, min_iter, eta, max_iter}` (epochs)."""

    min_iter: int
    eta: int = 3
    max_iter: int | None = None


@dataclass(frozen=True)
class SweepSpec:
    """A validated sweep file."""

    method: str
    metric: str
    goal: str
    parameters: dict[str, Parameter]
    early_terminate: EarlyTerminate | None = None
    run_cap: int | None = None
    name: str | None = None
    project: str | None = None
    entity: str | None = None
    raw: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def swept(self) -> dict[str, Parameter]:
        """The parameters that vary between trials (not the fixed `value` ones)."""
        return {k: p for k, p in self.parameters.items() if p.distribution != "constant"}

    def grid(self) -> dict[str, list[Any]]:
        """The grid's search space: each swept parameter's Optuna choices."""
        return {name: list(p.choices) for name, p in self.swept.items()}

    def max_epochs(self, base: ESDConfig) -> int:
        """The most epochs a trial can run: the sweep's max_epochs if it sets it, else base's."""
        return int(_most_epochs(self.parameters, base))


def encode_choice(value: Any) -> Any:
    """A categorical value as Optuna stores it: scalars as they are, others as JSON text."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return json.dumps(value, sort_keys=True)


def trial_config(base: ESDConfig, values: Mapping[str, Any], run_name: str) -> ESDConfig:
    """`base` with a trial's parameter values, named `run_name` (validated by ESDConfig)."""
    return dataclasses.replace(base, **dict(values), wandb_run_name=run_name)


# --------------------------------------------------------------------------------------------
# validation


def _number_problem(where: str, key: str, value: Any) -> str | None:
    if is_number(value) and math.isfinite(value):
        return None
    return f"{where}: {key} must be a number, got {value!r}{text_number_hint(value)}"


def _value_problems(
    where: str, name: str, value: Any, annotation: Any, base: ESDConfig | None
) -> list[str]:
    """Problems of one candidate value: its type, then ESDConfig's own validation."""
    problem = type_problem(value, annotation)
    if problem:
        return [f"{where}: value {value!r} {problem} (ESDConfig.{name})"]
    if base is None:
        return []
    try:
        dataclasses.replace(base, **{name: value})
    except (TypeError, ValueError) as error:
        return [f"{where}: value {value!r} is rejected by ESDConfig: {error}"]
    return []


def _parse_parameter(
    name: str, body: Any, annotation: Any, base: ESDConfig | None, problems: list[str]
) -> Parameter | None:
    where = f"parameters.{name}"
    if not isinstance(body, Mapping):
        problems.append(
            f"{where}: expected a mapping with `value`, `values` or `min`/`max`, got {body!r}"
        )
        return None
    unknown = sorted(set(body) - set(PARAMETER_KEYS))
    if unknown:
        problems.append(
            f"{where}: unknown key(s) {', '.join(map(str, unknown))} "
            f"(use {', '.join(PARAMETER_KEYS)})"
        )
    distribution = body.get("distribution")
    if distribution is not None and distribution not in DISTRIBUTIONS:
        problems.append(
            f"{where}: unknown distribution {distribution!r} (use {', '.join(DISTRIBUTIONS)})"
        )
        return None
    has = {key: key in body for key in ("value", "values", "min", "max")}
    kinds = sum([has["value"], has["values"], has["min"] or has["max"]])
    if kinds != 1:
        problems.append(f"{where}: give exactly one of `value`, `values` or `min` and `max`")
        return None

    if has["value"]:
        if distribution not in (None, "constant"):
            problems.append(f"{where}: `value` goes with distribution constant, not {distribution}")
            return None
        problems.extend(_value_problems(where, name, body["value"], annotation, base))
        return Parameter(name, "constant", value=body["value"])

    if has["values"]:
        values = body["values"]
        if distribution not in (None, "categorical"):
            problems.append(
                f"{where}: `values` goes with distribution categorical, not {distribution}"
            )
            return None
        if not isinstance(values, list) or not values:
            problems.append(f"{where}: `values` must be a non-empty list, got {values!r}")
            return None
        encoded = [json.dumps(plain(v), sort_keys=True) for v in values]
        duplicates = sorted({v for v in encoded if encoded.count(v) > 1})
        if duplicates:
            problems.append(f"{where}: `values` repeats {', '.join(duplicates)}")
        for value in values:
            problems.extend(_value_problems(where, name, value, annotation, base))
        return Parameter(name, "categorical", values=tuple(values))

    # a range
    if not (has["min"] and has["max"]):
        problems.append(f"{where}: a range needs both `min` and `max`")
        return None
    low, high = body["min"], body["max"]
    bad = [p for p in (_number_problem(where, k, body[k]) for k in ("min", "max")) if p]
    if bad:
        problems.extend(bad)
        return None
    if distribution is None:
        distribution = (
            "int_uniform" if isinstance(low, int) and isinstance(high, int) else "uniform"
        )
    if distribution not in RANGE_DISTRIBUTIONS:
        problems.append(f"{where}: distribution {distribution} needs `values` or `value`")
        return None
    count = len(problems)
    if low > high:
        problems.append(f"{where}: min {low} > max {high}")
    if distribution == "log_uniform_values" and low <= 0:
        problems.append(f"{where}: log_uniform_values needs min > 0, got min {low}")
    if distribution == "int_uniform" and not (isinstance(low, int) and isinstance(high, int)):
        problems.append(f"{where}: int_uniform needs integer min and max, got {low} and {high}")
    q = None
    if distribution == "q_uniform":
        q = body.get("q", 1.0)
        problem = _number_problem(where, "q", q)
        if problem:
            problems.append(problem)
        elif q <= 0:
            problems.append(f"{where}: q must be positive, got {q}")
    elif "q" in body:
        problems.append(f"{where}: `q` goes with distribution q_uniform, not {distribution}")
    inner, _ = strip_optional(annotation)
    if inner is int and distribution != "int_uniform":
        problems.append(
            f"{where}: ESDConfig.{name} is an integer: use distribution int_uniform or `values`"
        )
    elif inner not in (int, float):
        problems.append(f"{where}: ESDConfig.{name} is not a number: use `values` or `value`")
    if len(problems) > count:
        return None
    for end in (low, high):
        problems.extend(_value_problems(where, name, end, annotation, base))
    return Parameter(name, distribution, min=low, max=high, q=q)


def _parse_metric(metric: Any, problems: list[str]) -> tuple[str, str]:
    if not isinstance(metric, Mapping):
        problems.append(
            "metric: required, a mapping like {name: val_f1_class1, goal: maximize}, "
            f"got {metric!r}"
        )
        return "", ""
    unknown = sorted(set(metric) - {"name", "goal", "target"})
    if unknown:
        problems.append(f"metric: unknown key(s) {', '.join(map(str, unknown))}")
    name, goal = metric.get("name"), metric.get("goal")
    known = logged_metric_names()
    if not isinstance(name, str) or name not in known:
        close = difflib.get_close_matches(str(name), sorted(known), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        problems.append(
            f"metric.name: {name!r} is not a metric that training logs{hint}; "
            "e.g. val_f1_class1, val_loss, val_iou_macro"
        )
    if goal not in GOALS:
        problems.append(f"metric.goal: {goal!r} must be maximize or minimize")
    return str(name), str(goal)


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _parse_early_terminate(body: Any, problems: list[str]) -> EarlyTerminate | None:
    if body is None:
        return None
    if not isinstance(body, Mapping):
        problems.append(f"early_terminate: expected a mapping, got {body!r}")
        return None
    unknown = sorted(set(body) - set(EARLY_TERMINATE_KEYS))
    if unknown:
        problems.append(f"early_terminate: unknown key(s) {', '.join(map(str, unknown))}")
    if body.get("type") != "hyperband":
        problems.append(f"early_terminate.type: {body.get('type')!r} must be hyperband")
    eta, min_iter, max_iter, s = (body.get(k) for k in ("eta", "min_iter", "max_iter", "s"))
    eta = 3 if eta is None else eta
    count = len(problems)
    if not (_positive_int(eta) and eta >= 2):
        problems.append(f"early_terminate.eta: must be an integer ≥ 2, got {eta!r}")
    for key, value in (("min_iter", min_iter), ("max_iter", max_iter), ("s", s)):
        if value is not None and not _positive_int(value):
            problems.append(f"early_terminate.{key}: must be a positive integer, got {value!r}")
    if len(problems) > count:
        return None
    if min_iter is None:
        if max_iter is None or s is None:
            problems.append("early_terminate: give min_iter (or max_iter and s)")
            return None
        min_iter = max(1, max_iter // eta**s)  # W&B's brackets: max_iter / eta^k, k = 1..s
    if max_iter is not None and max_iter <= min_iter:
        problems.append(f"early_terminate: max_iter {max_iter} must exceed min_iter {min_iter}")
        return None
    return EarlyTerminate(min_iter=min_iter, eta=eta, max_iter=max_iter)


def _most_epochs(parameters: dict[str, Parameter], base: ESDConfig) -> int:
    parameter = parameters.get("max_epochs")
    if parameter is None:
        return base.max_epochs
    if parameter.distribution == "constant":
        return parameter.value
    if parameter.is_range:
        return int(parameter.max)  # type: ignore[arg-type]
    return max(parameter.values)


def parse_sweep_spec(
    data: Any, base: ESDConfig | None = None, source: str = "<sweep>"
) -> SweepSpec:
    """Validate a loaded sweep file; every problem at once as a `SweepSpecError`.

    With `base`, each parameter value is also checked by constructing `base` with it.
    """
    if not isinstance(data, Mapping):
        raise SweepSpecError(source, [f"expected a mapping of sweep keys, got {data!r}"])
    problems: list[str] = []
    for key in data:
        if key in UNSUPPORTED_TOP_LEVEL:
            problems.append(f"{key}: not supported: {UNSUPPORTED_TOP_LEVEL[key]}")
        elif key not in TOP_LEVEL_KEYS:
            problems.append(f"unknown key {key!r} (use {', '.join(TOP_LEVEL_KEYS)})")

    method = data.get("method")
    if method not in METHODS:
        problems.append(f"method: {method!r} must be one of {', '.join(METHODS)}")
    metric, goal = _parse_metric(data.get("metric"), problems)

    hints = typing.get_type_hints(ESDConfig)
    fields = [f.name for f in dataclasses.fields(ESDConfig)]
    parameters: dict[str, Parameter] = {}
    body = data.get("parameters")
    if not isinstance(body, Mapping) or not body:
        problems.append("parameters: required, a non-empty mapping of ESDConfig field: spec")
        body = {}
    for name, parameter_body in body.items():
        if name not in hints:
            close = difflib.get_close_matches(str(name), fields, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            problems.append(f"parameters.{name}: not an ESDConfig field{hint}")
            continue
        if name in RESERVED_PARAMETERS:
            problems.append(f"parameters.{name}: cannot be swept: {RESERVED_PARAMETERS[name]}")
            continue
        parameter = _parse_parameter(name, parameter_body, hints[name], base, problems)
        if parameter is not None:
            parameters[name] = parameter

    if method == "grid":
        ranges = [name for name, p in parameters.items() if p.is_range]
        if ranges:
            problems.append(
                f"method grid needs `values` (or `value`) for every parameter; "
                f"{', '.join(ranges)} {'is a range' if len(ranges) == 1 else 'are ranges'}"
            )
    if parameters and not any(p.distribution != "constant" for p in parameters.values()):
        problems.append("parameters: every parameter is fixed (`value`): nothing to sweep")

    early_terminate = _parse_early_terminate(data.get("early_terminate"), problems)
    if early_terminate is not None and base is not None:
        epochs = _most_epochs(parameters, base)
        if epochs < early_terminate.min_iter:
            problems.append(
                f"early_terminate.min_iter {early_terminate.min_iter} exceeds the "
                f"{epochs} epoch(s) a trial trains: nothing could ever be pruned"
            )
    run_cap = data.get("run_cap")
    if run_cap is not None and not _positive_int(run_cap):
        problems.append(f"run_cap: must be a positive integer, got {run_cap!r}")
    for key in ("name", "project", "entity", "description"):
        if data.get(key) is not None and not isinstance(data[key], str):
            problems.append(f"{key}: must be a string, got {data[key]!r}")
    if problems:
        raise SweepSpecError(source, problems)
    return SweepSpec(
        method=method,
        metric=metric,
        goal=goal,
        parameters=parameters,
        early_terminate=early_terminate,
        run_cap=run_cap,
        name=data.get("name"),
        project=data.get("project"),
        entity=data.get("entity"),
        raw=plain(dict(data)),
    )


def load_sweep_file(path: Path, base: ESDConfig | None = None) -> SweepSpec:
    """Read and validate a sweep YAML file (see `parse_sweep_spec`)."""
    path = Path(path)
    if not path.is_file():
        raise SweepSpecError(str(path), ["no such file"])
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise SweepSpecError(str(path), [f"not valid YAML: {error}"]) from error
    return parse_sweep_spec(data, base, str(path))
