"""Running one trial: a config on an instance, in a trial process, cleaned, maybe repeated.

``TrialRunner`` holds what every trial of a job shares (target, workload, objective, timeout,
instances, repeat policy); ``execute`` runs one trial process (``tasks/trial_process.py``) and
classifies how it ended, ``clean`` passes its measurement through the gate (``tasks/clean.py``),
``run_repeated`` runs a config as the repeat policy asks. ``run_trial`` and ``execute_trial``
are the first two as Prefect tasks: one task run per trial. A trial run by ``execute_trial`` is
cleaned by a plain call (``TrialRunner.clean``, beside the next trial's run when the tuner
takes it): a task run of its own was ~30 ms of CPU in Prefect's server and a fifth of an instant
trial's time, and its state said nothing the trial's record does not.
"""

from __future__ import annotations

import re
import shutil
import signal
import statistics
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from targets.base import FailureClass, Measurement, Target
from tasks.clean import clean_measurement
from tasks.isolation import Isolation, looks_out_of_memory
from tasks.noise import RepeatPolicy, run_repeated, t_interval
from tasks.trial_process import (
    EXIT_HARNESS,
    EXIT_IO_ERROR,
    EXIT_ISOLATION,
    EXIT_LAUNCHER_LOST,
    LOG_TAIL_LINES,
    ChildExit,
    ProgressListener,
    TrialProcesses,
)
from tuners.trials import TrialOutcome, TrialStatus

__all__ = ["DISK_FULL_BYTES", "TrialRunner", "execute_trial", "run_trial"]

#: Below this much free space where a job writes, a failed trial is the disk's fault.
DISK_FULL_BYTES = 4 * 2**20
#: What systems say when their disk is full.
_DISK_FULL = re.compile(r"no space left on device|ENOSPC|database or disk is full|disk quota "
                        r"exceeded|out of disk space", re.IGNORECASE)


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
    isolation: Isolation = field(default_factory=Isolation)  # CPU sets and memory limits
    processes: TrialProcesses = field(default_factory=TrialProcesses, repr=False)

    @property
    def stopping(self) -> bool:
        """Whether the job is being stopped (no new trial starts)."""
        return self.processes.stopping.is_set()

    def stop_all(self) -> None:
        """Kill every running trial process (the job is being stopped)."""
        self.processes.stop_all()

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
        outcome.started_at = runs[0].started_at  # the trial spans all its repeats
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

    def trial_dir(self, key: str) -> Path:
        """Where run ``key`` keeps its request, result and ``log.txt``."""
        return self.job_dir / "trials" / key

    def execute(
        self, key: str, config: Mapping[str, Any], instance: str, seed: int,
        on_progress: ProgressListener | None = None,
    ) -> TrialOutcome:
        """Run ``config`` once in a child process; the outcome is not cleaned yet. With
        ``on_progress`` the target reports intermediate values to it, and the trial is stopped
        (pruned) when it answers True."""
        trial_dir = self.trial_dir(key)
        trial_dir.mkdir(parents=True, exist_ok=True)
        data_dir = self.instance_dirs[instance]
        started, wall = time.monotonic(), time.time()
        limits = self.isolation.limits(instance)
        oom_kills = limits.oom_kills()
        request = {
            "target_ref": self.target_ref, "data_dir": str(data_dir), "workload": self.workload,
            "config": dict(config), "seed": seed, "result_path": str(trial_dir / "result.json"),
        }
        if limits.cpus or limits.memory_bytes:
            request["isolation"] = limits.request()
        if on_progress is not None:
            request["progress_path"] = str(trial_dir / "progress.jsonl")
        exit_ = self.processes.run(request, trial_dir, self.timeout_s, on_progress)
        outcome = TrialOutcome(
            config=dict(config), instance=instance, status=TrialStatus.OK,
            log_tail=exit_.log_tail,
            workload_features=self.target_cls.workload_features(self.workload),
        )
        self._classify(exit_, outcome, data_dir)
        self._blame_the_memory_limit(outcome, limits.oom_kills() > oom_kills)
        self._blame_a_full_disk(outcome, data_dir)
        outcome.elapsed_s = time.monotonic() - started
        outcome.started_at, outcome.finished_at = wall, time.time()
        return outcome

    def _blame_the_memory_limit(self, outcome: TrialOutcome, oom_killed: bool) -> None:
        """A trial that failed over its memory limit (the OOM killer ended its cgroup, or an
        allocation failed under the rlimit) is ``out_of_memory``, and says which limit."""
        if outcome.ok or outcome.failure_class in (FailureClass.INTERRUPTED,
                                                   FailureClass.TIMEOUT, FailureClass.PRUNED):
            return
        if self.isolation.memory == "none":
            return
        said = looks_out_of_memory("\n".join([outcome.message, *outcome.log_tail]))
        if oom_killed or said or outcome.failure_class == FailureClass.OUT_OF_MEMORY:
            how = "killed by the OOM killer in its cgroup" if oom_killed else "an allocation failed"
            outcome.fail(FailureClass.OUT_OF_MEMORY,
                         f"over its memory limit ({self.isolation.memory}): {how}; "
                         f"{outcome.failure_class}: {outcome.message}")

    def _blame_a_full_disk(self, outcome: TrialOutcome, data_dir: Path) -> None:
        """A trial that failed while the disk is full (or saying so) failed for no config's
        reason: an ``io_error`` marked ``disk_full`` (the job stops; no rule is learned)."""
        if outcome.ok or outcome.failure_class in (FailureClass.INTERRUPTED,
                                                   FailureClass.PRUNED):
            return
        where = min((p for p in (self.job_dir, data_dir) if p.exists()),
                    key=lambda p: shutil.disk_usage(p).free, default=self.job_dir)
        free = shutil.disk_usage(where).free if where.exists() else DISK_FULL_BYTES
        said = _DISK_FULL.search("\n".join([outcome.message, *outcome.log_tail]))
        if said or free < DISK_FULL_BYTES:
            self.target_cls.cleanup(data_dir)  # what the trial wrote goes: the job can record
            outcome.fail(FailureClass.IO_ERROR,
                         f"disk full ({free / 2**20:.1f} MiB free under {where}): "
                         f"{outcome.failure_class}: {outcome.message}")
            outcome.disk_full = True

    def _classify(self, exit_: ChildExit, outcome: TrialOutcome, data_dir: Path) -> None:
        """How the trial process ended, as the outcome's status, failure class and message."""
        if exit_.result is not None:
            if exit_.result["status"] == TrialStatus.OK:
                outcome.measurement = Measurement.from_dict(exit_.result["measurement"])
            else:
                outcome.fail(FailureClass(exit_.result["failure_class"]), exit_.result["message"])
            return
        self.target_cls.cleanup(data_dir)  # it was killed, or died: the target tidies up
        if exit_.stopped:
            outcome.fail(FailureClass.INTERRUPTED, "job stopped")
        elif exit_.pruned_step is not None:
            last = exit_.reports[-1][1] if exit_.reports else {}
            so_far = last.get(self.objective)
            outcome.prune(exit_.pruned_step, so_far,
                          f"stopped by the pruner after step {exit_.pruned_step}"
                          + (f" ({self.objective} so far {so_far:.6g})"
                             if so_far is not None else ""))
        elif exit_.timed_out:
            outcome.fail(FailureClass.TIMEOUT,
                         f"no result within the {self.timeout_s:g} s trial timeout (hang)")
        elif exit_.returncode == EXIT_ISOLATION:
            outcome.harness_fault = True  # the set-up's fault, not the config's: tasks/faults.py
            outcome.fail(FailureClass.IO_ERROR, "the trial process could not apply its CPU set "
                         "or memory limit (see the end of its log)")
        elif exit_.returncode == EXIT_HARNESS:  # a target error: no rule is learned from it
            outcome.harness_fault = True
            outcome.fail(FailureClass.TARGET_ERROR, "the trial process failed before the target "
                         "ran the config (knobflow's or the target's set-up, not the config: see "
                         "the end of its log)")
        elif exit_.returncode == EXIT_LAUNCHER_LOST:  # knobflow's or the machine's fault
            outcome.harness_fault = True
            outcome.fail(FailureClass.TARGET_ERROR, "the launcher that forked the trial process "
                         "died under it (not the config: see the job's log)")
        elif exit_.returncode == EXIT_IO_ERROR:
            outcome.fail(FailureClass.IO_ERROR, "the trial process could not write its result "
                         "(see the end of its log)")
        elif exit_.returncode < 0:
            outcome.fail(FailureClass.CRASH,
                         f"trial process killed by {signal.Signals(-exit_.returncode).name}")
        else:
            outcome.fail(FailureClass.CRASH,
                         f"trial process exited with code {exit_.returncode} and no result")

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
            outcome.fail(FailureClass.INVALID, cleaned.reason)
        return outcome


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
    runner: TrialRunner, key: str, config: dict[str, Any], instance: str, seed: int,
    on_progress: ProgressListener | None = None,
) -> TrialOutcome:
    """One trial's run as a Prefect task, cleaned later by ``TrialRunner.clean``; ``on_progress``
    hears its intermediate reports and may stop it (``TrialRunner.execute``)."""
    return runner.execute(key, config, instance, seed, on_progress)
