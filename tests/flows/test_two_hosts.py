"""Two homes ("hosts") on one shared stack: the records (trial tables, learned rules, locks) in
one PostgreSQL database, one MLflow tracking store. An instance tuned on the second host starts
from the first host's configs and champion even though the second has local history, and the
champion its job trains learned from both hosts' trials."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from flows.trials import service_table, updating_expert
from flows.tune import tune
from tests.synthetic_rows import trial_table

SERVICE = "orders-sim"  # a service no other test of the session's stack tunes
NAME = f"knobflow-{SERVICE}-throughput"
#: lean jobs: no noise check, the fewest verification repeats, no wait in a trial
LEAN = {"service": SERVICE, "noise_runs": 0, "verify_repeats": 2}
FAST = {"duration": 0.0, "noise": 0.02}


def test_an_instance_on_a_second_host_starts_from_the_first_hosts_configs_and_champion(
    prefect_api: str, shared_stack: dict[str, str], records_db: dict[str, str],
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    host_a, host_b = tmp_path / "host-a", tmp_path / "host-b"
    workload_b = {**FAST, "shift": 0.5}  # the second host's replicas serve another workload
    # host B's history from before it joined the stack: a job of its own instance, its store
    for key in ("KNOBFLOW_CONFIG", "KNOBFLOW_RECORDS_URL", "KNOBFLOW_TRACKING_URI",
                "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(key, raising=False)
    before = tune("synthetic", instance="b-1", budget=4, seed=3, workload=workload_b,
                  train=False, home=str(host_b), **LEAN)
    assert before.n_trials == 4

    # both hosts on the shared stack: records in PostgreSQL, its MLflow tracking server (the
    # Prefect API stays the session's test harness)
    uri = shared_stack["MLFLOW_TRACKING_URI"]
    for key, value in {**records_db, "KNOBFLOW_TRACKING_URI": uri, "MLFLOW_TRACKING_URI": uri,
                       "MLFLOW_TRACKING_USERNAME": shared_stack["MLFLOW_TRACKING_USERNAME"],
                       "MLFLOW_TRACKING_PASSWORD": shared_stack["MLFLOW_TRACKING_PASSWORD"]
                       }.items():
        monkeypatch.setenv(key, value)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)

    # host A tunes a-1: its trials reach the shared records, its model is the champion. It
    # explores at random: trials spread over the space train a model that ranks held-out ones
    # (TPE's trials depend on when each result is told; CI once got from them a model no better
    # than chance, refused as champion)
    a = tune("synthetic", instance="a-1", budget=60, seed=1, workload=FAST, home=str(host_a),
             tuner="random", **LEAN)
    assert a.model is not None and a.model["champion_moved"], a.model
    assert a.model["name"] == NAME
    # each trial's child run keeps its record and the gate's result on the server's artifacts
    child = client.search_runs([client.get_run(a.mlflow_run_id).info.experiment_id],
                               filter_string=f"tags.`mlflow.parentRunId` = '{a.mlflow_run_id}' "
                               "and tags.`knobflow.phase` = 'explore' "
                               "and tags.`knobflow.status` = 'ok'", max_results=1)[0]
    assert child.info.artifact_uri.startswith("mlflow-artifacts:"), child.info.artifact_uri
    kept = {f.path for f in client.list_artifacts(child.info.run_id)}
    assert {"trial.json", "validation.json"} <= kept, kept

    # host B tunes b-1 with local history: it still starts from A's configs and champion
    b = tune("synthetic", instance="b-1", budget=6, seed=2, workload=workload_b,
             home=str(host_b), **LEAN)
    transfer = b.transfer
    assert transfer is not None and "a-1" in transfer["from_instances"], transfer
    assert transfer["model"] == NAME and transfer["model_version"] == str(a.model["version"])
    recorded = json.loads((host_b / "jobs" / b.study_name / "transfer.json").read_text())
    siblings = [s for s in recorded["seeds"] if s["source"] == "sibling"]
    assert siblings and {s["instance"] for s in siblings} == {"a-1"}, recorded["seeds"]
    tags = client.get_run(b.mlflow_run_id).data.tags
    assert "a-1" in tags["knobflow.transfer.from_instances"].split(",")
    assert tags["knobflow.transfer.model"] == f"{NAME}/{a.model['version']}"

    # the champion B's job trained learned from both hosts' trials
    assert b.model is not None and b.model["champion_moved"], b.model
    champion = client.get_model_version_by_alias(NAME, "champion")
    assert int(champion.version) == b.model["version"]
    studies = set(champion.tags["trained_on_studies"].split(","))
    assert {a.study_name, before.study_name, b.study_name} <= studies
    assert champion.tags["trained_on_instances"] == "a-1,b-1"
    run = client.get_run(champion.run_id)
    assert set(run.data.params["trained_on_studies"].split(",")) == studies

    # each host's table of the service has the other's rows, once; A's home holds none of B's
    table_b = service_table(host_b, SERVICE)
    assert set(table_b["study"]) == {a.study_name, before.study_name, b.study_name}
    assert not table_b.duplicated(["study", "trial"]).any()
    table_a = service_table(host_a, SERVICE)
    assert set(table_a["study"]) == {a.study_name, b.study_name}  # B's old job was local only
    assert not (host_a / "tables" / SERVICE / f"{b.study_name}.parquet").exists()


def test_expert_rows_imported_on_one_host_are_in_every_hosts_table(
    records_db: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    for key, value in records_db.items():
        monkeypatch.setenv(key, value)
    service = f"expert-{tmp_path.name}"
    rows = trial_table(6, seed=1).assign(source="expert", service=service, instance="",
                                         study="expert:tuned.csv")
    with updating_expert(tmp_path / "host-a", service) as (held, write):
        assert held.empty
        write(rows)
    table = service_table(tmp_path / "host-b", service)
    assert len(table) == 6 and set(table["source"]) == {"expert"}
