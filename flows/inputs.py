"""The input of a job that can be checked before the stack loads: ``KEY=VALUE`` assignments, the
workload (the target's defaults, a workload file, ``--set-workload`` values) and the objective.

These checks need only the target's class (no Prefect, MLflow, Optuna or pandas), so
``knobflow tune`` runs them first and a typo answers in a fraction of a second; ``Job.create``
(``flows/job.py``) runs them again with the checks that need the stack (rules, search space).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flows.spec import AUTO_KNOBS, JobSpec, objective_direction, option_error
from targets.base import Target
from targets.common.errors import KnobflowError, WorkloadError, did_you_mean
from targets.common.files import display_path
from targets.common.yamlfiles import load_yaml
from targets.registry import load_target

__all__ = ["check_inputs", "check_several", "objective_of", "objectives_of", "parse_assignments",
           "prefer_of", "resolve_workload"]


def parse_assignments(items: list[str], option: str = "--set-workload") -> dict[str, str]:
    """``KEY=VALUE`` strings to a mapping; a malformed one is an error naming the option."""
    result: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise WorkloadError(f"{option} {item!r}: expected KEY=VALUE, e.g. read_ratio=0.9")
        result[key.strip()] = value.strip()
    return result


def resolve_workload(
    target_cls: type[Target], workload_file: str | None, overrides: Mapping[str, Any]
) -> dict[str, Any]:
    """Target defaults, then the workload file, then ``--set-workload`` values, all validated;
    the file is bounded (``KNOBFLOW_MAX_WORKLOAD_FILE_BYTES``) and may not be empty."""
    from targets.common.files import WORKLOAD_FILE

    values: dict[str, Any] = {}
    if workload_file:
        key, value = next(iter(target_cls.workload_defaults.items()), ("rows", 1000))
        value = str(value).lower() if isinstance(value, bool) else value
        data = load_yaml(workload_file, WorkloadError, WORKLOAD_FILE, empty=(
            f"set the parameters to change, e.g. '{key}: {value}', or leave out --workload to "
            "use the target's defaults"))
        shown = display_path(workload_file)
        if not isinstance(data, Mapping):
            raise WorkloadError(f"{shown}: a workload file must be a mapping of parameter to value")
        target_cls.parse_workload(data, shown)
        values.update(data)
    target_cls.parse_workload(overrides, "--set-workload")
    return target_cls.parse_workload({**values, **overrides}, "workload")


def objective_of(spec: JobSpec, target_cls: type[Target]) -> str:
    """The metric the job optimizes: the spec's, which must be one of the target's, or the
    target's default objective."""
    objective = spec.objective or target_cls.default_objective
    if objective not in target_cls.metrics:
        raise option_error("objective", objective,
                           f"a metric of target '{spec.target}': "
                           f"{', '.join(target_cls.metrics)}", tuple(target_cls.metrics))
    return objective


def objectives_of(spec: JobSpec, target_cls: type[Target]) -> list[tuple[str, str]]:
    """Every metric the job optimizes with its direction (one: ``objective_of``'s, with the
    metric's own direction)."""
    if not spec.objectives:
        objective = objective_of(spec, target_cls)
        return [(objective, target_cls.metrics[objective])]
    result: list[tuple[str, str]] = []
    for text in spec.objectives:
        name, direction = objective_direction(text)
        if name not in target_cls.metrics:
            raise KnobflowError(
                f"--objective {text!r}: '{name}' is not a metric of target '{spec.target}'"
                f"{did_you_mean(name, list(target_cls.metrics))}; its metrics: "
                f"{', '.join(target_cls.metrics)}")
        if name in (n for n, _ in result):
            raise KnobflowError(f"--objective {text!r}: '{name}' is given twice; give each "
                                "metric once")
        result.append((name, direction or target_cls.metrics[name]))
    return result


def prefer_of(spec: JobSpec, objectives: list[tuple[str, str]]) -> dict[str, float]:
    """``--prefer NAME[:WEIGHT],...`` as weights of the objectives (default: the first one's
    alone); a ``KnobflowError`` names the option, the text and the fix."""
    names = [n for n, _ in objectives]
    if spec.prefer is None:
        return {names[0]: 1.0}
    if len(objectives) < 2:
        raise KnobflowError(f"--prefer {spec.prefer!r}: it picks a point of a Pareto front; "
                            "give several --objective, or leave out --prefer")
    weights: dict[str, float] = {}
    for part in spec.prefer.split(","):
        name, sep, weight = part.strip().partition(":")
        try:
            value = float(weight) if sep else 1.0
        except ValueError:
            value = -1.0
        if name not in names or not value > 0 or value == float("inf"):
            why = (f"'{name}' is not one of the job's objectives "
                   f"({', '.join(names)}){did_you_mean(name, names)}" if name not in names
                   else f"the weight {weight!r} of '{name}' must be a number > 0")
            raise KnobflowError(f"--prefer {spec.prefer!r}: {why}; write NAME or "
                                f"NAME:WEIGHT,..., e.g. --prefer {names[0]} or --prefer "
                                f"{names[0]}:2,{names[1]}:1")
        weights[name] = weights.get(name, 0.0) + value
    return weights


def check_inputs(spec: JobSpec) -> None:
    """Check what ``spec`` asks of its target without the stack: the target exists, the
    objective is one of its metrics, the workload is within its limits (a ``KnobflowError``
    names the first bad input)."""
    from rules.bounds import parse_bounds

    target_cls = load_target(spec.target)
    prefer_of(spec, objectives_of(spec, target_cls))
    parse_bounds(spec.constraints, target_cls.metrics)
    resolve_workload(target_cls, spec.workload_file, spec.workload or {})


def check_several(spec: JobSpec) -> None:
    """What a job of several objectives cannot do (each tells the tuner one value)."""
    refused = [(spec.tuner in ("cmaes", "surrogate"), f"--tuner {spec.tuner}",
                "--tuner tpe (or random)"),
               (spec.pruner != "none", f"--pruner {spec.pruner}", "--pruner none"),
               (spec.knobs == [AUTO_KNOBS], "--knobs auto", "--knobs with the knobs to tune"),
               (bool(spec.baseline_every), "--baseline-every", "leave it out"),
               (spec.transfer_priors, "--transfer-priors", "leave it out"),
               (bool(spec.workers), "--workers", "leave it out (trials run here)")]
    for bad, option, fix in refused:
        if bad:
            raise KnobflowError(f"{option} takes one objective, and the job has several "
                                f"(--objective {' --objective '.join(spec.objectives or [])});"
                                f" use {fix}, or one --objective")
