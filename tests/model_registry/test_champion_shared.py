"""Champion decisions with shared records: the lock is a PostgreSQL advisory lock every host
takes, so two processes promoting models of one service at once on one tracking store decide
one after the other (the second against the champion the first left)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from targets.common.records import records
from targets.synthetic import SyntheticTarget
from tasks.train import TrainReport, train_models
from tests.conftest import wait_for
from tests.synthetic_rows import trial_table

NAME = "knobflow-orders-kv-throughput"
TRAIN = textwrap.dedent("""
    import sys
    import pandas as pd
    from targets.synthetic import SyntheticTarget
    from tasks.train import train_models
    table = pd.read_parquet(sys.argv[2])
    report = train_models(table, spec=SyntheticTarget.knob_spec(), objective="throughput",
                          direction="maximize", service="orders-kv", instance=sys.argv[3],
                          workload_fp={"shift": 0.0}, tracking_uri=sys.argv[1],
                          kinds=("lightgbm",))
    print(report.registered_version, report.champion_moved, report.champion_reason, flush=True)
    """)


def test_two_processes_promoting_at_once_decide_one_after_the_other(
    records_db: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in records_db.items():
        monkeypatch.setenv(key, value)  # the processes below inherit the shared records
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.search_registered_models(max_results=1)  # the store made once, before both start
    table = tmp_path / "table.parquet"
    trial_table(40, seed=4).to_parquet(table)
    reports: list[TrainReport | None] = []
    store = records(home=tmp_path)
    assert store.shared
    with store.lock(f"champion:{NAME}"):  # held as a third host deciding would hold it
        # one process trains and promotes in a child, the other here (a thread of its own: its
        # own database session, as another host's)
        proc = subprocess.Popen([sys.executable, "-c", TRAIN, uri, str(table), "kv-1"],
                                stdout=subprocess.PIPE, text=True)
        here = threading.Thread(target=lambda: reports.append(train_models(
            trial_table(40, seed=4), spec=SyntheticTarget.knob_spec(), objective="throughput",
            direction="maximize", service="orders-kv", instance="kv-2",
            workload_fp={"shift": 0.0}, tracking_uri=uri, kinds=("lightgbm",))))
        here.start()
        try:
            # both register their version, then wait to decide: no champion meanwhile
            wait_for(lambda: len(client.search_model_versions(f"name = '{NAME}'")) == 2
                     or not here.is_alive() or proc.poll() is not None,
                     timeout=180, what="both processes to register a version")
            time.sleep(1.0)
            assert proc.poll() is None and here.is_alive()
            assert not client.get_registered_model(NAME).aliases
        except BaseException:
            proc.kill()
            raise
    here.join(120)
    report = reports[0]
    assert report is not None
    outputs = [proc.communicate(timeout=120)[0].split(maxsplit=2),
               [str(report.registered_version), "", report.champion_reason]]
    assert proc.returncode == 0
    by_version = {int(v): reason.strip() for v, _, reason in outputs}
    first = [v for v, reason in by_version.items() if reason == "no champion yet"]
    assert len(first) == 1, by_version  # the second saw the first's champion
    second = next(v for v in by_version if v != first[0])
    tags = client.get_model_version(NAME, str(second)).tags
    # decided against v<first>: moved from it, or kept it
    assert tags.get("previous_champion") == str(first[0]) or \
        f"champion v{first[0]} " in by_version[second], (by_version, tags)
