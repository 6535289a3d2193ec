"""prefect.yaml: every deployment names a flow that loads, parameters that flow takes, a work
pool that is defined and schedules Prefect parses, and carries tags; the flow's parameter schema
(what ``prefect deploy`` records) describes every parameter and offers the installed targets; the
file's comments name only files that exist; a deployment's parameters run a real job."""

from __future__ import annotations

import inspect
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from prefect.client.schemas.schedules import CronSchedule, IntervalSchedule
from prefect.events.schemas.deployment_triggers import DeploymentTriggerTypes
from prefect.exceptions import ParameterTypeError, SignatureMismatchError
from prefect.flows import load_flow_from_entrypoint
from prefect.utilities.callables import parameter_schema
from pydantic import TypeAdapter

from targets.registry import available_targets

REPO = Path(__file__).resolve().parents[2]
TEXT = (REPO / "prefect.yaml").read_text(encoding="utf-8")
CONFIG = yaml.safe_load(TEXT)
DEPLOYMENTS = {d["name"]: d for d in CONFIG["deployments"]}
DeploymentTriggerAdapter: TypeAdapter[Any] = TypeAdapter(DeploymentTriggerTypes)


def test_the_file_declares_deployments() -> None:
    assert DEPLOYMENTS, "prefect.yaml has no deployments"
    assert len(DEPLOYMENTS) == len(CONFIG["deployments"]), "two deployments share a name"


TUNE = sorted(n for n, d in DEPLOYMENTS.items() if d["entrypoint"] == "flows/tune.py:tune")
LIVE_TARGETS = ("postgres", "redis", "synthetic")  # the targets with a live driver


def _sample(annotation: Any) -> Any:
    """A value of a required parameter's type, to check the rest of a deployment's parameters."""
    text = str(annotation)
    return {} if "dict" in text else 1 if text in ("int", "<class 'int'>") else "x"


@pytest.mark.parametrize("name", sorted(DEPLOYMENTS))
def test_every_deployment_loads_and_takes_its_parameters(
        name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Its flow loads, its parameters (and its triggers' templated ones) are the flow's, its work
    pool is defined, its schedules parse, its tags name knobflow and one target."""
    deployment = DEPLOYMENTS[name]
    monkeypatch.chdir(REPO)  # entrypoints are relative to the repository root
    flow = load_flow_from_entrypoint(deployment["entrypoint"])
    params = dict(deployment.get("parameters") or {})
    templated = {k for t in deployment.get("triggers") or [] for k in t.get("parameters") or {}}
    signature = inspect.signature(flow.fn)
    assert templated <= set(signature.parameters), templated - set(signature.parameters)
    required = {p.name: _sample(p.annotation) for p in signature.parameters.values()
                if p.default is inspect.Parameter.empty and p.name not in params}
    assert flow.validate_parameters({**required, **params}) is not None
    with pytest.raises(SignatureMismatchError):  # a misspelt parameter is caught
        flow.validate_parameters({**required, **params, "budgett": 3})
    pools = {p["name"] for p in CONFIG["definitions"]["work_pools"].values()}
    assert deployment["work_pool"]["name"] in pools
    for schedule in deployment.get("schedules") or []:
        if "cron" in schedule:
            CronSchedule(cron=schedule["cron"], timezone=schedule.get("timezone"))
        else:
            IntervalSchedule(interval=timedelta(seconds=schedule["interval"]))
    targets = [t for t in deployment["tags"] if t in available_targets()]
    assert "knobflow" in deployment["tags"] and len(targets) == 1
    assert name.startswith(f"{targets[0]}-")


@pytest.mark.parametrize("name", TUNE)
def test_a_tune_deployment_names_a_target_and_checks_its_parameters(
        name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    deployment = DEPLOYMENTS[name]
    monkeypatch.chdir(REPO)
    flow = load_flow_from_entrypoint(deployment["entrypoint"])
    params = deployment.get("parameters") or {}
    with pytest.raises(ParameterTypeError):
        flow.validate_parameters({**params, "budget": "forty"})
    with pytest.raises(ParameterTypeError):  # a target that is not installed
        flow.validate_parameters({**params, "target": "mysql"})
    assert params["target"] in deployment["tags"] and "nightly" in deployment["tags"]


def test_every_target_is_tuned_nightly_and_every_live_one_watched_retuned_and_applied() -> None:
    """Per shipped target a nightly tune and a regression check for CI; per target with a live
    driver the watch, the re-tune its drift event triggers, recommend and apply."""
    from flows.watch import DRIFT_EVENT
    from targets.live import live_targets

    assert set(live_targets()) == set(LIVE_TARGETS)
    for target in ("sqlite", "rocksdb", *LIVE_TARGETS):
        assert f"{target}-nightly" in TUNE
        assert DEPLOYMENTS[f"{target}-check"]["entrypoint"] == (
            "flows/regression.py:check_regression")
    for target in LIVE_TARGETS:
        kinds = {n.removeprefix(f"{target}-") for n in DEPLOYMENTS if n.startswith(target)}
        assert {"watch", "on-drift", "recommend", "apply"} <= kinds, kinds
        watch = DEPLOYMENTS[f"{target}-watch"]
        assert watch["parameters"]["target"] == target and watch["schedules"][0]["interval"] > 0
        (trigger,) = DEPLOYMENTS[f"{target}-on-drift"]["triggers"]
        DeploymentTriggerAdapter.validate_python(trigger)  # what prefect deploy does
        assert trigger["expect"] == [DRIFT_EVENT]
        assert trigger["match"] == {"prefect.resource.id": "knobflow.instance.*",
                                    "knobflow.target": target}
        assert trigger["parameters"]["workload"] == "{{ event.payload.workload }}"


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
