"""The trial manager's loop: ask -> check -> run (own process, hard timeout) -> clean -> tell.

``Exploration`` is shaped like Optuna's own optimise loop: ``run`` starts one worker per instance
(each with its own data directory), ``_work`` is one worker's loop with its stop conditions
(``_ask``: the trial budget, the time budget, a stopped job), ``_run_one`` runs one trial and
``_tell`` tells its result.

Results reach the tuner on time (``tasks/tell_order.py``): a sampler that can take a pending
trial (``takes_pending``) is asked while the last result is cleaned beside the next run; any
other is told each result first. Each trial's record keeps its ``tell_lag``.

Blocked candidates (``tasks/guard.py``) never run; with ``baseline_every`` the default config is
re-measured on the instance and the tuner is told ratios to it. Several objectives: each metric
is told; SLA bounds (``rules.bounds``): each violation is an Optuna constraint of the trial.
Crashes, hangs, refused configs and non-zero exits are failed trials with a failure class and
the tail of their log; the job goes on, unless the machine is at fault (``tasks/faults.py``: a
full disk, a harness that fails trial after trial before the target runs).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextvars import copy_context
from typing import Any

import optuna
from optuna.storages import fail_stale_trials
from optuna.trial import TrialState

from rules.bounds import Bound
from rules.learn import LEARN_FROM
from targets.base import FailureClass
from targets.common.errors import EnvironmentFault
from tasks.explore_stats import ExploreStats, stats_so_far
from tasks.faults import FaultWatch
from tasks.guard import CandidateGuard, blocked_as
from tasks.pruning import progress_listener, pruning_on
from tasks.runner import TrialRunner, execute_trial, run_trial
from tasks.tell_order import TellOrder
from tasks.told import objective_values, relative_to, tell_constraints
from tuners.focus import KnobFocus
from tuners.samplers import takes_pending
from tuners.space import SearchSpace
from tuners.study import stored_trials, study_lock
from tuners.trials import (
    ATTR,
    TrialOutcome,
    finished_trials,
    pruned_trial,
)

log = logging.getLogger("knobflow.explore")

#: How long a pipelined trial's cleaning waits at most for the next trial process to start.
CLEAN_WAIT_S = 1.0

__all__ = ["Exploration", "ExploreStats", "TrialListener", "explore"]


TrialListener = Callable[[int, TrialOutcome, ExploreStats], None]
BaselineListener = Callable[[str, TrialOutcome], None]


class Exploration:
    """Runs trials of ``study`` until ``budget`` trials have finished or ``time_budget_s`` has
    passed; running trials finish. With a ``guard`` (the rule engine), a candidate it blocks is
    told as infeasible and neither runs nor counts against the budget, and failures teach it
    new rules. With a ``focus`` (``--knobs auto``) the sampler draws only its top knobs until it
    widens. ``on_trial`` hears of every finished trial, ``on_baseline`` of every baseline."""

    def __init__(
        self,
        study: optuna.Study,
        space: SearchSpace,
        runner: TrialRunner,
        budget: int,
        time_budget_s: float | None = None,
        *,
        on_trial: TrialListener | None = None,
        baseline_every: int = 0,
        on_baseline: BaselineListener | None = None,
        guard: CandidateGuard | None = None,
        first_baseline: dict[str, float] | None = None,
        shared: bool = False,
        objectives: list[str] | None = None,
        bounds: list[Bound] | None = None,
        default_metrics: dict[str, float] | None = None,
        focus: KnobFocus | None = None,
    ) -> None:
        self.study, self.space, self.runner, self.guard = study, space, runner, guard
        self.budget, self.time_budget_s, self.baseline_every = budget, time_budget_s, baseline_every
        self.on_trial, self.on_baseline = on_trial, on_baseline
        # the default's value per instance, measured just before (the noise check's runs)
        self.first_baseline = dict(first_baseline or {})
        self.maximize = study.directions[0] == optuna.study.StudyDirection.MAXIMIZE
        self.more_objectives = list(objectives or [])[1:]
        self.bounds, self.default_metrics = list(bounds or []), dict(default_metrics or {})
        self.distributions = space.distributions()
        # --knobs auto: the top knobs first (a partial trial queued before each ask, under a
        # lock so another instance's ask cannot take it); not in a shared study
        self.focus = None if shared else focus
        self._focus_lock = threading.Lock()
        self.stats = stats_so_far(study, budget)
        self._lock = threading.Lock()
        self._launched = self.stats.done
        self._started = time.monotonic()
        # Cleaning a single-run trial (the Great Expectations gate, ~80 ms) happens on one
        # background thread while the instance already runs its next trial, when the sampler
        # can be asked with that result pending; with repeats the worker needs each run's value
        # at once, and other samplers must hear of it before the next ask: it cleans inline.
        single = runner.policy.repeats == 1 and runner.policy.until is None
        self._pipelined = single and takes_pending(study.sampler)
        self._order = TellOrder(lambda: self.runner.stopping)  # results told on time
        # early stopping (tasks/pruning.py): single runs judged alone
        self.pruning = pruning_on(study, runner.target_cls, single, baseline_every)
        self._cleaner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clean")
        self._cleanings: list[Future[None]] = []
        self._fault: EnvironmentFault | None = None
        self._faults = FaultWatch()  # a full disk, a broken harness: tasks/faults.py
        # a shared study: the trials this process runs, and what beats for them
        self.shared = shared
        self._beating: dict[int, optuna.trial.Trial] = {}
        self._done_beating = threading.Event()
        interval = getattr(getattr(study._storage, "_backend", study._storage),
                           "heartbeat_interval", None)
        self._beat_every: float = float(interval or 5)

    def run(self) -> ExploreStats:
        """One worker thread per instance until a stop condition holds; the stats at the end."""
        self._started = time.monotonic()
        instances = list(self.runner.instance_dirs)
        beater = threading.Thread(target=self._beat_all, name="heartbeat", daemon=True)
        if self.shared:
            beater.start()
        try:
            with ThreadPoolExecutor(len(instances), thread_name_prefix="trial") as pool:
                # each thread gets its own copy of the flow's context: its task runs belong to it
                futures = [pool.submit(copy_context().run, self._work, name) for name in instances]
                try:
                    for fut in futures:
                        fut.result()
                except BaseException:
                    self.runner.stop_all()
                    raise
        finally:
            self._cleaner.shutdown(wait=True)  # finished trials are cleaned and told, even now
            self._done_beating.set()
            if beater.is_alive():
                beater.join()
        for cleaning in self._cleanings:
            cleaning.result()  # a cleaning that failed (e.g. a broken suite file) fails the job
        if self._fault is not None:
            raise self._fault
        return self.stats

    def _ask(self) -> optuna.trial.Trial | None:
        """The next candidate, or None when the budget, the time budget or a stop says so."""
        self._order.wait_turn(on_wait=self.runner.processes.hurry)
        if self.shared:
            return self._ask_shared()
        with self._lock:
            if self.runner.stopping or self._launched >= self.budget:
                return None
            if (self.time_budget_s is not None
                    and time.monotonic() - self._started >= self.time_budget_s):
                return None
            self._launched += 1
        if self.focus is None:
            return self._counted(self.study.ask(self.distributions))
        with self._focus_lock:
            self.focus.before_ask(self.study, self.space)
            return self._counted(self.study.ask(self.distributions))

    def _counted(self, trial: optuna.trial.Trial) -> optuna.trial.Trial:
        """``trial``, just asked, counted for the tell lag of the trials not yet told."""
        self._order.asked()
        return trial

    def _ask_shared(self) -> optuna.trial.Trial | None:
        """The next candidate of a shared study, or None when the study holds its budget of
        finished trials (or the time budget or a stop says so); waits while the trials other
        workers run would fill it (one may die, and its config comes back)."""
        while True:
            if self.runner.stopping or (
                    self.time_budget_s is not None
                    and time.monotonic() - self._started >= self.time_budget_s):
                return None
            with study_lock(self.study):
                fail_stale_trials(self.study)  # dead workers' trials: failed, queued again
                trials = stored_trials(self.study)
                done = len(finished_trials(self.study, trials))
                running = sum(1 for t in trials if t.state == TrialState.RUNNING)
                if done >= self.budget:
                    return None
                if done + running < self.budget:
                    trial = self.study.ask(self.distributions)
                    # its first beat before the lock is let go: a trial with none is never stale
                    self.study._storage.record_heartbeat(trial._trial_id)
                    with self._lock:
                        self._beating[trial._trial_id] = trial
                    return self._counted(trial)
            self.runner.processes.stopping.wait(min(self._beat_every, 0.5))

    def _beat_all(self) -> None:
        """Record a heartbeat for every trial this process runs, every heartbeat interval."""
        while not self._done_beating.wait(self._beat_every):
            with self._lock:
                ids = list(self._beating)
            for trial_id in ids:
                try:
                    self.study._storage.record_heartbeat(trial_id)
                except Exception:  # the database hiccuped: the next beat may get through
                    continue

    def _told(self, trial: optuna.trial.Trial) -> None:
        """``trial`` is finished (told): its heartbeats stop, the asks waiting for it go on."""
        with self._lock:
            self._beating.pop(trial._trial_id, None)
        self._order.told(trial.number)

    def _interrupted(self, trial: optuna.trial.Trial) -> None:
        """``trial`` was stopped with the job: failed; in a shared study another worker runs its
        config again (the storage's retry callback, as for a dead worker's trial)."""
        self.study.tell(trial, state=TrialState.FAIL)
        self._told(trial)
        retry = getattr(self.study._storage, "get_heartbeat_stale_trial_callback", None)
        callback = retry() if self.shared and retry is not None else None
        if callback is not None:
            callback(self.study, self.study._storage.get_trial(trial._trial_id))

    def _work(self, instance: str) -> None:
        """One instance's loop: baseline when due, check, run, tell, ask again."""
        baseline: float | None = None
        count = 0
        trial = self._ask()
        while trial is not None:
            if self.baseline_every and count % self.baseline_every == 0:
                measured = (self.first_baseline.pop(instance, None) if count == 0 else None)
                measured = measured or self._measure_baseline(instance, count)
                baseline = measured if measured is not None else baseline
            config = self.space.config(trial.params)
            warnings = self._check(trial, config)
            if warnings is None:  # blocked: nothing ran
                trial = self._ask()
                continue
            count += 1
            outcome = self._run_one(trial, config, instance)
            self._order.ended(trial.number)
            if outcome.failure_class == FailureClass.INTERRUPTED:
                self._interrupted(trial)
                return
            log_file = self.runner.trial_dir(str(trial.number)) / "log.txt"
            fault = self._faults.after(trial.number, instance, outcome, str(log_file))
            if fault is not None:  # the machine's fault: told as failed, and the job stops
                self._tell(trial, outcome, baseline)
                self._stop(fault)
                return
            outcome.rule_warnings = warnings
            trial = self._tell_and_ask(trial, outcome, baseline)

    def _stop(self, fault: EnvironmentFault) -> None:
        """Stop the exploration for a fault of the machine: running trials are killed (they are
        queued again on --resume), ``run`` raises ``fault``."""
        self._fault = self._fault or fault
        self.runner.stop_all()

    def _check(self, trial: optuna.trial.Trial, config: dict[str, Any]) -> list[str] | None:
        """The rules' warnings for ``config``; None when they block it (told as infeasible)."""
        if self.guard is None:
            return []
        verdict = self.guard.check(config)
        if not verdict.blocked:
            self.guard.ran()
            return [str(w) for w in verdict.warnings]
        with self._lock:
            self._launched -= 1  # nothing ran: the budget is for trials that run
            self.stats.blocked += 1
            key = blocked_as([f.rule for f in verdict.errors])  # once, so the counts add up
            self.stats.blocked_by[key] = self.stats.blocked_by.get(key, 0) + 1
        self.guard.block(self.study, trial, config, verdict)  # infeasible, with no value
        self._told(trial)
        return None

    def _run_one(self, trial: optuna.trial.Trial, config: dict[str, Any],
                 instance: str) -> TrialOutcome:
        key, seed = str(trial.number), self.runner.trial_seed(trial.number)
        if self._pipelined or self.pruning:  # cleaned when told (inline, or beside the next)
            return execute_trial(self.runner, key, config, instance, seed,
                                 progress_listener(trial, self.runner.objective)
                                 if self.pruning else None)
        return run_trial(self.runner, key, config, instance, seed)

    def _tell_and_ask(self, trial: optuna.trial.Trial, outcome: TrialOutcome,
                      baseline: float | None) -> optuna.trial.Trial | None:
        """Tell ``trial`` (cleaning it beside the next trial when pipelined); the next trial."""
        if not self._pipelined:
            self._tell(trial, outcome, baseline)
            return self._ask()
        teaches = (self.guard is not None and self.guard.learn is not None
                   and outcome.failure_class in LEARN_FROM)
        if teaches:
            # a crash or hang teaches a rule: wait for the cleanings before it (the rule must
            # spare every config that ran well) and for its own, so the rule checks the next
            # candidate; at a job's start the backlog is several trials long
            wait([self._clean_later(trial, outcome, baseline)])
            return self._ask()
        if self.shared:  # its own untold trial would hold a place in the budget the ask waits on
            self._clean_later(trial, outcome, baseline)
            return self._ask()
        # ask first: sampling and cleaning would take turns on the GIL, and the next trial's
        # run, in its own process, is what cleaning should overlap
        following = self._ask()
        self._clean_later(trial, outcome, baseline, after=None if following is None
                          else self.runner.processes.starts)
        return following

    def _clean_later(self, trial: optuna.trial.Trial, outcome: TrialOutcome,
                     baseline: float | None, after: int | None = None) -> Future[None]:
        """Clean and tell ``trial`` on the cleaning thread; with ``after``, once the next trial
        process has started: the gate's CPU then overlaps the next run, not its start. When the
        next candidate is blocked (no process starts) the loop's wait for this tell hurries it
        (``TrialProcesses.hurry``); ``CLEAN_WAIT_S`` is the bound if nothing does."""
        def later() -> None:
            if after is not None:
                self.runner.processes.wait_started(after, CLEAN_WAIT_S)
            self._tell(trial, outcome, baseline)

        cleaning = self._cleaner.submit(copy_context().run, later)
        self._cleanings.append(cleaning)
        return cleaning

    def _tell(self, trial: optuna.trial.Trial, outcome: TrialOutcome,
              baseline: float | None) -> None:
        """Clean (if not yet), judge against the baseline, learn from a failure, tell, count."""
        try:
            self._clean_and_tell(trial, outcome, baseline)
        finally:  # told or failed to be: the asks waiting for it go on
            self._told(trial)

    def _clean_and_tell(self, trial: optuna.trial.Trial, outcome: TrialOutcome,
                        baseline: float | None) -> None:
        if outcome.measurement is not None:
            outcome = self.runner.clean(outcome)
        if self.baseline_every and outcome.ok:
            relative_to(outcome, baseline)
        if self.guard is not None and outcome.failure_class in LEARN_FROM:
            rule = self.guard.failed(trial.number, outcome)
            outcome.learned_rule = rule.id if rule is not None else None
        outcome.tell_lag = self._order.lag(trial.number)
        values = objective_values(outcome, self.more_objectives)
        try:
            if outcome.pruned:  # stopped early: Optuna's pruned trial, neither value nor failure
                pruned_trial(self.study, trial, outcome)
            else:
                tell_constraints(trial, outcome, self.bounds, self.default_metrics)
                trial.set_user_attr(ATTR, outcome.record())
                self.study.tell(trial, (values if len(values) > 1 else values[0]) if outcome.ok
                                else None, state=None if outcome.ok else TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            # a shared study's other worker found no heartbeat in time and failed the trial:
            # its config is queued again (run once more there); this result is dropped
            self._told(trial)
            log.warning("trial %d was given up as dead (no heartbeat within the grace period) "
                        "while it ran here; its config runs again, this result is dropped",
                        trial.number)
            return
        self._told(trial)
        with self._lock:
            self.stats.count(trial.number, outcome, self.maximize)
            if self.on_trial is not None:
                self.on_trial(trial.number, outcome, self.stats)

    def _measure_baseline(self, instance: str, count: int) -> float | None:
        """Measure the default config on ``instance`` now; its value, or None if it failed."""
        key = f"baseline-{instance}-{count}"
        outcome = run_trial(self.runner, key, self.space.spec.defaults(), instance,
                            self.runner.trial_seed(-1 - count))
        if self.on_baseline is not None:
            self.on_baseline(key, outcome)
        return outcome.value if outcome.ok else None


def explore(
    study: optuna.Study,
    space: SearchSpace,
    runner: TrialRunner,
    budget: int,
    time_budget_s: float | None = None,
    **options: Any,
) -> ExploreStats:
    """Run an ``Exploration`` of ``study`` (options as its constructor's) to its end."""
    return Exploration(study, space, runner, budget, time_budget_s, **options).run()
