"""The trial manager: ask -> run (own process, hard timeout) -> clean -> tell, over N instances.

``execute_trial`` runs one target lifecycle in a child process (``tasks/trial_process.py``) in its
own session, and kills the whole process group when the hard timeout passes. Crashes, hangs,
refused configs and non-zero exits become failed trials with a failure class and the tail of the
log; the job goes on. ``explore`` keeps ``parallel`` instances busy, each with its own data
directory, until the trial budget or the time budget is spent.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextvars import copy_context
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState
from prefect import task
from prefect.cache_policies import NO_CACHE

from rules.learn import LEARN_FROM
from targets.base import FailureClass, Measurement, Target
from tasks.clean import clean_measurement
from tasks.guard import CandidateGuard
from tasks.noise import RepeatPolicy, ratio_to_baseline, run_repeated, t_interval
from tuners.space import SearchSpace

LOG_TAIL_LINES = 20
ATTR = "knobflow"  # the Optuna user attribute holding a trial's record
PRIOR_ATTR = "knobflow.prior"  # a sibling's trial added as a prior observation (transfer)
RETRY_ATTR = "knobflow.retry_of"  # set on a trial re-enqueued for an interrupted one


@dataclass
class TrialOutcome:
    """What one trial produced, after cleaning: a value to tell, or a failure with its reason."""

    config: dict[str, Any]
    instance: str
    status: str  # "ok" or "failed"
    value: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    effective_config: dict[str, Any] = field(default_factory=dict)
    changed_knobs: list[str] = field(default_factory=list)
    failure_class: str | None = None
    message: str = ""
    log_tail: list[str] = field(default_factory=list)
    samples: list[dict[str, Any]] = field(default_factory=list)
    counters: dict[str, float] = field(default_factory=dict)
    workload_features: dict[str, float] = field(default_factory=dict)
    #: The measurement row that was gated (``tasks/clean.py``) and why it failed, if it did.
    row: dict[str, Any] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)
    #: Noise-aware evaluation: the objective of every repeat and the 95 % interval of their mean;
    #: with a baseline, ``value`` is the ratio to it and ``raw_value`` the measured mean.
    repeat_values: list[float] = field(default_factory=list)
    value_low: float | None = None
    value_high: float | None = None
    raw_value: float | None = None
    baseline_value: float | None = None
    #: Warnings of the rules the config passed with, and a rule learned from this failure.
    rule_warnings: list[str] = field(default_factory=list)
    learned_rule: str | None = None
    elapsed_s: float = 0.0
    #: The raw measurement between running and cleaning (never stored).
    measurement: Measurement | None = field(default=None, repr=False)
    #: Great Expectations' validation result (kept in MLflow, not in the study).
    validation: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def record(self) -> dict[str, Any]:
        """The JSON-able record stored on the Optuna trial (samples left out: MLflow has them)."""
        return {
            "status": self.status,
            "value": self.value,
            "metrics": self.metrics,
            "config": self.config,
            "effective_config": self.effective_config,
            "changed_knobs": self.changed_knobs,
            "failure_class": self.failure_class,
            "message": self.message,
            "log_tail": self.log_tail,
            "counters": self.counters,
            "workload_features": self.workload_features,
            "row": self.row,
            "reasons": self.reasons,
            "repeat_values": self.repeat_values,
            "value_low": self.value_low,
            "value_high": self.value_high,
            "raw_value": self.raw_value,
            "baseline_value": self.baseline_value,
            "rule_warnings": self.rule_warnings,
            "learned_rule": self.learned_rule,
            "instance": self.instance,
            "elapsed_s": round(self.elapsed_s, 4),
        }


@dataclass
class TrialRunner:
    """Everything needed to run trials of one job: target, workload, objective, where, how long."""

    target_cls: type[Target]
    target_ref: str
    workload: dict[str, Any]
    objective: str
    timeout_s: float
    job_dir: Path
    instance_dirs: dict[str, Path]  # instance name -> its data directory
    seed: int = 0
    policy: RepeatPolicy = field(default_factory=RepeatPolicy)
    _running: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    stopping: threading.Event = field(default_factory=threading.Event, repr=False)

    def trial_seed(self, key: int) -> int:
        return (self.seed * 1_000_003 + key) % (2**31)

    def run_repeated(
        self, key: str, config: Mapping[str, Any], instance: str, seed: int
    ) -> TrialOutcome:
        """Run ``config`` as the repeat policy asks; the outcome's value is the mean of repeats."""
        runs: list[TrialOutcome] = []

        def once(i: int) -> tuple[bool, float | None]:
            runs.append(self.run(key if i == 0 else f"{key}.r{i}", config, instance, seed + i))
            return runs[-1].ok, runs[-1].value

        values, all_ok = run_repeated(once, self.policy)
        outcome = runs[-1]
        outcome.repeat_values = values
        outcome.elapsed_s = sum(r.elapsed_s for r in runs)
        if all_ok:
            outcome.value = statistics.fmean(values)
            outcome.value_low, outcome.value_high = t_interval(values)
            outcome.metrics = {
                name: statistics.fmean(r.metrics[name] for r in runs)
                for name in outcome.metrics
                if all(name in r.metrics for r in runs)
            }
        return outcome

    def run(self, key: str, config: Mapping[str, Any], instance: str, seed: int) -> TrialOutcome:
        """Run ``config`` once on ``instance`` in a child process; return the cleaned outcome."""
        return self.clean(self.execute(key, config, instance, seed))

    def execute(
        self, key: str, config: Mapping[str, Any], instance: str, seed: int
    ) -> TrialOutcome:
        """Run ``config`` once in a child process; the outcome is not cleaned yet."""
        trial_dir = self.job_dir / "trials" / key
        trial_dir.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        status, measurement, failure, message, log_tail = self._execute(
            trial_dir, dict(config), instance, seed
        )
        outcome = TrialOutcome(
            config=dict(config),
            instance=instance,
            status=status,
            failure_class=failure,
            message=message,
            log_tail=log_tail,
            workload_features=self.target_cls.workload_features(self.workload),
            elapsed_s=time.monotonic() - started,
        )
        outcome.measurement = measurement
        return outcome

    def clean(self, outcome: TrialOutcome) -> TrialOutcome:
        """Gate the outcome's measurement (``tasks/clean.py``): a value, or why it has none."""
        measurement, outcome.measurement = outcome.measurement, None
        if measurement is None:
            return outcome
        cleaned = clean_measurement(measurement, self.target_cls, self.objective, outcome.config)
        outcome.metrics = cleaned.metrics
        outcome.effective_config = measurement.effective_config
        outcome.changed_knobs = cleaned.changed_knobs
        outcome.samples = measurement.samples
        outcome.counters = measurement.counters
        outcome.row = cleaned.row
        outcome.reasons = cleaned.reasons
        outcome.validation = cleaned.validation
        outcome.log_tail = (measurement.log + outcome.log_tail)[-LOG_TAIL_LINES:]
        if cleaned.valid:
            outcome.value = cleaned.metrics[self.objective]
        else:
            outcome.status = "failed"
            outcome.failure_class = str(FailureClass.INVALID)
            outcome.message = cleaned.reason
        return outcome

    def _execute(
        self, trial_dir: Path, config: dict[str, Any], instance: str, seed: int
    ) -> tuple[str, Measurement | None, str | None, str, list[str]]:
        """Run the child process with a hard timeout; classify how it ended."""
        data_dir = self.instance_dirs[instance]
        request_path, result_path, log_path = (
            trial_dir / "request.json",
            trial_dir / "result.json",
            trial_dir / "log.txt",
        )
        result_path.unlink(missing_ok=True)
        request = {
            "target_ref": self.target_ref,
            "data_dir": str(data_dir),
            "workload": self.workload,
            "config": config,
            "seed": seed,
            "result_path": str(result_path),
        }
        request_path.write_text(json.dumps(request, default=str), encoding="utf-8")
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "tasks.trial_process", str(request_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own process group: one killpg ends it all
            )
        with self._lock:
            self._running[proc.pid] = proc
        try:
            timed_out = not _wait_exit(proc, self.timeout_s)
        finally:
            _kill_group(proc)
            with self._lock:
                self._running.pop(proc.pid, None)
        tail = _tail(log_path)
        if timed_out or (proc.returncode == -signal.SIGKILL and self.stopping.is_set()):
            self.target_cls.cleanup(data_dir)
            if self.stopping.is_set():
                return "failed", None, str(FailureClass.INTERRUPTED), "job stopped", tail
            return (
                "failed",
                None,
                str(FailureClass.TIMEOUT),
                f"no result within the {self.timeout_s:g} s trial timeout (hang)",
                tail,
            )
        if result_path.exists():
            result = json.loads(result_path.read_text(encoding="utf-8"))
            request_path.unlink(missing_ok=True)
            if result["status"] == "ok":
                return "ok", Measurement.from_dict(result["measurement"]), None, "", tail
            return "failed", None, result["failure_class"], result["message"], tail
        self.target_cls.cleanup(data_dir)
        code = proc.returncode
        if code < 0:
            name = signal.Signals(-code).name
            return "failed", None, str(FailureClass.CRASH), f"trial process killed by {name}", tail
        return (
            "failed",
            None,
            str(FailureClass.CRASH),
            f"trial process exited with code {code} and no result",
            tail,
        )

    def stop_all(self) -> None:
        """Kill every running trial process (the job is being stopped)."""
        self.stopping.set()
        with self._lock:
            procs = list(self._running.values())
        for proc in procs:
            _kill_group(proc)


def _wait_exit(proc: subprocess.Popen[bytes], timeout: float) -> bool:
    """Wait for ``proc`` to exit; False on timeout. Wakes at once on exit (Popen.wait polls)."""
    try:
        fd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):  # no pidfd (old kernel, not Linux): Popen's polling wait
        try:
            proc.wait(timeout=timeout)
            return True
        except subprocess.TimeoutExpired:
            return False
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        if not poller.poll(timeout * 1000):
            return False
    finally:
        os.close(fd)
    proc.wait()
    return True


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the trial's whole process group (servers it started included) and reap it."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> list[str]:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 16384))
            text = fh.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return []
    return [line for line in text.splitlines() if line.strip()][-lines:]


@task(name="run-trial", task_run_name="trial-{key}", cache_policy=NO_CACHE)
def run_trial(
    runner: TrialRunner,
    key: str,
    config: dict[str, Any],
    instance: str,
    seed: int,
    single: bool = False,
) -> TrialOutcome:
    """One trial as a Prefect task: run ``config`` on ``instance`` (repeated unless ``single``)."""
    if single:
        return runner.run(key, config, instance, seed)
    return runner.run_repeated(key, config, instance, seed)


@task(name="execute-trial", task_run_name="trial-{key}", cache_policy=NO_CACHE)
def execute_trial(
    runner: TrialRunner, key: str, config: dict[str, Any], instance: str, seed: int
) -> TrialOutcome:
    """One trial's run as a Prefect task, cleaned later by ``clean_trial``."""
    return runner.execute(key, config, instance, seed)


@task(name="clean-trial", task_run_name="clean-{key}", cache_policy=NO_CACHE)
def clean_trial(runner: TrialRunner, key: str, outcome: TrialOutcome) -> TrialOutcome:
    """One trial's measurement through the cleaning gate, as a Prefect task."""
    return runner.clean(outcome)


@dataclass
class ExploreStats:
    """Progress of an exploration, as the progress bar and the logs show it."""

    budget: int
    done: int = 0
    failed: int = 0
    blocked: int = 0
    blocked_by: dict[str, int] = field(default_factory=dict)
    best_value: float | None = None
    best_number: int | None = None
    worst_value: float | None = None


TrialListener = Callable[[int, TrialOutcome, ExploreStats], None]


def finished_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Trials that count against the budget: complete, or failed for a reason of their own
    (not a sibling's trial told as a prior observation)."""
    return [
        t
        for t in study.get_trials(deepcopy=False)
        if (t.state == TrialState.COMPLETE and not is_blocked(t) and not is_prior(t))
        or (
            t.state == TrialState.FAIL
            and t.user_attrs.get(ATTR, {}).get("failure_class")
            not in (None, str(FailureClass.INTERRUPTED))
        )
    ]


def is_prior(trial: optuna.trial.FrozenTrial) -> bool:
    """A sibling instance's trial told to this job's tuner before it started (never run here)."""
    return PRIOR_ATTR in trial.user_attrs


def is_blocked(trial: optuna.trial.FrozenTrial) -> bool:
    """A candidate the rules kept from running (told to Optuna as infeasible)."""
    return trial.user_attrs.get(ATTR, {}).get("status") == "blocked"


def requeue_interrupted(study: optuna.Study) -> int:
    """Close trials a killed job left running and enqueue their configs again; return how many."""
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get(RETRY_ATTR) for t in trials}
    count = 0
    for t in trials:
        stale = t.state == TrialState.RUNNING
        interrupted = t.state == TrialState.FAIL and (
            t.user_attrs.get(ATTR, {}).get("failure_class") in (None, str(FailureClass.INTERRUPTED))
        )
        if stale:
            study.tell(t.number, state=TrialState.FAIL)
        if (stale or interrupted) and t.number not in retried and t.params:
            study.enqueue_trial(t.params, user_attrs={RETRY_ATTR: t.number})
            count += 1
    return count


def _beats(a: float, b: float, maximize: bool) -> bool:
    return a > b if maximize else a < b


def _measure_baseline(
    runner: TrialRunner,
    space: SearchSpace,
    instance: str,
    count: int,
    on_baseline: Callable[[str, TrialOutcome], None] | None,
) -> float | None:
    """Measure the default config on ``instance`` now; its value, or None if it failed."""
    key = f"baseline-{instance}-{count}"
    outcome = run_trial(runner, key, space.spec.defaults(), instance, runner.trial_seed(-1 - count))
    if on_baseline is not None:
        on_baseline(key, outcome)
    return outcome.value if outcome.ok else None


def _relative_to(outcome: TrialOutcome, baseline: float | None) -> None:
    """Turn a trial's value into its ratio to the baseline (no baseline: the trial fails)."""
    if baseline is None or baseline <= 0:
        outcome.status = "failed"
        outcome.failure_class = str(FailureClass.INVALID)
        outcome.message = "no baseline: the default config could not be measured on this instance"
        outcome.reasons = [*outcome.reasons, outcome.message]
        return
    outcome.raw_value, outcome.baseline_value = outcome.value, baseline
    assert outcome.value is not None
    outcome.value = ratio_to_baseline(outcome.value, baseline)
    if outcome.value_low is not None and outcome.value_high is not None:
        outcome.value_low = ratio_to_baseline(outcome.value_low, baseline)
        outcome.value_high = ratio_to_baseline(outcome.value_high, baseline)


def explore(
    study: optuna.Study,
    space: SearchSpace,
    runner: TrialRunner,
    budget: int,
    time_budget_s: float | None = None,
    on_trial: TrialListener | None = None,
    baseline_every: int = 0,
    on_baseline: Callable[[str, TrialOutcome], None] | None = None,
    guard: CandidateGuard | None = None,
) -> ExploreStats:
    """Run trials until ``budget`` trials have finished or ``time_budget_s`` has passed.

    One worker thread per instance; each asks Optuna, runs the trial as a Prefect task, and tells
    the result. No new trial starts after the time budget; running ones finish. With
    ``baseline_every`` N > 0, each instance measures the default config before every N-th trial
    and the tuner is told each trial's ratio to its instance's latest baseline. With a
    ``guard`` (the rule engine), a candidate it blocks is told as infeasible and does not run
    (nor count against the budget), and failures teach it new rules.
    """
    direction = study.direction
    maximize = direction == optuna.study.StudyDirection.MAXIMIZE
    distributions = space.distributions()
    done = finished_trials(study)
    stats = ExploreStats(budget=budget, done=len(done))
    stats.failed = sum(1 for t in done if t.state == TrialState.FAIL)
    completed = [t for t in done if t.state == TrialState.COMPLETE]
    if completed:
        best = study.best_trial
        stats.best_value, stats.best_number = best.value, best.number
    lock = threading.Lock()
    started = time.monotonic()
    launched = stats.done

    def take_ticket() -> bool:
        nonlocal launched
        with lock:
            if runner.stopping.is_set() or launched >= budget:
                return False
            if time_budget_s is not None and time.monotonic() - started >= time_budget_s:
                return False
            launched += 1
            return True

    # Cleaning a single-run trial (the Great Expectations gate, ~80 ms) happens on one
    # background thread while the instance already runs its next trial; with repeats the worker
    # needs each run's value at once, so it cleans inline. A failure that teaches a rule waits
    # for its cleaning, so the rule checks the very next candidate.
    pipelined = runner.policy.repeats == 1 and runner.policy.until is None
    cleaner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clean")
    cleanings: list[Future[None]] = []

    def finish(trial: optuna.trial.Trial, outcome: TrialOutcome, baseline: float | None) -> None:
        if outcome.measurement is not None:
            outcome = clean_trial(runner, str(trial.number), outcome)
        if baseline_every and outcome.ok:
            _relative_to(outcome, baseline)
        if guard is not None and outcome.failure_class in LEARN_FROM:
            rule = guard.failed(trial.number, outcome)
            outcome.learned_rule = rule.id if rule is not None else None
        trial.set_user_attr(ATTR, outcome.record())
        if outcome.ok:
            study.tell(trial, outcome.value)
        else:
            study.tell(trial, state=TrialState.FAIL)
        with lock:
            stats.done += 1
            if not outcome.ok:
                stats.failed += 1
            else:
                if stats.best_value is None or _beats(outcome.value, stats.best_value, maximize):
                    stats.best_value, stats.best_number = outcome.value, trial.number
                if stats.worst_value is None or _beats(stats.worst_value, outcome.value, maximize):
                    stats.worst_value = outcome.value
            if on_trial is not None:
                on_trial(trial.number, outcome, stats)

    def _block(trial: optuna.trial.Trial, config: dict[str, Any], verdict: Any) -> None:
        nonlocal launched
        assert guard is not None
        with lock:
            launched -= 1  # nothing ran: the budget is for trials that run
            stats.blocked += 1
            for failure in verdict.errors:
                stats.blocked_by[failure.rule] = stats.blocked_by.get(failure.rule, 0) + 1
            worst = stats.worst_value
        placeholder = worst if worst is not None else (0.0 if maximize else 1e30)
        guard.block(study, trial, config, verdict, placeholder, ATTR)

    def next_trial() -> optuna.trial.Trial | None:
        return study.ask(distributions) if take_ticket() else None

    def work(instance: str) -> None:
        baseline: float | None = None
        count = 0
        trial = next_trial()
        while trial is not None:
            if baseline_every and count % baseline_every == 0:
                measured = _measure_baseline(runner, space, instance, count, on_baseline)
                baseline = measured if measured is not None else baseline
            config = space.config(trial.params)
            warnings: list[str] = []
            if guard is not None:
                verdict = guard.check(config)
                if verdict.blocked:
                    _block(trial, config, verdict)
                    trial = next_trial()
                    continue
                guard.ran()
                warnings = [str(w) for w in verdict.warnings]
            count += 1
            key, seed = str(trial.number), runner.trial_seed(trial.number)
            if pipelined:
                outcome = execute_trial(runner, key, config, instance, seed)
            else:
                outcome = run_trial(runner, key, config, instance, seed)
            if outcome.failure_class == str(FailureClass.INTERRUPTED):
                study.tell(trial, state=TrialState.FAIL)
                return
            outcome.rule_warnings = warnings
            learns = guard is not None and guard.learn is not None
            if pipelined and learns and outcome.failure_class in LEARN_FROM:
                # a crash or hang teaches a rule: wait for the cleanings before it (the rule
                # must spare every config that ran well) and for its own, so the rule checks
                # the next candidate; at a job's start the backlog is several trials long
                cleaning = cleaner.submit(copy_context().run, finish, trial, outcome, baseline)
                cleanings.append(cleaning)
                wait([cleaning])
                following = next_trial()
            elif pipelined:
                # ask first: sampling and cleaning would take turns on the GIL, and the
                # next trial's run, in its own process, is what cleaning should overlap
                following = next_trial()
                cleaning = cleaner.submit(copy_context().run, finish, trial, outcome, baseline)
                cleanings.append(cleaning)
            else:
                finish(trial, outcome, baseline)
                following = next_trial()
            trial = following

    instances = list(runner.instance_dirs)
    try:
        with ThreadPoolExecutor(max_workers=len(instances), thread_name_prefix="trial") as pool:
            # each thread gets its own copy of the flow's context: its task runs belong to the flow
            futures = [pool.submit(copy_context().run, work, name) for name in instances]
            try:
                for fut in futures:
                    fut.result()
            except BaseException:
                runner.stop_all()
                raise
    finally:
        cleaner.shutdown(wait=True)  # finished trials are cleaned and told, even when stopping
    for cleaning in cleanings:
        cleaning.result()  # a cleaning that failed (e.g. a broken suite file) fails the job
    return stats
