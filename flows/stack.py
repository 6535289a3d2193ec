"""The shared stack on one host: PostgreSQL, a Prefect server and an MLflow tracking server on it,
a process work pool and N Prefect workers (``infra/stack start|status|stop|env``).

``Stack(DIR)`` owns DIR (0700): ``stack.json`` (pids, ports, URLs; no secret), ``secret`` (0600,
one line: the password of ``knobflow`` for PostgreSQL, MLflow's and Prefect's basic auth),
``pgpass`` (0600, for libpq clients), ``knobflow.toml`` (knobflow's settings pointing every store at
the stack, the secret named by ``secret_file``), ``logs/*.log``, the cluster (``pg/``), Prefect's
home, MLflow's artifacts and auth database. Every server binds to 127.0.0.1 unless ``host`` says
otherwise. ``stop`` ends every process group the stack started and every process of its cluster.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import psutil
from filelock import FileLock

from flows import stack_services as svc
from flows.server import PrefectServer
from flows.stack_postgres import LOOPBACK, StackPostgres, answers, pgpass_line
from targets.common.errors import EnvironmentFault
from targets.process import free_port, private_dir, write_private

__all__ = ["DEFAULT_DIR", "Stack", "StackError"]

DEFAULT_DIR = Path(".knobflow-stack")
USER = svc.USER
#: Workers ignore SIGTERM for 20 s and more: SIGINT twice (a graceful stop, then a hurried one).
WORKER_SIGNALS = ((signal.SIGINT, 10.0), (signal.SIGINT, 5.0))


class StackError(EnvironmentFault):
    """The stack could not be started, reached or stopped; the message names what and why."""


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class Stack:
    """The shared stack kept in ``dir``."""

    def __init__(self, dir: Path | str = DEFAULT_DIR,
                 progress: Callable[[str], None] | None = _stderr) -> None:
        self.dir = Path(dir).expanduser().resolve()
        self.progress = progress or (lambda line: None)
        self._workers: dict[int, subprocess.Popen[bytes]] = {}

    # -- files -------------------------------------------------------------------------------
    @property
    def record_path(self) -> Path:
        return self.dir / "stack.json"

    @property
    def secret_file(self) -> Path:
        return self.dir / "secret"

    @property
    def config_file(self) -> Path:
        return self.dir / "knobflow.toml"

    def record(self) -> dict[str, Any] | None:
        """What ``stack.json`` says (None when there is none)."""
        try:
            return dict(json.loads(self.record_path.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            return None

    def _write_record(self, data: Mapping[str, Any]) -> None:
        write_private(self.record_path, json.dumps(data, indent=2) + "\n")

    def secret(self) -> str:
        try:
            return self.secret_file.read_text(encoding="utf-8").strip()
        except OSError:
            raise StackError(f"no stack secret in {self.secret_file}: start the stack") from None

    def _lock(self) -> FileLock:
        private_dir(self.dir)
        return FileLock(str(self.dir / "stack.lock"))

    # -- what a client needs -----------------------------------------------------------------
    def env(self) -> dict[str, str]:
        """The environment that points knobflow at the stack, without the secret (which
        knobflow reads from the ``secret_file`` its config names)."""
        data = self.record()
        if data is None:
            raise StackError(f"no stack in {self.dir}: run `infra/stack start --dir {self.dir}`")
        return {"KNOBFLOW_CONFIG": str(self.config_file),
                "PREFECT_API_URL": data["prefect"]["url"],
                "MLFLOW_TRACKING_URI": data["mlflow"]["url"]}

    def client_env(self) -> dict[str, str]:
        """``env`` and the secret as Prefect's and MLflow's clients take it from the environment
        (for processes a test or a worker starts; never print it)."""
        secret = self.secret()
        return {**self.env(), "PREFECT_API_AUTH_STRING": f"{USER}:{secret}",
                "MLFLOW_TRACKING_USERNAME": USER, "MLFLOW_TRACKING_PASSWORD": secret}

    # -- state -------------------------------------------------------------------------------
    def running(self) -> bool:
        """Whether any process of the stack runs."""
        data = self.record()
        if data is None:
            return False
        return any(svc.alive(rec) for rec in _processes(data)) or bool(self._postgres(data)
                                                                        .processes())

    def status(self) -> dict[str, Any]:
        """Each component: its URL, pid, whether it runs and whether it answers knobflow."""
        data = self.record()
        if data is None:
            return {"dir": str(self.dir), "running": False, "components": {}}
        secret = self.secret() if self.secret_file.exists() else ""
        pg, components = data["postgres"], {}
        pg_host = pg["client_host"]
        components["postgres"] = {
            "url": pg["url"], "pid": (pg.get("server") or {}).get("pid"),
            "running": svc.alive(pg.get("server")) or pg.get("external", False),
            "answers": answers(pg_host, pg["port"], pg["user"], secret)}
        components["prefect"] = {
            "url": data["prefect"]["url"], "pid": data["prefect"]["server"]["pid"],
            "running": svc.alive(data["prefect"]["server"]),
            "answers": svc.prefect_answers(data["prefect"]["url"], secret)}
        components["mlflow"] = {
            "url": data["mlflow"]["url"], "pid": data["mlflow"]["server"]["pid"],
            "running": svc.alive(data["mlflow"]["server"]),
            "answers": svc.mlflow_answers(data["mlflow"]["url"], secret)}
        for worker in data.get("workers", []):
            up = svc.alive(worker)
            components[f"worker {worker['name']}"] = {
                "url": f"pool {worker['pool']}" + (f", queue {worker['queue']}"
                                                   if worker.get("queue") else ""),
                "pid": worker["pid"], "running": up, "answers": up}
        every = all(c["running"] and c["answers"] for c in components.values())
        return {"dir": str(self.dir), "running": every, "pool": data.get("pool"),
                "components": components}

    # -- start -------------------------------------------------------------------------------
    def start(self, workers: int = 0, pool: str = "knobflow", postgres_url: str | None = None,
              host: str = "127.0.0.1") -> bool:
        """Bring the stack up (False, and nothing done, if it already runs). A failure stops
        whatever was started and raises ``StackError`` naming the component and its log."""
        with self._lock():
            if self.running():
                return False
            private_dir(self.dir)
            private_dir(self.dir / "logs")
            previous = _read_json(self.dir / "ports.json")
            pg = StackPostgres(self.dir, host, postgres_url)
            data: dict[str, Any] = {"dir": str(self.dir), "host": host, "pool": pool,
                                    "workers": []}
            began = time.monotonic()
            try:
                self._start_all(data, previous, pg)
            except (EnvironmentFault, OSError) as exc:
                self.progress(f"start failed: {exc}")
                self._stop_record(data, pg)
                self.record_path.unlink(missing_ok=True)
                raise StackError(str(exc)) from None
            self.progress(f"stack up in {time.monotonic() - began:.1f} s: {self.dir}")
        if workers:
            self.start_workers(workers, pool)
        return True

    def _start_all(self, data: dict[str, Any], previous: Mapping[str, Any],
                   pg: StackPostgres) -> None:
        host = data["host"]
        client_host = "127.0.0.1" if host in ("0.0.0.0", "*") else host
        step = time.monotonic()
        secret = pg.prepare()
        pgpass = self.dir / "pgpass"
        port = _port(previous.get("postgres", {}).get("port"), host) if not pg.external else 0
        pg_host, pg_port, pg_user = pg.address(port)
        write_private(pgpass, pgpass_line(pg_user, secret))
        pg_at = f"{pg_user}@{_url_host(pg_host)}:{pg_port}"
        data["postgres"] = {"url": f"postgresql://{pg_at}", "client_host": pg_host,
                            "port": pg_port, "user": pg_user, "external": bool(pg.external)}
        self._write_record(data)
        pid = pg.start(port, secret)
        data["postgres"]["server"] = svc.identity(pid) if pid else None
        self._write_record(data)
        self.progress(f"postgres   {data['postgres']['url']}  "
                      f"({time.monotonic() - step:.1f} s)")

        step = time.monotonic()
        ml_port = _port(previous.get("mlflow", {}).get("port"), host)
        ml_url = f"http://{_url_host(client_host)}:{ml_port}"
        ml_proc = svc.start_mlflow(self.dir, backend_uri=f"postgresql+psycopg2://{pg_at}/mlflow",
                                   host=host, port=ml_port, secret=secret, pgpass=pgpass)
        data["mlflow"] = {"url": ml_url, "port": ml_port, "server": svc.identity(ml_proc.pid)}
        self._write_record(data)
        pf_port = _port(previous.get("prefect", {}).get("port"), host)
        prefect = PrefectServer(
            self.dir, host, auth=f"{USER}:{secret}", port=pf_port,
            database_url=f"postgresql+asyncpg://{pg_user}:{secret}@{_url_host(pg_host)}:"
                         f"{pg_port}/prefect",
            log_path=self.dir / "logs" / "prefect.log")
        try:
            client = prefect.start(timeout=240)
        finally:
            if prefect.proc is not None:
                data["prefect"] = {"url": f"http://{_url_host(client_host)}:{pf_port}/api",
                                   "port": pf_port, "server": svc.identity(prefect.proc.pid)}
                self._write_record(data)
        self.progress(f"prefect    {client['PREFECT_API_URL']}  "
                      f"({time.monotonic() - step:.1f} s)")
        if svc.http_status(f"{client['PREFECT_API_URL']}/admin/version") != 401:
            raise svc.ComponentFault("the Prefect server answers a request without the "
                                     "password: its basic auth is not on")
        svc.wait_mlflow(ml_proc, ml_url, secret, self.dir / "logs" / "mlflow.log")
        self.progress(f"mlflow     {ml_url}  ({time.monotonic() - step:.1f} s)")

        step = time.monotonic()
        svc.ensure_work_pool(client, data["pool"])
        self.progress(f"work pool  {data['pool']} (queues "
                      f"{', '.join(f'{q} {p}' for q, p in svc.QUEUES.items())}) "
                      f"({time.monotonic() - step:.1f} s)")
        self._write_config(data)
        self._write_record(data)
        write_private(self.dir / "ports.json", json.dumps(  # the same ports on the next start
            {k: {"port": data[k]["port"]} for k in ("postgres", "mlflow", "prefect")}) + "\n")

    def _write_config(self, data: Mapping[str, Any]) -> None:
        pg = data["postgres"]
        db = f"postgresql+psycopg2://{pg['user']}@{_url_host(pg['client_host'])}:{pg['port']}"
        lines = {"optuna_storage": f"{db}/knobflow", "records_url": f"{db}/knobflow",
                 "tracking_uri": data["mlflow"]["url"],
                 "prefect_api_url": data["prefect"]["url"],
                 "secret_file": str(self.secret_file), "work_pool": data["pool"]}
        text = (f"# knobflow's settings for the shared stack in {self.dir} (infra/stack start);\n"
                "# no secret here: it is read from secret_file (0600)\n"
                + "".join(f"{k} = {json.dumps(v)}\n" for k, v in lines.items()))
        write_private(self.config_file, text)

    # -- workers -----------------------------------------------------------------------------
    def start_workers(self, n: int, pool: str = "knobflow", queue: str | None = None,
                      env_extra: Mapping[str, str] | None = None, cwd: Path | None = None,
                      wait: bool = True) -> list[subprocess.Popen[bytes]]:
        """Start ``n`` process workers on ``pool`` (``queue``: only that queue), with the stack's
        client environment (and ``env_extra``); with ``wait``, return once each polls."""
        client = self.client_env()
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API_")}
        env.update(client)
        env.setdefault("PREFECT_HOME", str(self.dir / "worker-home"))
        env.update(env_extra or {})
        procs: dict[str, subprocess.Popen[bytes]] = {}
        step = time.monotonic()
        with self._lock():
            data = self.record()
            if data is None:
                raise StackError(f"no stack in {self.dir}: start it first")
            for _ in range(n):
                name = svc.worker_name(len(data["workers"]))
                procs[name] = svc.start_worker(self.dir, name, pool, queue, env, cwd)
                data["workers"].append({**svc.identity(procs[name].pid), "name": name,
                                        "pool": pool, "queue": queue})
            self._write_record(data)
        self._workers.update({p.pid: p for p in procs.values()})
        if wait and procs:
            try:
                svc.wait_workers(client, pool, procs, self.dir / "logs")
            except svc.ComponentFault as exc:
                self.stop_workers([p.pid for p in procs.values()])
                raise StackError(str(exc)) from None
        self.progress(f"workers    {n} on pool {pool}" + (f" queue {queue}" if queue else "")
                      + f" ({time.monotonic() - step:.1f} s)")
        return list(procs.values())

    def stop_workers(self, pids: list[int] | None = None) -> None:
        """Stop the stack's workers (those of ``pids`` only, if given): SIGINT twice, SIGKILL."""
        with self._lock():
            data = self.record()
            if data is None:
                return
            chosen = [w for w in data["workers"] if pids is None or w["pid"] in pids]
            for worker in chosen:
                svc.end_group(worker, WORKER_SIGNALS, self._workers.pop(worker["pid"], None))
            data["workers"] = [w for w in data["workers"] if w not in chosen]
            self._write_record(data)

    # -- stop --------------------------------------------------------------------------------
    def stop(self) -> bool:
        """Stop everything the stack runs; False if nothing ran."""
        with self._lock():
            data = self.record()
            if data is None:
                return False
            was = self.running()
            began = time.monotonic()
            self._stop_record(data, self._postgres(data))
            self.record_path.unlink(missing_ok=True)
            if was:
                self.progress(f"stack stopped in {time.monotonic() - began:.1f} s")
            return was

    def _postgres(self, data: Mapping[str, Any]) -> StackPostgres:
        pg = data.get("postgres") or {}
        url = pg.get("url") if pg.get("external") else None
        return StackPostgres(self.dir, data.get("host", "127.0.0.1"), url)

    def _stop_record(self, data: Mapping[str, Any], pg: StackPostgres) -> None:
        for worker in data.get("workers", []):
            svc.end_group(worker, WORKER_SIGNALS, self._workers.pop(worker["pid"], None))
        for name in ("mlflow", "prefect"):
            svc.end_group((data.get(name) or {}).get("server"), ((signal.SIGTERM, 20.0),))
        server = (data.get("postgres") or {}).get("server")
        pg.stop(int(server["pid"]) if svc.alive(server) else None)
        _sweep(self.dir)


def _processes(data: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    found = [w for w in data.get("workers", [])]
    for name in ("mlflow", "prefect", "postgres"):
        rec = (data.get(name) or {}).get("server")
        if rec:
            found.append(rec)
    return found


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return {}


def _sweep(dir: Path) -> None:
    """SIGKILL what is left whose command line names the stack's directory (a flow run a killed
    worker left, say): nothing of the stack may outlive ``stop``."""
    mine = {os.getpid(), *(p.pid for p in psutil.Process().parents())}
    left = []
    for proc in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            if proc.pid not in mine and str(dir) in " ".join(proc.info["cmdline"] or []):
                proc.kill()
                left.append(proc)
    psutil.wait_procs(left, timeout=5)


def _port(previous: int | None, host: str) -> int:
    """The port used before when it is free again (clients' settings stay right), else a new."""
    if previous:
        import socket

        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1" if host in LOOPBACK else host, int(previous)))
                return int(previous)
            except OSError:
                pass
    return free_port()


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


if __name__ == "__main__":
    from flows.cli_stack import main

    main()
