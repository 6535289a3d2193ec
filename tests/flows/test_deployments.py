"""prefect.yaml: every deployment names a flow that loads, parameters that flow takes, a work
pool that is defined and schedules Prefect parses; a deployment's parameters run a real job."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from prefect.client.schemas.schedules import CronSchedule
from prefect.exceptions import ParameterTypeError, SignatureMismatchError
from prefect.flows import load_flow_from_entrypoint

REPO = Path(__file__).resolve().parents[2]
CONFIG = yaml.safe_load((REPO / "prefect.yaml").read_text(encoding="utf-8"))
DEPLOYMENTS = {d["name"]: d for d in CONFIG["deployments"]}


def test_the_file_declares_deployments() -> None:
    assert DEPLOYMENTS, "prefect.yaml has no deployments"
    assert len(DEPLOYMENTS) == len(CONFIG["deployments"]), "two deployments share a name"


@pytest.mark.parametrize("name", sorted(DEPLOYMENTS))
def test_deployment_is_valid(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    deployment = DEPLOYMENTS[name]
    monkeypatch.chdir(REPO)  # entrypoints are relative to the repository root
    flow = load_flow_from_entrypoint(deployment["entrypoint"])
    params = deployment.get("parameters") or {}
    assert flow.validate_parameters(params) is not None
    pools = {p["name"] for p in CONFIG["definitions"]["work_pools"].values()}
    assert deployment["work_pool"]["name"] in pools
    for schedule in deployment.get("schedules") or []:
        CronSchedule(cron=schedule["cron"], timezone=schedule.get("timezone"))
    # a misspelt or mistyped parameter is caught by the same check
    with pytest.raises(SignatureMismatchError):
        flow.validate_parameters({**params, "budgett": 3})
    with pytest.raises(ParameterTypeError):
        flow.validate_parameters({**params, "budget": "forty"})


def test_the_nightly_sqlite_deployment_runs_a_job(prefect_api: str, home: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Its parameters as the worker would pass them, with a smaller budget and a test home."""
    monkeypatch.chdir(REPO)
    deployment = DEPLOYMENTS["sqlite-nightly"]
    flow = load_flow_from_entrypoint(deployment["entrypoint"])
    params: dict[str, Any] = {**deployment["parameters"], "budget": 3, "home": str(home),
                              "workload": {"rows": 2000, "ops": 2000}, "verify_repeats": 2}
    summary = flow(**flow.validate_parameters(params))
    assert summary.target == "sqlite"
    assert summary.service == deployment["parameters"]["service"]
    assert summary.instance == deployment["parameters"]["instance"]
    assert summary.n_trials == 3 and summary.n_failed == 0
