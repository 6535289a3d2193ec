"""The input of a job that can be checked before the stack loads: ``KEY=VALUE`` assignments, the
workload (the target's defaults, a workload file, ``--set-workload`` values) and the objective.

These checks need only the target's class (no Prefect, MLflow, Optuna or pandas), so
``knobflow tune`` runs them first and a typo answers in a fraction of a second; ``Job.create``
(``flows/job.py``) runs them again with the checks that need the stack (rules, search space).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flows.spec import JobSpec, option_error
from targets.base import Target
from targets.common.errors import WorkloadError
from targets.common.files import display_path
from targets.common.yamlfiles import load_yaml
from targets.registry import load_target

__all__ = ["check_inputs", "objective_of", "parse_assignments", "resolve_workload"]


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


def check_inputs(spec: JobSpec) -> None:
    """Check what ``spec`` asks of its target without the stack: the target exists, the
    objective is one of its metrics, the workload is within its limits (a ``KnobflowError``
    names the first bad input)."""
    target_cls = load_target(spec.target)
    objective_of(spec, target_cls)
    resolve_workload(target_cls, spec.workload_file, spec.workload or {})
