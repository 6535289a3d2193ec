"""Performance references of a service's workloads, kept in the MLflow store beside its models.

A *reference* is what a tuning job with a result measured of the config it ends with: its best
config when verification showed it better than the default, otherwise the default; the per-run
values of the objective (not only their mean), the config, the workload and where it came from.
A regression check (``flows/regression.py``) compares new measurements with it.

Where it lives: the job's MLflow parent run (experiment ``knobflow/<target>``) holds the artifact
``reference.json`` (``JobReference.to_dict``) and the tags ``knobflow.reference`` (``current``;
``regressed`` for a job that failed its own regression check: kept for inspection, never a
reference), ``knobflow.reference.workload`` (``workload_key``), ``knobflow.reference.objective``
and ``knobflow.reference.recorded``, beside the job's ``knobflow.service``. The job's folder keeps
a copy (``jobs/<study>/reference.json``).

"The reference of service S for workload W" (``find_reference``) is the latest one recorded for S,
the objective and W's ``workload_key``: the last tuning result of that workload, whether or not
it also trained the service's champion model (a model validates on held-out trials; it does not
carry measurements, and a short job or ``--no-train`` trains none). Two workloads are the same when
every workload parameter is the same (defaults filled in), measurement settings included: absolute
figures compare only under the same load.

The live instances' own references (windows recorded at their last tuning or actuation) are
``tasks/reference.py``'s.
"""

from __future__ import annotations

import hashlib
import json
import statistics
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from model_registry.store import client_for

__all__ = [
    "ARTIFACT", "CURRENT", "REGRESSED", "TAG", "JobReference", "find_reference", "workload_key",
]

#: The artifact of a job's MLflow run that holds its reference.
ARTIFACT = "reference.json"
#: The tag that marks a run as holding a reference, and its values.
TAG = "knobflow.reference"
CURRENT, REGRESSED = "current", "regressed"
_WORKLOAD, _OBJECTIVE, _RECORDED = (f"{TAG}.workload", f"{TAG}.objective", f"{TAG}.recorded")


def workload_key(defaults: Mapping[str, Any], workload: Mapping[str, Any]) -> str:
    """The name of a workload for references: 12 hex digits of its parameters with the
    target's ``defaults`` filled in (every parameter counts, measurement settings too)."""
    full = {**defaults, **workload}
    text = json.dumps({k: full[k] for k in sorted(full)}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclass
class JobReference:
    """The measured values of the config a job ended with, for its service and workload."""

    service: str
    target: str
    objective: str
    direction: str
    workload: dict[str, Any]
    workload_key: str
    config: dict[str, Any]
    samples: list[float]  # one value of the objective per run of ``config``
    source: str  # what the config is: "verified best config", "default config (...)"
    study: str  # the job's study name
    run_id: str = ""  # the job's MLflow parent run
    fingerprint: dict[str, float] = field(default_factory=dict)
    recorded: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    status: str = CURRENT

    @property
    def mean(self) -> float:
        return statistics.fmean(self.samples)

    def tags(self) -> dict[str, str]:
        """The tags that mark the job's MLflow run as holding this reference."""
        return {TAG: self.status, _WORKLOAD: self.workload_key, _OBJECTIVE: self.objective,
                _RECORDED: self.recorded}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> JobReference:
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in known})

    def write(self, path: Path) -> Path:
        """Keep the reference as JSON at ``path`` (the artifact the job's run logs)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1, default=str), encoding="utf-8")
        return path

    @classmethod
    def read(cls, path: Path) -> JobReference:
        return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))

    def describe(self) -> str:
        """One line: whose reference, of what, how many runs."""
        return (f"job {self.study} ({self.source}, {len(self.samples)} runs, recorded "
                f"{self.recorded[:19]})")


def find_reference(tracking_uri: str, target: str, service: str, objective: str, key: str, *,
                   before: str | None = None,
                   exclude_run: str | None = None) -> JobReference | None:
    """The latest reference of ``service``'s ``objective`` for workload ``key`` (recorded
    before ``before``, an ISO time, when given; not the run ``exclude_run``), or None."""
    client = client_for(tracking_uri)
    experiment = client.get_experiment_by_name(f"knobflow/{target}")
    if experiment is None:
        return None
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string=(f"tags.`{TAG}` = '{CURRENT}' and tags.`knobflow.service` = "
                       f"'{_quoted(service)}' and tags.`{_WORKLOAD}` = '{key}' and "
                       f"tags.`{_OBJECTIVE}` = '{_quoted(objective)}'"),
        max_results=1000)
    found = [r for r in runs if r.info.run_id != exclude_run
             and (before is None or r.data.tags.get(_RECORDED, "") < before)]
    if not found:
        return None
    latest = max(found, key=lambda r: r.data.tags.get(_RECORDED, ""))
    with tempfile.TemporaryDirectory(prefix="knobflow-reference-") as tmp:
        path = client.download_artifacts(latest.info.run_id, ARTIFACT, tmp)
        reference = JobReference.read(Path(path))
    reference.run_id = latest.info.run_id
    return reference


def _quoted(text: str) -> str:
    """``text`` inside an MLflow filter's single quotes."""
    return text.replace("'", "\\'")
