"""Transfer: a new instance of a service starts close to the optimum its siblings found.

Before the first trial of a job, when sibling instances of the service have run trials:

1. the best configs the siblings measured (those with the closest workloads first) are queued
   first after the default, once projected into this job's space and checked against the rules:
   a measurement beats a prediction;
2. the service's champion model (``models:/knobflow-<service>-<objective>@champion``) ranks many
   candidate configs, predicted for this instance's workload: half drawn over the whole search
   space, half near the siblings' best measured configs (a model trained on a few dozen trials
   is trustworthy near its data and extrapolates far from it); the rules remove blocked
   candidates first, and the best few (spread apart) are queued next;
3. what was queued, from which instances and model version, is returned for the job's MLflow run.

``transfer_from_siblings`` is that step of a tuning job, as a Prefect task.

Nothing here runs a trial: the queued configs go through the same trial manager as any other.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from model_registry import fingerprint
from model_registry.features import feature_frame
from model_registry.priors import prior_trials
from model_registry.registry import champion_table, champion_version, load_champion, model_name
from model_registry.store import client_for
from rules.review import sample_space
from rules.ruleset import RuleSet
from targets.common.files import write_text_atomic
from tuners.space import SearchSpace
from tuners.trials import TRANSFER_ATTR, training_rows

#: Candidates the champion ranks, configs it queues, best configs taken from each sibling.
CANDIDATES = 4000
FROM_MODEL = 3
FROM_SIBLINGS = 2
#: Queued configs closer than this (normalised distance over the tuned knobs) count as one.
MIN_SPREAD = 0.05
#: Share of the candidates drawn near the siblings' best measured configs (LOCAL_TOP of them):
#: each numeric knob moved by a normal step of LOCAL_WIDTH of its (log) range, each other knob
#: kept with probability LOCAL_KEEP, else drawn anew.
LOCAL_SHARE = 0.5
LOCAL_TOP = 5
LOCAL_WIDTH = 0.1
LOCAL_KEEP = 0.8


@dataclass
class Seed:
    """One config queued by transfer, and where it came from."""

    params: dict[str, Any]
    source: str  # "model" | "sibling"
    instance: str | None = None
    predicted: float | None = None
    measured: float | None = None
    workload_distance: float | None = None


@dataclass
class TransferPlan:
    """What transfer queues for a job (empty with a reason when it cannot help)."""

    seeds: list[Seed] = field(default_factory=list)
    model_name: str | None = None
    model_version: str | None = None
    from_instances: list[str] = field(default_factory=list)
    n_candidates: int = 0
    n_blocked: int = 0
    n_priors: int = 0
    reason: str = ""
    #: Whether the champion model was loaded (a job with no sibling and no other instance's
    #: model loads nothing: the cheap check answers first).
    model_loaded: bool = False

    @property
    def configs(self) -> list[dict[str, Any]]:
        return [s.params for s in self.seeds]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "n_seeds": len(self.seeds)}


def _spread(a: Mapping[str, Any], b: Mapping[str, Any], space: SearchSpace) -> float:
    """Normalised distance of two configs over the tuned knobs (0 = the same config)."""
    parts = [
        abs(k.position(a[k.name]) - k.position(b[k.name])) if k.is_numeric
        else float(a[k.name] != b[k.name])
        for k in space.tuned
    ]
    return float(np.mean(parts)) if parts else 0.0


def _near(space: SearchSpace, centres: Sequence[Mapping[str, Any]], n: int,
          seed: int) -> pd.DataFrame:
    """``n`` full configs drawn around ``centres`` (params of this space), in turn."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        centre, row = centres[i % len(centres)], {}
        for knob in space.tuned:
            if knob.is_numeric:
                step = rng.normal(0.0, LOCAL_WIDTH)
                v = knob.value_at(knob.position(centre[knob.name]) + step)
                row[knob.name] = round(v) if knob.type == "int" else v
            elif rng.random() < LOCAL_KEEP:
                row[knob.name] = centre[knob.name]
            else:
                choices = list(knob.choices)
                row[knob.name] = choices[int(rng.integers(0, len(choices)))]
        rows.append({**space.config({}), **row})
    return pd.DataFrame(rows)


def _centres(siblings: pd.DataFrame, space: SearchSpace, maximize: bool) -> list[dict[str, Any]]:
    """The siblings' best measured configs, as params of this space."""
    if siblings.empty:
        return []
    ranked = siblings.sort_values("value", ascending=not maximize)
    centres = []
    for row in ranked.to_dict(orient="records"):
        config = {k.removeprefix("knob."): v for k, v in row.items() if k.startswith("knob.")}
        params = space.project(config)
        if params is not None:
            centres.append(params)
        if len(centres) >= LOCAL_TOP:
            break
    return centres


def _distance_to(frame: pd.DataFrame, centres: Sequence[Mapping[str, Any]],
                 space: SearchSpace) -> np.ndarray:
    """Each row's ``_spread`` to the nearest of ``centres`` (zeros when there are none)."""
    if not centres:
        return np.zeros(len(frame))
    return np.array([min(_spread(row, c, space) for c in centres)
                     for row in frame.to_dict(orient="records")], dtype=float)


def _keep(params: dict[str, Any], seeds: Sequence[Seed], space: SearchSpace,
          rules: RuleSet) -> bool:
    if rules.check(space.config(params)).blocked:
        return False
    return all(_spread(params, s.params, space) > MIN_SPREAD for s in seeds)


def _sibling_seeds(siblings: pd.DataFrame, space: SearchSpace, rules: RuleSet,
                   workload_fp: Mapping[str, float], limits: Mapping[str, tuple[float, float]],
                   maximize: bool, seeds: list[Seed]) -> None:
    """The best measured configs of each sibling instance (closest workloads first)."""
    if siblings.empty:
        return
    rows = siblings.to_dict(orient="records")
    for row in rows:
        row["_distance"] = fingerprint.distance(fingerprint.from_row(row), workload_fp, limits)
    by_instance: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_instance.setdefault(str(row["instance"]), []).append(row)
    order = sorted(by_instance, key=lambda i: min(r["_distance"] for r in by_instance[i]))
    for instance in order:
        ranked = sorted(by_instance[instance],
                        key=lambda r: (r["_distance"] > fingerprint.CLOSE,
                                       -r["value"] if maximize else r["value"]))
        taken = 0
        for row in ranked:
            if taken >= FROM_SIBLINGS:
                break
            config = {k.removeprefix("knob."): v for k, v in row.items() if k.startswith("knob.")}
            params = space.project(config)
            if params is None or not _keep(params, seeds, space, rules):
                continue
            seeds.append(Seed(params, "sibling", instance=instance, measured=float(row["value"]),
                              workload_distance=round(float(row["_distance"]), 4)))
            taken += 1


def plan_transfer(
    *,
    space: SearchSpace,
    rules: RuleSet,
    siblings: pd.DataFrame,
    workload_fp: Mapping[str, float],
    limits: Mapping[str, tuple[float, float]],
    direction: str,
    champion: Any | None = None,
    seed: int = 0,
    n_candidates: int = CANDIDATES,
) -> TransferPlan:
    """The configs to queue first for a new instance.

    ``siblings``: clean trial-table rows of the service's other instances (``knob.*``,
    ``workload.*``, ``value``, ``instance``). ``champion``: the service's champion model (an
    object with ``predict(frame)``, ``name`` and ``version``; see ``model_registry.registry``),
    or None.
    """
    plan = TransferPlan()
    maximize = direction == "maximize"
    if siblings.empty and champion is None:
        plan.reason = "no sibling instance of the service has run trials yet"
        return plan
    _sibling_seeds(siblings, space, rules, workload_fp, limits, maximize, plan.seeds)
    if champion is not None:
        plan.model_name, plan.model_version = champion.name, str(champion.version)
        centres = _centres(siblings, space, maximize)
        n_near = round(n_candidates * LOCAL_SHARE) if centres else 0
        candidates = pd.concat([sample_space(space, n_candidates - n_near, seed=seed),
                                _near(space, centres, n_near, seed)], ignore_index=True) \
            if n_near else sample_space(space, n_candidates, seed=seed)
        verdicts = rules.check_frame(candidates)
        allowed = candidates[~verdicts["blocked"].to_numpy()].reset_index(drop=True)
        plan.n_candidates, plan.n_blocked = len(candidates), int(verdicts["blocked"].sum())
        if len(allowed):
            predicted = np.asarray(
                champion.predict(feature_frame(allowed, space.spec, dict(workload_fp))), float)
            # best predicted first; among equal predictions (the champion's are clipped to the
            # range it was trained on) the candidate nearest the siblings' best configs
            near = _distance_to(allowed, centres, space)
            order = np.lexsort((near, -predicted if maximize else predicted))
            for i in order:
                if sum(s.source == "model" for s in plan.seeds) >= FROM_MODEL:
                    break
                params = space.project(allowed.iloc[int(i)].to_dict())
                if params is not None and _keep(params, plan.seeds, space, rules):
                    plan.seeds.append(Seed(params, "model", predicted=float(predicted[i])))
    plan.from_instances = sorted({s.instance for s in plan.seeds if s.instance})
    if champion is not None:
        tag = getattr(champion, "tags", {}).get("instance")
        if tag and tag not in plan.from_instances:
            plan.from_instances = sorted({*plan.from_instances, tag})
    if not plan.seeds:
        plan.reason = "every transferred candidate was blocked by the rules or outside the space"
    return plan


@dataclass(frozen=True)
class TransferRequest:
    """Who is asking for a warm start: the new instance's service, objective and workload."""

    service: str
    objective: str
    direction: str
    own_instances: frozenset[str]  # the job's instance names: not siblings of itself
    workload_fp: dict[str, float]
    limits: dict[str, tuple[float, float]]
    seed: int = 0
    priors: bool = False  # also tell the tuner the siblings' close-workload trials


NO_SIBLING = "no sibling instance of the service has run trials yet"


def _no_sibling(table: pd.DataFrame, request: TransferRequest, tracking_uri: str) -> bool:
    """Whether the service has no sibling to learn from, answered cheaply (no model loaded, no
    store created): no other instance's trial in ``table`` (the service's clean rows here) and
    no champion model, or one this job's own instance trained on this very table."""
    others = table[~table["instance"].isin(request.own_instances)
                   & (table["objective"] == request.objective)] if not table.empty else table
    if not others.empty:
        return False
    if tracking_uri.startswith("sqlite:///") and not Path(
            tracking_uri.removeprefix("sqlite:///")).exists():
        return True  # a new home has no models: its store is not made for the question
    version = champion_version(client_for(tracking_uri),
                               model_name(request.service, request.objective))
    if version is None:
        return True
    # a champion trained elsewhere (a shared store, an empty table here) brings its siblings'
    # table along: only the own instance's champion over this table has nothing to give
    return not table.empty and (version.tags or {}).get("instance") in request.own_instances


@task(name="transfer-from-siblings", cache_policy=NO_CACHE)
def transfer_from_siblings(
    study: optuna.Study, request: TransferRequest, *, table: pd.DataFrame, tracking_uri: str,
    space: SearchSpace, rules: RuleSet, record: Path,
) -> TransferPlan:
    """Queue in ``study`` the configs the service's champion model and its sibling instances
    suggest, right after the default config; ``table`` is the service's trial table here (the
    champion's own table is used when it is empty: siblings tuned elsewhere). The plan is kept
    as ``record`` (``transfer.json``)."""
    logger = get_run_logger()
    table = training_rows(table)
    if _no_sibling(table, request, tracking_uri):
        plan = TransferPlan(reason=NO_SIBLING)
        write_text_atomic(record, json.dumps(plan.to_dict(), indent=2, default=str))
        logger.info("transfer: nothing queued (%s)", plan.reason)
        return plan
    champion = load_champion(tracking_uri, request.service, request.objective)
    if table.empty and champion is not None:
        table = training_rows(champion_table(tracking_uri, request.service, request.objective))
    siblings = table[~table["instance"].isin(request.own_instances)
                     & (table["objective"] == request.objective)]
    if siblings.empty and (champion is None or champion.tags.get("instance")
                           in request.own_instances):
        plan = TransferPlan(reason=NO_SIBLING)
    else:
        plan = plan_transfer(space=space, rules=rules, siblings=siblings,
                             workload_fp=request.workload_fp, limits=request.limits,
                             direction=request.direction, champion=champion, seed=request.seed)
    plan.model_loaded = champion is not None
    for seed in plan.seeds:
        study.enqueue_trial(seed.params, user_attrs={TRANSFER_ATTR: seed.source},
                            skip_if_exists=True)
    if request.priors and not siblings.empty:
        priors = prior_trials(siblings, space, rules, request.workload_fp, request.limits,
                              request.direction)
        study.add_trials(priors)
        plan.n_priors = len(priors)
        logger.info("transfer: %d sibling trials with close workloads told as priors",
                    len(priors))
    write_text_atomic(record, json.dumps(plan.to_dict(), indent=2, default=str))
    if plan.seeds:
        logger.info("transfer: %d configs queued first (%s) from %s, model %s v%s",
                    len(plan.seeds), ", ".join(s.source for s in plan.seeds),
                    ", ".join(plan.from_instances) or "-", plan.model_name, plan.model_version)
    else:
        logger.info("transfer: nothing queued (%s)", plan.reason)
    return plan
