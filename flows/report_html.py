"""``knobflow report``: one self-contained HTML page of a tuning job or of a live instance.

``find_subject`` turns what an operator typed into a recorded job or a live instance: a job's
name as ``knobflow tune`` prints it (``job <name>``), its folder (or a file in it, e.g. its
``best.yaml``), a beginning of its name that only one job has, or an instance's name.
``write_report`` builds the page (``flows.report_job``, ``flows.report_instance``), writes it
(default: ``report.html`` in the job's or the instance's folder) and logs it as the artifact
``report.html`` of the job's MLflow run, or of the instance's report run.

``Page`` is the page itself: headings, tables, and each plot a base64 PNG in a ``<figure id=...>``
with its caption; a plot that cannot be drawn leaves a note with the same id saying why. The page
needs nothing but itself (no script, no external file): it opens from a CI artifact or MLflow.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flows.job import Job, recorded_jobs
from targets.common.errors import KnobflowError
from targets.common.files import display_path, write_text_atomic
from targets.common.settings import tracking_uri
from tasks.instances import NAME_RULE, Instance, InstanceStore

__all__ = ["REPORT_FILE", "Page", "ReportWritten", "find_subject", "write_report"]

#: The page's file name, in the job's or instance's folder and as the MLflow artifact.
REPORT_FILE = "report.html"
#: How many names an unknown-name error lists of each kind.
_LISTED = 8

_STYLE = """
body{font-family:system-ui,sans-serif;max-width:70rem;margin:2rem auto;padding:0 1rem;
color:#222;line-height:1.4}
h1{font-size:1.5rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:0.5rem 0;font-size:0.9rem}
th,td{border:1px solid #ccc;padding:0.25rem 0.5rem;text-align:left;vertical-align:top}
th{background:#f4f4f4}figure{margin:1rem 0}figure img{max-width:100%;border:1px solid #eee}
figcaption{font-size:0.9rem;color:#444;max-width:60rem}
.not-drawn{border:1px dashed #c96;background:#fff8f0;padding:0.5rem 1rem;margin:1rem 0}
.note{color:#555;font-size:0.9rem}
"""


class Page:
    """An HTML page built in order: every text is escaped, every plot embedded."""

    def __init__(self, title: str) -> None:
        self.title = title
        self.parts: list[str] = [f"<h1>{html.escape(title)}</h1>"]

    def heading(self, text: str, level: int = 2) -> None:
        self.parts.append(f"<h{level}>{html.escape(text)}</h{level}>")

    def text(self, text: str, css: str = "") -> None:
        style = f' class="{css}"' if css else ""
        self.parts.append(f"<p{style}>{html.escape(text)}</p>")

    def table(self, header: Sequence[str], rows: Iterable[Sequence[Any]], table_id: str = "",
              colours: Mapping[str, str] | None = None) -> None:
        """A table; a cell whose text is a key of ``colours`` gets that colour."""
        ident = f' id="{html.escape(table_id)}"' if table_id else ""
        head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
        body = "".join("<tr>" + "".join(_cell(v, colours or {}) for v in row) + "</tr>"
                       for row in rows)
        self.parts.append(f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{body}"
                          "</tbody></table>")

    def facts(self, items: Mapping[str, Any], table_id: str = "") -> None:
        """A two-column table: what, and its value."""
        ident = f' id="{html.escape(table_id)}"' if table_id else ""
        body = "".join(f"<tr><th>{html.escape(k)}</th>{_cell(v, {})}</tr>"
                       for k, v in items.items())
        self.parts.append(f"<table{ident}><tbody>{body}</tbody></table>")

    def figure(self, figure_id: str, picture: bytes, caption: str) -> None:
        """A PNG (``flows.plots.png``) embedded, with its caption."""
        data = base64.b64encode(picture).decode("ascii")
        self.parts.append(
            f'<figure id="{html.escape(figure_id)}"><img alt="{html.escape(caption[:120])}" '
            f'src="data:image/png;base64,{data}"><figcaption>{html.escape(caption)}'
            "</figcaption></figure>")

    def not_drawn(self, figure_id: str, what: str, why: str) -> None:
        """In place of a figure: what it would show, and why it is not drawn."""
        self.parts.append(
            f'<div class="not-drawn" id="{html.escape(figure_id)}"><p><strong>'
            f"{html.escape(what)}: not drawn.</strong> {html.escape(why)}</p></div>")

    def html(self) -> str:
        made = datetime.now(UTC).isoformat(timespec="seconds")
        return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                f"<title>{html.escape(self.title)}</title><style>{_STYLE}</style></head>"
                "<body>\n" + "\n".join(self.parts)
                + f'\n<p class="note">Written by knobflow report at {made}.</p>\n</body></html>\n')


def _cell(value: Any, colours: Mapping[str, str]) -> str:
    text = "" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)
    colour = colours.get(text)
    style = f' style="color:{colour};font-weight:bold"' if colour else ""
    return f"<td{style}>{html.escape(text)}</td>"


# -- what the operator named -----------------------------------------------------------------
def find_subject(home: Path, name: str) -> Job | Instance:
    """The job or instance ``name`` names (see the module's text); a ``KnobflowError`` naming
    the known jobs and instances when it names none, or the jobs it could mean when several."""
    jobs = recorded_jobs(home)
    exact = [j for j in jobs if j.study_name == name]
    if exact:
        return exact[0]
    store = InstanceStore(home)
    instances = sorted(p.parent.name for p in store.root.glob("*/instance.json"))
    if name in instances:
        return store.get(name)
    path = Path(name).expanduser()
    if path.exists():
        folder = (path if path.is_dir() else path.parent).resolve()
        found = [j for j in jobs if j.dir.resolve() == folder]
        if found:
            return found[0]
    started = [j for j in jobs if j.study_name.startswith(name)] if NAME_RULE.match(name) else []
    if len(started) == 1:
        return started[0]
    if started:
        raise KnobflowError(f"report: '{name}' begins {len(started)} jobs' names ("
                            f"{_listed([j.study_name for j in started])}); give more of it")
    raise KnobflowError(
        f"report: no job or instance '{name}' under {display_path(home)}; jobs: "
        f"{_listed([j.study_name for j in sorted(jobs, key=lambda j: j.created, reverse=True)])}"
        f"; instances: {_listed(instances)} (or give --home)")


def _listed(names: Sequence[str]) -> str:
    if not names:
        return "none"
    more = len(names) - _LISTED
    return ", ".join(names[:_LISTED]) + (f" and {more} more" if more > 0 else "")


# -- writing and logging ---------------------------------------------------------------------
@dataclass(frozen=True)
class ReportWritten:
    """Where the page went: its file, the MLflow run it was logged to (None: why not, ``note``)."""

    path: Path
    run_id: str | None
    note: str = ""


def write_report(home: Path, name: str, out: Path | None = None) -> ReportWritten:
    """Build the page of the job or instance ``name``, write it to ``out`` (default: its
    folder's ``report.html``) and log it to MLflow as ``report.html``."""
    from flows.report_instance import instance_page, log_instance_page
    from flows.report_job import job_page

    subject = find_subject(home, name)
    if out is not None and not out.parent.is_dir():
        raise KnobflowError(f"report: --out {out}: the folder {out.parent} does not exist; "
                            "create it or write elsewhere")
    if isinstance(subject, Job):
        page = job_page(subject)
        path = out or subject.dir / REPORT_FILE
        write_text_atomic(path, page)
        run_id, note = log_job_page(subject, page)
        return ReportWritten(path, run_id, note)
    page = instance_page(home, subject)
    path = out or InstanceStore(home).dir(subject.name) / REPORT_FILE
    write_text_atomic(path, page)
    return ReportWritten(path, log_instance_page(home, subject, page))


def log_job_page(job: Job, page: str) -> tuple[str | None, str]:
    """Log ``page`` as ``report.html`` of the job's MLflow run: its id, or None and why not."""
    from mlflow.exceptions import MlflowException

    from model_registry.store import client_for

    if not job.mlflow_run_id:
        return None, "the job's record names no MLflow run"
    uri = tracking_uri(job.home)
    client = client_for(uri)
    try:
        client.get_run(job.mlflow_run_id)
    except MlflowException:
        return None, f"the job's MLflow run {job.mlflow_run_id} is not in the store {uri}"
    client.log_text(job.mlflow_run_id, page, REPORT_FILE)
    return job.mlflow_run_id, ""
