"""Several objectives and SLA bounds in a job: the study's metric names, the default's metrics a
bound on ``default`` compares with; a job's result (``job_result``: its best trial verified
against the default, or with several objectives its Pareto front, each point verified beside the
default, the point ``--prefer`` picks for the config file, and the front's plot,
``pareto.png``).

The front holds the clean trials that met every SLA bound (``--constraint``) and the rules, and
that no other such trial beats in every objective. Each point (at most ``MAX_POINTS``, spread
along the first objective; a point that ran the default config is not re-measured against
itself) is re-measured ``rounds`` times beside the default (``tasks.verify.verify_front``): each
objective gets a gain over the default with its 95 % interval (> 1: better, in that objective's
direction).

``--prefer`` picks, among the verified points, the one with the highest weighted sum of log
gains: ``--prefer NAME`` is the point verified best in NAME (relative to the default it ran
beside); ``NAME:2,OTHER:1`` trades them off, a 1 % gain in NAME counting twice a 1 % gain in
OTHER. Without ``--prefer`` the first objective decides.
"""

from __future__ import annotations

import logging
import math
import statistics
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from flows.job import Job
from flows.report import NO_GAIN, TuneListener, best_is_default, is_default_config
from rules.ruleset import RuleSet
from tasks.runner import TrialRunner, run_trial
from tasks.track import JobTracker
from tasks.verify import PointVerification, Verification, verify_best, verify_front
from tuners.study import metric_name
from tuners.trials import ATTR, TrialOutcome, best_trial, clean_trials, pareto_trials

__all__ = ["MAX_POINTS", "front_result", "job_result", "mean_metrics", "measure_default_metrics",
           "metric_names", "plot_front", "preferred"]

#: Most points of a front re-measured (spread along the first objective).
MAX_POINTS = 6
#: Rounds of re-measurement of the front (at most the job's --verify-repeats, at least 2).
FRONT_ROUNDS = 3


def metric_names(job: Job) -> str | list[str]:
    """What the study's values are named: the objective (or its ratio to the default), or
    each objective of several."""
    if job.several:
        return job.objective_names
    return metric_name(job.objective, relative=job.baseline_every > 0)


def mean_metrics(runs: list[dict[str, float]]) -> dict[str, float]:
    names = set.intersection(*(set(r) for r in runs))
    return {n: statistics.fmean(r[n] for r in runs) for n in sorted(names)}


def measure_default_metrics(job: Job, runner: TrialRunner, tracker: JobTracker,
                             logger: logging.Logger | logging.LoggerAdapter[Any]) -> None:
    """A bound on ``default`` (``--constraint "x <= 1.1 * default"``) needs the default's
    metrics: the noise check's runs, or (none: ``--noise-runs 0``) one run of it now."""
    if job.default_metrics is not None or not any(b.uses_default for b in job.bounds()):
        return
    outcome = run_trial(runner, "default-0", job.target_cls.knob_spec().defaults(),
                        next(iter(runner.instance_dirs)), runner.trial_seed(5 * 10**6),
                        single=True)
    tracker.log_trial("0", outcome.record(), outcome.samples, phase="default")
    if not outcome.ok:
        logger.warning("the default config could not be measured (%s: %s): no trial can meet "
                       "a --constraint on 'default'", outcome.failure_class, outcome.message)
        return
    job.default_metrics = dict(outcome.metrics)
    job.save()


def _spread(trials: list[FrozenTrial], most: int) -> list[FrozenTrial]:
    """At most ``most`` of ``trials`` (sorted along the first objective), evenly spaced, the
    two ends kept."""
    if len(trials) <= most:
        return trials
    picks = sorted({round(i * (len(trials) - 1) / (most - 1)) for i in range(most)})
    return [trials[i] for i in picks]


def preferred(points: list[PointVerification],
              weights: dict[str, float]) -> tuple[PointVerification | None, dict[int, float]]:
    """The verified point with the highest weighted sum of log gains (ties: the earlier
    point), and each verified point's score."""
    scores = {p.trial: sum(w * math.log(p.gains[name][0])  # type: ignore[index]
                           for name, w in weights.items())
              for p in points if p.verified}
    chosen = max((p for p in points if p.trial in scores), key=lambda p: scores[p.trial],
                 default=None)
    return chosen, scores


def _row(job: Job, trial: FrozenTrial, point: PointVerification | None, is_default: bool,
         score: float | None, chosen: bool) -> dict[str, Any]:
    names = job.objective_names
    verified: dict[str, Any] = {}
    if point is not None:
        for name in names:
            gain, values = point.gains.get(name), point.values.get(name) or []
            defaults = point.default_values.get(name) or []
            verified[name] = {
                "default": sum(defaults) / len(defaults) if defaults else None,
                "value": sum(values) / len(values) if values else None,
                "gain": gain[0] if gain else None, "gain_low": gain[1] if gain else None,
                "gain_high": gain[2] if gain else None}
    return {"trial": trial.number, "config": dict(trial.user_attrs[ATTR]["config"]),
            "observed": dict(zip(names, trial.values, strict=True)),
            "is_default": is_default, "verified": verified,
            "runs": len(point.metrics) if point is not None else 0,
            "failures": list(point.failures) if point is not None else [],
            "score": score, "chosen": chosen}


def front_result(job: Job, study: optuna.Study, rules: RuleSet, runner: TrialRunner,
                 tracker: JobTracker, listener: TuneListener,
                 logger: logging.Logger | logging.LoggerAdapter[Any],
                 ) -> tuple[FrozenTrial | None, Verification | None, list[dict[str, Any]]]:
    """The front, verified: the trial ``--prefer`` picks (None: no trial on the front), its
    verification in the first objective, and one row per point of the front."""
    front = pareto_trials(study, rules)
    if not front:
        return None, None, []
    defaults = job.target_cls.knob_spec().defaults()
    at_default = {t.number for t in front
                  if is_default_config(t.user_attrs[ATTR]["config"], defaults)}
    to_verify = _spread([t for t in front if t.number not in at_default], MAX_POINTS)
    rounds = max(2, min(FRONT_ROUNDS, job.verify_repeats))
    points: list[PointVerification] = []
    if to_verify:
        logger.info("Pareto front: %d points (%d ran the default config); re-measuring %d "
                    "beside the default, %d rounds", len(front), len(at_default),
                    len(to_verify), rounds)

        def on_run(label: str, round_: int, outcome: TrialOutcome) -> None:
            key = f"front-{round_}-{label}"
            tracker.log_trial(key, outcome.record(), outcome.samples, phase="verify")
            listener.verify_done(key, outcome)

        points = verify_front(
            runner, defaults,
            [(t.number, dict(t.user_attrs[ATTR]["config"]),
              dict(zip(job.objective_names, t.values, strict=True))) for t in to_verify],
            list(zip(job.objective_names, job.objective_directions, strict=True)), rounds,
            next(iter(runner.instance_dirs)), on_run=on_run)
    chosen, scores = preferred(points, job.prefer or {job.objective: 1.0})
    by_trial = {p.trial: p for p in points}
    rows = [_row(job, t, by_trial.get(t.number), t.number in at_default,
                 scores.get(t.number), chosen is not None and t.number == chosen.trial)
            for t in front]
    if chosen is not None:
        best = next(t for t in front if t.number == chosen.trial)
        stop = (f"the Pareto front's {len(points)} points re-measured beside the default, "
                f"{rounds} rounds; --prefer {_weights_text(job)} picked trial {best.number}")
        return best, chosen.as_verification(job.objective, stop), rows
    if at_default:  # only the default is on the front (or no other point could be verified)
        best = next(t for t in front if t.number in at_default)
        if not points:
            return best, None, rows
    best = next(t for t in front if t.number not in at_default)
    failures = [f for p in points for f in p.failures] or ["no point of the front verified"]
    return best, Verification(failures=failures), rows


def _weights_text(job: Job) -> str:
    weights = job.prefer or {job.objective: 1.0}
    if len(weights) == 1:
        return next(iter(weights))
    return ",".join(f"{k}:{v:g}" for k, v in weights.items())


def plot_front(job: Job, study: optuna.Study, rows: list[dict[str, Any]]) -> Path | None:
    """``pareto.png``: every clean trial in the first two objectives, dominated ones grey, the
    front's points blue, their verified means orange, the picked point starred."""
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x_name, y_name = job.objective_names[:2]
    on_front = {r["trial"] for r in rows}
    trials = clean_trials(study)
    fig, ax = plt.subplots(figsize=(7, 5), dpi=110)
    grey = [t.values[:2] for t in trials if t.number not in on_front]
    if grey:
        ax.scatter(*zip(*grey, strict=True), s=16, color="#bbbbbb", label="dominated trial")
    front = sorted((r["observed"][x_name], r["observed"][y_name]) for r in rows)
    ax.plot(*zip(*front, strict=True), "o-", color="#4477aa", ms=6,
            label="Pareto front (search)")
    for r in rows:
        v = r["verified"]
        if v.get(x_name, {}).get("value") is not None and v.get(y_name, {}).get("value"):
            xy = (v[x_name]["value"], v[y_name]["value"])
            ax.plot([r["observed"][x_name], xy[0]], [r["observed"][y_name], xy[1]],
                    color="#ee7733", lw=0.8)
            ax.scatter(*xy, s=30, color="#ee7733", marker="s", zorder=3,
                       label="verified mean" if "verified mean" not in
                       ax.get_legend_handles_labels()[1] else None)
        if r["chosen"]:
            ax.scatter(r["observed"][x_name], r["observed"][y_name], s=220, marker="*",
                       color="#228833", zorder=4, label=f"picked (trial {r['trial']})")
    directions = dict(zip(job.objective_names, job.objective_directions, strict=True))
    ax.set_xlabel(f"{x_name} ({'higher' if directions[x_name] == 'maximize' else 'lower'} "
                  "is better)")
    ax.set_ylabel(f"{y_name} ({'higher' if directions[y_name] == 'maximize' else 'lower'} "
                  "is better)")
    ax.set_title(f"{job.target} / {job.instance}: Pareto front of {len(trials)} clean "
                 f"trials, {len(rows)} points", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    path = job.dir / "pareto.png"
    fig.savefig(path)
    plt.close(fig)
    return path


def job_result(job: Job, study: optuna.Study, rules: RuleSet, runner: TrialRunner,
            tracker: JobTracker, listener: TuneListener,
            logger: logging.Logger | logging.LoggerAdapter[Any],
            ) -> tuple[Any, Verification | None, list[dict[str, Any]]]:
    """The best trial and its verification (several objectives: the verified Pareto front's
    point --prefer picks, and the front's rows)."""
    front: list[dict[str, Any]] = []
    verification = None
    if job.several:
        best, verification, front = front_result(job, study, rules, runner, tracker, listener,
                                                 logger)
    else:  # rules learned late may forbid an early best; with SLA bounds: feasible only
        best = best_trial(study, rules)
        if best is not None and best_is_default(job, best):  # against itself: proves nothing
            logger.info("%s: the best trial (%d) ran the default config; nothing to verify",
                        NO_GAIN, best.number)
        elif best is not None:
            verification = _verify(job, runner, best.user_attrs[ATTR]["config"], tracker,
                                   listener)
    if best is None and job.constraints:
        logger.warning("no trial met every --constraint (%s): no config to apply",
                       "; ".join(b.describe(job.default_metrics) for b in job.bounds()))
    return best, verification, front


def _verify(job: Job, runner: TrialRunner, best_config: dict[str, Any], tracker: JobTracker,
            listener: TuneListener) -> Verification:
    """Re-measure the best config against the default, interleaved, on the first instance."""

    def on_run(label: str, repeat: int, outcome: TrialOutcome) -> None:
        key = f"{repeat}-{label}"
        tracker.log_trial(key, outcome.record(), outcome.samples, phase="verify")
        listener.verify_done(f"verify-{key}", outcome)

    return verify_best(runner, job.target_cls.knob_spec().defaults(), best_config,
                       job.direction, job.verify_repeats, next(iter(runner.instance_dirs)),
                       on_run=on_run, record=job.dir / "verify.json")
