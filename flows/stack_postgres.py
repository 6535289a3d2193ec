"""The PostgreSQL of the shared stack (``flows.stack``): a cluster the stack makes and runs, or an
existing server named by a URL, and the databases the stack's servers and knobflow keep their
state in (``prefect``, ``mlflow``, ``knobflow``).

The cluster is ``targets.postgres_cluster``'s: made under ``DIR/pg`` (or under
``/var/tmp/knobflow-postgres`` when the ``postgres`` user, which initdb and postgres run as when
we are root, cannot enter ``DIR``, which is 0700), ``scram-sha-256`` for every connection, and its
superuser ``knobflow`` has a random password made at initdb. That password is the stack's secret
(``DIR/secret``). An existing server is reached as the URL's user with the secret from
``DIR/secret`` (written by the operator beforehand). Clients get the password through a 0600
pgpass file (``DIR/pgpass``, ``PGPASSFILE``) or as an argument of ``connect``, never on a command
line.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from targets import postgres_cluster as pgc
from targets import postgres_leftovers as pgl
from targets.base import TrialFailed
from targets.common.errors import EnvironmentFault
from targets.process import last_lines, write_private

__all__ = ["DATABASES", "PostgresFault", "StackPostgres", "connect", "pgpass_line"]

#: The databases of the stack: Prefect's, MLflow's, and knobflow's own (Optuna, records).
DATABASES = ("prefect", "mlflow", "knobflow")
LOOPBACK = ("127.0.0.1", "localhost", "::1")


class PostgresFault(EnvironmentFault):
    """The stack's PostgreSQL could not be made, started or reached."""


def connect(host: str, port: int, user: str, password: str, dbname: str,
            timeout: float = 3.0) -> Any:
    """A psycopg2 connection (autocommit), the password as an argument: no command line sees it."""
    import psycopg2

    conn = psycopg2.connect(host=host, port=port, user=user, password=password, dbname=dbname,
                            connect_timeout=max(1, int(timeout)))
    conn.autocommit = True
    return conn


def answers(host: str, port: int, user: str, password: str, dbname: str = "knobflow") -> bool:
    """Whether the server takes ``user``'s password and answers ``SELECT 1`` in ``dbname``."""
    try:
        conn = connect(host, port, user, password, dbname, timeout=2)
    except Exception:
        return False
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
            return bool(cur.fetchone() == (1,))
    except Exception:
        return False
    finally:
        conn.close()


def pgpass_line(user: str, password: str) -> str:
    """One pgpass line for ``user`` on any host, port and database (``:`` and ``\\`` escaped)."""
    def esc(text: str) -> str:
        return text.replace("\\", "\\\\").replace(":", "\\:")
    return f"*:*:*:{esc(user)}:{esc(password)}\n"


class StackPostgres:
    """The stack's PostgreSQL under ``DIR``: ``url`` names an existing server instead."""

    def __init__(self, dir: Path, host: str = "127.0.0.1", url: str | None = None) -> None:
        self.dir = dir
        self.host = host
        self.external = url
        self.log_path = dir / "logs" / "postgres.log"
        self.proc: subprocess.Popen[bytes] | None = None

    # -- where it is ---------------------------------------------------------------------------
    def address(self, port: int) -> tuple[str, int, str]:
        """(host, port, user) clients connect to."""
        if self.external:
            parts = urlsplit(self.external)
            if parts.password:
                raise PostgresFault("--postgres-url must not hold a password (it would be on a "
                                    "command line): put it in DIR/secret (0600) instead")
            if parts.scheme not in ("postgresql", "postgres") or not parts.hostname:
                raise PostgresFault(f"--postgres-url {self.external!r}: expected "
                                    "postgresql://USER@HOST:PORT[/DATABASE]")
            return parts.hostname, parts.port or 5432, parts.username or pgc.SUPERUSER
        return self.host, port, pgc.SUPERUSER

    def admin_db(self) -> str:
        if self.external:
            return urlsplit(self.external).path.lstrip("/") or "postgres"
        return "postgres"

    def cluster(self) -> pgc.Cluster | None:
        return None if self.external else pgc.locate(self.dir, create=False)

    # -- the secret ----------------------------------------------------------------------------
    def prepare(self) -> str:
        """Make the cluster (initdb) if there is none; return the secret (the superuser's
        password), or, for an existing server, the password the operator put in DIR/secret."""
        secret_file = self.dir / "secret"
        if self.external:
            self.address(0)  # the URL is checked first
            try:
                secret = secret_file.read_text(encoding="utf-8").strip()
            except OSError:
                secret = ""
            if not secret:
                raise PostgresFault(f"--postgres-url needs the password of its user in "
                                    f"{secret_file} (one line, chmod 600) before start")
            os.chmod(secret_file, 0o600)
            return secret
        bindir = pgc.find_bindir()
        if bindir is None:
            raise PostgresFault("PostgreSQL's programs (postgres, initdb, psql, pgbench) are not "
                                "installed: install the postgresql package, or set "
                                "KNOBFLOW_PG_BINDIR, or give --postgres-url")
        cluster = pgc.locate(self.dir, create=True)
        assert cluster is not None
        try:
            pgc.prepare(cluster, bindir, self.dir / "logs")
        except TrialFailed as exc:
            raise PostgresFault(f"initdb of the stack's cluster failed: {exc}") from None
        secret = pgc.read_password(cluster)
        if not secret:
            raise PostgresFault(f"the cluster's password file {cluster.password_file} is "
                                "missing or not 0600")
        write_private(secret_file, secret + "\n")
        return secret

    # -- running it ----------------------------------------------------------------------------
    def start(self, port: int, secret: str, timeout: float = 120.0) -> int | None:
        """Start the cluster's server on ``port`` (nothing for an existing server), wait until
        it takes the secret, and create the stack's databases; the postmaster's pid."""
        pid = None
        if not self.external:
            pid = self._start_server(port, secret, timeout)
        host, port, user = self.address(port)
        try:
            self.create_databases(host, port, user, secret)
        except PostgresFault:
            self.stop(pid)
            raise
        return pid

    def _start_server(self, port: int, secret: str, timeout: float) -> int:
        bindir = pgc.find_bindir()
        cluster = pgc.locate(self.dir, create=False)
        assert bindir is not None and cluster is not None
        pgl.end_leftovers(cluster)  # a postmaster.pid of a killed server, its segments
        cmd = [str(bindir / "postgres"), "-D", str(cluster.pgdata),
               "-c", f"listen_addresses={self.host}", "-c", f"port={port}",
               "-c", f"unix_socket_directories={cluster.sockdir}",
               "-c", f"cluster_name={cluster.name()}", "-c", "max_connections=300",
               "-c", "password_encryption=scram-sha-256"]
        if self.host not in LOOPBACK:  # other hosts connect too: still with the password only
            hba = cluster.root / "stack_hba.conf"
            write_private(hba, pgc.HBA + "host    all   all   all   scram-sha-256\n")
            pgc._own(hba, pgc.server_user())
            cmd += ["-c", f"hba_file={hba}"]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        user = pgc.server_user()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=pgc.clean_env(), cwd=cluster.root, user=user, start_new_session=True,
                **({"group": _gid(user), "extra_groups": []} if user else {}))
        deadline = time.monotonic() + timeout
        host = "127.0.0.1" if self.host in ("0.0.0.0", "*") else self.host
        while not answers(host, port, pgc.SUPERUSER, secret, "postgres"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                why = (f"exited ({self.proc.returncode})" if self.proc.returncode is not None
                       else f"did not answer within {timeout:g} s")
                self.stop(self.proc.pid)
                raise PostgresFault(f"PostgreSQL {why}; {self.log_path} ends: "
                                    f"{last_lines(self.log_text())}")
            time.sleep(0.1)
        return self.proc.pid

    def create_databases(self, host: str, port: int, user: str, secret: str) -> None:
        """Create the stack's databases that are missing."""
        try:
            conn = connect(host, port, user, secret, self.admin_db(), timeout=10)
        except Exception as exc:
            raise PostgresFault(f"PostgreSQL at {host}:{port} refused {user} with the stack's "
                                f"secret: {str(exc).strip()}") from None
        try:
            with conn.cursor() as cur:
                for name in DATABASES:
                    cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                    if cur.fetchone() is None:
                        cur.execute(f'CREATE DATABASE "{name}"')
        except Exception as exc:
            raise PostgresFault(f"creating the databases {', '.join(DATABASES)} as {user} "
                                f"failed ({str(exc).strip()}): create them, or grant CREATEDB"
                                ) from None
        finally:
            conn.close()

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, pid: int | None, timeout: float = 30.0) -> None:
        """Stop the cluster's server (fast shutdown), then end anything left in its data
        directory; nothing for an existing server."""
        cluster = self.cluster()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGINT)  # fast shutdown: roll back, disconnect, stop
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and (
                    cluster is not None and pgl.cluster_processes(cluster)):
                if self.proc is not None:
                    self.proc.poll()
                time.sleep(0.1)
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=5)
            self.proc = None
        if cluster is not None:
            pgl.end_leftovers(cluster)

    def processes(self) -> list[int]:
        """Pids of the cluster's processes (postmaster and backends)."""
        cluster = self.cluster()
        return [] if cluster is None else [p.pid for p in pgl.cluster_processes(cluster)]


def _gid(user: str) -> int:
    import pwd

    return pwd.getpwnam(user).pw_gid
