"""Process-wide settings of knobflow: where its state lives, and an environment that stays quiet.

State is embedded by default under ``./.knobflow`` (override with ``KNOBFLOW_HOME``): the Optuna
journals, the MLflow store, job records and instance data directories. Every entry point (the
``knobflow`` command, the tune flow, the benchmarks, the tests) calls ``quiet_environment()``
first: nothing here changes the environment when it is imported.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

__all__ = ["knobflow_home", "quiet_environment", "tracking_uri", "writable_home"]

_TELEMETRY_OFF = {
    "DO_NOT_TRACK": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",  # MLflow wants "true", not "1"
}
_QUIET_DEFAULTS = {
    # a fresh PREFECT_HOME runs migrations: 11-29 s here, more than Prefect's 20 s default
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    "GIT_PYTHON_REFRESH": "quiet",  # MLflow probes git; there may be none
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}


def quiet_environment() -> None:
    """Turn telemetry off (always) and set quiet defaults the user has not set.

    MLflow decides about telemetry when it is imported; if it already was (a flow loaded by a
    Prefect worker imports it with the flow's module), its telemetry client is dropped here."""
    os.environ.update(_TELEMETRY_OFF)
    for key, value in _QUIET_DEFAULTS.items():
        os.environ.setdefault(key, value)
    if "mlflow.telemetry" in sys.modules:
        from mlflow.telemetry import set_telemetry_client

        set_telemetry_client()  # reads the environment again: no client


def knobflow_home(home: str | os.PathLike[str] | None = None) -> Path:
    """The state directory: ``home`` if given, else ``$KNOBFLOW_HOME``, else ``./.knobflow``."""
    chosen = home or os.environ.get("KNOBFLOW_HOME") or ".knobflow"
    return Path(chosen).expanduser().resolve()


def tracking_uri(home: Path) -> str:
    """MLflow tracking URI: ``$MLFLOW_TRACKING_URI`` if set, else the embedded SQLite store."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{home / 'mlflow.db'}"


def writable_home(home: Path) -> Path:
    """``home``, checked to be a directory knobflow can write to (or create); a
    ``KnobflowError`` names it, what is wrong and the fix, before anything else runs."""
    from targets.common.errors import KnobflowError

    existing = home
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise KnobflowError(f"the knobflow home {home} is not a directory ({existing} is a "
                            "file); choose another with --home or KNOBFLOW_HOME")
    probe = existing / f".knobflow-write-test-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise KnobflowError(f"the knobflow home {home} is not writable ({exc.strerror}: "
                            f"{existing}); choose another with --home or KNOBFLOW_HOME, or "
                            "make it writable") from None
    return home
