"""The report page of a live instance (``knobflow report INSTANCE``): its actuations and drift
events on one timeline, with the objective its observation windows measured, and a table of each;
and the instance's report run in MLflow.

Actuations come from the instance's actuation log (``tasks.actlog``: a row per actuation from
``history_table``, the windows from its ``observed_before`` and ``observed_after`` lines). Drift
events come from ``instances/<name>/drift.jsonl``, which the watch appends to: one JSON object a
line with ``time`` (ISO, UTC), ``drifted`` (bool), ``summary``, ``evidence`` (a list of objects
with ``name``, ``kind``, ``drifted``), ``workload``, ``event`` (whether a Prefect event was
emitted), and where the watch gives them ``status`` (``compared``, ``reference``: the check that
recorded the reference, ``invalid``: windows that failed the gate, not compared) and ``note`` (why
no event was emitted). A missing file is no events; a line that cannot be read is skipped, and
the page says so.

The page is logged as ``report.html`` to the run named after the instance in experiment
``knobflow/<target>/actuations`` (tag ``knobflow.report`` = ``instance``), made on first use.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flows.plots import OUTCOME_COLOURS, TimelineEvent, png, timeline_figure
from flows.report_html import REPORT_FILE, Page
from targets.common.files import display_path
from targets.common.settings import tracking_uri
from tasks.actlog import Actuation, ActuationLog, history_table
from tasks.instances import Instance, InstanceStore, redact

__all__ = ["DRIFT_FILE", "DriftEvent", "instance_page", "log_instance_page", "read_drift"]

#: The watch's record of drift checks, in the instance's folder.
DRIFT_FILE = "drift.jsonl"
#: The tag that marks an instance's report run among its actuations' runs.
REPORT_TAG = "knobflow.report"


@dataclass(frozen=True)
class DriftEvent:
    """One drift check of the watch, as ``drift.jsonl`` holds it."""

    time: datetime
    drifted: bool
    summary: str
    evidence: list[dict[str, Any]] = field(default_factory=list)
    event: bool = False
    status: str = "compared"
    note: str = ""

    @property
    def kind(self) -> str:
        """What the check found: "drift", "no drift", or its status when it compared nothing."""
        if self.drifted:
            return "drift"
        return "no drift" if self.status == "compared" else self.status

    @property
    def drifted_evidence(self) -> str:
        """The evidence that found drift, as ``name (kind)``."""
        return ", ".join(f"{e.get('name', '?')} ({e.get('kind', '?')})" for e in self.evidence
                         if isinstance(e, dict) and e.get("drifted")) or "-"


def _when(text: Any) -> datetime:
    """An ISO time as a UTC datetime (one without a zone is taken as UTC)."""
    moment = datetime.fromisoformat(str(text))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def read_drift(path: Path) -> tuple[list[DriftEvent], list[str]]:
    """The drift checks in ``path`` (none if it does not exist) and the lines skipped, each
    named with why."""
    if not path.exists():
        return [], []
    events, problems = [], []
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace")
                                  .splitlines(), start=1):
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
            evidence = doc.get("evidence") or []
            events.append(DriftEvent(
                time=_when(doc["time"]), drifted=bool(doc.get("drifted")),
                summary=str(doc.get("summary", "")),
                evidence=evidence if isinstance(evidence, list) else [],
                event=bool(doc.get("event")), status=str(doc.get("status") or "compared"),
                note=str(doc.get("note") or "")))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            problems.append(f"{display_path(path)}: line {number} skipped: "
                            f"{type(exc).__name__}: {exc}")
    return events, problems


def _windows(actuations: list[Actuation]) -> tuple[list[tuple[datetime, float, str]], str]:
    """Every observation window of the actuations: (start, objective, before/after), and the
    objective's name."""
    points, objective = [], ""
    for actuation in actuations:
        phases = actuation.by_phase()
        for phase, label in (("observed_before", "before"), ("observed_after", "after")):
            seen = phases.get(phase, {}).get("observation") or {}
            objective = objective or str(seen.get("objective", ""))
            for window in seen.get("windows") or []:
                value = (window.get("metrics") or {}).get(seen.get("objective"))
                if isinstance(value, int | float) and isinstance(window.get("start"), int | float):
                    points.append((datetime.fromtimestamp(window["start"], UTC), float(value),
                                   label))
    return points, objective


def _events(actuations: list[Actuation], drifts: list[DriftEvent]) -> list[TimelineEvent]:
    events = [TimelineEvent(_when(a.started), a.outcome.value if a.outcome else "unfinished",
                            a.id) for a in actuations]
    events += [TimelineEvent(d.time, d.kind, d.summary) for d in drifts]
    return sorted(events, key=lambda e: e.time)


def _count(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


def instance_page(home: Path, instance: Instance) -> str:
    """The instance's report page as HTML."""
    folder = InstanceStore(home).dir(instance.name)
    log = ActuationLog.of(folder)
    actuations, rows = log.actuations(), history_table(log)
    drifts, problems = read_drift(folder / DRIFT_FILE)
    page = Page(f"knobflow report: instance {instance.name}")
    page.heading("Summary")
    page.facts(_summary(instance, rows, drifts), table_id="summary")
    page.heading("Timeline")
    windows, objective = _windows(actuations)
    events = _events(actuations, drifts)
    if windows or events:
        fig = timeline_figure(windows, events, objective or "objective",
                              f"{instance.name}: {_count(len(actuations), 'actuation')}, "
                              f"{_count(sum(d.drifted for d in drifts), 'drift event')}")
        page.figure("timeline", png(fig), (
            f"Above: the {objective or 'objective'} of each observation window, before (blue) and "
            "after (orange) each actuation; a vertical line marks each actuation, coloured by "
            "its outcome (kept green, rolled back orange, refused purple, failed red), and each "
            "drift event (red, dotted). Below: the actuations and the watch's drift checks "
            "(a red triangle found drift, a grey dot did not, a blue one recorded the reference, a "
            "yellow one was not compared: its windows failed the measurement gate)."))
    else:
        page.not_drawn("timeline", "Timeline", "No actuation and no drift check recorded yet "
                       "(knobflow apply acts, knobflow watch checks for drift).")
    page.heading("Actuations")
    _actuations_table(page, rows)
    page.heading("Drift events")
    _drift_table(page, drifts)
    for line in [*log.problems, *problems]:
        page.text(line, css="note")
    return page.html()


def _summary(instance: Instance, rows: list[dict[str, Any]],
             drifts: list[DriftEvent]) -> dict[str, Any]:
    outcomes = Counter(str(r["outcome"]) for r in rows)
    drifted = [d for d in drifts if d.drifted]
    return {
        "instance": instance.name, "service": instance.service, "target": instance.target,
        "connection": redact(instance.url), "created": instance.created,
        "policy": ", ".join(f"{k}={v}" for k, v in sorted(instance.policy.items())),
        "actuations": f"{len(rows)}" + (": " + ", ".join(
            f"{n} {o.replace('_', ' ')}" for o, n in sorted(outcomes.items())) if rows else ""),
        "drift checks": f"{len(drifts)}, {len(drifted)} found drift",
        "last drift": f"{drifted[-1].time.isoformat(timespec='seconds')}: {drifted[-1].summary}"
        if drifted else "-",
    }


def _actuations_table(page: Page, rows: list[dict[str, Any]]) -> None:
    if not rows:
        page.text("No actuations yet.")
        return
    page.table(["id", "started", "source", "knobs", "decision", "ratio after/before", "outcome",
                "how it ended"],
               [(r["id"], r["started"], r["source"], r["knobs"], r["decision"], r["ratio"],
                 r["outcome"], r["ended"]) for r in rows],
               table_id="actuations", colours=OUTCOME_COLOURS)


def _drift_table(page: Page, drifts: list[DriftEvent]) -> None:
    if not drifts:
        page.text(f"No drift checks recorded ({DRIFT_FILE} is written by knobflow watch).")
        return
    page.table(["time", "found", "summary", "evidence that drifted", "event emitted"],
               [(d.time.isoformat(timespec="seconds"), d.kind, d.summary, d.drifted_evidence,
                 "yes" if d.event else f"no: {d.note}" if d.note else "no") for d in drifts],
               table_id="drift-events", colours={"drift": "#cc3311", "yes": "#cc3311"})


def log_instance_page(home: Path, instance: Instance, page: str) -> str:
    """Log ``page`` as ``report.html`` of the instance's report run (made on first use, then
    reused); its id."""
    from model_registry.store import client_for, source_tags
    from tasks.actuation_run import actuations_experiment

    uri = tracking_uri(home)
    client = client_for(uri)
    exp = actuations_experiment(client, uri, instance.target)
    found = client.search_runs(
        [exp], filter_string=f"tags.`knobflow.instance` = '{instance.name}' and "
        f"tags.`{REPORT_TAG}` = 'instance'", max_results=1,
        order_by=["attributes.start_time DESC"])
    run_id = found[0].info.run_id if found else client.create_run(
        exp, run_name=instance.name, tags={
            **source_tags("flows/report_instance.py"), REPORT_TAG: "instance",
            "knobflow.instance": instance.name, "knobflow.service": instance.service,
            "knobflow.target": instance.target,
            "mlflow.note.content": f"The report of live instance {instance.name} "
                                   f"({REPORT_FILE}: its actuations and drift events)."}
    ).info.run_id
    client.log_text(run_id, page, REPORT_FILE)
    client.set_terminated(run_id, "FINISHED")
    return str(run_id)
