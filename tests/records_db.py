"""A PostgreSQL server for the shared records in tests (until the session's ``shared_stack``
brings one): a private cluster (``targets.postgres_cluster``: initdb as the ``postgres`` user
when root, the superuser ``knobflow`` with a random password in a 0600 file) on 127.0.0.1 and a
free port. ``records_database`` yields the settings' environment: ``KNOBFLOW_RECORDS_URL`` (no
password) and ``KNOBFLOW_SECRET_FILE`` (a 0600 file holding the password); the server is stopped
when the block ends."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from pathlib import Path

from targets import postgres_cluster as pgc
from targets.process import Server, ServerExited, free_port, write_private


def _ready(pid_path: Path, server: Server) -> bool:
    try:
        lines = pid_path.read_text(errors="replace").splitlines()
    except OSError:
        return False
    return (server.proc is not None and len(lines) >= 8
            and lines[0].strip() == str(server.proc.pid) and lines[7].strip() == "ready")


@contextlib.contextmanager
def records_database(directory: Path) -> Iterator[dict[str, str]]:
    bindir = pgc.find_bindir()
    if bindir is None:
        raise RuntimeError("PostgreSQL's programs are not installed (postgresql package)")
    directory.mkdir(parents=True, exist_ok=True)
    logs = directory / "logs"
    logs.mkdir(exist_ok=True)
    cluster = pgc.locate(directory, create=True)
    assert cluster is not None
    pgc.prepare(cluster, bindir, logs)
    password = pgc.read_password(cluster)
    assert password
    secret = directory / "secret"
    write_private(secret, password + "\n")
    server = None
    for _ in range(3):
        port = free_port()
        server = Server([str(bindir / "postgres"), "-D", str(cluster.pgdata),
                         "-c", "listen_addresses=127.0.0.1", "-c", f"port={port}",
                         "-c", f"unix_socket_directories={cluster.sockdir}",
                         "-c", "fsync=off", "-c", "max_connections=60"],
                        log_path=logs / "server.log", pid_file=directory / "postgres.pid",
                        env=pgc.clean_env(), cwd=cluster.root, user=pgc.server_user())
        try:
            server.start(lambda s=server: _ready(cluster.pgdata / "postmaster.pid", s),
                         timeout=60)
            break
        except ServerExited as exc:
            pgc.end_leftovers(cluster)
            server = None
            if "Address already in use" not in exc.log:
                raise
    assert server is not None
    try:
        yield {"KNOBFLOW_RECORDS_URL": f"postgresql+psycopg2://knobflow@127.0.0.1:{port}/postgres",
               "KNOBFLOW_SECRET_FILE": str(secret)}
    finally:
        server.stop(timeout=30, sig=signal.SIGINT)
        if pgc.cluster_processes(cluster):
            pgc.end_leftovers(cluster)
