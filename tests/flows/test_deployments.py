"""prefect.yaml: every deployment names a flow that loads, parameters that flow takes, a work
pool that is defined and schedules Prefect parses, and carries tags; the flow's parameter schema
(what ``prefect deploy`` records) describes every parameter and offers the installed targets; the
file's comments name only files that exist; a deployment's parameters run a real job."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from prefect.client.schemas.schedules import CronSchedule
from prefect.exceptions import ParameterTypeError, SignatureMismatchError
from prefect.flows import load_flow_from_entrypoint
from prefect.utilities.callables import parameter_schema

from targets.registry import available_targets

REPO = Path(__file__).resolve().parents[2]
TEXT = (REPO / "prefect.yaml").read_text(encoding="utf-8")
CONFIG = yaml.safe_load(TEXT)
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
    with pytest.raises(ParameterTypeError):  # a target that is not installed
        flow.validate_parameters({**params, "target": "mysql"})
    assert "knobflow" in deployment["tags"] and params["target"] in deployment["tags"]


def test_the_schema_describes_every_parameter_and_offers_the_installed_targets(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """What ``prefect deploy`` records (``parameter_schema`` of the loaded flow) and the UI
    shows: a description for each parameter, ``target`` as a choice of the installed ones."""
    monkeypatch.chdir(REPO)
    flow = load_flow_from_entrypoint("flows/tune.py:tune")
    schema = parameter_schema(flow).model_dump()
    undescribed = [name for name, prop in schema["properties"].items()
                   if not prop.get("description")]
    assert not undescribed
    target = schema["properties"]["target"]
    assert target["enum"] == available_targets() and target["type"] == "string"
    assert schema["properties"]["home"]["description"] == (
        "State directory (default ./.knobflow, or $KNOBFLOW_HOME).")


def test_the_comments_name_the_variable_and_files_that_exist() -> None:
    comments = "\n".join(line for line in TEXT.splitlines() if line.lstrip().startswith("#"))
    assert "KNOBFLOW_REPO" in comments
    assert "{{ $KNOBFLOW_REPO }}" in TEXT
    named = re.findall(r"[\w./-]+\.(?:py|md|yaml|toml)\b", comments)
    assert named
    missing = [path for path in named if not (REPO / path.split(":")[0]).exists()]
    assert not missing
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "\n## Deployments\n" in readme
    assert "prefect deployment run tune/sqlite-nightly --watch" in readme


@pytest.mark.usefixtures("mlflow_store")  # made once per session: not what is tested here
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
