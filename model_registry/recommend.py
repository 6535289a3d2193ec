"""Recommend: the config a live instance of a service should run for the workload it serves now.

``recommend`` proposes, for one live instance, one config to apply:

1. the candidates are transfer's (``plan_transfer``): the siblings' best measured configs, closest
   workloads first, and the champion's top picks among thousands of rule-checked configs drawn
   over the space and near those measurements; plus the instance's current config as the baseline;
2. each candidate is the current config with the search space's tuned knobs set: a knob the
   space does not tune (fixed ones included) keeps its live value;
3. the rules check every candidate (blocked ones are dropped and counted), the champion predicts
   each for the observed workload, and the best predicted is the pick, unless a sibling's measured
   config is predicted nearly as good (``MEASURED_BAND``); without a champion the pick is the best
   measured config of the closest sibling workload, its gain unknown;
4. a pick equal to the current config is "keep"; ``max_knobs`` (a policy) keeps only the changes
   the champion predicts to matter most, one at a time on top of the current config.

Whose trials are candidates: every instance of the service in ``table``, the live instance's own
name included. Trials never run on a live instance; rows under its name come from tuning jobs run
as that instance on a private test copy (``knobflow tune --instance NAME``), the measurements
made for exactly this instance. Transfer leaves a job's own instances out because their trials are
already in its study; a recommendation has no study, and the workload distance already ranks those
rows down when the live workload has moved.

``recommend_task`` is the same computation as a Prefect task (``flows/recommend.py`` runs it).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from model_registry.features import feature_frame
from model_registry.recommendation import (
    CHANGE,
    KEEP,
    NOTHING,
    Recommendation,
    config_diff,
    rule_warnings,
    same_value,
    show_value,
)
from model_registry.registry import Champion, champion_table, load_champion
from model_registry.transfer import Seed, plan_transfer
from rules.rule import Failure
from rules.ruleset import RuleSet
from targets.base import Target
from targets.spec import KnobSpec
from tuners.space import SearchSpace
from tuners.trials import training_rows

__all__ = ["Recommendation", "recommend", "recommend_task"]

_SOURCE_ORDER = {"current": 0, "sibling": 1, "model": 2}  # equal predictions: the fewest unknowns
#: A sibling's measured config is picked over the champion's unmeasured picks when the champion
#: predicts it within this share of their best: a config that ran is known to run (an unmeasured
#: one may sit where the system hangs or crashes, which no trial taught the model), and the
#: champion's best predictions sit at the top of its training range (clipped), where it cannot tell
#: them apart. benchmarks/recommend.py: the worst pick of 40 went from 0.28 to 0.59 of the optimum.
MEASURED_BAND = 0.2


def _typed(config: Mapping[str, Any], spec: KnobSpec) -> dict[str, Any]:
    """Every knob of ``spec`` from ``config`` in the spec's types (numpy scalars unwrapped)."""
    out = {}
    for knob in spec:
        value = config[knob.name]
        out[knob.name] = knob.coerce(value.item() if isinstance(value, np.generic) else value)
    return out


def _current(current: Mapping[str, Any], spec: KnobSpec) -> dict[str, Any]:
    """The live config checked against the spec: every knob present and valid."""
    missing = [n for n in spec.names if n not in current]
    if missing:
        raise ValueError(f"the current config lacks knob(s) {', '.join(missing)}; read the full "
                         f"effective config back from the system (every knob of {spec.target})")
    typed = _typed(current, spec)
    bad = [f"{n}: {p}" for n, v in typed.items() if (p := spec[n].problem_with(v))]
    if bad:
        raise ValueError("the current config has invalid values: " + "; ".join(bad))
    return typed


def _fingerprint(target_cls: type[Target], observed: Mapping[str, float],
                 champion: Champion | None) -> tuple[dict[str, float], dict[str, float]]:
    """The workload fingerprint to predict for, and the features filled from the champion's
    training workload because the observation lacks them (the model needs every feature)."""
    known = set(target_cls.workload_features(dict(target_cls.workload_defaults)))
    unknown = sorted(set(observed) - known)
    if unknown:
        raise ValueError(f"workload feature(s) {', '.join(unknown)} are not features of target "
                         f"'{target_cls.name}' (known: {', '.join(sorted(known)) or 'none'})")
    fp = {k: float(v) for k, v in observed.items()}
    filled: dict[str, float] = {}
    if champion is not None:  # its registered workload, else any it trained on, else the default
        sources = [champion.workload, *champion.workloads,
                   target_cls.workload_features(dict(target_cls.workload_defaults))]
        for col in champion.features:
            name = col.removeprefix("workload.")
            if col.startswith("workload.") and name not in fp:
                found = next((s[name] for s in sources if name in s), None)
                if found is not None:
                    fp[name] = filled[name] = float(found)
    return dict(sorted(fp.items())), filled


def _siblings(table: pd.DataFrame, service: str, objective: str, tracking_uri: str,
              champion: Champion | None, fp: Mapping[str, float]) -> pd.DataFrame:
    """The service's clean trials of ``objective`` (the champion's stored table when ``table``
    has none: siblings tuned elsewhere); workload columns the fingerprint lacks are left out, so
    the distance is taken over what was observed."""
    def ours(rows: pd.DataFrame) -> pd.DataFrame:
        if rows.empty or "status" not in rows:
            return rows.iloc[0:0]
        rows = training_rows(rows)
        keep = (rows["objective"] == objective) & (rows["service"].isna()
                                                   | (rows["service"] == service))
        return rows[keep].reset_index(drop=True)

    rows = ours(table)
    if rows.empty and champion is not None:
        rows = ours(champion_table(tracking_uri, service, objective))
    unseen = [c for c in rows.columns if c.startswith("workload.")
              and c.removeprefix("workload.") not in fp]
    return rows.drop(columns=unseen)


def _row_params(row: Mapping[str, Any], space: SearchSpace) -> dict[str, Any] | None:
    return space.project({k.removeprefix("knob."): v for k, v in row.items()
                          if k.startswith("knob.")})


def _sibling_blocked(siblings: pd.DataFrame, space: SearchSpace, current: Mapping[str, Any],
                     rules: RuleSet) -> tuple[int, int]:
    """How many measured sibling configs are candidates here (the space can express them), and
    how many of those the rules block (set on top of the current config)."""
    configs = [{**current, **p} for row in siblings.to_dict(orient="records")
               if (p := _row_params(row, space)) is not None]
    if not configs:
        return 0, 0
    return len(configs), int(rules.check_frame(pd.DataFrame(configs))["blocked"].sum())


@dataclass
class _Candidate:
    config: dict[str, Any]
    source: str
    seed: Seed | None = None
    n_changes: int = 0
    predicted: float = math.nan
    preferred_over: float | None = None  # the model's best prediction this measured one beat


def _candidates(seeds: Sequence[Seed], current: dict[str, Any], space: SearchSpace,
                rules: RuleSet) -> tuple[list[_Candidate], int, list[Failure]]:
    """The current config and the seeds on top of it, without the blocked ones; how many were
    blocked (not counting sibling seeds: ``_sibling_blocked`` counts every sibling config), and
    the rules the current config breaks."""
    spec = space.spec
    cands = [_Candidate(dict(current), "current")] + [
        _Candidate(_typed({**current, **s.params}, spec), s.source, s) for s in seeds]
    blocked = rules.check_frame(pd.DataFrame([c.config for c in cands]))["blocked"].to_numpy()
    current_errors = rules.check(current).errors if blocked[0] else []
    kept = [c for c, b in zip(cands, blocked, strict=True) if not b]
    for c in kept:
        c.n_changes = len(config_diff(current, c.config))
    n_blocked = sum(bool(b) for c, b in zip(cands, blocked, strict=True) if c.source != "sibling")
    return kept, n_blocked, current_errors


def _scorer(champion: Champion | None, spec: KnobSpec,
            fp: Mapping[str, float]) -> Callable[[Sequence[Mapping[str, Any]]], np.ndarray] | None:
    if champion is None:
        return None
    return lambda configs: np.asarray(champion.predict(
        feature_frame(pd.DataFrame(list(configs)), spec, dict(fp))), dtype=float)


def _better(a: float, b: float, maximize: bool) -> bool:
    return a > b if maximize else a < b


def _gain(pick: float | None, now: float | None, maximize: bool) -> float | None:
    if pick is None or now is None:
        return None
    num, den = (pick, now) if maximize else (now, pick)
    return float(num / den) if den > 0 and num >= 0 else None


def _limit(pick: dict[str, Any], current: dict[str, Any], max_knobs: int, rules: RuleSet,
           score: Callable[[Sequence[Mapping[str, Any]]], np.ndarray] | None,
           maximize: bool) -> dict[str, Any]:
    """At most ``max_knobs`` of the pick's changes on top of ``current``: greedily the one the
    champion predicts best each step (only while it predicts an improvement); without a model,
    the first ones in the knob spec's order. Every step's config passes the rules."""
    config, left = dict(current), list(config_diff(current, pick))
    base = float(score([config])[0]) if score else math.nan
    for _ in range(max_knobs):
        steps = [{**config, k: pick[k]} for k in left]
        allowed = ~rules.check_frame(pd.DataFrame(steps))["blocked"].to_numpy() if steps else []
        steps = [s for s, ok in zip(steps, allowed, strict=True) if ok]
        if not steps:
            break
        if score is None:
            config = steps[0]
        else:
            predicted = score(steps)
            best = int(np.argmax(predicted) if maximize else np.argmin(predicted))
            if not _better(float(predicted[best]), base, maximize):
                break
            config, base = steps[best], float(predicted[best])
        left = [k for k in left if same_value(config[k], current[k])]
    return config


def _trials(seed: Seed | None, siblings: pd.DataFrame, space: SearchSpace) -> list[dict[str, Any]]:
    """The sibling trials a sibling seed is the measured config of."""
    if seed is None or seed.source != "sibling" or siblings.empty:
        return []
    rows = siblings[siblings["instance"].astype(str) == str(seed.instance)]
    return [{"instance": str(seed.instance), "study": str(r["study"]), "trial": str(r["trial"]),
             "value": float(r["value"])}
            for r in rows.to_dict(orient="records") if _row_params(r, space) == seed.params]


def _direction(target_cls: type[Target], objective: str) -> str:
    try:
        return target_cls.direction(objective)
    except KeyError:
        raise ValueError(f"objective '{objective}' is not a metric of target '{target_cls.name}' "
                         f"(metrics: {', '.join(sorted(target_cls.metrics))})") from None


def _usable(champion: Champion | None, spec: KnobSpec, notes: list[str]) -> Champion | None:
    """The champion, unless it takes knobs the spec no longer has (then None, and a note)."""
    if champion is None:
        return None
    lost = [c for c in champion.features if c.startswith("knob.")
            and c.removeprefix("knob.") not in spec]
    if not lost:
        return champion
    notes.append(f"champion {champion.name} v{champion.version} takes knobs the knob spec lacks "
                 f"({', '.join(lost)}): not used; retrain it (knobflow train)")
    return None


def _choose(cands: list[_Candidate], score: Callable[..., np.ndarray] | None,
            maximize: bool) -> _Candidate | None:
    """The best predicted candidate (equal predictions: the current config, then measured before
    modelled), or the best measured config within ``MEASURED_BAND`` of a modelled best;
    without a model, the first sibling config (the closest workload's best)."""
    if score is None:
        return next((c for c in cands if c.source == "sibling"), None)
    if not cands:
        return None
    for c, p in zip(cands, score([c.config for c in cands]), strict=True):
        c.predicted = float(p)
    order = {id(c): i for i, c in enumerate(cands)}

    def rank(c: _Candidate) -> tuple[float, int, int]:
        return (-c.predicted if maximize else c.predicted, _SOURCE_ORDER[c.source], order[id(c)])

    best = min(cands, key=rank)
    floor = best.predicted * (1 - MEASURED_BAND if maximize else 1 + MEASURED_BAND)
    now = cands[0].predicted if cands[0].source == "current" else None
    measured = [c for c in cands if c.source == "sibling" and c.seed is not None
                and not _better(floor, c.predicted, maximize)
                and (now is None or _better(c.predicted, now, maximize))]
    if best.source != "model" or not measured:
        return best
    pick = min(measured, key=rank)
    pick.preferred_over = best.predicted
    return pick


def _why(pick: _Candidate, n_allowed: int, champion: Champion | None, service: str,
         objective: str) -> str:
    seed = pick.seed
    measured = ""
    if seed is not None and seed.source == "sibling":
        measured = (f"measured {show_value(seed.measured)} on sibling {seed.instance} "
                    f"(workload distance {show_value(seed.workload_distance)})")
    if champion is None:
        return (f"no champion model for {service}'s {objective}: the best config {measured}, "
                "the closest workload's; its gain is not predicted")
    ranked = f"the best the champion predicts of the {n_allowed} candidates the rules allow"
    if pick.source == "current":
        return f"the current config is {ranked}"
    if pick.preferred_over is not None:
        return (f"{measured}: a config that ran beats a prediction, and the champion "
                f"predicts it within {MEASURED_BAND:.0%} of its best unmeasured pick "
                f"({show_value(pick.preferred_over)}) among the {n_allowed} candidates the rules "
                "allow")
    return ranked + (f"; {measured}" if measured else "")


def _provenance(champion: Champion | None, pick: _Candidate | None, from_instances: list[str],
                siblings: pd.DataFrame, space: SearchSpace, counts: tuple[int, int]) -> dict:
    seed = pick.seed if pick else None
    if seed is not None and seed.source == "sibling":
        instances = [str(seed.instance)]
    else:
        instances = list(from_instances) if seed is not None else []
    return {
        "model_name": champion.name if champion else None,
        "model_version": str(champion.version) if champion else None,
        "model_run_id": (champion.run_id or None) if champion else None,
        "trials": _trials(seed, siblings, space), "instances": instances,
        "n_candidates": counts[0], "n_blocked": counts[1],
    }


def recommend(
    *, target_cls: type[Target], service: str, objective: str, current: Mapping[str, Any],
    fingerprint: Mapping[str, float], table: pd.DataFrame, tracking_uri: str,
    space: SearchSpace, rules: RuleSet, instance: str = "", max_knobs: int | None = None,
    seed: int = 0, rule_files: Sequence[str] = (),
) -> Recommendation:
    """The config ``instance`` (running ``current``, serving a workload with ``fingerprint``)
    should run for ``objective``: see the module's docstring. ``table``: the service's trial table
    (all instances); ``rule_files``: the operator's rule files behind ``rules`` (to say which
    policies the pick gives up). Bad input (a knob missing from ``current``, a feature the target
    does not have, an objective it does not measure) is a ValueError saying so."""
    if max_knobs is not None and max_knobs < 1:
        raise ValueError(f"max_knobs must be at least 1, got {max_knobs}")
    direction, notes = _direction(target_cls, objective), []
    now = _current(current, space.spec)
    champion = _usable(load_champion(tracking_uri, service, objective), space.spec, notes)
    fp, filled = _fingerprint(target_cls, fingerprint, champion)
    siblings = _siblings(table, service, objective, tracking_uri, champion, fp)
    rec = Recommendation(service=service, objective=objective, direction=direction,
                         decision=NOTHING, config=now, instance=instance, filled_features=filled)
    if siblings.empty and champion is None:
        rec.reason = (f"no champion model for {service}'s {objective} and no instance of "
                      f"{service} has measured trials of it; tune a test instance first")
        rec.provenance = _provenance(None, None, [], siblings, space, (1, 0))
        rec.warnings = notes
        return rec
    plan = plan_transfer(space=space, rules=rules, siblings=siblings, workload_fp=fp,
                         limits=target_cls.workload_limits, direction=direction,
                         champion=champion, seed=seed)
    cands, blocked, current_errors = _candidates(plan.seeds, now, space, rules)
    n_sib, sib_blocked = _sibling_blocked(siblings, space, now, rules)
    counts = (plan.n_candidates + n_sib + 1, plan.n_blocked + sib_blocked + blocked)
    score = _scorer(champion, space.spec, fp)
    pick = _choose(cands, score, direction == "maximize")
    rec.provenance = _provenance(champion, pick, plan.from_instances, siblings, space, counts)
    if pick is None:
        rec.reason = ("every candidate was blocked by the rules or is outside the search space"
                      + (f" ({plan.reason})" if plan.reason else ""))
        rec.warnings = notes + rule_warnings(target_cls, rules, rule_files, now, current_errors)
        return rec
    rec.reason = _why(pick, counts[0] - counts[1], champion, service, objective)
    _settle(rec, pick, now, max_knobs, rules, score)
    rec.warnings = notes + rule_warnings(target_cls, rules, rule_files, rec.config, current_errors)
    return rec


def _settle(rec: Recommendation, pick: _Candidate, now: dict[str, Any], max_knobs: int | None,
            rules: RuleSet, score: Callable[..., np.ndarray] | None) -> None:
    """Fill ``rec`` from the pick: the changes (at most ``max_knobs``, the rest deferred), the
    predictions and gain, and whether it is a change or a keep."""
    maximize = rec.direction == "maximize"
    config = pick.config
    if max_knobs is not None and pick.n_changes > max_knobs:
        config = _limit(pick.config, now, max_knobs, rules, score, maximize)
        rec.deferred_changes = config_diff(config, pick.config)
        rec.reason += (f"; at most {max_knobs} knob(s) per actuation: "
                       + ("the changes the champion predicts to matter most" if score else
                          "no model to rank the changes, the first in the knob spec's order"))
    rec.config, rec.changes = config, config_diff(now, config)
    if score is not None:
        rec.predicted_current, rec.predicted = (float(v) for v in score([now, config]))
        rec.predicted_gain = _gain(rec.predicted, rec.predicted_current, maximize)
    if rec.changes:
        rec.decision, rec.source = CHANGE, pick.source
        return
    rec.decision, rec.source = KEEP, "current"
    if pick.source != "current" and not rec.deferred_changes:
        rec.reason += "; it is the current config already"
    elif rec.deferred_changes:
        rec.reason += (f"; no {max_knobs}-knob part of the pick both passes the rules and is "
                       "predicted to improve on the current config")


#: ``recommend`` as a step of a Prefect flow (``flows/recommend.py``); the flow logs its lines.
recommend_task = task(recommend, name="recommend", cache_policy=NO_CACHE)
