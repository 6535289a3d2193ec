"""The result of a tuning job: the summary (``--json``, ``result.json``), the config files, the
history plot; and ``TuneListener``, through which whoever watches a job (the CLI's progress bar)
hears of it as it runs."""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState
from prefect import task
from prefect.cache_policies import NO_CACHE

from flows.job import Job
from flows.report_search import search_parts
from model_registry.transfer import TransferPlan
from rules.review import range_hints
from rules.rule import Failure
from rules.ruleset import RuleSet
from targets.common.errors import fmt_value
from tasks.explore import ExploreStats
from tasks.guard import CandidateGuard, blocked_as
from tasks.verify import Verification
from tuners.space import SearchSpace
from tuners.trials import (
    ATTR,
    TRANSFER_ATTR,
    TrialOutcome,
    finished_trials,
    is_blocked,
    ranked_trials,
)

__all__ = [
    "NONE_FEASIBLE", "NO_GAIN", "WORSE", "RunSummary", "TuneListener", "best_is_default",
    "is_default_config", "policies_given_up", "report", "write_config_files",
]

#: What a job says when its best trial ran the default config (or one equal to it in every knob).
NO_GAIN = "no config beat the default"
#: ... and when the best trial's config, re-measured beside the default, is clearly worse.
WORSE = "worse than the default"


class TuneListener:
    """What a tuning job tells whoever watches it, as it runs; each method does nothing here.
    The CLI's progress bar (``flows/progress.py``) is one; pass it as the flow's ``progress``."""

    def job_started(self, job: Job, resume: bool) -> None:
        """The job is recorded and about to run its first trial."""

    def trial_done(self, key: str, outcome: TrialOutcome, stats: ExploreStats) -> None:
        """A trial of the search finished (``stats``: the search so far)."""

    def verify_done(self, key: str, outcome: TrialOutcome) -> None:
        """A run of the verification finished."""


@dataclass
class RunSummary:
    """What a job did and found: what ``--json`` prints and ``result.json`` keeps."""

    target: str
    service: str
    instance: str
    objective: str
    direction: str
    tuner: str
    n_trials: int
    n_failed: int
    failure_classes: dict[str, int]
    best_trial: int | None
    best_config: dict[str, Any] | None
    best_observed_value: float | None
    best_value: float | None
    default_value: float | None
    gain: float | None
    gain_low: float | None
    gain_high: float | None
    gain_significant: bool
    verify_repeats: int
    verify_default_values: list[float]
    verify_best_values: list[float]
    verify_failures: list[str]
    workload: dict[str, Any]
    study_name: str
    mlflow_run_id: str | None
    duration_s: float
    best_config_file: str | None = None
    native_config_file: str | None = None
    #: The synthetic target's known optimum, and the noiseless value of the best config.
    known_optimum_value: float | None = None
    best_true_value: float | None = None
    trial_table: str | None = None
    tracking_uri: str | None = None
    n_blocked: int = 0
    blocked_by: dict[str, int] = field(default_factory=dict)
    learned_rules: list[str] = field(default_factory=list)
    rule_warnings: list[str] = field(default_factory=list)
    range_hints: list[str] = field(default_factory=list)
    transfer: dict[str, Any] | None = None
    model: dict[str, Any] | None = None
    #: The best trial ran the default config (or one equal to it in every knob): nothing was
    #: verified and no config file was written; ``verdict`` says NO_GAIN.
    best_is_default: bool = False
    #: The result in words: "no trial completed", NO_GAIN, "verification failed", "better than
    #: the default", "not clearly better than the default", WORSE.
    verdict: str = ""
    #: The default of every knob of ``best_config`` (the best-config table shows it beside
    #: each knob the best config changes).
    default_config: dict[str, Any] = field(default_factory=dict)
    #: The search's best trial: how many runs its value is the mean of, and, when the tuner was
    #: told ratios to a baseline (``--baseline-every``), the measured mean itself.
    best_observed_runs: int = 0
    best_observed_raw: float | None = None
    #: Policies (e.g. durability) the best config gives up, though the job did not turn them on.
    policy_warnings: list[str] = field(default_factory=list)
    #: Why verification stopped (decisive interval, or the cap), and the noise check's finding.
    verify_stop: str = ""
    noise: dict[str, Any] | None = None
    #: Trials the pruner stopped early (``--pruner``; in ``n_trials``, not in ``n_failed``), and
    #: the trial time that saved (each one's shortfall from the median complete trial's time).
    pruner: str = "none"
    n_pruned: int = 0
    pruned_saved_s: float = 0.0
    #: With --fail-on-regression: the result against the reference recorded before the job
    #: (``flows.regression.RegressionCheck.to_dict``, or a verdict "no reference" and a message).
    regression: dict[str, Any] | None = None
    #: Where the time went (``flows/timing.py``): ``duration_s`` is the whole command's time,
    #: ``fixed_s`` its parts that a job pays whatever its budget (with their ``total``),
    #: ``trials_s`` the exploration's.
    fixed_s: dict[str, float] = field(default_factory=dict)
    trials_s: float | None = None
    #: How late the tuner heard of results: the candidates asked after a trial's run ended and
    #: before it was told (``tasks/explore.py``), the largest and the median over the job.
    tell_lag_max: int | None = None
    tell_lag_median: float | None = None
    #: Several objectives: each metric and direction, ``--prefer``'s weights, and the Pareto
    #: front, one row per point (``flows.pareto``): trial, config, values in the search, each
    #: objective's verified means and gain over the default, whether --prefer picked it.
    objectives: list[str] = field(default_factory=list)
    directions: list[str] = field(default_factory=list)
    prefer: dict[str, float] = field(default_factory=dict)
    pareto_front: list[dict[str, Any]] = field(default_factory=list)
    #: SLA bounds (``--constraint``, with the default's value where one uses it), the clean
    #: trials that broke one, and each bound checked on the best config's verified means.
    constraints: list[str] = field(default_factory=list)
    n_infeasible: int = 0
    constraints_verified: dict[str, bool] = field(default_factory=dict)
    #: With --knobs auto: the knobs tuned first and the model that ranked them (or why all
    #: knobs were tuned at once), and at which trial and why the search widened to all knobs.
    knob_focus: dict[str, Any] | None = None

    @property
    def succeeded(self) -> bool:
        """A best config was found and verified, or the default was best (the command exits 0)."""
        return self.best_config is not None and (self.gain is not None or self.best_is_default)

    @property
    def regressed(self) -> bool:
        """The result is slower than the reference before the job, beyond the noise (only
        checked with --fail-on-regression; the command exits 1)."""
        return bool(self.regression and self.regression.get("regression"))

    def to_dict(self) -> dict[str, Any]:
        """The summary as JSON-able data (keys a job did not produce are left out)."""
        data = asdict(self)
        for key in ("best_config_file", "native_config_file"):
            if data[key] is None:
                del data[key]
        if not self.objectives:  # one objective: the summary it always was
            for key in ("objectives", "directions", "prefer", "pareto_front"):
                del data[key]
        if not self.constraints:
            for key in ("constraints", "n_infeasible", "constraints_verified"):
                del data[key]
        if self.known_optimum_value is None:
            del data["known_optimum_value"], data["best_true_value"]
        return data


def _plain(value: Any) -> Any:
    """YAML/JSON-friendly scalars (numpy and friends become Python numbers)."""
    if hasattr(value, "item"):
        return value.item()
    return value


def is_default_config(config: Mapping[str, Any], defaults: Mapping[str, Any]) -> bool:
    """Whether ``config`` sets every knob to its default (a knob it leaves out is at its
    default; floats equal to a relative 1e-9)."""
    for name, value in config.items():
        default = defaults.get(name)
        if isinstance(value, float) or isinstance(default, float):
            if not (isinstance(value, int | float) and isinstance(default, int | float)
                    and math.isclose(value, default, rel_tol=1e-9, abs_tol=1e-12)):
                return False
        elif value != default:
            return False
    return True


def _verified(verification: Verification | None) -> str:
    """The verification as a config file's header says it."""
    if verification is None or verification.gain is None:
        return "not verified"
    interval = (f"gain {verification.gain:.3f}x [{verification.gain_low:.3f}, "
                f"{verification.gain_high:.3f}] over the default, re-measured "
                f"{len(verification.best_values)} times each")
    if verification.significant:
        return f"verified {interval}"
    if verification.gain_high is not None and verification.gain_high < 1.0:
        return f"WORSE than the default, keep the default: {interval}"
    return f"NOT clearly better than the default: {interval} (the interval includes 1)"


def write_config_files(
    job: Job, config: dict[str, Any], verification: Verification | None,
    best_is_default: bool = False, given_up: list[str] | None = None,
) -> dict[str, str]:
    """Write the best config as YAML (knob -> value), and in the system's own format if any;
    nothing when the best is the default (files an earlier, killed run left are removed). The
    header says the gain as verified and each policy the config gives up (``given_up``)."""
    job.dir.mkdir(parents=True, exist_ok=True)
    if best_is_default:
        for name in ("best.yaml", f"best{job.target_cls.native_suffix or '.none'}"):
            (job.dir / name).unlink(missing_ok=True)
        return {}
    gain = _verified(verification)
    header = (
        f"# knobflow best config for target '{job.target}', instance '{job.instance}'\n"
        f"# job {job.study_name}; objective {job.objective} ({job.direction}); {gain}\n"
        + "".join(f"# WARNING: {line}\n" for line in given_up or [])
    )
    paths = {}
    yaml_path = job.dir / "best.yaml"
    body = yaml.safe_dump({k: _plain(v) for k, v in config.items()}, sort_keys=False)
    yaml_path.write_text(header + body, encoding="utf-8")
    paths["best_config_file"] = str(yaml_path)
    native = job.target_cls.render_native(config)
    if native is not None and job.target_cls.native_suffix:
        native_path = job.dir / f"best{job.target_cls.native_suffix}"
        comment = "-- " if job.target_cls.native_suffix == ".sql" else "# "
        native_path.write_text(
            "".join(comment + line[2:] + "\n" for line in header.splitlines()) + native,
            encoding="utf-8",
        )
        paths["native_config_file"] = str(native_path)
    return paths


def policies_given_up(job: Job, config: Mapping[str, Any]) -> list[str]:
    """What ``config`` gives up of the policies the job did not turn on (``--policy``): one line
    per policy, naming each of its rules that ``config`` breaks. The rules are those of the
    job's rule files, found as ``--policy`` finds them."""
    broken = RuleSet.given_up(job.target_cls, config, job.rule_files, job.policies,
                              job.workload)
    return [f"the best config gives up {name}: {given_up_text(failures)}. Tune with --policy "
            f"{name} to keep such configs out" for name, failures in broken.items()]


def given_up_text(failures: list[Failure]) -> str:
    """The rules of a policy a config breaks, with the values that break them."""
    return "; ".join(
        f"{', '.join(f'{k}={fmt_value(v)}' for k, v in f.values.items())} (rule {f.rule}: "
        f"{f.message})" for f in failures)


def _rules_part(job: Job, study: optuna.Study, space: SearchSpace, ruleset: RuleSet,
                guard: CandidateGuard, warnings: list[str],
                best: FrozenTrial | None) -> dict[str, Any]:
    """What the rules did in this job."""
    blocked = [t for t in study.get_trials(deepcopy=False) if is_blocked(t)]
    by_rules = Counter(blocked_as(t.user_attrs[ATTR]["rules"]) for t in blocked)
    top = [t.user_attrs[ATTR]["config"] for t in ranked_trials(study)[:5]]
    best_config = best.user_attrs[ATTR]["config"] if best else None
    best_warnings = ruleset.check(best_config).warnings if best_config else []
    return {
        "n_blocked": len(blocked),
        "blocked_by": dict(by_rules.most_common()),
        "policy_warnings": policies_given_up(job, best_config) if best_config else [],
        "learned_rules": [r.id for r in guard.learned],
        "rule_warnings": warnings + [f"best config: {w}" for w in best_warnings],
        "range_hints": range_hints(top, space),
    }


def _transfer_part(plan: TransferPlan | None, study: optuna.Study) -> dict[str, Any] | None:
    """What transfer queued, and the trials that ran its configs."""
    if plan is None:
        return None
    trials = [t.number for t in study.get_trials(deepcopy=False)
              if TRANSFER_ATTR in t.user_attrs]
    return {"n_seeds": len(plan.seeds), "from_instances": plan.from_instances,
            "model": plan.model_name, "model_version": plan.model_version,
            "reason": plan.reason, "trials": trials, "n_priors": plan.n_priors}


def best_is_default(job: Job, best: FrozenTrial | None) -> bool:
    """Whether the best trial ran the default config, or one equal to it in every knob."""
    return best is not None and is_default_config(best.user_attrs[ATTR]["config"],
                                                  job.target_cls.knob_spec().defaults())


#: What a job says when trials ran cleanly but none met every SLA bound (``--constraint``).
NONE_FEASIBLE = "no config met every --constraint"


def verdict(best: FrozenTrial | None, verification: Verification | None,
            is_default: bool, infeasible: int = 0) -> str:
    """The result in words (``RunSummary.verdict``)."""
    if best is None:
        return NONE_FEASIBLE if infeasible else "no trial completed"
    if is_default:
        return NO_GAIN
    if verification is None or verification.gain is None:
        return "verification failed"
    if verification.significant:
        return "better than the default"
    if verification.gain_high is not None and verification.gain_high < 1.0:
        return WORSE
    return "not clearly better than the default"


def summarize(job: Job, study: optuna.Study, best: FrozenTrial | None,
              verification: Verification | None, duration_s: float,
              **parts: Any) -> RunSummary:
    """The job's summary from its study, its verification and the other steps' ``parts``."""
    done = finished_trials(study)
    failed = [t for t in done if t.state == TrialState.FAIL]
    best_config = best.user_attrs[ATTR]["config"] if best else None
    record = best.user_attrs[ATTR] if best else {}
    defaults = job.target_cls.knob_spec().defaults()
    is_default = best_is_default(job, best)
    v = verification or Verification()
    search = search_parts(job, done, v)
    summary = RunSummary(
        target=job.target, service=job.service, instance=job.instance, objective=job.objective,
        direction=job.direction, tuner=job.tuner, n_trials=len(done), n_failed=len(failed),
        failure_classes=dict(Counter(str(t.user_attrs[ATTR]["failure_class"]) for t in failed)),
        best_trial=best.number if best else None, best_config=best_config,
        best_observed_value=best.values[0] if best else None, best_value=v.best_value,
        default_value=v.default_value, gain=v.gain, gain_low=v.gain_low, gain_high=v.gain_high,
        gain_significant=v.significant, verify_repeats=len(v.best_values),
        verify_default_values=v.default_values, verify_best_values=v.best_values,
        verify_failures=v.failures, verify_stop=v.stop_reason, workload=job.workload,
        study_name=job.study_name,
        mlflow_run_id=job.mlflow_run_id, duration_s=round(duration_s, 2),
        best_is_default=is_default,
        verdict=verdict(best, verification, is_default, search["n_infeasible"]),
        default_config={k: defaults.get(k) for k in best_config or {}},
        best_observed_runs=len(record.get("repeat_values") or []) or (1 if best else 0),
        best_observed_raw=record.get("raw_value") if record.get("baseline_value") else None,
        **search, **parts,
    )
    target_cls = job.target_cls
    if hasattr(target_cls, "known_optimum_value"):
        summary.known_optimum_value = target_cls.known_optimum_value(job.workload)
        summary.best_true_value = (
            target_cls.true_value(best_config, job.workload) if best_config else None)
    return summary


@task(name="report", cache_policy=NO_CACHE)
def report(job: Job, study: optuna.Study, best: FrozenTrial | None,
           verification: Verification | None, duration_s: float, *, space: SearchSpace,
           ruleset: RuleSet, guard: CandidateGuard, rule_warnings: list[str],
           plan: TransferPlan | None, **parts: Any) -> tuple[RunSummary, list[Path]]:
    """Write the best config's files, the summary (``result.json``) and the history plot; the
    summary and the files written (for the job's MLflow run)."""
    from flows.plots import plot_history

    rules_part = _rules_part(job, study, space, ruleset, guard, rule_warnings, best)
    files = (write_config_files(job, best.user_attrs[ATTR]["config"], verification,
                                best_is_default(job, best), rules_part["policy_warnings"])
             if best is not None else {})
    summary = summarize(job, study, best, verification, duration_s, **files, **parts,
                        **rules_part, transfer=_transfer_part(plan, study))
    path = job.dir / "result.json"
    path.write_text(json.dumps(summary.to_dict(), indent=2, default=str), encoding="utf-8")
    plots = [plot_history(job, study, verification, no_gain=summary.best_is_default)]
    if summary.pareto_front:
        from flows.pareto import plot_front

        plots.append(plot_front(job, study, summary.pareto_front))
    return summary, [path, *map(Path, files.values()), *(p for p in plots if p)]
