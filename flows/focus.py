"""Important knobs first, as a step of the tune flow (``--knobs auto --top-knobs K``).

``knob_focus`` picks the knobs once per job from the service's champion model
(``model_registry/importance.py``: each knob's predicted effect alone from the default config,
its recorded importance breaking ties) and keeps them in job.json; the trial manager asks for them
only until the focus widens (``tuners/focus.py``). Without a model (or with ``--workers``) every
knob is tuned and the log, the summary and the MLflow run say why. ``focus_params`` and
``focus_record`` are what the job's MLflow run and summary keep: the knobs tuned first, the model
that ranked them, and at which trial and why the search widened to all knobs.
"""

from __future__ import annotations

import logging
from typing import Any

import optuna

from flows.job import Job
from model_registry import fingerprint
from model_registry.importance import KnobImportance, champion_importance, effect_from
from targets.common.settings import tracking_uri
from tasks.track import JobTracker
from tuners.focus import KnobFocus, top_knobs
from tuners.space import SearchSpace

__all__ = ["focus_params", "focus_record", "knob_focus"]


def knob_focus(job: Job, space: SearchSpace,
                logger: logging.Logger | logging.LoggerAdapter[Any]) -> KnobFocus | None:
    """``--knobs auto``: the knobs the service's champion model ranks most important, tuned
    first (chosen once and kept in job.json, so ``--resume`` keeps them); None, with the reason
    in the log and the record, when every knob is tuned from the start."""
    if not job.top_knobs:
        return None
    if job.focus is None:
        job.focus = _choose_focus(job, space)
        job.save()
    if not job.focus.get("top"):
        logger.info("--knobs auto: tuning all knobs: %s", job.focus["why"])
        return None
    focus = KnobFocus.for_budget(job.focus["top"], job.budget)
    logger.info("--knobs auto: tuning %s first (the %d most important of %d knobs by %s); the "
                "others keep their values in the best config so far until trial %d, or until "
                "%d finished trials bring no new best", ", ".join(focus.top), len(focus.top),
                len(space.names), job.focus["model"], focus.widen_after, focus.patience)
    return focus


def _choose_focus(job: Job, space: SearchSpace) -> dict[str, Any]:
    """The knobs to tune first and who ranked them, or (``top`` empty) why all knobs at once."""
    if job.workers:
        return {"top": [], "why": "with --workers every worker tunes all knobs"}
    try:
        ranked = champion_importance(tracking_uri(job.home), job.service, job.objective)
    except Exception as exc:  # the search goes on without it: it is a shortcut, not a need
        return {"top": [], "why": "the service model's importance could not be read: "
                f"{type(exc).__name__}: {exc}"}
    if ranked is None:
        return {"top": [], "why": f"service {job.service} has no trained model of "
                f"{job.objective} yet (a job without --no-train trains one)"}
    if job.top_knobs >= len(space.names):
        return {"top": [], "why": f"--top-knobs {job.top_knobs} covers all "
                f"{len(space.names)} knobs", **ranked.to_dict()}
    effect = _effect(job, space, ranked)
    if not effect:  # the champion itself could not be asked: its recorded importance ranks
        return {"top": top_knobs(ranked.knobs, space, job.top_knobs), "why": "",
                "ranked_by": "importance", **ranked.to_dict()}
    return {"top": top_knobs(effect, space, job.top_knobs, ties=ranked.knobs), "why": "",
            "ranked_by": "effect from the default", **ranked.to_dict(),
            "effect_from_default": {k: round(v, 6) for k, v in effect.items()}}


def _effect(job: Job, space: SearchSpace, ranked: KnobImportance) -> dict[str, float]:
    """Each knob's effect alone from the default config, by the champion ({}: not loadable,
    or it takes other inputs than this job's knobs and workload)."""
    if ranked.champion is None:
        return {}
    try:
        return effect_from(ranked.champion, space, job.target_cls.knob_spec().defaults(),
                           fingerprint.features(job.target_cls, job.workload),
                           maximize=job.direction == "maximize")
    except (KeyError, ValueError):
        return {}


def focus_params(job: Job) -> dict[str, Any]:
    """The MLflow params of ``--knobs auto``: the knobs tuned first and who ranked them."""
    focus = job.focus or {}
    return {"knobs.auto_top": job.top_knobs, "knobs.first": ",".join(focus.get("top", [])) or
            "all", "knobs.ranked_by": (focus.get("model") or focus.get("why", ""))[:500]}


def focus_record(job: Job, study: optuna.Study, focus: KnobFocus | None, tracker: JobTracker,
                  logger: logging.Logger | logging.LoggerAdapter[Any]) -> dict[str, Any] | None:
    """What ``--knobs auto`` did (for the summary); the knobs tuned first and when the search
    widened, on the job's MLflow run (params and tags: a resumed job logs the same params)."""
    if not job.top_knobs:
        return None
    record = {**(job.focus or {}), **(focus.record(study) if focus is not None else {})}
    tags = {}
    if focus is not None:
        at, why = record["widened_at_trial"], record["widened_why"]
        if at is not None:
            logger.info("--knobs auto: widened to all knobs from trial %d (%s)", at, why)
        tags = {"knobflow.knobs.widened_at": "never" if at is None else str(at),
                "knobflow.knobs.widened_why": why or "the job ended first"}
    tracker.annotate(params=focus_params(job), tags=tags)
    return record

