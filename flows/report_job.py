"""The report page of a tuning job (``knobflow report JOB``): its summary, the search's history,
knob importance, and the service model's predictions against the trials' measurements.

What it reads: the job's record and ``result.json`` (the summary ``knobflow tune`` wrote), its
Optuna study in the home's journal, and the service's model from the MLflow registry: the version
this job trained (``result.json``'s ``model``), else the service's champion. The model's own
feature importance ranks the knobs; without a model it is Optuna's (PED-ANOVA, fANOVA where that
fails) on the job's clean trials, and the page says which. Predicted against measured needs a
model: without one the page says why it is not drawn.
"""

from __future__ import annotations

import json
import warnings
from typing import Any

import optuna

from flows.job import Job
from flows.plots import history_figure, importance_figure, png, predicted_figure
from flows.report_html import Page
from flows.trials import job_rows
from model_registry.features import feature_frame, workload_columns
from model_registry.registry import Champion, holdout_scores, load_champion, load_version
from targets.common.settings import tracking_uri
from tasks.models import feature_importance, training_set
from tasks.verify import Verification
from tuners.study import open_study
from tuners.trials import is_prior, ranked_trials

__all__ = ["job_page", "optuna_importance", "service_model"]

#: Fewer clean trials than this and Optuna's importance says nothing.
MIN_IMPORTANCE_TRIALS = 4
#: What a model kind's importance measures (``tasks.models.feature_importance``).
_MEASURES = {"lightgbm": "LightGBM's total gain of the splits on each knob",
             "sklearn": "the random forest's mean impurity decrease of each knob"}


def job_page(job: Job) -> str:
    """The job's report page as HTML."""
    result = _result(job)
    study, why_no_study = _study(job)
    page = Page(f"knobflow report: job {job.study_name}")
    page.text(f"A tuning job of target {job.target} on instance {job.instance} of service "
              f"{job.service}: {job.direction} {job.objective} with {job.tuner}.")
    page.heading("Summary")
    page.facts(_summary(job, result), table_id="summary")
    page.heading("Optimisation history")
    if study is None:
        page.not_drawn("history", "Optimisation history", why_no_study)
    else:
        _history(page, job, study, result)
    model, which = service_model(job, result)
    page.heading("Knob importance")
    _importance(page, job, study, model, which, why_no_study)
    page.heading("Predicted against measured")
    if model is None:
        page.not_drawn("predicted", "Predicted against measured", f"No model: {which}.")
    elif study is None:
        page.not_drawn("predicted", "Predicted against measured", why_no_study)
    else:
        _predicted(page, job, study, model, which)
    if result.get("best_config"):
        page.heading("Best config")
        defaults = result.get("default_config") or {}
        page.table(["knob", "best", "default"],
                    [(k, v, defaults.get(k)) for k, v in result["best_config"].items()],
                    table_id="best-config")
    return page.html()


def _result(job: Job) -> dict[str, Any]:
    """The job's ``result.json`` ({} before the job ended, or when it cannot be read)."""
    try:
        data = json.loads((job.dir / "result.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _study(job: Job) -> tuple[optuna.Study | None, str]:
    try:
        return open_study(job.home, job.study_name, job.direction,
                          optuna.samplers.RandomSampler(), create=False), ""
    except KeyError:
        return None, f"the job's Optuna study {job.study_name} is not in {job.home}"


def _num(value: Any) -> str:
    return "-" if value is None else f"{value:,.4g}" if isinstance(value, float) else str(value)


def _summary(job: Job, result: dict[str, Any]) -> dict[str, Any]:
    """The rows of the summary table: what the job was and what it found."""
    facts: dict[str, Any] = {
        "job": job.study_name, "target": job.target, "service": job.service,
        "instance": job.instance, "status": job.status.value,
        "workload": ", ".join(f"{k}={v}" for k, v in sorted(job.workload.items())) or "-",
        "objective": f"{job.objective} ({job.direction})", "tuner": job.tuner,
    }
    if not result:
        facts["result"] = (f"none yet: the job is {job.status.value} (knobflow tune "
                           f"{job.target} --resume continues it)")
        return {**facts, "MLflow run": job.mlflow_run_id or "-"}
    runs = result.get("verify_repeats") or 0
    facts["trials"] = (f"{result.get('n_trials')} ({result.get('n_failed', 0)} failed; "
                       f"{result.get('n_blocked', 0)} candidates blocked by rules, never run"
                       + (f"; pruned {result['n_pruned']}, saved "
                          f"{result.get('pruned_saved_s', 0):.1f} s of trial time"
                          if result.get("n_pruned") else "") + ")")
    searched = (f"trial {result['best_trial']}: {_num(result.get('best_observed_value'))} in "
                "the search" if result.get("best_trial") is not None else "no trial completed")
    facts["best"] = (f"{_num(result.get('best_value'))} (verified mean of {runs} runs); "
                     f"{searched}" if runs else f"{searched} (not verified)")
    facts["default"] = (f"{_num(result.get('default_value'))} (verified mean of {runs} runs)"
                        if runs else "-")
    gain = result.get("gain")
    facts["verified gain"] = (f"{gain:.3f}x (95% interval {result['gain_low']:.3f}-"
                              f"{result['gain_high']:.3f})" if gain is not None
                              else "not verified")
    facts["verdict"] = result.get("verdict") or "-"
    model = result.get("model") or {}
    facts["model"] = model.get("line") or model.get("skipped") or model.get("error") or (
        "not trained: turned off" if not job.train else "-")
    return {**facts, "MLflow run": job.mlflow_run_id or "-",
            "duration": f"{result.get('duration_s', 0):.0f} s", "started": job.created}


def _verification(result: dict[str, Any]) -> Verification | None:
    if not result.get("verify_best_values"):
        return None
    return Verification(default_values=list(result.get("verify_default_values") or []),
                        best_values=list(result["verify_best_values"]),
                        gain=result.get("gain"), gain_low=result.get("gain_low"),
                        gain_high=result.get("gain_high"))


def _history(page: Page, job: Job, study: optuna.Study, result: dict[str, Any]) -> None:
    verification = _verification(result)
    fig = history_figure(job, study, verification, no_gain=bool(result.get("best_is_default")))
    if fig is None:
        page.not_drawn("history", "Optimisation history", "No trial of the job finished.")
        return
    verified = (f" The dashed lines are the verification's means of the default and the best "
                f"config, re-measured interleaved {len(verification.best_values)} times each."
                if verification else " Nothing was verified: " + (result.get("verdict")
                                                                  or "the job has no result."))
    page.figure("history", png(fig), f"Each trial's {job.objective} (points; failed trials as "
                f"crosses at the bottom) and the best so far (the step line).{verified}")


def service_model(job: Job, result: dict[str, Any]) -> tuple[Champion | None, str]:
    """The service's model to report with, and which it is: the version this job trained, else
    the service's champion; or None and why there is none."""
    uri, trained = tracking_uri(job.home), result.get("model") or {}
    why = ""
    if trained.get("name") and trained.get("version"):
        try:
            model = load_version(uri, trained["name"], trained["version"])
            return model, f"{model.name} v{model.version}, trained at the end of this job"
        except Exception as exc:  # deleted from the registry, a store that moved
            why = f"the model this job trained cannot be loaded ({type(exc).__name__}: {exc}); "
    try:
        champion = load_champion(uri, job.service, job.objective)
    except Exception as exc:
        return None, f"{why}the champion cannot be loaded ({type(exc).__name__}: {exc})"
    if champion is not None:
        return champion, f"{champion.name} v{champion.version}, the service's champion"
    skipped = trained.get("skipped") or trained.get("error") or (
        "training was turned off" if not job.train else "")
    return None, (why or (f"this job trained none ({skipped}) and " if skipped else "")
                  + f"service {job.service} has no champion of {job.objective}")


def optuna_importance(study: optuna.Study) -> tuple[dict[str, float], str, int] | str:
    """Optuna's importance of each knob on the study's clean trials (a sibling's priors left
    out): the importances, the evaluator used (PED-ANOVA, else fANOVA) and the trials; or why
    there is none."""
    from optuna.importance import (
        FanovaImportanceEvaluator,
        PedAnovaImportanceEvaluator,
        get_param_importances,
    )

    own = [t for t in ranked_trials(study) if not is_prior(t)]
    if len(own) < MIN_IMPORTANCE_TRIALS:
        return f"{len(own)} clean trials; Optuna's importance needs {MIN_IMPORTANCE_TRIALS}"
    copy = optuna.create_study(direction=study.direction)
    copy.add_trials(own)
    failures = []
    for evaluator, label in ((PedAnovaImportanceEvaluator(), "PED-ANOVA"),
                             (FanovaImportanceEvaluator(seed=0), "fANOVA")):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                found = get_param_importances(copy, evaluator=evaluator)
            return {k: float(v) for k, v in found.items()}, label, len(own)
        except (RuntimeError, ValueError) as exc:
            failures.append(f"{label}: {exc}")
    return "Optuna's importance failed: " + "; ".join(failures)


def _importance(page: Page, job: Job, study: optuna.Study | None, model: Champion | None,
                which: str, why_no_study: str) -> None:
    title = "Knob importance"
    if model is not None:
        found = feature_importance(model.model)
        knobs = {k.removeprefix("knob."): v for k, v in found.items() if k.startswith("knob.")}
        page.figure("importance", png(importance_figure(knobs, f"{title}: {model.name} v"
                                                              f"{model.version}")),
                    f"From the service's model ({which}): "
                    f"{_MEASURES.get(model.tags.get('model_kind', ''), 'its importance')}, each "
                    "knob's share of the knobs' importance (workload features left out).")
        return
    if study is None:
        page.not_drawn("importance", title, why_no_study)
        return
    found = optuna_importance(study)
    if isinstance(found, str):
        page.not_drawn("importance", title, f"No model ({which}), and {found}.")
        return
    importance, evaluator, n = found
    page.figure("importance", png(importance_figure(importance, f"{title}: Optuna, {evaluator}")),
                f"No model ({which}), so Optuna's importance with its {evaluator} evaluator on "
                f"the job's {n} clean trials, each knob's share.")


def _predicted(page: Page, job: Job, study: optuna.Study, model: Champion, which: str) -> None:
    title = "Predicted against measured"
    rows, measured, column = training_set(job_rows(job, study), job.objective)
    if len(rows) < 2:
        page.not_drawn("predicted", title, f"{len(rows)} clean trials with a measured "
                       f"{job.objective}; a comparison needs 2.")
        return
    try:
        predicted = model.predict(feature_frame(rows, job.target_cls.knob_spec(),
                                                workload_columns(rows)))
    except (KeyError, ValueError) as exc:
        page.not_drawn("predicted", title, f"The model ({which}) cannot take this job's "
                       f"trials: {exc}")
        return
    rho, _ = holdout_scores(measured, predicted)
    held = model.tags.get("holdout_spearman")
    fig = predicted_figure(list(measured), list(predicted), job.objective,
                           f"{model.name} v{model.version} on {len(rows)} trials: rank "
                           f"correlation {rho:.2f}", [str(t) for t in rows["trial"]])
    page.figure("predicted", png(fig), (
        f"The model ({which}) predicts each clean trial of this job (labelled by number) from "
        f"its config and workload; measured is "
        + (f"the trial's measured {job.objective}" if column != "value" else "the value the "
           "tuner was told") + f". Spearman rank correlation "
        f"{rho:.3f} on {len(rows)} trials. The model was trained on the service's trials, most "
        "of these among them, so this shows its fit"
        + (f"; on trials it had not seen its rank correlation was {float(held):.3f}."
           if held else ".")))
