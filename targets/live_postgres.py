"""The live driver of PostgreSQL: a running server reached through psql, changed by ALTER SYSTEM.

Owns reading and changing the settings of a PostgreSQL that runs outside knobflow's trials, its
counters and what a window of them says, and the launch hooks of a demo/test instance
(``targets.live_daemon``).

* Connection: ``postgresql://user@host:port/db`` (no password in it). The secret file (0600) is
  either a pgpass file (lines ``host:port:db:user:password``, used as it is) or the password
  alone on its first line (then a pgpass line ``*:*:*:*:password`` is written to a private
  temporary directory). A first line with four unescaped ``:`` is read as pgpass. psql gets it
  through ``PGPASSFILE`` only, never a command line.
* Settings: every knob from pg_settings in the spec's units (``postgres_pgbench.convert``).
  ``apply`` is ``ALTER SYSTEM SET`` per knob (kept in postgresql.auto.conf), then
  ``pg_reload_conf()``, or the restart command when a knob's ``context`` is ``postmaster`` (or
  the spec says ``restart``); it waits until pg_settings shows the values, and until the
  backends have published the counts of the transactions before the change (about 1 s). The
  role needs ``ALTER SYSTEM`` and ``pg_reload_conf()`` (a superuser, or ``GRANT ALTER SYSTEM
  ON PARAMETER`` (15+) and ``GRANT EXECUTE ON FUNCTION pg_reload_conf()``). A setting given on
  the server's command line (``-c``) overrides ALTER SYSTEM, so it is refused. A failed write
  or reload puts the written knobs back to their values before.
* Counters: one psql call (``live_postgres_stats``); a window reports ``tps`` only (the latency a
  client sees is not on the server).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import tempfile
import time
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import unquote, urlsplit

from targets import live_postgres_stats as stats
from targets import postgres_cluster as pgc
from targets import postgres_pgbench as pgb
from targets.base import Target
from targets.live import ActuationRefused, Connection, LiveError, LiveSystem, Snapshot, Window
from targets.postgres import PostgresTarget
from targets.process import write_private

__all__ = ["PostgresLive"]

_PSQL_TIMEOUT_S = 30.0
_APPLY_WAIT_S = 5.0
#: A busy backend publishes its pg_stat_database counts about once a second: apply returns only
#: after that, so a window started after it counts no transaction of the config before.
_STATS_SETTLE_S = 1.1
_LOCAL_HOSTS = {"", "localhost", "127.0.0.1", "::1"}
_SETTINGS_ROWS = """SELECT name, setting, coalesce(unit, ''), vartype, context,
  pending_restart, source, {may}, has_function_privilege('pg_reload_conf()', 'EXECUTE')
  FROM pg_settings WHERE name IN ({names});
"""
#: May the role ALTER SYSTEM this setting: a privilege of its own from 15 on, else superusers only
_SETTINGS_SQL = ("SELECT :SERVER_VERSION_NUM >= 150000 AS v15 \\gset\n\\if :v15\n"
                 + _SETTINGS_ROWS.replace("{may}", "has_parameter_privilege(name, 'ALTER SYSTEM')")
                 + "\\else\n"
                 + _SETTINGS_ROWS.replace(
                     "{may}", "(SELECT rolsuper FROM pg_roles WHERE rolname = current_user)")
                 + "\\endif\n").replace(
                     "{names}", ", ".join(f"'{name}'" for name in pgb.KNOBS))


class PostgresLive(LiveSystem):
    """A running PostgreSQL (15; 13+ mostly works), through psql and ALTER SYSTEM."""

    target: ClassVar[str] = "postgres"
    observed_metrics: ClassVar[tuple[str, ...]] = ("tps",)
    scale_features: ClassVar[tuple[str, ...]] = ("db_size_mb", "scale")

    def __init__(self, connection: Connection) -> None:
        super().__init__(connection)
        url = urlsplit(connection.url)
        if url.scheme not in ("postgresql", "postgres"):
            raise LiveError(f"{connection.url}: not a PostgreSQL URL: write "
                            "postgresql://user@host:port/database")
        if url.password is not None:
            raise LiveError("the PostgreSQL URL holds a password: remove it from the URL and put "
                            "it in the secret file (0600)")
        host = unquote(url.hostname or "")
        self.user = unquote(url.username or "") or None
        self.local = host in _LOCAL_HOSTS or host.startswith("/") or "host=/" in url.query
        self._passfile: Path | None = None

    # -- psql -----------------------------------------------------------------------------------
    def _pgpass(self) -> Path | None:
        """The file for PGPASSFILE: the secret file itself, or a pgpass line written for it."""
        path = self.connection.secret_file
        if path is None or self._passfile is not None:
            return self._passfile
        try:
            mode = os.stat(path).st_mode
            first = (path.read_text(encoding="utf-8").splitlines() or [""])[0].strip()
        except (OSError, UnicodeError) as exc:
            raise LiveError(f"cannot read the secret file {path}: {exc}") from None
        if mode & 0o077:
            raise LiveError(f"the secret file {path} may be read by others: chmod 600 {path}")
        if not first:
            raise LiveError(f"the secret file {path} is empty: put the password on its first "
                            "line (or pgpass lines host:port:database:user:password)")
        if len(re.split(r"(?<!\\):", first)) >= 5:
            self._passfile = path
            return path
        tmp = Path(tempfile.mkdtemp(prefix="knobflow-pgpass-"))
        weakref.finalize(self, shutil.rmtree, tmp, True)
        escaped = first.replace("\\", "\\\\").replace(":", "\\:")
        write_private(tmp / "pgpass", f"*:*:*:*:{escaped}\n")
        self._passfile = tmp / "pgpass"
        return self._passfile

    def _env(self) -> dict[str, str]:
        env = {**pgc.clean_env(), "PGCONNECT_TIMEOUT": "5", "PGAPPNAME": "knobflow"}
        passfile = self._pgpass()
        if passfile is not None:
            env["PGPASSFILE"] = str(passfile)
        return env

    def _psql(self, script: str) -> list[list[str]]:
        """Run ``script`` (psql's standard input, one statement at a time); its rows."""
        bindir = pgc.find_bindir()
        psql = str(bindir / "psql") if bindir else shutil.which("psql")
        if psql is None:
            raise LiveError("psql was not found: install the postgresql-client package or set "
                            "KNOBFLOW_PG_BINDIR to its directory")
        cmd = [psql, "-X", "-A", "-t", "-q", "-w", "-F", "\t", "-v", "ON_ERROR_STOP=1",
               "-d", self.connection.url, "-f", "-"]
        try:
            done = subprocess.run(cmd, input=script, capture_output=True, text=True,
                                  timeout=_PSQL_TIMEOUT_S, env=self._env(), check=False)
        except subprocess.TimeoutExpired:
            raise LiveError(f"{self.connection.url}: PostgreSQL did not answer within "
                            f"{_PSQL_TIMEOUT_S:g} s") from None
        if done.returncode != 0:
            raise self._failure(done.stderr)
        return [line.split("\t") for line in done.stdout.splitlines() if line]

    def _failure(self, stderr: str) -> LiveError:
        """psql's error as one line saying what is wrong and the fix; ``script_line`` is the
        line of the script that failed (0: none ran)."""
        lines = [re.sub(r"^psql:(<stdin>:\d+: )?( ?error: )?", "", ln).strip()
                 for ln in stderr.splitlines() if ln.strip()]
        line = next((ln for ln in lines if "ERROR" in ln or "FATAL" in ln), None)
        line = line or (lines[0] if lines else "psql failed")
        url, user = self.connection.url, self.user or "(default user)"
        if "password authentication failed" in stderr:
            error = LiveError(f"{url}: PostgreSQL refused the password of {user} (secret file "
                              f"{self.connection.secret_file}): put the role's password there")
        elif "no password supplied" in stderr:
            error = LiveError(f"{url}: PostgreSQL asks {user} for a password and none was "
                              "given: add a secret file (0600) with it")
        elif "no pg_hba.conf entry" in stderr:
            error = LiveError(f"{url}: the server's pg_hba.conf admits no such connection "
                              f"({line}): add a line for {user} from this host")
        elif "FATAL" in stderr and "does not exist" in stderr:
            error = LiveError(f"{url}: {line}: fix the URL's user or database")
        elif "permission denied to set parameter" in stderr:
            error = LiveError(f"{url}: {line}: GRANT ALTER SYSTEM ON PARAMETER ... TO {user} "
                              "(PostgreSQL 15+), or connect as a superuser")
        elif "could not connect" in stderr or "connection to server" in stderr:
            error = LiveError(f"{url}: cannot reach PostgreSQL ({line}): is the server "
                              "running, and are the URL's host and port right?")
        else:
            error = LiveError(f"{url}: {line}")
        failed = re.search(r"<stdin>:(\d+):", stderr)
        error.script_line = int(failed.group(1)) if failed else 0  # type: ignore[attr-defined]
        return error

    # -- settings -------------------------------------------------------------------------------
    def ping(self) -> str:
        rows = self._psql("SELECT current_setting('server_version');")
        return f"PostgreSQL {rows[0][0]}" if rows else "PostgreSQL"

    def _settings(self) -> dict[str, list[str]]:
        """name -> [setting, unit, vartype, context, pending_restart, source, may ALTER SYSTEM,
        may reload]."""
        return {row[0]: row[1:] for row in self._psql(_SETTINGS_SQL) if len(row) == 9}

    def read_config(self) -> dict[str, Any]:
        rows = self._settings()
        config = pgb.effective_config({k: (r[0], r[1], r[2]) for k, r in rows.items()})
        missing = [k for k in self.spec.names if k not in config]
        if missing:
            raise LiveError(f"{self.connection.url}: PostgreSQL has no setting "
                            f"{', '.join(missing)} (is it PostgreSQL 15?)")
        return {k: config[k] for k in self.spec.names}

    def pending_restart(self) -> list[str]:
        """The knobs whose changed value waits for a server restart (pg_settings says so)."""
        return sorted(k for k, row in self._settings().items() if row[4] == "t")

    def runtime_refusals(self, changes: Mapping[str, Any]) -> dict[str, str]:
        return self._refusals(changes, self._settings())

    def _refusals(self, changes: Mapping[str, Any], rows: Mapping[str, list[str]]
                  ) -> dict[str, str]:
        reasons: dict[str, str] = {}
        for name, value in changes.items():
            if name not in self.spec:
                reasons[name] = "not a knob of the postgres target"
                continue
            knob = self.spec[name]
            problem = knob.problem_with(knob.coerce(value))
            row = rows.get(name)
            if problem:
                reasons[name] = problem
            elif row is None:
                reasons[name] = "this PostgreSQL has no such setting"
            elif row[3] == "internal":
                reasons[name] = "fixed when the cluster was made (context internal)"
            elif row[5] == "command line":
                reasons[name] = ("set on the server's command line (-c), which overrides ALTER "
                                 "SYSTEM: remove it from the server's start command")
            elif self._needs_restart(name, row) and not self.connection.restart_command:
                reasons[name] = ("needs a server restart (pg_settings context postmaster) and "
                                 "the instance has no restart command")
            elif row[6] != "t" or (row[7] != "t" and not self._needs_restart(name, row)):
                reasons[name] = self._grant_needed(name, row)
        return reasons

    def _grant_needed(self, name: str, row: list[str]) -> str:
        user = self.user or "(the default user)"
        lacks = []
        if row[6] != "t":
            lacks.append((f"ALTER SYSTEM SET {name}",
                          f"GRANT ALTER SYSTEM ON PARAMETER {name} TO {user} (PostgreSQL 15+)"))
        if row[7] != "t" and not self._needs_restart(name, row):
            lacks.append(("run pg_reload_conf()",
                          f"GRANT EXECUTE ON FUNCTION pg_reload_conf() TO {user}"))
        return (f"the role {user} may not {' or '.join(a for a, _ in lacks)}: "
                f"{'; '.join(g for _, g in lacks)}; or connect as a superuser")

    def _needs_restart(self, name: str, row: list[str]) -> bool:
        return self.spec[name].restart or row[3] == "postmaster"

    def apply(self, changes: Mapping[str, Any]) -> None:
        rows = self._settings()
        reasons = self._refusals(changes, rows)
        if reasons:
            raise ActuationRefused(self.connection.url, reasons)
        wanted = {k: self.spec[k].coerce(v) for k, v in changes.items()}
        if not wanted:
            return
        before = pgb.effective_config({k: (r[0], r[1], r[2]) for k, r in rows.items()})
        names = list(wanted)
        try:
            self._psql("".join(_alter(k, v) for k, v in wanted.items()))
        except LiveError as exc:  # the lines before the one that failed were written
            done = max(0, getattr(exc, "script_line", 1) - 1)
            if done:
                with contextlib.suppress(LiveError):  # put them back
                    self._psql("".join(_alter(k, before[k]) for k in names[:done]))
            raise
        try:
            if any(self._needs_restart(k, rows[k]) for k in wanted):
                self.restart()
            else:
                self._psql("SELECT pg_reload_conf();")
        except LiveError:
            with contextlib.suppress(LiveError):  # the file as it was: no change waits for later
                self._psql("".join(_alter(k, before[k]) for k in names))
            raise
        applied = time.monotonic()
        self._wait_applied(wanted)
        time.sleep(max(0.0, applied + _STATS_SETTLE_S - time.monotonic()))

    def _wait_applied(self, wanted: Mapping[str, Any]) -> None:
        """Wait until pg_settings shows ``wanted`` (a reload reaches new sessions at once, but
        the postmaster takes its signal asynchronously)."""
        expect = PostgresTarget.normalize_config(wanted)
        deadline = time.monotonic() + _APPLY_WAIT_S
        while True:
            rows = self._settings()
            got = pgb.effective_config({k: (r[0], r[1], r[2]) for k, r in rows.items()})
            wrong = {k: got.get(k) for k, v in expect.items()
                     if pgb.setting_text(k, v) != pgb.setting_text(k, got.get(k))}
            if not wrong:
                return
            if time.monotonic() > deadline:
                pending = [k for k in wrong if rows.get(k, [""] * 7)[4] == "t"]
                said = ", ".join(f"{k}={v!r} (asked {expect[k]!r})" for k, v in wrong.items())
                why = f"; {', '.join(pending)} wait for a restart" if pending else ""
                raise LiveError(f"{self.connection.url}: written to postgresql.auto.conf, but "
                                f"PostgreSQL applies {said}{why}")
            time.sleep(0.1)

    # -- counters -------------------------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        began = time.monotonic()
        rows = self._psql(stats.SNAPSHOT_SQL)
        t = (began + time.monotonic()) / 2
        return Snapshot(t=t, wall=time.time(), values=stats.snapshot_values(rows, self.local))

    def window(self, first: Snapshot, last: Snapshot) -> Window:
        return stats.window_between(first, last)

    # -- a launched demo/test instance ----------------------------------------------------------
    @classmethod
    def launch_target(cls, data_dir: Path, workload: Mapping[str, Any]) -> Target:
        """The trial target's server with no knob on its command line (a ``-c`` setting would
        override ALTER SYSTEM), pgbench's tables at the workload's scale, and
        pg_stat_statements loaded when it is installed (one restart)."""
        target = PostgresTarget(data_dir, PostgresTarget.parse_workload(workload))
        target.start({})
        live = cls(cls.connection_for(target, data_dir))
        if live._psql("SELECT 1 FROM pg_available_extensions WHERE name = "
                      "'pg_stat_statements';"):
            live._psql("ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements';")
            target.start({})  # stops the server first
            live = cls(cls.connection_for(target, data_dir))
            live._psql("CREATE EXTENSION IF NOT EXISTS pg_stat_statements;")
        return target

    @classmethod
    def connection_for(cls, target: Target, data_dir: Path) -> Connection:
        cluster = _cluster(data_dir)
        return Connection(target=cls.target, secret_file=cluster.password_file,
                          url=f"postgresql://{pgc.SUPERUSER}@127.0.0.1:{_port(cluster)}/postgres")

    @classmethod
    def load_command(cls, target: Target, workload: Mapping[str, Any]
                     ) -> tuple[list[str], dict[str, str] | None]:
        """pgbench for a day with the workload's clients, threads, script and protocol (its
        tables re-made first when the scale changed); the password through PGPASSFILE."""
        w = {**PostgresTarget.workload_defaults, **PostgresTarget.parse_workload(workload)}
        cluster = _cluster(target.data_dir)
        bindir = pgc.find_bindir()
        assert bindir is not None  # the server was started from it
        base = [str(bindir / "pgbench"), "-h", str(cluster.sockdir), "-p", str(_port(cluster)),
                "-U", pgc.SUPERUSER]
        scale = str(int(w["scale"]))
        if not cluster.scale_file.exists() or cluster.scale_file.read_text().strip() != scale:
            cluster.scale_file.unlink(missing_ok=True)
            subprocess.run([*base, "-i", "-q", "-s", scale, "postgres"], check=True,
                           env=pgc.client_env(cluster), capture_output=True, timeout=3600)
            cluster.scale_file.write_text(f"{scale}\n")
        clients = int(w["clients"])
        return [*base, "-T", "86400", "-c", str(clients), "-j",
                str(min(int(w["threads"]), clients)), f"--builtin={w['builtin']}",
                f"--protocol={w['query_mode']}", "postgres"], pgc.client_env(cluster)

    @classmethod
    def remove_launched(cls, data_dir: Path) -> None:
        """End the server's processes, then delete its cluster (it may live in /var/tmp)."""
        PostgresTarget.cleanup(data_dir)
        pgc.forget_instance(data_dir)


def _alter(name: str, value: Any) -> str:
    text = pgb.setting_text(name, value).replace("'", "''")
    return f"ALTER SYSTEM SET {name} = '{text}';\n"


def _cluster(data_dir: Path) -> pgc.Cluster:
    cluster = pgc.locate(data_dir)
    if cluster is None:
        raise LiveError(f"{data_dir} holds no PostgreSQL cluster of knobflow's")
    return cluster


def _port(cluster: pgc.Cluster) -> int:
    """The port the running postmaster listens on (line 4 of its postmaster.pid)."""
    try:
        return int((cluster.pgdata / "postmaster.pid").read_text().splitlines()[3])
    except (OSError, ValueError, IndexError):
        raise LiveError(f"no PostgreSQL is running in {cluster.pgdata}") from None
