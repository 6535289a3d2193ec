"""Settings point every store (environment first, then the KNOBFLOW_CONFIG file), bad settings
are refused naming the file and field, the secret stays out of every output, and ``knobflow
doctor`` says where each store is and whether it answers (exit 0 only when all do). The doctor
against a running stack is in the stack's own test."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
from conftest import run_cli

from targets.common.config import current_settings, database_url, read_secret, redacted
from targets.common.errors import KnobflowError

SECRET = "s3cret-Token_value"


def _closed_port() -> int:
    with socket.socket() as sock:  # bound, then closed: nothing listens there
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _config(tmp_path: Path, **extra: str) -> Path:
    secret = tmp_path / "secret"
    secret.write_text(SECRET + "\n")
    secret.chmod(0o600)
    port = _closed_port()
    values = {
        "optuna_storage": f"postgresql+psycopg2://knobflow@127.0.0.1:{port}/knobflow",
        "records_url": f"postgresql+psycopg2://knobflow@127.0.0.1:{port}/knobflow",
        "tracking_uri": f"http://127.0.0.1:{port}", "prefect_api_url": f"http://127.0.0.1:{port}/api",
        "secret_file": str(secret), "home": str(tmp_path / "home"), **extra}
    path = tmp_path / "knobflow.toml"
    path.write_text("".join(f'{k} = "{v}"\n' for k, v in values.items()))
    return path


def test_settings_come_from_the_file_and_the_environment_wins(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KNOBFLOW_CONFIG", str(_config(tmp_path, work_pool="beds")))
    settings = current_settings()
    assert settings.work_pool == "beds" and settings.home == tmp_path / "home"
    monkeypatch.setenv("KNOBFLOW_WORK_POOL", "other")
    assert current_settings().work_pool == "other"
    url = database_url(str(settings.optuna_storage), settings)
    assert f"knobflow:{SECRET}@" in url  # for this process's SQLAlchemy only
    assert SECRET not in redacted(url) and "knobflow:***@" in redacted(url)


def test_bad_settings_name_the_file_the_field_and_the_fix(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _config(tmp_path, work_poool="x")
    monkeypatch.setenv("KNOBFLOW_CONFIG", str(path))
    with pytest.raises(KnobflowError, match=r"knobflow.toml.*'work_poool'.*remove it"):
        current_settings()
    monkeypatch.setenv("KNOBFLOW_CONFIG", str(tmp_path / "missing.toml"))
    with pytest.raises(KnobflowError, match=r"missing\.toml: no such file"):
        current_settings()
    monkeypatch.setenv("KNOBFLOW_CONFIG", str(_config(tmp_path)))
    (tmp_path / "secret").chmod(0o644)
    with pytest.raises(KnobflowError, match=r"readable by others.*chmod 600"):
        read_secret(current_settings())


def test_doctor_with_the_embedded_stores_answers(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KNOBFLOW_", "PREFECT_API",
                                                                    "MLFLOW_TRACKING"))}
    result = run_cli(["doctor", "--json", "--home", str(tmp_path / "h")], cwd=tmp_path,
                     env=env)
    assert result.returncode == 0, result.stderr
    found = {c["store"]: c for c in json.loads(result.stdout)["checks"]}
    assert set(found) == {"home", "optuna", "mlflow", "prefect", "records"}
    assert all(c["answers"] for c in found.values())
    assert found["mlflow"]["where"] == f"sqlite:///{tmp_path / 'h' / 'mlflow.db'}"


def test_doctor_says_which_store_does_not_answer_and_shows_no_secret(tmp_path: Path) -> None:
    path = _config(tmp_path)
    result = run_cli(["doctor", "--json"], cwd=tmp_path, env={"KNOBFLOW_CONFIG": str(path)})
    assert result.returncode == 1, result.stderr
    found = {c["store"]: c for c in json.loads(result.stdout)["checks"]}
    assert [s for s, c in found.items() if not c["answers"]] == [
        "optuna", "mlflow", "prefect", "records"]
    assert found["home"]["answers"]
    assert found["optuna"]["where"].startswith("postgresql+psycopg2://knobflow@127.0.0.1:")
    assert SECRET not in result.stdout + result.stderr
    bad = run_cli(["doctor"], cwd=tmp_path, env={"KNOBFLOW_CONFIG": str(tmp_path / "nope")})
    assert bad.returncode == 2 and "KNOBFLOW_CONFIG" in bad.stderr
