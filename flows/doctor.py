"""Where each of knobflow's stores points, and whether it answers (``knobflow doctor``).

One ``Check`` per store of ``Settings`` (targets/common/config.py): the Optuna storage, the MLflow
tracking store, the Prefect API (and, with a server, the work pool and its online workers), and
knobflow's own records. The embedded default of a store answers when the home is writable; a
shared one when it answers a real request with the stack's secret within a few seconds. URLs are
shown without their password.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from flows.server import api_answers
from flows.stack_services import prefect_answers
from targets.common.config import Settings, read_secret, redacted
from targets.common.errors import KnobflowError
from targets.common.settings import database_url, writable_home

__all__ = ["Check", "checks"]

TIMEOUT_S = 5.0


@dataclass
class Check:
    """One store: what it is, where it points, whether it answers, and what was seen."""

    store: str
    where: str
    answers: bool
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _database(url: str, settings: Settings) -> tuple[bool, str]:
    """Connect to a SQL database with the stack's password and ask it for its version."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import SQLAlchemyError

    args = {"connect_timeout": int(TIMEOUT_S)} if url.startswith("postgresql") else {}
    engine = create_engine(database_url(url, settings), connect_args=args, poolclass=None)
    try:
        with engine.connect() as conn:
            version = conn.execute(text("SELECT version()")).scalar() if url.startswith(
                "postgresql") else "ok"
        return True, str(version).split(" on ")[0]
    except SQLAlchemyError as exc:
        return False, str(exc.orig if getattr(exc, "orig", None) else exc).strip().splitlines()[0]
    finally:
        engine.dispose()


def _optuna(settings: Settings, home: Path) -> Check:
    if not settings.optuna_storage:
        return Check("optuna", str(home / "optuna.journal"), True, "embedded journal")
    ok, detail = _database(settings.optuna_storage, settings)
    return Check("optuna", redacted(settings.optuna_storage), ok, detail)


def _records(settings: Settings, home: Path) -> Check:
    if not settings.records_url:
        return Check("records", str(home), True, "files in the home")
    ok, detail = _database(settings.records_url, settings)
    return Check("records", redacted(settings.records_url), ok, detail)


def _mlflow(settings: Settings, home: Path) -> Check:
    uri = settings.mlflow_uri(home)
    if not uri.startswith(("http://", "https://")):
        return Check("mlflow", uri, True, "embedded store")
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from model_registry.store import check_reachable

    try:
        check_reachable(uri, TIMEOUT_S)
        found = MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    except (KnobflowError, MlflowException) as exc:
        return Check("mlflow", uri, False, str(exc).splitlines()[0][:200])
    return Check("mlflow", uri, True, f"tracking server ({len(found)} experiment seen)"
                 if found else "tracking server")


def _prefect(settings: Settings) -> Check:
    url = settings.api_url()
    if not url:
        return Check("prefect", "temporary server", True, "started per command (no deployments)")
    secret = read_secret(settings)
    # /health answers anyone: with a secret, ask a path that needs it (the stack's own check)
    if not (prefect_answers(url, secret) if secret else api_answers(url, None, TIMEOUT_S)):
        return Check("prefect", url, False, "no answer (or the secret was refused)")
    return Check("prefect", url, True, "server")


def _work_pool(settings: Settings) -> Check:
    """The work pool and how many of its workers are online (a server only)."""
    from prefect import get_client
    from prefect.exceptions import ObjectNotFound

    name = settings.work_pool
    try:
        with get_client(sync_client=True) as client:
            pool = client.read_work_pool(name)
            workers = client.read_workers_for_work_pool(name)
    except ObjectNotFound:
        return Check("work pool", name, False, "no such pool; infra/stack start makes it")
    online = [w for w in workers if str(getattr(w, "status", "")).upper().endswith("ONLINE")]
    return Check("work pool", name, True, f"{pool.type}, {len(online)} worker(s) online")


def checks(settings: Settings) -> list[Check]:
    """Every store's check, in the order a tuning job needs them."""
    home = Path(settings.home).expanduser().resolve()
    try:
        writable_home(home)
        found = [Check("home", str(home), True, "writable")]
    except KnobflowError as exc:
        found = [Check("home", str(home), False, str(exc))]
    found += [_optuna(settings, home), _mlflow(settings, home), _prefect(settings)]
    if found[-1].answers and settings.api_url():
        found.append(_work_pool(settings))
    found.append(_records(settings, home))
    return found
