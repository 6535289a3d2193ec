"""Human approval of an actuation: the apply flow pauses before it changes an instance of a service
that asks for it (``approval: required``, ``tasks.services``) until an operator answers.

In the flow (``flows.apply``): ``approval_gate`` says whether the service asks (and refuses at once
when there is no Prefect server another process can reach: Prefect's temporary server dies with
the command); ``approval_plan`` gathers what the operator decides on (the instance, the diff, the
rules' verdict, the predicted gain, the rollout of a canary); ``ask_approval`` pauses the flow run
(``prefect.flow_runs.pause_flow_run`` with ``wait_for_input=Approval``: the process waits, holding
no instance lock) with the plan as the form's text; ``settle`` re-opens the instance: a rejection
(or no answer within the service's ``approval_timeout_s``) is recorded in the actuation log as
``rejected`` and nothing is changed; an instance whose config changed while the run waited is
refused; an approval goes on to the actuation, the answer kept in its provenance.

From a shell (``knobflow approve | reject | approvals``): ``answer_run`` resumes a paused apply run
with the answer as its input; ``pending_approvals`` lists the runs that wait.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from uuid import UUID

from prefect.input import RunInput

from targets.common.errors import KnobflowError
from tasks.services import ServiceSettings, service_settings

if TYPE_CHECKING:  # the rest is imported where used: `knobflow apply` checks for a server first
    from tasks.actuate import Actuation

__all__ = [
    "PLAN_KEY", "Approval", "answer_run", "approval_form", "approval_gate", "approval_plan",
    "ask_approval", "diff_text", "pending_approvals", "require_server", "settle",
]

#: Seconds between two looks of a paused run at its state (how soon an answer is taken up).
POLL_S = 2
#: The flow run input that holds the plan (for ``knobflow approve`` and ``approvals``).
PLAN_KEY = "knobflow-approval-plan"
_CHANGED = "the instance changed while waiting for approval; run apply again"


class Approval(RunInput):
    """The operator's answer to a paused apply run."""

    approve: bool
    reason: str = ""
    by: str = ""


def require_server(what: str) -> str:
    """The Prefect API's URL; a KnobflowError when only Prefect's temporary server would run
    (``PREFECT_API_URL`` unset): a paused run there could never be answered."""
    from flows.temporary_api import configured_api

    url = configured_api()
    if not url:
        raise KnobflowError(f"{what} needs a Prefect server; start one with `knobflow serve` "
                            "or set PREFECT_API_URL (and PREFECT_API_AUTH_STRING) to yours")
    return str(url)


def approval_gate(home: Any, service: str, dry_run: bool) -> ServiceSettings | None:
    """The service's settings when an apply must wait for approval (None: it need not)."""
    settings = service_settings(home, service)
    if dry_run or settings.approval != "required":
        return None
    require_server(f"service {service} requires approval (approval: required): apply")
    return settings


def approval_plan(act: Actuation, preview: Mapping[str, Any], provenance: Mapping[str, Any],
                  settings: ServiceSettings, rollout: Sequence[str]) -> dict[str, Any]:
    """What the operator decides on: the instance, its config now, the diff, the rules'
    verdict, the predicted gain (a recommendation's), the instances of a canary's rollout."""
    rec = provenance.get("recommendation") or {}
    predicted = None
    if rec.get("predicted_gain") is not None:
        predicted = {k: rec.get(k) for k in ("objective", "direction", "predicted",
                                             "predicted_current", "predicted_gain", "source")}
        prov = rec.get("provenance") or {}
        predicted["model"] = (f"{prov['model_name']} v{prov.get('model_version')}"
                              if prov.get("model_name") else "")
    return {"instance": act.instance.name, "service": act.instance.service,
            "target": act.instance.target, "source": preview["source"],
            "current": act.live.read_config(), "diff": dict(preview["diff"]),
            "warnings": list(preview.get("warnings") or []), "predicted": predicted,
            "rollout": list(rollout), "timeout_s": settings.approval_timeout_s}


def _cell(value: Any) -> str:
    from model_registry.recommendation import show_value

    return show_value(value).replace("|", "\\|")


def approval_form(plan: Mapping[str, Any]) -> str:
    """The plan as the markdown the approval form shows."""
    lines = [f"### Apply to {plan['instance']}?", "",
             f"Instance **{plan['instance']}** (service {plan['service']}, target "
             f"{plan['target']}); the config is from {plan['source']}.", "",
             "| knob | now | to |", "| --- | --- | --- |"]
    lines += [f"| {k} | {_cell(d['from'])} | {_cell(d['to'])} |" for k, d in plan["diff"].items()]
    warnings = plan.get("warnings") or []
    lines += ["", "**Rules:** no rule blocks the resulting config, and the policy's limit on "
              "knobs per actuation holds" + ("." if not warnings else "; warnings:")]
    lines += [f"- {w}" for w in warnings]
    lines += ["", f"**Predicted gain:** {_gain(plan.get('predicted'))}"]
    if len(plan.get("rollout") or []) > 1:
        lines += ["", f"**Canary:** this one approval covers the whole rollout of service "
                  f"{plan['service']}: {', '.join(plan['rollout'])}, one after another, each only "
                  "after the one before kept the config (the diff above is the first's)."]
    lines += ["", "After the change the instance is observed and the change kept or rolled back, "
              "as without approval. Turn *approve* on to apply; leave it off to reject (say why "
              f"in *reason*). Unanswered within {plan['timeout_s']} s, the change is rejected. "
              "From a shell: `knobflow approve RUN` or `knobflow reject RUN --reason TEXT`."]
    return "\n".join(lines)


def _gain(predicted: Mapping[str, Any] | None) -> str:
    from model_registry.recommendation import show_value

    if not predicted:
        return "none (the config is not a model's recommendation)"
    model = f": {predicted['model']}" if predicted.get("model") else ""
    return (f"{predicted['objective']} {show_value(predicted['predicted'])} against "
            f"{show_value(predicted['predicted_current'])} now "
            f"({predicted['predicted_gain']:.3f}x, {predicted['direction']}; "
            f"from {predicted.get('source')}{model})")


def ask_approval(plan: Mapping[str, Any], say: Any) -> dict[str, Any]:
    """Pause this flow run until the operator answers (or the plan's timeout passes: a
    rejection); the answer: approve, reason, by, at."""
    from prefect.client.orchestration import get_client
    from prefect.context import FlowRunContext
    from prefect.exceptions import FlowPauseTimeout
    from prefect.flow_runs import pause_flow_run
    from prefect.states import Running

    run = FlowRunContext.get()
    if run is None or run.flow_run is None:
        raise KnobflowError("approval is asked from within the apply flow only")
    run_id = run.flow_run.id
    with get_client(sync_client=True) as client:
        client.create_flow_run_input(run_id, key=PLAN_KEY, value=json.dumps(plan, default=str))
    say(f"waiting for approval: `knobflow approve {run_id}` or `knobflow reject {run_id} "
        f"--reason TEXT`, or the form of flow run {run.flow_run.name} in the Prefect UI; "
        f"rejected when unanswered within {plan['timeout_s']} s")
    form = Approval.with_initial_data(description=approval_form(plan), approve=False)
    try:
        answer = pause_flow_run(wait_for_input=form, timeout=int(plan["timeout_s"]),
                                poll_interval=POLL_S, key="approval")
    except FlowPauseTimeout:
        with get_client(sync_client=True) as client:  # the run goes on, to end as rejected
            client.set_flow_run_state(run_id, Running(message="approval timed out"), force=True)
        return {"approve": False, "by": "the approval timeout", "at": _now(),
                "reason": f"nobody answered within {plan['timeout_s']} s"}
    return {"approve": bool(answer.approve), "reason": answer.reason.strip(),
            "by": answer.by.strip() or "an operator (Prefect UI)", "at": _now()}


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def settle(act: Actuation, plan: Mapping[str, Any], answer: Mapping[str, Any],
           provenance: Mapping[str, Any]) -> dict[str, Any] | None:
    """After the answer, on the re-opened instance: the result of a rejection (recorded in the
    actuation log) or of a config changed meanwhile (refused); None when the change may go on."""
    from model_registry.recommendation import same_value
    from tasks.actlog import Outcome, Phase
    from tasks.actuate import finish

    result = {"instance": act.instance.name, "source": plan["source"], "diff": plan["diff"],
              "warnings": plan["warnings"], "approval": dict(answer)}
    who = f"by {answer['by']} at {answer['at']}"
    if not answer["approve"]:
        act.before, act.changes = dict(plan["current"]), {k: d["to"]
                                                          for k, d in plan["diff"].items()}
        act.id = act.log.new_id()
        act.record(Phase.BEGIN, before_config=act.before, changes=act.changes,
                   diff=plan["diff"], source=plan["source"],
                   provenance={**provenance, "approval": dict(answer)},
                   policy=act.policy.to_dict(), objective=act.objective,
                   warnings=plan["warnings"], instance=act.instance.name,
                   service=act.instance.service)
        reason = answer["reason"] or "no reason given"
        act.say(f"rejected {who}: {reason}; nothing was changed")
        return {**result, **finish(act, Outcome.REJECTED, f"{who}: {reason}")}
    now = act.live.read_config()
    if any(k not in now or not same_value(now[k], v) for k, v in plan["current"].items()):
        act.say(f"approved {who}, but {_CHANGED}")
        return {**result, "outcome": Outcome.REFUSED.value, "note": _CHANGED,
                "reasons": {"approval": _CHANGED}}
    act.say(f"approved {who}" + (f": {answer['reason']}" if answer["reason"] else ""))
    return None


# -- from a shell: answer a paused run, list the runs that wait --------------------------------
def _client_and_url(what: str) -> tuple[Any, str]:
    from prefect.client.orchestration import get_client
    from prefect.settings import get_current_settings

    from flows.server import api_answers

    url = require_server(what)
    if not api_answers(url, get_current_settings().api.auth_string and
                       get_current_settings().api.auth_string.get_secret_value()):
        raise KnobflowError(f"the Prefect API {url} does not answer; start the server "
                            "(`knobflow serve`) or correct PREFECT_API_URL")
    return get_client(sync_client=True), url


def _find_run(client: Any, run: str, url: str) -> Any:
    """The flow run with id or name ``run``."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName
    from prefect.exceptions import ObjectNotFound

    try:
        return client.read_flow_run(UUID(run))
    except ValueError:  # not an id: a name
        pass
    except ObjectNotFound:
        raise KnobflowError(f"no flow run {run} on the Prefect server {url}; see "
                            "`knobflow approvals`") from None
    runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[run])))
    if not runs:
        raise KnobflowError(f"no flow run named {run!r} on the Prefect server {url}; see "
                            "`knobflow approvals`")
    paused = [r for r in runs if r.state is not None and r.state.is_paused()]
    if len(paused) > 1:
        raise KnobflowError(f"{len(paused)} paused flow runs are named {run!r}; give its id: "
                            + ", ".join(str(r.id) for r in paused))
    return (paused or runs)[0]


def _plan_of(client: Any, flow_run: Any) -> dict[str, Any] | None:
    from prefect.exceptions import ObjectNotFound

    try:
        return dict(json.loads(client.read_flow_run_input(flow_run.id, PLAN_KEY)))
    except (ObjectNotFound, ValueError, TypeError):
        return None


def answer_run(run: str, approve: bool, reason: str, by: str) -> dict[str, Any]:
    """Resume the paused apply run ``run`` (id or name) with the answer; its id, name, plan."""
    from prefect.exceptions import FlowPauseTimeout
    from prefect.flow_runs import resume_flow_run

    verb = "knobflow approve" if approve else "knobflow reject"
    client, url = _client_and_url(verb)
    with client:
        flow_run = _find_run(client, run, url)
        label = f"flow run {flow_run.name} ({flow_run.id})"
        state = flow_run.state.name if flow_run.state is not None else "without a state"
        if flow_run.state is None or not flow_run.state.is_paused():
            raise KnobflowError(f"{label} is not paused (it is {state}): nothing waits for an "
                                "answer; see `knobflow approvals`")
        plan = _plan_of(client, flow_run)
        if plan is None:
            raise KnobflowError(f"{label} is paused, but not by knobflow apply waiting for "
                                "approval; resume it in the Prefect UI")
    try:
        resume_flow_run(flow_run.id, run_input={"approve": approve, "reason": reason, "by": by})
    except FlowPauseTimeout:
        raise KnobflowError(f"{label} waited longer than its approval timeout and can no "
                            "longer be answered") from None
    except RuntimeError as exc:
        raise KnobflowError(f"{label}: {exc}") from None
    return {"id": str(flow_run.id), "name": flow_run.name, "plan": plan}


def pending_approvals() -> list[dict[str, Any]]:
    """The apply runs that wait for approval, oldest first: id, name, since, plan."""
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    client, _ = _client_and_url("knobflow approvals")
    with client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["apply"])),
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(
                type=FlowRunFilterStateType(any_=[StateType.PAUSED]))))
        found = [(r, _plan_of(client, r)) for r in runs]
    rows = [{"id": str(r.id), "name": r.name,
             "since": r.state.timestamp.isoformat(timespec="seconds") if r.state else "",
             "plan": plan} for r, plan in found if plan is not None]
    return sorted(rows, key=lambda row: row["since"])


def diff_text(plan: Mapping[str, Any]) -> str:
    """The plan's diff in one line: ``knob now -> to, ...``."""
    from model_registry.recommendation import show_value

    return ", ".join(f"{k} {show_value(d['from'])} -> {show_value(d['to'])}"
                     for k, d in plan.get("diff", {}).items())

