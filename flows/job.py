"""Tuning jobs: the record of one on disk, building it from a spec, and finding one to resume.

A job's record (``<home>/jobs/<study>/job.json``) holds everything needed to continue it after a
crash: the spec's options resolved against the target (objective, trial timeout, workload, search
space, rule files), its study name, status and MLflow run. ``prepare_job`` builds it once per job,
from what was asked (``flows.spec.JobSpec``) or from the record of the job to resume; the record is
written before the first trial runs and updated when the job ends.
"""

from __future__ import annotations

import contextlib
import enum
import json
import os
import secrets
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from flows.inputs import (
    check_several,
    objectives_of,
    parse_assignments,
    prefer_of,
    resolve_workload,
)
from flows.spec import AUTO_KNOBS, DEFAULT_TOP_KNOBS, JobSpec, Resume, option_error
from rules.bounds import Bound, parse_bounds
from rules.learn import LearnedRules
from rules.review import check_space
from rules.ruleset import RuleSet
from targets.base import Target
from targets.common.errors import JobError, KnobflowError
from targets.common.files import display_path, file_lock, write_text_atomic
from targets.registry import load_target, target_ref
from tasks.isolation import IsolationError, check_cpus
from tasks.noise import RepeatPolicy
from tasks.runner import TrialRunner
from tuners.space import SearchSpace, load_space, parse_space, space_for_knobs

__all__ = [
    "DEFAULT_BUDGET", "Job", "JobStatus", "check_spec", "find_resumable", "hold_instance",
    "make_home", "parse_assignments", "prepare_job", "recorded_jobs", "resolve_workload",
]

DEFAULT_BUDGET = 40


class JobStatus(enum.StrEnum):
    RUNNING = "running"
    INTERRUPTED = "interrupted"
    FINISHED = "finished"


@dataclass
class Job:
    """The record of one tuning job: its resolved settings, identity, status and where it is."""

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
    noise_runs: int = 0  # runs of the default that measure the machine's noise at the start
    noise_threshold: float = 0.1
    noise_free: list[str] = field(default_factory=list)  # what the noise check may switch on
    noise: dict[str, Any] | None = None  # what the noise check found (tasks/noise.NoiseCheck)
    rule_files: list[str] = field(default_factory=list)
    policies: list[str] = field(default_factory=list)
    learn_rules: bool = True
    service: str = ""  # the service the instance belongs to (default: the target's name)
    transfer: bool = True  # start from what sibling instances of the service learned
    transfer_priors: bool = False  # also tell the tuner siblings' trials with close workloads
    train: bool = True  # train the service's models after the job
    fail_on_regression: bool = False  # fail when the result is slower than the reference before
    workers: int = 0  # Prefect workers exploring the shared study (flows/worker.py); 0: none
    testbed: str | None = None  # the test-bed its instances run on (None: the running host)
    testbed_slots: int | None = None  # the test-bed's limit, when given (None: 1 if created)
    cpus: str | None = None  # each instance's CPU set: auto, a CPU list, or None (not pinned)
    memory_mb: int | None = None  # each instance's memory limit
    top_knobs: int = 0  # --knobs auto: the most important knobs tuned first (0: all at once)
    #: --knobs auto: the knobs tuned first, the model that ranked them, or why all were tuned
    #: (kept for --resume: a resumed job focuses on the same knobs)
    focus: dict[str, Any] | None = None
    isolation: dict[str, Any] | None = None  # what the running host gave (tasks/isolation.py)
    pruner: str = "none"  # stops clearly bad trials early (tuners/pruners.py)
    status: JobStatus = JobStatus.RUNNING
    mlflow_run_id: str | None = None
    #: Several objectives (``--objective`` repeated): every metric and its direction, the first
    #: being ``objective``/``direction``; empty: one objective.
    objectives: list[str] = field(default_factory=list)
    directions: list[str] = field(default_factory=list)
    #: ``--prefer``: the weight of each objective in picking the Pareto point to apply.
    prefer: dict[str, float] = field(default_factory=dict)
    #: ``--constraint``: SLA bounds on metrics (``rules.bounds``), and the default config's
    #: metrics a bound on ``default`` compares with (measured before the search).
    constraints: list[str] = field(default_factory=list)
    default_metrics: dict[str, float] | None = None
    home: Path = field(default=Path(".knobflow"), compare=False)

    def __post_init__(self) -> None:
        self.service = self.service or self.target
        self.status = JobStatus(self.status)

    @classmethod
    def create(cls, spec: JobSpec, home: Path) -> Job:
        """A new job for ``spec``, every input checked against the target (nothing is saved);
        a ``KnobflowError`` names the first bad one."""
        target_cls = load_target(spec.target)
        service = spec.service or spec.target
        _check_service(home, service, spec.target)
        objectives = objectives_of(spec, target_cls)
        objective, direction = objectives[0]
        several = len(objectives) > 1
        parse_bounds(spec.constraints, target_cls.metrics)
        prefer = prefer_of(spec, objectives) if several else {}  # --prefer alone: refused
        if spec.prefer is not None and not several:
            prefer_of(spec, objectives)
        if several:
            check_several(spec)
        known = _policies(target_cls, spec.rule_files)
        for policy in spec.policies:
            if policy not in known:
                raise option_error("policy", policy, "a policy of the rules: "
                                   f"{', '.join(sorted(known)) or 'none'}", tuple(known))
        now = datetime.now(UTC)
        job = cls(
            study_name=f"{service}-{spec.instance}-{now:%Y%m%d-%H%M%S}-{secrets.token_hex(2)}",
            target=spec.target, instance=spec.instance, objective=objective,
            direction=direction, tuner=spec.tuner,
            budget=spec.budget or DEFAULT_BUDGET, time_budget=spec.time_budget,
            parallel=spec.parallel or 1, seed=spec.seed,
            workload=resolve_workload(target_cls, spec.workload_file, spec.workload or {}),
            space=_space(spec, target_cls).to_dict(),
            trial_timeout=spec.trial_timeout or float(target_cls.trial_timeout_s),
            verify_repeats=spec.verify_repeats, created=now.isoformat(),
            repeats=spec.repeats or 1, repeat_until=spec.repeat_until,
            max_repeats=spec.max_repeats, baseline_every=spec.baseline_every or 0,
            noise_runs=spec.noise_runs, noise_threshold=spec.noise_threshold,
            noise_free=[name for name, given in (
                ("repeats", spec.repeats is not None or spec.repeat_until is not None),
                ("baseline_every", spec.baseline_every is not None or several))
                if not given],
            rule_files=[str(Path(f).resolve()) for f in spec.rule_files],
            policies=list(spec.policies), learn_rules=spec.learn_rules, service=service,
            transfer=spec.transfer, transfer_priors=spec.transfer_priors, train=spec.train,
            fail_on_regression=spec.fail_on_regression, workers=spec.workers or 0,
            testbed=spec.testbed, testbed_slots=spec.testbed_slots, cpus=spec.cpus,
            memory_mb=spec.memory_mb, pruner=spec.pruner,
            objectives=[n for n, _ in objectives] if several else [],
            directions=[d for _, d in objectives] if several else [],
            prefer=prefer, constraints=[b.text for b in parse_bounds(spec.constraints,
                                                                      target_cls.metrics)],
            top_knobs=(spec.top_knobs or DEFAULT_TOP_KNOBS) if spec.knobs == [AUTO_KNOBS] else 0,
            home=home,
        )
        job.check_cpus()
        check_space(job.rule_set(), job.search_space(), f"search space of {spec.target}")
        return job

    def resumed_with(self, spec: JobSpec) -> Job:
        """This job, continued with what ``spec`` may change (``Resume.MAY_CHANGE``); anything
        else ``spec`` gives is refused."""
        spec.check_resume(self.study_name)
        for name, value in spec.given().items():
            if JobSpec.resume_rule(name) == Resume.MAY_CHANGE:
                setattr(self, name, value)
        return self

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

    @property
    def objective_names(self) -> list[str]:
        """The metrics the job optimizes (one, or several: ``--objective`` repeated)."""
        return list(self.objectives) or [self.objective]

    @property
    def objective_directions(self) -> list[str]:
        return list(self.directions) or [self.direction]

    @property
    def several(self) -> bool:
        """Whether the job optimizes several objectives (its result is a Pareto front)."""
        return len(self.objective_names) > 1

    def bounds(self) -> list[Bound]:
        """The job's SLA bounds (``--constraint``), checked."""
        return parse_bounds(self.constraints, self.target_cls.metrics)

    def instance_dirs(self) -> dict[str, Path]:
        """One data directory per parallel instance: ``<instance>`` or ``<instance>-<k>``."""
        names = (
            [self.instance]
            if self.parallel == 1
            else [f"{self.instance}-{k}" for k in range(1, self.parallel + 1)]
        )
        return {name: self.home / "instances" / self.service / name for name in names}

    def check_cpus(self) -> None:
        """A ``KnobflowError`` when this host cannot give the CPUs ``--cpus`` asks for."""
        try:
            check_cpus(list(self.instance_dirs()), self.cpus)
        except IsolationError as exc:
            raise KnobflowError(str(exc)) from None

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
            policy=self.repeat_policy(),
        )

    def repeat_policy(self) -> RepeatPolicy:
        """How often each trial config runs."""
        return RepeatPolicy(self.repeats, self.repeat_until, self.max_repeats)

    def rule_set(self) -> RuleSet:
        """The job's rules: shipped for the target, the operator's files, the policies it turned
        on, and (unless turned off) the rules learned by earlier jobs of the service."""
        learned = self.learned_rules().rules() if self.learn_rules else []
        return RuleSet.for_target(self.target_cls, self.rule_files, self.policies, learned,
                                  self.workload)

    def learned_rules(self) -> LearnedRules:
        return LearnedRules.of(self.home, self.service, self.target_cls.knob_spec())

    def save(self) -> None:
        data = {k: v for k, v in asdict(self).items() if k != "home"}
        write_text_atomic(self.dir / "job.json", json.dumps(data, indent=2, default=str))

    @classmethod
    def load(cls, path: Path, home: Path) -> Job:
        data = json.loads(path.read_text(encoding="utf-8"))
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known}, home=home)


def _check_service(home: Path, service: str, target: str) -> None:
    """A service belongs to one target: its instances share models and rules."""
    for other in recorded_jobs(home):
        if other.service == service and other.target != target:
            raise KnobflowError(
                f"The 'service' option of tune names a service of target '{other.target}' "
                f"(job {other.study_name}); an instance of '{target}' needs another service name."
            )


def _space(spec: JobSpec, target_cls: type[Target]) -> SearchSpace:
    """The search space asked for: an expert's file, a list of knobs, or the whole spec."""
    knob_spec = target_cls.knob_spec()
    if spec.space_file:
        return load_space(spec.space_file, knob_spec)
    if spec.knobs and spec.knobs != [AUTO_KNOBS]:  # auto: every knob, the top ones first
        return space_for_knobs(knob_spec, [k.strip() for k in spec.knobs if k.strip()])
    return SearchSpace.full(knob_spec)


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


def find_resumable(home: Path, spec: JobSpec) -> Job:
    """The latest unfinished job of the spec's target, instance and service; a JobError if
    there is none."""
    target, instance, service = spec.target, spec.instance, spec.service or spec.target
    load_target(target)  # an unknown target is reported as such, not as "nothing to resume"
    jobs = [j for j in recorded_jobs(home) if j.target == target and j.instance == instance
            and j.service == service]
    if not jobs:
        raise JobError(
            f"--resume: no job of target '{target}' on instance '{instance}' under "
            f"{display_path(home)}; start one without --resume"
        )
    latest = max(jobs, key=lambda j: j.created)
    if latest.status == JobStatus.FINISHED:
        raise JobError(
            f"--resume: the last job of '{target}' on '{instance}' ({latest.study_name}) "
            "already finished; start a new job without --resume"
        )
    return latest


def check_spec(spec: JobSpec, home: Path, resume: bool) -> Job:
    """What ``prepare_job`` would run, checked without recording it (the CLI asks before it
    starts Prefect: bad input, or a busy instance, answers in a second, not in thirty)."""
    job = _build(spec, home, resume)
    with hold_instance(home, spec):  # taken and let go: is another job on the instance?
        pass
    return job


def _build(spec: JobSpec, home: Path, resume: bool) -> Job:
    return find_resumable(home, spec).resumed_with(spec) if resume else Job.create(spec, home)


def make_home(home: Path) -> None:
    """Create the home for its first job, readable by its owner only (0700): it holds the
    instances' data and, for server targets, their passwords."""
    if not home.exists():
        home.mkdir(parents=True, mode=0o700)
        home.chmod(0o700)  # mkdir's mode is masked by the umask


@contextlib.contextmanager
def hold_instance(home: Path, spec: JobSpec) -> Iterator[None]:
    """Hold the spec's instance of its service for a job: one job per instance at a time (two
    would spoil each other's measurements). A ``JobError`` names the job that holds it. The lock
    is a file beside the instance's data; a job that dies lets it go."""
    make_home(home)
    service = spec.service or spec.target
    where = home / "instances" / service / f"{spec.instance}.lock"
    holder = where.with_suffix(".holder.json")
    try:
        with file_lock(where, timeout=0):
            write_text_atomic(holder, json.dumps({"pid": os.getpid(),
                                                  "since": datetime.now(UTC).isoformat()}))
            try:
                yield
            finally:
                holder.unlink(missing_ok=True)
    except TimeoutError:
        try:
            held = json.loads(holder.read_text(encoding="utf-8"))
            who = f"process {held.get('pid')} (since {held.get('since', '?')[:19]})"
        except (OSError, ValueError):
            who = "another process"
        raise JobError(
            f"instance '{spec.instance}' of service '{service}' is in use by a job of "
            f"{who}; wait for it to end, or tune another --instance"
        ) from None


@task(name="prepare-job", cache_policy=NO_CACHE)
def prepare_job(spec: JobSpec, home: Path, resume: bool) -> Job:
    """Build the job for ``spec`` (or load the unfinished one to resume) and record it as
    running; the caller holds the instance (``hold_instance``, which makes the home)."""
    job = _build(spec, home, resume)
    job.status = JobStatus.RUNNING
    job.save()
    return job
