"""The one MLflow adapter of knobflow: tracking, training and the registry all go through it.

* ``client_for``: a client for a store, tracking and registry in the same place;
* ``experiment_id``: get or create an experiment (a concurrent creator is not an error), with its
  artifacts beside an embedded SQLite store (``default_artifact_root``);
* ``param``: a parameter cut to the length every store accepts;
* ``process_tracking_uri``: MLflow's process-wide URI for the calls that ignore a client's;
* ``champion_lock``: what serialises champion decisions: the shared records' lock (a PostgreSQL
  advisory lock, held across hosts) when the records are shared, else the lock file beside a
  local store;
* ``source_tags``: MLflow's system tags saying what made a run (user, source, git commit), and
  ``NOTE`` (``mlflow.note.content``), the description the UI shows for experiments and runs.

Nothing here sets MLflow's process-wide tracking URI for longer than one block.
"""

from __future__ import annotations

import contextlib
import functools
import getpass
import json
import logging
import os
import shutil
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse, urlsplit, urlunsplit

from mlflow.entities import Param, SourceType
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils import mlflow_tags

from targets.common.errors import KnobflowError
from targets.common.files import file_lock, user_cache_dir
from targets.common.records import records

__all__ = [
    "NOTE", "PARAM_MAX", "champion_lock", "champion_lock_path", "check_reachable", "client_for",
    "default_artifact_root", "experiment_id", "param", "process_tracking_uri", "source_tags",
]

#: The tag MLflow shows as an experiment's or a run's description.
NOTE = mlflow_tags.MLFLOW_RUN_NOTE
#: The folder knobflow's own code is in: a git checkout gives runs its commit.
_CODE = Path(__file__).resolve().parents[1]
#: The longest parameter value written (MLflow's SQL stores accept 6000 characters).
PARAM_MAX = 6000
# "Creating initial MLflow database tables..." on every new store is noise to an operator
logging.getLogger("mlflow").setLevel(logging.WARNING)
log = logging.getLogger("knobflow.store")
_URI_LOCK = threading.RLock()
_READY: set[str] = set()  # embedded stores this process has seen created


def client_for(tracking_uri: str) -> MlflowClient:
    """The client every call uses: tracking and registry in the same store. An embedded store
    is created (or its schema migrated) by one process at a time: two jobs starting together on
    a fresh home otherwise both run MLflow's first migration and one dies in it."""
    if not tracking_uri.startswith("sqlite:///") or tracking_uri in _READY:
        return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    db = Path(tracking_uri.removeprefix("sqlite:///"))
    with file_lock(db.with_name(db.name + ".init.lock")):
        if not db.exists():
            _create_store(db)
        # the client opens its stores when it is made: that migrates an older schema
        client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        client.search_registered_models(max_results=1)
    _READY.add(tracking_uri)
    return client


def _create_store(db: Path) -> None:
    """Create an embedded store in a file of its own and move it into place when it is
    complete: a job killed during MLflow's first migration leaves no half-made store behind
    (the next one would fail on it: "index ... already exists"). MLflow's migrations take
    3-15 s here, so the first new store of an MLflow version is kept as a template
    (``_template``) and later ones are copies of it (milliseconds)."""
    for stale in db.parent.glob(f".{db.name}.*.creating"):  # left by a killed creator
        stale.unlink(missing_ok=True)
    tmp = db.with_name(f".{db.name}.{os.getpid()}.creating")
    template = _template()
    if template is not None and template.is_file():
        shutil.copyfile(template, tmp)
        # what MLflow gives the Default experiment in this process (it is never used)
        with contextlib.closing(sqlite3.connect(tmp)) as conn, conn:
            conn.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0",
                         (os.path.join(os.path.abspath("mlruns"), "0"),))
    else:
        uri = f"sqlite:///{tmp}"
        MlflowClient(tracking_uri=uri, registry_uri=uri).search_registered_models(max_results=1)
        if template is not None:
            _keep_template(tmp, template)
    os.replace(tmp, db)


def _template() -> Path | None:
    """Where the empty store of this MLflow version is kept (the user's cache folder); None
    when ``KNOBFLOW_STORE_TEMPLATE=0`` turns templates off."""
    if os.environ.get("KNOBFLOW_STORE_TEMPLATE", "1") == "0":
        return None
    import mlflow

    return user_cache_dir() / f"mlflow-{mlflow.__version__}-empty.db"


def _keep_template(store: Path, template: Path) -> None:
    """Copy the new empty ``store`` to ``template`` (whole or not at all); a cache that cannot
    be written only costs the next store its migrations."""
    try:
        template.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        part = template.with_name(f".{template.name}.{os.getpid()}.part")
        shutil.copyfile(store, part)
        os.replace(part, template)
    except OSError as exc:
        log.debug("the empty MLflow store was not kept as a template: %s", exc)


def import_now(tracking_uri: str) -> None:
    """Load now MLflow's SQL stores, which the job's first use of an embedded store would load
    (0.5-0.9 s: their modules map MLflow's tables; the command does it while Prefect's
    temporary server starts). A tracking server needs MLflow's REST store instead."""
    if tracking_uri.startswith(("http://", "https://")):
        return
    import mlflow.store.model_registry.sqlalchemy_store
    import mlflow.store.tracking.sqlalchemy_store  # noqa: F401


def check_reachable(tracking_uri: str, timeout: float = 5.0) -> None:
    """A tracking server must answer its health check within ``timeout`` seconds; else a
    ``KnobflowError`` in one line, found in seconds (MLflow's own client retries for minutes).
    An embedded store needs no check."""
    if not tracking_uri.startswith(("http://", "https://")):
        return
    import requests

    parts = urlsplit(tracking_uri)
    shown = urlunsplit(parts._replace(netloc=parts.hostname + (f":{parts.port}" if parts.port
                                                                 else "")))
    try:
        answer = requests.get(tracking_uri.rstrip("/") + "/health", timeout=timeout)
        answer.raise_for_status()
    except requests.RequestException as exc:
        reason = (f"no answer in {timeout:g} s" if isinstance(exc, requests.Timeout)
                  else f"HTTP {exc.response.status_code}" if isinstance(exc, requests.HTTPError)
                  and exc.response is not None else "cannot connect")
        raise KnobflowError(
            f"the MLflow tracking server {shown} does not answer ({reason}); start it, or "
            "unset MLFLOW_TRACKING_URI to use the embedded store under the knobflow home"
        ) from None


def default_artifact_root(tracking_uri: str) -> Path | None:
    """Artifacts beside an embedded SQLite store (``<home>/artifacts``, as tuning jobs use);
    None for a tracking server, which keeps its own."""
    if tracking_uri.startswith("sqlite:///"):
        return Path(tracking_uri.removeprefix("sqlite:///")).resolve().parent / "artifacts"
    return None


def experiment_id(client: MlflowClient, name: str, artifact_root: Path | None = None,
                  description: str = "") -> str:
    """The id of experiment ``name``, created (artifacts under ``artifact_root`` when given and
    the store is embedded; a tracking server's own artifact store otherwise) if
    it does not exist; two processes creating it at once both get the same one. An experiment
    without a description gets ``description`` (one an operator wrote in the UI is kept)."""
    found = client.get_experiment_by_name(name)
    if client.tracking_uri.startswith(("http://", "https://")):
        artifact_root = None  # a tracking server keeps (serves) the artifacts every host reads
    if found is None:
        try:
            if artifact_root is None:
                return _described(client, str(client.create_experiment(name)), description)
            artifact_root.mkdir(parents=True, exist_ok=True)
            return _described(client, str(client.create_experiment(
                name, artifact_location=artifact_root.resolve().as_uri())), description)
        except MlflowException:  # created by a concurrent process between the two calls
            found = client.get_experiment_by_name(name)
            if found is None:
                raise
    if description and not (found.tags or {}).get(NOTE):
        client.set_experiment_tag(found.experiment_id, NOTE, description)
    return str(found.experiment_id)


def _described(client: MlflowClient, exp_id: str, description: str) -> str:
    if description:
        client.set_experiment_tag(exp_id, NOTE, description)
    return exp_id


def source_tags(source: str) -> dict[str, str]:
    """MLflow's system tags of a run made by knobflow's ``source`` (e.g. ``flows/tune.py``):
    ``mlflow.source.name``, ``mlflow.source.type`` (``JOB``), ``mlflow.user`` and, when
    knobflow's code is a git checkout, ``mlflow.source.git.commit``, ``.branch`` and
    ``.repoURL`` (credentials in the URL dropped), as the MLflow UI shows them."""
    tags = {mlflow_tags.MLFLOW_SOURCE_NAME: source,
            mlflow_tags.MLFLOW_SOURCE_TYPE: SourceType.to_string(SourceType.JOB),
            mlflow_tags.MLFLOW_USER: _user()}
    tags.update(_git_tags())
    return tags


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container)
        return str(os.getuid())


@functools.cache
def _git_tags() -> dict[str, str]:
    """The commit, branch and remote of knobflow's code, once per process ({} outside git)."""
    try:
        import git  # GitPython, which MLflow depends on

        repo = git.Repo(_CODE, search_parent_directories=True)
        tags = {mlflow_tags.MLFLOW_GIT_COMMIT: repo.head.commit.hexsha}
        if not repo.head.is_detached:
            tags[mlflow_tags.MLFLOW_GIT_BRANCH] = repo.active_branch.name
        url = next((r.url for r in repo.remotes), None)
        if url:
            parts = urlsplit(url)
            tags[mlflow_tags.MLFLOW_GIT_REPO_URL] = urlunsplit(parts._replace(
                netloc=parts.netloc.rpartition("@")[2])) if parts.scheme else url
        return tags
    except Exception as exc:  # no git, not a checkout, a broken one: no commit to record
        log.debug("no git commit for %s: %s", _CODE, exc)
        return {}


def param(key: str, value: Any) -> Param:
    """A run parameter: text as it is, anything else as JSON, cut to ``PARAM_MAX``."""
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return Param(key, text[:PARAM_MAX])


@contextmanager
def process_tracking_uri(uri: str) -> Iterator[None]:
    """Make ``uri`` MLflow's process-wide tracking URI for the block only, then restore the URI
    and ``$MLFLOW_TRACKING_URI`` exactly as they were.

    Some MLflow 3.17 code ignores the client's URI and uses the process-wide one (by default
    ``sqlite:///mlflow.db`` in the working directory): the fluent ``log_model``, the registry
    store resolving a ``models:/m-...`` source (``MlflowClient()`` inside
    ``create_model_version``; MLflow's own TODO), and resolving ``models:/<name>@<alias>`` for a
    download even when ``download_artifacts`` is given both URIs. Registry and tracking are the
    same store here. Setting the URI also writes ``$MLFLOW_TRACKING_URI`` for child processes,
    and MLflow's ``_use_tracking_uri`` unsets a user's variable on the way out; hence this. One
    block at a time per process."""
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    with _URI_LOCK:
        saved_uri, saved_registry = tracking_utils._tracking_uri, registry_utils._registry_uri
        saved_env = os.environ.get("MLFLOW_TRACKING_URI")
        try:
            tracking_utils.set_tracking_uri(uri)
            registry_utils._registry_uri = uri  # not set_registry_uri: it writes the environment
            yield
        finally:
            registry_utils._registry_uri = saved_registry
            tracking_utils.set_tracking_uri(saved_uri)
            if saved_env is None:
                os.environ.pop("MLFLOW_TRACKING_URI", None)
            else:
                os.environ["MLFLOW_TRACKING_URI"] = saved_env


def champion_lock_path(tracking_uri: str) -> Path | None:
    """The file that serialises champion decisions of a local store (next to the SQLite
    database, or in a file store's directory); None for a tracking server."""
    parsed = urlparse(tracking_uri)
    if parsed.scheme == "sqlite":
        db = tracking_uri.split(":///", 1)[1] if ":///" in tracking_uri else ""
        if not db or db == ":memory:":
            return None
        path = Path(db)
        return path.with_name(path.name + ".champion.lock")
    if parsed.scheme in ("", "file"):
        return Path(parsed.path or tracking_uri) / ".champion.lock"
    return None


@contextmanager
def champion_lock(tracking_uri: str, name: str = "") -> Iterator[None]:
    """Hold the champion lock of registered model ``name``: two processes training models of
    one service at once (replicas finishing together, on one host or many) decide one after the
    other, each against the champion the other left. With shared records (``records_url``) it is
    their lock ``champion:<name>``, a PostgreSQL advisory lock every host takes; else the file
    beside a local store. A tracking server without shared records gets no lock (its clients
    share no file system)."""
    store = records()
    if name and store.shared:
        with store.lock(f"champion:{name}"):
            yield
        return
    path = champion_lock_path(tracking_uri)
    if path is None:
        yield
        return
    with file_lock(path):
        yield
