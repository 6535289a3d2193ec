"""Regression checks: is a new measurement slower than the recorded reference, beyond the noise?

``knobflow check-regression NAME`` and the Prefect flow ``check_regression`` (a deployment CI
starts with ``prefect deployment run check-regression/... --watch``) compare, for NAME:

* a recorded job (its study name): the values of the config the job ended with (its
  ``reference.json``) with the reference recorded before it for the same service, objective and
  workload (``model_registry.references``);
* a job with a config (``--config``): that config and the reference's config, measured now,
  interleaved (ABBA, ``tasks.verify.verify_best``) on a test instance of the job's target and
  workload (its files under ``<home>/checks/``);
* a live instance: windows observed now with the windows of its reference
  (``instance_regression``; the reference is ``tasks/reference.py``'s).

The decision is Welch's test on the logarithms of the values (``tasks.decide.test_change``, the
test actuations use) and its 95 % interval of the ratio new / reference: a *regression* when the
interval lies entirely on the slower side of 1 (below it for a metric to maximize, above it for
one to minimize); *faster* when it lies entirely on the other; *the same* when it lies within
+-2 % of 1; otherwise *undecided*. Only a regression fails (exit 1, a Failed flow run): a fixed
percentage would either fail on noise or miss a loss; the interval is as wide as the noise.
"""

from __future__ import annotations

import secrets
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from flows.job import Job, recorded_jobs
from model_registry.references import JobReference, find_reference, workload_key
from targets.base import MAXIMIZE
from targets.common.errors import KnobflowError, did_you_mean
from targets.common.settings import knobflow_home, tracking_uri
from tasks.decide import DecisionError, test_change
from tasks.runner import TrialRunner
from tasks.verify import NARROW, verify_best

__all__ = [
    "DEFAULT_RUNS", "FASTER", "REGRESSION", "SAME", "UNDECIDED", "RegressionCheck",
    "RegressionFound", "check_regression", "compare", "instance_regression", "no_reference",
    "regression_check",
]

REGRESSION, FASTER, SAME, UNDECIDED = "regression", "faster", "same", "undecided"
#: Most interleaved pairs a check of a config runs (it stops after 3 once decisive).
DEFAULT_RUNS = 10


@dataclass
class RegressionCheck:
    """New values against a reference's: the ratio, its 95 % interval and the verdict."""

    name: str  # what was checked: a job's study name or an instance
    subject: str  # what the new values are
    reference: str  # what the reference values are
    metric: str
    direction: str
    reference_values: list[float]
    new_values: list[float]
    reference_mean: float
    new_mean: float
    ratio: float  # new mean / reference mean
    low: float  # 95 % interval of the ratio (of the geometric means)
    high: float
    verdict: str
    message: str
    reference_run: str = ""

    @property
    def regression(self) -> bool:
        return self.verdict == REGRESSION

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "regression": self.regression}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RegressionCheck:
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in known})

    def row(self) -> dict[str, str]:
        """The check as one table row (what ``knobflow check-regression`` prints)."""
        return {"metric": self.metric,
                "reference mean": f"{self.reference_mean:,.4g} ({len(self.reference_values)})",
                "new mean": f"{self.new_mean:,.4g} ({len(self.new_values)})",
                "ratio": f"{self.ratio:.3f}", "95% interval": f"{self.low:.3f}-{self.high:.3f}",
                "verdict": self.verdict}


class RegressionFound(Exception):
    """A check found a regression; the flow run ends Failed. ``check`` says the figures."""

    def __init__(self, check: RegressionCheck) -> None:
        super().__init__(f"{check.name}: {check.message}")
        self.check = check

    def __reduce__(self) -> tuple[type[RegressionFound], tuple[RegressionCheck]]:
        return type(self), (self.check,)


def compare(reference: Sequence[float], new: Sequence[float], direction: str, *, metric: str,
            name: str, subject: str, reference_text: str,
            reference_run: str = "") -> RegressionCheck:
    """The verdict on ``new`` values against ``reference`` values of ``metric`` (module doc)."""
    for side, values in (("reference", reference), ("new measurement", new)):
        if len(values) < 2:
            raise DecisionError(f"{name}: the {side} has {len(values)} value(s) of {metric}; "
                                "a regression check needs at least 2 on each side")
    test = test_change(reference, new, direction, min_effect=0.0, metric=metric)
    low, high = test.interval
    up = direction == MAXIMIZE
    if (high < 1) if up else (low > 1):
        verdict = REGRESSION
    elif (low > 1) if up else (high < 1):
        verdict = FASTER
    elif low >= 1 - NARROW and high <= 1 + NARROW:
        verdict = SAME
    else:
        verdict = UNDECIDED
    return RegressionCheck(
        name=name, subject=subject, reference=reference_text, metric=metric,
        direction=direction, reference_values=list(map(float, reference)),
        new_values=list(map(float, new)), reference_mean=test.mean_before,
        new_mean=test.mean_after, ratio=test.ratio, low=low, high=high, verdict=verdict,
        message=_message(verdict, metric, test.ratio, low, high, up),
        reference_run=reference_run)


def _message(verdict: str, metric: str, ratio: float, low: float, high: float,
             up: bool) -> str:
    figures = f"{metric} {ratio:.3f}x the reference (95 % interval {low:.3f}-{high:.3f}"
    if verdict == REGRESSION:
        return (f"REGRESSION: {figures}, entirely {'below' if up else 'above'} 1): slower "
                "beyond the noise")
    if verdict == FASTER:
        return f"pass: faster: {figures}, entirely {'above' if up else 'below'} 1)"
    if verdict == SAME:
        return f"pass: the same within +-{100 * NARROW:g} %: {figures})"
    return (f"pass, undecided: {figures}, includes 1): not shown slower; more runs "
            "(--runs) narrow the interval")


def no_reference(job: Job, key: str, before: str = "") -> KnobflowError:
    """The error of a check without a reference, saying how to record one."""
    workload = " ".join(f"--set-workload {k}={v}" for k, v in sorted(job.workload.items()))
    return KnobflowError(
        f"no reference for service '{job.service}' ({job.objective}) and workload {key}"
        f"{before}; record one with `knobflow tune {job.target} --service {job.service} "
        f"--objective {job.objective} {workload}` (a job with a result records the reference "
        "of its service and workload)")


def job_regression(job: Job) -> RegressionCheck:
    """The values of the config ``job`` ended with against the reference recorded before it."""
    path = job.dir / "reference.json"
    if not path.exists():
        raise KnobflowError(
            f"job {job.study_name} recorded no reference ({path} is missing: the job has no "
            "result, or ran before knobflow recorded references); check a config of it with "
            "--config FILE")
    own = JobReference.read(path)
    previous = find_reference(tracking_uri(job.home), job.target, job.service, own.objective,
                              own.workload_key, before=own.recorded,
                              exclude_run=job.mlflow_run_id)
    if previous is None:
        raise no_reference(job, own.workload_key, f" before job {job.study_name}")
    return compare(previous.samples, own.samples, own.direction, metric=own.objective,
                   name=job.study_name, subject=f"job {job.study_name}: {own.source}",
                   reference_text=previous.describe(), reference_run=previous.run_id)


def config_regression(job: Job, config: Mapping[str, Any] | str,
                      runs: int = DEFAULT_RUNS) -> RegressionCheck:
    """``config`` (knob: value, or a YAML file) and the reference's config for ``job``'s
    service and workload, measured now, interleaved, on a test instance; the verdict. A Prefect
    task runs the measurements: call it inside a flow (``check_regression``)."""
    if runs < 2:
        raise KnobflowError(f"--runs must be an int >= 2 (pairs of runs). Got {runs} instead")
    key = workload_key(job.target_cls.workload_defaults, job.workload)
    reference = find_reference(tracking_uri(job.home), job.target, job.service, job.objective,
                               key)
    if reference is None:
        raise no_reference(job, key)
    candidate, shown = candidate_config(job, config)
    where = job.home / "checks" / (f"{job.study_name}-{datetime.now(UTC):%Y%m%d-%H%M%S}-"
                                   f"{secrets.token_hex(2)}")
    runner = TrialRunner(
        target_cls=job.target_cls, target_ref=job.target_ref, workload=dict(reference.workload),
        objective=reference.objective, timeout_s=job.trial_timeout, job_dir=where,
        instance_dirs={"check": where / "instance"}, seed=job.seed)
    try:
        measured = verify_best(runner, reference.config, candidate, reference.direction, runs,
                               "check", record=where / "verify.json")
    finally:
        job.target_cls.cleanup(where / "instance")
        shutil.rmtree(where / "instance", ignore_errors=True)
    if len(measured.best_values) < 2:
        raise KnobflowError(f"{shown}: {len(measured.best_values)} complete pairs of runs of "
                            f"{measured.pairs}; failures: {'; '.join(measured.failures)}")
    return compare(measured.default_values, measured.best_values, reference.direction,
                   metric=reference.objective, name=job.study_name,
                   subject=f"{shown}, measured now ({where})",
                   reference_text=f"the config of {reference.describe()}, measured now",
                   reference_run=reference.run_id)


def candidate_config(job: Job, config: Mapping[str, Any] | str) -> tuple[dict[str, Any], str]:
    """The config to check, whole (knobs left out at their defaults), checked against the
    target's knob spec and the job's rules; and how to name it."""
    from flows.cli_rules import _read_config

    spec = job.target_cls.knob_spec()
    if isinstance(config, str):
        values, shown = _read_config(config, spec), f"config {config}"
    else:
        values, shown = spec.validate_config(dict(config), "config"), "the given config"
    full = spec.full_config(values)
    blocked = job.rule_set().check(full).errors
    if blocked:
        raise KnobflowError(f"{shown}: blocked by rule {blocked[0].rule} ({blocked[0].message});"
                            " a config the rules block is never run")
    return full, shown


def instance_regression(home: Path, name: str, *, windows: int | None = None,
                        window_s: float | None = None) -> RegressionCheck:
    """Windows of live instance ``name`` observed now against the windows of its reference
    (``tasks.reference.load_reference``)."""
    from flows.apply import acting_on
    from tasks.instances import InstanceStore
    from tasks.observe import observe
    from tasks.reference import load_reference

    InstanceStore(home).get(name)  # an unknown name: the error says so
    reference = load_reference(home, name)
    if reference is None:
        raise KnobflowError(f"instance '{name}' has no reference yet: its last tuning or "
                            f"actuation records one (`knobflow apply {name}`)")
    with acting_on(home, name, windows=windows, window_s=window_s) as act:
        seen = observe(act.live, windows=act.policy.windows, window_s=act.policy.window_s,
                       objective=act.objective)
    if not seen.valid:
        raise KnobflowError(f"instance '{name}': the windows observed now cannot be compared: "
                            + "; ".join(seen.reasons))
    metric = seen.objective
    before = [float(w.metrics[metric]) for w in reference.windows if metric in w.metrics]
    return compare(before, seen.values(), seen.direction, metric=metric, name=name,
                   subject=f"instance {name}: {len(seen.windows)} windows observed now",
                   reference_text=f"instance {name}'s reference ({reference.source}, recorded "
                   f"{reference.recorded})")


def find_job(home: Path, name: str) -> Job | None:
    """The recorded job named ``name`` (its study name, as knobflow prints it), or None."""
    return next((j for j in recorded_jobs(home) if j.study_name == name), None)


def unknown_name(home: Path, name: str) -> KnobflowError:
    """NAME is neither a job nor an instance: the error names the known ones."""
    from tasks.instances import InstanceStore

    jobs = [j.study_name for j in sorted(recorded_jobs(home), key=lambda j: j.created)]
    instances = [i.name for i in InstanceStore(home).list()]
    return KnobflowError(
        f"no job or instance '{name}' under {home}{did_you_mean(name, jobs + instances)}; "
        f"jobs: {', '.join(jobs[-10:]) or 'none'}; instances: {', '.join(instances) or 'none'}")


def regression_check(home: Path, name: str, *, config: Mapping[str, Any] | str | None = None,
                     runs: int = DEFAULT_RUNS, windows: int | None = None,
                     window_s: float | None = None) -> RegressionCheck:
    """The check of ``name``: a recorded job (with ``config``: that config measured now) or a
    live instance (module doc)."""
    job = find_job(home, name)
    if job is not None:
        return job_regression(job) if config is None else config_regression(job, config, runs)
    from tasks.instances import InstanceStore

    if name in {i.name for i in InstanceStore(home).list()}:
        if config is not None:
            raise KnobflowError("--config measures a config on a test instance of a job's "
                                f"target; '{name}' is a live instance: leave --config out")
        return instance_regression(home, name, windows=windows, window_s=window_s)
    raise unknown_name(home, name)


@flow(name="check-regression", log_prints=False)
def check_regression(name: str, config: dict[str, Any] | str | None = None,
                     runs: int = DEFAULT_RUNS, home: str | None = None) -> dict[str, Any]:
    """Compare NAME (a recorded job, or a live instance) with the recorded reference of its
    service and workload; the run ends Failed on a regression (slower beyond the noise).

    Args:
        name: A recorded job (its study name) or a live instance.
        config: A config to measure now against the reference's (knob: value, or the path
            of a YAML file on the machine running the flow); only with a job.
        runs: Most interleaved pairs of runs of a config (it stops after 3 once decisive).
        home: State directory (default ./.knobflow, or $KNOBFLOW_HOME).
    """
    logger = get_run_logger()
    check = regression_check(knobflow_home(home), name, config=config, runs=runs)
    for line in (f"{check.subject} against {check.reference}", check.message):
        logger.info("%s", line)
    if check.regression:
        raise RegressionFound(check)
    return check.to_dict()
