"""What a job shows in Prefect: no Prefect log line on the terminal unless --verbose; the result
as an artifact of the flow run, read back from the API; the flow run and the MLflow run naming
each other; a job without a result is a Failed flow run (and exit 1 from the CLI)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from uuid import UUID

import pytest
import yaml
from conftest import invoke_cli, run_cli
from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
)
from prefect.client.schemas.objects import StateType

from flows.publish import artifact_key
from flows.tune import tune
from targets.common.errors import fmt_value
from targets.synthetic import SyntheticTarget
from tasks.track import FLOW_RUN_TAG

FAST = {"duration": 0.0, "noise": 0.02}
JOB = ["tune", "synthetic", "--budget", "2", "--verify-repeats", "2",
       "--set-workload", "duration=0", "--no-train", "--no-transfer"]
#: What a line of Prefect's console handler looks like, and its temporary server's lines.
PREFECT_LINE = re.compile(r"\| (INFO|WARNING|ERROR|DEBUG) +\| (prefect|Flow run|Task run)"
                          r"|Starting temporary server|Stopping temporary server")


def _parent_run(home: Path, run_id: str) -> Run:
    uri = f"sqlite:///{home / 'mlflow.db'}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri).get_run(run_id)


def test_no_prefect_log_line_on_the_terminal_unless_verbose(prefect_api: str,
                                                           tmp_path: Path) -> None:
    """A job as a user runs it, with the CLI's own temporary Prefect server (no API
    configured), Prefect's INFO lines on (as for a user who set nothing): none on the terminal.
    With --verbose (against the session's API, to save a server start) they are there."""
    env = {"PREFECT_LOGGING_LEVEL": "INFO"}
    quiet = run_cli([*JOB, "--home", str(tmp_path / "quiet")], env=env)
    assert quiet.returncode == 0, quiet.stderr
    assert "gain" in quiet.stdout
    found = PREFECT_LINE.findall(quiet.stdout + quiet.stderr)
    assert not found, quiet.stderr

    verbose = run_cli([*JOB, "--home", str(tmp_path / "verbose"), "--verbose"], env=env,
                      api_url=prefect_api)
    assert verbose.returncode == 0, verbose.stderr
    assert re.search(r"\| INFO    \| Flow run '[\w-]+' - trial 0 on local: throughput ",
                     verbose.stderr), verbose.stderr
    assert re.search(r"\| INFO    \| Flow run '[\w-]+' - Finished in state Completed\(\)",
                     verbose.stderr), verbose.stderr


@pytest.mark.usefixtures("mlflow_store")  # made once per session: not what is tested here
def test_the_result_is_an_artifact_of_the_flow_run(prefect_api: str, home: Path) -> None:
    summary = tune("synthetic", budget=3, seed=2, workload=FAST, verify_repeats=2,
                   instance="Box_1", train=False, home=str(home))
    assert summary.succeeded
    parent = _parent_run(home, summary.mlflow_run_id)
    flow_run_id = parent.data.tags[FLOW_RUN_TAG]  # the MLflow run names its flow run
    key = artifact_key("synthetic", "Box_1")
    assert key == "tune-synthetic-box-1"
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(UUID(flow_run_id))
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(  # other tests' jobs
            key=ArtifactFilterKey(any_=[key]),  # publish under this key too: this flow run's
            flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run.id])))
    assert flow_run.state is not None and flow_run.state.type == StateType.COMPLETED
    assert [str(a.flow_run_id) for a in artifacts] == [flow_run_id]
    artifact = artifacts[0]
    assert artifact.type == "markdown"
    assert artifact.description == f"knobflow tune synthetic/Box_1: gain {summary.gain:.2f}x"
    text = artifact.data
    assert text.startswith("# knobflow: synthetic/Box_1 (service synthetic)\n")
    assert (f"| throughput (maximize) | {summary.default_value:,.6g} | "
            f"{summary.best_value:,.6g} | **{summary.gain:.2f}x** | {summary.gain_low:.2f}-"
            f"{summary.gain_high:.2f} | 2 |") in text
    # every knob of the best config beside its default, the changed ones marked
    defaults = SyntheticTarget.knob_spec().defaults()
    for knob, value in summary.best_config.items():
        mark = "" if defaults[knob] == value else "changed"
        assert (f"| `{knob}` | {fmt_value(defaults[knob])} | {fmt_value(value)} | {mark} |"
                in text), knob
    assert "| changed |" in text
    assert f"| best config | `{summary.best_config_file}` |" in text
    assert f"| trial table | `{summary.trial_table}` |" in text
    # the flow run names its MLflow run, and how to open it
    page = f"#/experiments/{parent.info.experiment_id}/runs/{summary.mlflow_run_id}"
    assert (f"Run `{summary.mlflow_run_id}` in experiment `knobflow/synthetic`: open the UI with "
            f"`mlflow ui --backend-store-uri sqlite:///{home / 'mlflow.db'} --host 127.0.0.1`, "
            f"then <http://127.0.0.1:5000/{page}>.") in text


@pytest.mark.usefixtures("mlflow_store")  # made once per session: not what is tested here
def test_a_job_without_a_completed_trial_is_a_failed_flow_run(prefect_api: str, home: Path,
                                                               tmp_path: Path) -> None:
    """Every config crashes (threads > 48 with compress on): the CLI exits 1 with the summary,
    and the flow run's final state in the Prefect API is Failed, with why."""
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"knobs": {"x": {"range": [0.0, 1.0]}},
                                     "fixed": {"compress": True, "threads": 64}}))
    result = invoke_cli([*JOB, "--space", str(space), "--no-learned-rules", "--json",
                         "--home", str(home)])
    assert result.returncode == 1, result.stderr
    summary = json.loads(result.stdout)
    assert summary["best_config"] is None and summary["n_failed"] == 2
    parent = _parent_run(home, summary["mlflow_run_id"])
    assert parent.info.status == "FAILED"
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(UUID(parent.data.tags[FLOW_RUN_TAG]))
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=[artifact_key("synthetic", "local")]),
            flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run.id])))
    assert flow_run.state is not None and flow_run.state.type == StateType.FAILED
    assert flow_run.state.message == "synthetic/local: no trial of 2 completed (crash 2)"
    assert [str(a.flow_run_id) for a in artifacts] == [str(flow_run.id)]
    assert ("**No result**: synthetic/local: no trial of 2 completed (crash 2)"
            in artifacts[0].data)


def test_flow_run_heartbeats_are_off_only_with_the_commands_own_server() -> None:
    # the temporary server ends with the command and nothing on it hears heartbeats, while the
    # flow run's end waits up to 1 s for the heartbeat thread; a configured server keeps them
    from prefect.settings import PREFECT_API_URL, get_current_settings, temporary_settings

    from flows.temporary_api import no_heartbeats_to_a_temporary_server

    def frequency() -> int | None:
        return get_current_settings().flows.heartbeat_frequency

    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        before = frequency()
        assert before is not None  # Prefect's default: on
        with no_heartbeats_to_a_temporary_server():
            assert frequency() is None
        assert frequency() == before
    with temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:4200/api"}), \
            no_heartbeats_to_a_temporary_server():
        assert frequency() == before
