"""The servers and workers of the shared stack (``flows.stack``) besides PostgreSQL and the Prefect
server (``flows.server``): the MLflow tracking server, the process work pool with its queues, and
Prefect workers; and how a process group of the stack is told apart from a later one and ended.

Every process is started in a session of its own (its process group is its pid), with its secret
in its environment or in a 0600 file, never on its command line, and its output in
``DIR/logs/NAME.log``.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import psutil

from targets.common.errors import EnvironmentFault
from targets.process import free_port, last_lines, new_secret, write_private
from tasks.process_groups import group_runs

__all__ = [
    "QUEUES",
    "ComponentFault",
    "alive",
    "end_group",
    "ensure_work_pool",
    "http_status",
    "identity",
    "import_prefect_client",
    "mlflow_answers",
    "prefect_answers",
    "read_json",
    "reuse_port",
    "start_mlflow",
    "start_worker",
    "sweep",
    "wait_workers",
]

USER = "knobflow"
#: How long MLflow's auth app keeps a checked credential (its ``auth_cache_ttl_seconds``, off by
#: default). Each check is a scrypt hash (~0.1 s of CPU here) on every request, and a job's
#: trial record is five requests: without the cache a 60-trial job on the stack waited ~45 s
#: at its end for its records. The cache is keyed by an HMAC of the password under a key made
#: at the server's start; a wrong password is still checked (and refused) every time.
AUTH_CACHE_S = 300
#: The work queues of the stack's pool and their priorities (1 is served first).
QUEUES = {"production": 1, "default": 10}


class ComponentFault(EnvironmentFault):
    """A server or worker of the stack did not start, or does not answer."""


# -- processes ---------------------------------------------------------------------------------
def identity(pid: int) -> dict[str, Any]:
    """What tells a process apart from a later one with its pid: the pid and its start time."""
    try:
        return {"pid": pid, "started": psutil.Process(pid).create_time()}
    except psutil.Error:
        return {"pid": pid, "started": 0.0}


def alive(record: Mapping[str, Any] | None) -> bool:
    """Whether the process ``record`` (``identity``) names still runs (not a zombie)."""
    if not record or not record.get("pid"):
        return False
    try:
        proc = psutil.Process(int(record["pid"]))
        same = abs(proc.create_time() - float(record.get("started") or 0.0)) < 0.5
        return same and proc.status() != psutil.STATUS_ZOMBIE
    except (psutil.Error, ValueError):
        return False


def end_group(record: Mapping[str, Any] | None, signals: tuple[tuple[int, float], ...],
              proc: subprocess.Popen[bytes] | None = None) -> None:
    """End the process group led by ``record``'s process: each (signal, seconds to wait) in
    turn while any of the group lives, then SIGKILL. Nothing if the leader is another process."""
    if not record or not record.get("pid"):
        return
    pgid = int(record["pid"])
    if not alive(record) and not group_runs(pgid):
        return
    for sig, wait_s in (*signals, (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if proc is not None:
                proc.poll()  # reap our own child
            if not group_runs(pgid):
                break
            time.sleep(0.1)
        else:
            continue
        break
    if proc is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)


def _popen(cmd: list[str], log_path: Path, env: Mapping[str, str],
           cwd: Path | None) -> subprocess.Popen[bytes]:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=dict(env), cwd=cwd,
                                start_new_session=True)


def log_tail(path: Path, n: int = 5) -> str:
    try:
        return last_lines(path.read_text(errors="replace"), n=n)
    except OSError:
        return "(no log)"


# -- MLflow ------------------------------------------------------------------------------------
def http_status(url: str, auth: tuple[str, str] | None = None, timeout: float = 3.0) -> int:
    """The HTTP status of a GET of ``url`` (0: no answer)."""
    request = urllib.request.Request(url)
    if auth:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (urllib.error.URLError, OSError, ValueError):
        return 0


def mlflow_answers(url: str, secret: str | None) -> bool:
    """Whether the tracking server at ``url`` answers knobflow (with the secret) and only it."""
    probe = f"{url}/api/2.0/mlflow/experiments/search?max_results=1"
    return bool(secret) and http_status(probe, (USER, secret or "")) == 200


def prefect_answers(url: str, secret: str | None) -> bool:
    """Whether the Prefect API at ``url`` answers knobflow (``/health`` answers anyone: this
    asks something that needs the secret)."""
    return bool(secret) and http_status(f"{url}/admin/version", (USER, secret or "")) == 200


def start_mlflow(dir: Path, *, backend_uri: str, host: str, port: int, secret: str,
                 pgpass: Path, auth_cache_s: int = AUTH_CACHE_S) -> subprocess.Popen[bytes]:
    """Start MLflow's tracking server with basic auth (knobflow is its admin, nobody else may
    do anything) and served artifacts (``wait_mlflow`` waits for it). A checked credential is
    kept ``auth_cache_s`` seconds (``AUTH_CACHE_S``). The database password reaches psycopg2
    through ``PGPASSFILE``, the admin's through the 0600 auth config."""
    config = dir / "mlflow-auth.ini"
    write_private(config, "[mlflow]\ndefault_permission = NO_PERMISSIONS\n"
                  f"database_uri = sqlite:///{dir / 'mlflow-auth.db'}\n"
                  f"admin_username = {USER}\nadmin_password = {secret.replace('%', '%%')}\n"
                  "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
                  f"auth_cache_ttl_seconds = {int(auth_cache_s)}\n")
    (dir / "artifacts").mkdir(mode=0o700, exist_ok=True)
    flask_key = dir / "mlflow-flask.key"  # signs its CSRF tokens: kept across restarts
    if not flask_key.exists():
        write_private(flask_key, new_secret() + "\n")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PG", "MLFLOW_TRACKING_", "PREFECT_API_"))}
    env.update(PGPASSFILE=str(pgpass), MLFLOW_AUTH_CONFIG_PATH=str(config),
               MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="true",
               GIT_PYTHON_REFRESH="quiet", MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false",
               MLFLOW_FLASK_SERVER_SECRET_KEY=flask_key.read_text(encoding="utf-8").strip())
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend_uri,
           "--serve-artifacts", "--artifacts-destination", str(dir / "artifacts"),
           "--host", host, "--port", str(port), "--workers", "1", "--app-name", "basic-auth"]
    if host not in ("127.0.0.1", "localhost", "::1", "0.0.0.0"):  # clients name it by address
        cmd += ["--allowed-hosts", f"{host},{host}:{port},localhost,127.0.0.1"]
    log_path = dir / "logs" / "mlflow.log"
    proc = _popen(cmd, log_path, env, cwd=dir)
    return proc


def wait_mlflow(proc: subprocess.Popen[bytes], url: str, secret: str, log_path: Path,
                timeout: float = 180.0) -> None:
    """Wait until the tracking server answers knobflow; check that a stranger is refused."""
    deadline = time.monotonic() + timeout
    while not mlflow_answers(url, secret):
        if proc.poll() is not None or time.monotonic() > deadline:
            why = (f"exited ({proc.returncode})" if proc.returncode is not None
                   else f"did not answer within {timeout:g} s")
            raise ComponentFault(f"the MLflow server {why}; {log_path} ends: "
                                 f"{log_tail(log_path)}")
        time.sleep(0.25)
    probe = f"{url}/api/2.0/mlflow/experiments/search?max_results=1"
    if http_status(probe) != 401:
        raise ComponentFault("the MLflow server answers a request without the password: its "
                             f"basic auth is not on ({log_path})")


# -- the work pool and workers -----------------------------------------------------------------
def ensure_work_pool(client_env: Mapping[str, str], pool: str) -> None:
    """The process work pool ``pool`` with the queues of ``QUEUES`` at their priorities."""
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists
    from prefect.workers.process import ProcessWorker

    from flows.server import api_client

    with api_client(client_env) as client:
        with contextlib.suppress(ObjectAlreadyExists):
            client.create_work_pool(WorkPoolCreate(
                name=pool, type="process",
                base_job_template=ProcessWorker.get_default_base_job_template()))
        queues = {q.name: q for q in client.read_work_queues(work_pool_name=pool)}
        for name, priority in sorted(QUEUES.items(), key=lambda kv: -kv[1]):
            if name in queues:
                if queues[name].priority != priority:
                    client.update_work_queue(queues[name].id, priority=priority)
            else:
                client.create_work_queue(name=name, work_pool_name=pool, priority=priority)


def worker_name(index: int) -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{index}-{int(time.time() * 1000) % 100000}"


def start_worker(dir: Path, name: str, pool: str, queue: str | None,
                 env: Mapping[str, str], cwd: Path | None = None) -> subprocess.Popen[bytes]:
    """A ``prefect worker start`` of the process type on ``pool`` (and ``queue``), the API's URL
    and secret in its environment; one flow run at a time (``--limit 1``): a worker owns one
    test instance, and a second run would measure beside the first."""
    cmd = [sys.executable, "-m", "prefect", "worker", "start", "--pool", pool,
           "--type", "process", "--name", name, "--limit", "1"]
    if queue:
        cmd += ["--work-queue", queue]
    return _popen(cmd, dir / "logs" / f"worker-{name}.log", env, cwd)


def wait_workers(client_env: Mapping[str, str], pool: str,
                 procs: Mapping[str, subprocess.Popen[bytes]], log_dir: Path,
                 timeout: float = 120.0) -> None:
    """Wait until every worker of ``procs`` (by name) has told the server it polls ``pool``."""
    from flows.server import api_client

    deadline = time.monotonic() + timeout
    with api_client(client_env) as client:
        while True:
            for name, proc in procs.items():
                if proc.poll() is not None:
                    log = log_dir / f"worker-{name}.log"
                    raise ComponentFault(f"worker {name} exited ({proc.returncode}); {log} "
                                         f"ends: {log_tail(log)}")
            seen = {w.name for w in client.read_workers_for_work_pool(pool)}
            if set(procs) <= seen:
                return
            if time.monotonic() > deadline:
                missing = sorted(set(procs) - seen)
                raise ComponentFault(f"workers {', '.join(missing)} did not reach the Prefect "
                                     f"server within {timeout:g} s (logs in {log_dir})")
            time.sleep(0.5)


# -- small helpers of flows.stack ---------------------------------------------------------
def import_prefect_client() -> None:
    """Import what the work pool's creation needs (seconds), while the servers start."""
    with contextlib.suppress(Exception):
        import prefect.client.orchestration
        import prefect.workers.process  # noqa: F401


def read_json(path: Path) -> dict[str, Any]:
    try:
        return dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return {}


def sweep(dir: Path) -> None:
    """SIGKILL what is left whose command line names the stack's directory (a flow run a killed
    worker left, say): nothing of the stack may outlive ``stop``."""
    mine = {os.getpid(), *(p.pid for p in psutil.Process().parents())}
    names = re.compile(re.escape(str(dir)) + r"(?=/|\s|$)")  # not /tmp/st10 for /tmp/st1
    left = []
    for proc in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            if proc.pid not in mine and names.search(" ".join(proc.info["cmdline"] or [])):
                proc.kill()
                left.append(proc)
    psutil.wait_procs(left, timeout=5)


def reuse_port(previous: int | None, host: str) -> int:
    """The port used before when it is free again (clients' settings stay right), else a new."""
    if previous:
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do
            try:
                sock.bind(("127.0.0.1" if host in ("localhost", "::1") else host, int(previous)))
                return int(previous)
            except OSError:
                pass
    return free_port()
