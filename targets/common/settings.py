"""Process-wide settings of knobflow: where its state lives, and an environment that stays quiet.

State is embedded by default under ``./.knobflow`` (override with ``KNOBFLOW_HOME``): the Optuna
journals, the MLflow store, job records and instance data directories. ``Settings`` is the one
place that points every store elsewhere: from the environment (``KNOBFLOW_*``) and a TOML file
named by ``KNOBFLOW_CONFIG`` (what ``infra/stack start`` writes), the environment first. With a
shared stack the Optuna storage and knobflow's own records are in PostgreSQL, MLflow is a tracking
server and Prefect a server with a work pool; the stack's secret (the password of the user
``knobflow`` everywhere) stays in its 0600 file and is put into URLs and client environments in
this process only (``database_url``, ``quiet_environment``), never on a command line or in a log.

Every entry point (the ``knobflow`` command, the tune flow, the benchmarks, the tests) calls
``quiet_environment()`` first: nothing here changes the environment when it is imported.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from targets.common.config import Settings

__all__ = [
    "CONFIG_ENV", "STACK_USER", "Settings", "configured", "current_settings", "database_url",
    "knobflow_home", "quiet_environment", "read_secret", "redacted", "tracking_uri",
    "writable_home",
]

CONFIG_ENV = "KNOBFLOW_CONFIG"  # the TOML file of settings (``infra/stack env`` exports it)
STACK_USER = "knobflow"  # the user knobflow is in PostgreSQL, MLflow and Prefect of a stack
_STORE_VARIABLES = ("KNOBFLOW_OPTUNA_STORAGE", "KNOBFLOW_TRACKING_URI", "KNOBFLOW_PREFECT_API_URL",
                    "KNOBFLOW_RECORDS_URL", "KNOBFLOW_SECRET_FILE")

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


def configured() -> bool:
    """Whether settings beyond the defaults are given (a ``KNOBFLOW_CONFIG`` file or a store's
    variable): only then is the settings object (pydantic-settings, ~0.3 s) loaded."""
    return bool(os.environ.get(CONFIG_ENV) or any(os.environ.get(v) for v in _STORE_VARIABLES))


def current_settings(home: str | os.PathLike[str] | None = None) -> Settings:
    """The settings in force (``targets.common.config.current_settings``)."""
    from targets.common import config

    return config.current_settings(home)


def read_secret(settings: Settings) -> str | None:
    """The stack's secret from its private file, or None (``targets.common.config``)."""
    from targets.common import config

    return config.read_secret(settings)


def database_url(url: str, settings: Settings | None = None) -> str:
    """``url`` with the stack's password in it, for this process only (never shown)."""
    from targets.common import config

    return config.database_url(url, settings)


def redacted(url: str) -> str:
    """``url`` as it may be shown: any password replaced by ``***``."""
    from targets.common import config

    return config.redacted(url)


def __getattr__(name: str) -> Any:
    if name == "Settings":  # the class itself, loaded on first use
        from targets.common.config import Settings

        return Settings
    raise AttributeError(name)


def _stack_environment(settings: Settings) -> dict[str, str]:
    """What Prefect's and MLflow's clients (and the processes knobflow starts) need to reach
    the configured servers with the stack's secret."""
    env: dict[str, str] = {}
    if settings.prefect_api_url:
        env["PREFECT_API_URL"] = settings.prefect_api_url
    if settings.tracking_uri:
        env["MLFLOW_TRACKING_URI"] = settings.tracking_uri
    secret = read_secret(settings)
    if secret is not None:
        if settings.prefect_api_url:
            env["PREFECT_API_AUTH_STRING"] = f"{STACK_USER}:{secret}"
        if settings.tracking_uri and settings.tracking_uri.startswith(("http://", "https://")):
            env["MLFLOW_TRACKING_USERNAME"] = STACK_USER
            env["MLFLOW_TRACKING_PASSWORD"] = secret
    return env


def quiet_environment() -> None:
    """Turn telemetry off (always), set quiet defaults the user has not set, and point
    Prefect's and MLflow's clients at the configured stack (``Settings``).

    MLflow decides about telemetry when it is imported; if it already was (a flow loaded by a
    Prefect worker imports it with the flow's module), its telemetry client is dropped here."""
    os.environ.update(_TELEMETRY_OFF)
    for key, value in _QUIET_DEFAULTS.items():
        os.environ.setdefault(key, value)
    if configured():
        os.environ.update(_stack_environment(current_settings()))
    if "mlflow.telemetry" in sys.modules:
        from mlflow.telemetry import set_telemetry_client

        set_telemetry_client()  # reads the environment again: no client


def knobflow_home(home: str | os.PathLike[str] | None = None,
                  settings: Settings | None = None) -> Path:
    """The state directory: ``home`` if given, else ``$KNOBFLOW_HOME`` (or the settings file's
    ``home``), else ``./.knobflow``."""
    chosen: Any = home or os.environ.get("KNOBFLOW_HOME")
    if not chosen:
        chosen = (settings or current_settings()).home if os.environ.get(CONFIG_ENV) \
            else ".knobflow"
    return Path(chosen).expanduser().resolve()


def tracking_uri(home: Path) -> str:
    """MLflow tracking URI: the setting (a stack's tracking server), ``$MLFLOW_TRACKING_URI``,
    else the embedded SQLite store of ``home``."""
    if configured():
        return current_settings().mlflow_uri(home)
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
