"""Tuning jobs: their validated parameters, their record on disk, and finding one to resume.

A job's record (``<home>/jobs/<study>/job.json``) holds everything needed to continue it after a
crash: target, instance, objective, tuner, budgets, seed, workload and search space. The record is
written before the first trial runs and updated when the job ends.
"""

from __future__ import annotations

import json
import math
import re
import secrets
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rules.learn import LearnedRules, learned_path
from rules.review import check_space
from rules.ruleset import RuleSet
from targets.base import Target
from targets.common.errors import JobError, KnobflowError, WorkloadError, did_you_mean
from targets.common.files import display_path, load_yaml, write_text_atomic
from targets.registry import load_target, target_ref
from tasks.noise import RepeatPolicy
from tasks.runner import TrialRunner
from tuners.samplers import TUNERS
from tuners.space import SearchSpace, load_space, parse_space, space_for_knobs

_INSTANCE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass
class Job:
    """The parameters of one tuning job, as recorded for ``--resume``."""

    study_name: str
    target: str
    instance: str
    objective: str
    direction: str
    tuner: str
    budget: int
    time_budget: float | None
    parallel: int
    seed: int
    workload: dict[str, Any]
    space: dict[str, Any]
    trial_timeout: float
    verify_repeats: int
    created: str
    repeats: int = 1
    repeat_until: float | None = None
    max_repeats: int = 5
    baseline_every: int = 0
    rule_files: list[str] = field(default_factory=list)
    policies: list[str] = field(default_factory=list)
    learn_rules: bool = True
    service: str = ""  # the service the instance belongs to (default: the target's name)
    transfer: bool = True  # start from what sibling instances of the service learned
    transfer_priors: bool = False  # also tell the tuner siblings' trials with close workloads
    train: bool = True  # train the service's models after the job
    status: str = "running"
    mlflow_run_id: str | None = None
    home: Path = field(default=Path(".knobflow"), compare=False)

    def __post_init__(self) -> None:
        self.service = self.service or self.target

    @property
    def target_cls(self) -> type[Target]:
        return load_target(self.target)

    @property
    def target_ref(self) -> str:
        return target_ref(self.target)

    @property
    def dir(self) -> Path:
        return self.home / "jobs" / self.study_name

    def search_space(self) -> SearchSpace:
        return parse_space(self.space, self.target_cls.knob_spec(), f"job {self.study_name}")

    def instance_dirs(self) -> dict[str, Path]:
        """One data directory per parallel instance: ``<instance>`` or ``<instance>-<k>``."""
        names = (
            [self.instance]
            if self.parallel == 1
            else [f"{self.instance}-{k}" for k in range(1, self.parallel + 1)]
        )
        return {name: self.home / "instances" / self.service / name for name in names}

    def trial_runner(self) -> TrialRunner:
        """What runs this job's trials: its target, workload, objective, timeout and instances."""
        return TrialRunner(
            target_cls=self.target_cls,
            target_ref=self.target_ref,
            workload=self.workload,
            objective=self.objective,
            timeout_s=self.trial_timeout,
            job_dir=self.dir,
            instance_dirs=self.instance_dirs(),
            seed=self.seed,
            policy=RepeatPolicy(self.repeats, self.repeat_until, self.max_repeats),
        )

    def rule_set(self) -> RuleSet:
        """The job's rules: shipped for the target, the operator's files, the policies it turned
        on, and (unless turned off) the rules learned by earlier jobs of the service."""
        learned = self.learned_rules().rules() if self.learn_rules else []
        return RuleSet.for_target(self.target_cls, self.rule_files, self.policies, learned,
                                  self.workload)

    def learned_rules(self) -> LearnedRules:
        return LearnedRules(learned_path(self.home, self.service), self.target_cls.knob_spec())

    def save(self) -> None:
        data = {k: v for k, v in asdict(self).items() if k != "home"}
        write_text_atomic(self.dir / "job.json", json.dumps(data, indent=2, default=str))

    @classmethod
    def load(cls, path: Path, home: Path) -> Job:
        data = json.loads(path.read_text(encoding="utf-8"))
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known}, home=home)


def check_int(name: str, value: Any, low: int, high: float = math.inf) -> int:
    """An int option in [low, high], with scikit-learn's message shape when it is not."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        upper = "inf)" if high == math.inf else f"{high}]"
        raise KnobflowError(
            f"The '{name}' option of tune must be an int in [{low}, {upper}. Got {value!r} instead."
        )
    return value


def check_seconds(name: str, value: Any) -> float | None:
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not (math.isfinite(value) and value > 0)
    ):
        raise KnobflowError(
            f"The '{name}' option of tune must be a number of seconds > 0. Got {value!r} instead."
        )
    return float(value)


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
    """Target defaults, then the workload file, then ``--set-workload`` values, all validated."""
    values: dict[str, Any] = {}
    if workload_file:
        data = load_yaml(workload_file, WorkloadError)
        shown = display_path(workload_file)
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise WorkloadError(f"{shown}: a workload file must be a mapping of parameter to value")
        target_cls.parse_workload(data, shown)
        values.update(data)
    target_cls.parse_workload(overrides, "--set-workload")
    return target_cls.parse_workload({**values, **overrides}, "workload")


def build_job(
    home: Path,
    target: str,
    *,
    instance: str = "local",
    budget: int = 40,
    time_budget: float | None = None,
    tuner: str = "tpe",
    parallel: int = 1,
    workload_file: str | None = None,
    workload: Mapping[str, Any] | None = None,
    objective: str | None = None,
    seed: int = 0,
    space_file: str | None = None,
    knobs: list[str] | None = None,
    trial_timeout: float | None = None,
    verify_repeats: int = 3,
    repeats: int = 1,
    repeat_until: float | None = None,
    max_repeats: int = 5,
    baseline_every: int = 0,
    rule_files: list[str] | None = None,
    policies: list[str] | None = None,
    learn_rules: bool = True,
    service: str | None = None,
    transfer: bool = True,
    transfer_priors: bool = False,
    train: bool = True,
) -> Job:
    """Validate every input of a new job; raise a KnobflowError naming the first bad one."""
    target_cls = load_target(target)
    if not _INSTANCE_RE.match(instance or ""):
        raise KnobflowError(
            f"The 'instance' option of tune must be 1-64 letters, digits, '.', '_' or '-'. "
            f"Got {instance!r} instead."
        )
    service = service or target
    if not _INSTANCE_RE.match(service):
        raise KnobflowError(
            f"The 'service' option of tune must be 1-64 letters, digits, '.', '_' or '-'. "
            f"Got {service!r} instead."
        )
    for other in recorded_jobs(home):
        if other.service == service and other.target != target:
            raise KnobflowError(
                f"The 'service' option of tune names a service of target '{other.target}' "
                f"(job {other.study_name}); an instance of '{target}' needs another service name."
            )
    check_int("budget", budget, 1)
    check_int("parallel", parallel, 1, 64)
    check_int("seed", seed, 0, 2**31 - 1)
    check_int("verify_repeats", verify_repeats, 2, 100)
    check_int("repeats", repeats, 1, 100)
    check_int("max_repeats", max_repeats, max(repeats, 2), 100)
    check_int("baseline_every", baseline_every, 0, 10_000)
    if repeat_until is not None and (
        isinstance(repeat_until, bool)
        or not isinstance(repeat_until, (int, float))
        or not 0 < repeat_until < 1
    ):
        raise KnobflowError(
            "The 'repeat_until' option of tune must be a relative half-width in (0, 1), e.g. "
            f"0.05 for +-5 %. Got {repeat_until!r} instead."
        )
    time_budget = check_seconds("time_budget", time_budget)
    timeout = check_seconds("trial_timeout", trial_timeout) or float(target_cls.trial_timeout_s)
    if tuner not in TUNERS:
        raise KnobflowError(
            f"The 'tuner' option of tune must be one of {', '.join(TUNERS)}. "
            f"Got {tuner!r} instead{did_you_mean(tuner, TUNERS)}."
        )
    objective = objective or target_cls.default_objective
    if objective not in target_cls.metrics:
        raise KnobflowError(
            f"The 'objective' option of tune must be a metric of target '{target}': "
            f"{', '.join(target_cls.metrics)}. Got {objective!r} instead"
            f"{did_you_mean(objective, target_cls.metrics)}."
        )
    spec = target_cls.knob_spec()
    if space_file and knobs:
        raise KnobflowError("--space and --knobs both narrow the search space; use one of them")
    if space_file:
        space = load_space(space_file, spec)
    elif knobs:
        space = space_for_knobs(spec, knobs)
    else:
        space = SearchSpace.full(spec)
    wl = resolve_workload(target_cls, workload_file, dict(workload or {}))
    policies = list(policies or [])
    known = _policies(target_cls, rule_files or [])
    for policy in policies:
        if policy not in known:
            raise KnobflowError(
                f"The 'policy' option of tune must name a policy of the rules: "
                f"{', '.join(sorted(known)) or 'none'}. Got {policy!r} instead"
                f"{did_you_mean(policy, known)}."
            )
    now = datetime.now(UTC)
    job = Job(
        study_name=f"{service}-{instance}-{now:%Y%m%d-%H%M%S}-{secrets.token_hex(2)}",
        target=target,
        instance=instance,
        objective=objective,
        direction=target_cls.metrics[objective],
        tuner=tuner,
        budget=budget,
        time_budget=time_budget,
        parallel=parallel,
        seed=seed,
        workload=wl,
        space=space.to_dict(),
        trial_timeout=timeout,
        verify_repeats=verify_repeats,
        created=now.isoformat(),
        repeats=repeats,
        repeat_until=repeat_until,
        max_repeats=max_repeats,
        baseline_every=baseline_every,
        rule_files=[str(Path(f).resolve()) for f in rule_files or []],
        policies=policies,
        learn_rules=learn_rules,
        service=service,
        transfer=transfer,
        transfer_priors=transfer_priors,
        train=train,
        home=home,
    )
    check_space(job.rule_set(), space, f"search space of {target}")  # bad ranges stop here
    return job


def _policies(target_cls: type[Target], files: list[str]) -> set[str]:
    """Policies the job's rule files define (an operator turns them on with --policy)."""
    ruleset = RuleSet.for_target(target_cls, files, all_policies=True)
    return {r.policy for r in ruleset.rules if r.policy}


def recorded_jobs(home: Path) -> list[Job]:
    """Every job recorded under ``home`` (records that cannot be read are skipped)."""
    jobs = []
    for path in sorted((home / "jobs").glob("*/job.json")):
        try:
            jobs.append(Job.load(path, home))
        except (OSError, ValueError, TypeError):
            continue
    return jobs


def find_resumable(home: Path, target: str, instance: str, service: str | None = None) -> Job:
    """The latest unfinished job of ``target`` on ``instance``; a JobError if there is none."""
    load_target(target)  # an unknown target is reported as such, not as "nothing to resume"
    jobs = [j for j in recorded_jobs(home) if j.target == target and j.instance == instance
            and j.service == (service or target)]
    if not jobs:
        raise JobError(
            f"--resume: no job of target '{target}' on instance '{instance}' under "
            f"{display_path(home)}; start one without --resume"
        )
    latest = max(jobs, key=lambda j: j.created)
    if latest.status == "finished":
        raise JobError(
            f"--resume: the last job of '{target}' on '{instance}' ({latest.study_name}) "
            "already finished; start a new job without --resume"
        )
    return latest
