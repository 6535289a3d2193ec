"""knobflow's own records (trial tables, learned rules): files in the home, or one PostgreSQL
table every host shares.

``records(settings)`` gives the store the settings point at:

* no ``records_url`` (the default): ``FileRecords``, the files under the home as they always were
  (a key is a path relative to the home: ``tables/<service>/<study>.parquet``,
  ``rules/<service>.learned.yaml``); ``lock(name)`` is a file lock under ``<home>/locks``;
* ``records_url`` a PostgreSQL URL (``postgresql+psycopg2://knobflow@HOST:PORT/knobflow``, no
  password in it: the password is read from the stack's 0600 secret file, in the process only):
  ``PgRecords``, one table ``knobflow_records (key text primary key, body bytea, host text,
  updated_at timestamptz)``, created if missing; a write is an upsert (the last writer of a key
  wins, whole); ``lock(name)`` is ``pg_advisory_lock`` held on a connection of its own for the
  block, so it holds across hosts, and a process that dies releases it with its session.

``.shared`` says whether other hosts see what this one writes. A database that does not answer is
an ``EnvironmentFault`` naming the URL (never the password) and the setting to change.
"""

from __future__ import annotations

import contextlib
import hashlib
import socket
import stat
import threading
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any, Protocol
from urllib.parse import quote, urlsplit, urlunsplit

from targets.common.errors import EnvironmentFault, KnobflowError
from targets.common.files import atomic_path, file_lock

__all__ = ["TABLE", "FileRecords", "PgRecords", "Records", "RecordsUnavailable", "check_key",
           "records", "shown_url"]

#: The one table of the shared records.
TABLE = "knobflow_records"
#: Seconds a connection attempt may take before the database counts as not answering.
CONNECT_TIMEOUT_S = 5
#: The advisory lock taken while the table is created (two hosts creating it at once).
_CREATE_LOCK = 0x6B6E6F62  # "knob"


class RecordsUnavailable(EnvironmentFault):
    """The shared records' database does not answer (the message names it, without password)."""


class _Settings(Protocol):
    home: Path
    records_url: str | None
    secret_file: Path | None


def check_key(key: str) -> str:
    """``key`` if it is a relative path inside the home (no ``..``, not absolute, not empty)."""
    path = PurePosixPath(key)
    if not key or path.is_absolute() or ".." in path.parts or "\\" in key or key.endswith("/"):
        raise KnobflowError(f"a record key is a relative path inside the home, not {key!r}")
    return str(path)


def _lock_file_name(name: str) -> str:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return f"{safe[:80]}-{hashlib.sha256(name.encode()).hexdigest()[:8]}.lock"


class Records:
    """The records store: ``read``, ``write``, ``keys``, ``lock``; ``shared`` across hosts."""

    shared: bool = False

    @property
    def where(self) -> str:
        """Where the records are, as an operator reads it (no password)."""
        raise NotImplementedError

    def read(self, key: str) -> bytes | None:
        raise NotImplementedError

    def write(self, key: str, data: bytes) -> None:
        raise NotImplementedError

    def keys(self, prefix: str = "") -> list[str]:
        raise NotImplementedError

    def lock(self, name: str, timeout: float = -1) -> contextlib.AbstractContextManager[None]:
        raise NotImplementedError


class FileRecords(Records):
    """Records as files under the home (the embedded default)."""

    shared = False

    def __init__(self, home: Path) -> None:
        self.home = Path(home)

    @property
    def where(self) -> str:
        return str(self.home)

    def path(self, key: str) -> Path:
        return self.home / check_key(key)

    def read(self, key: str) -> bytes | None:
        try:
            return self.path(key).read_bytes()
        except FileNotFoundError:
            return None

    def write(self, key: str, data: bytes) -> None:
        with atomic_path(self.path(key)) as tmp:
            tmp.write_bytes(data)

    def keys(self, prefix: str = "") -> list[str]:
        found = []
        for path in self.home.rglob("*"):
            if not path.is_file() or path.name.startswith("."):
                continue
            key = path.relative_to(self.home).as_posix()
            if key.startswith(prefix):
                found.append(key)
        return sorted(found)

    def lock(self, name: str, timeout: float = -1) -> contextlib.AbstractContextManager[None]:
        """A file lock under ``<home>/locks`` (processes sharing this home take turns)."""
        return file_lock(self.home / "locks" / _lock_file_name(name), timeout)


_ENGINES: dict[tuple[str, Path | None], Any] = {}
_ENGINES_LOCK = threading.Lock()
_CREATED: set[str] = set()


def shown_url(url: str) -> str:
    """``url`` without its password (what messages and ``doctor`` show)."""
    parts = urlsplit(url)
    if parts.password is None and "@" not in parts.netloc:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    netloc = (f"{user}@" if user else "") + host + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _with_password(url: str, secret_file: Path | None) -> str:
    """``url`` with the secret file's password put in (for the driver only: never shown)."""
    parts = urlsplit(url)
    if secret_file is None or parts.password is not None:
        return url
    try:
        mode = Path(secret_file).stat().st_mode
        password = Path(secret_file).read_text(encoding="utf-8").strip().splitlines()[0].strip()
    except (OSError, UnicodeError, IndexError):
        raise KnobflowError(f"the secret file {secret_file} cannot be read: the records at "
                            f"{shown_url(url)} need its password (secret_file, "
                            "KNOBFLOW_SECRET_FILE)") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KnobflowError(f"secret_file {secret_file}: readable by others (mode "
                            f"{mode & 0o777:o}); run chmod 600 {secret_file}")
    user = parts.username or "knobflow"
    host = parts.hostname or ""
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{host}" + (
        f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _engine(url: str, secret_file: Path | None) -> Any:
    """One SQLAlchemy engine per URL and process (its pool of connections)."""
    from sqlalchemy import create_engine

    with _ENGINES_LOCK:
        engine = _ENGINES.get((url, secret_file))
        if engine is None:
            full = _with_password(url, secret_file)
            engine = create_engine(full, pool_pre_ping=True, pool_size=2, max_overflow=8,
                                   connect_args={"connect_timeout": CONNECT_TIMEOUT_S,
                                                 "application_name": "knobflow-records"})
            _ENGINES[url, secret_file] = engine
        return engine


class PgRecords(Records):
    """Records in one PostgreSQL table that every host shares."""

    shared = True

    def __init__(self, url: str, secret_file: Path | None = None) -> None:
        scheme = urlsplit(url).scheme
        if not scheme.startswith("postgresql"):
            raise KnobflowError(f"records_url {shown_url(url)}: knobflow's shared records are "
                                "kept in PostgreSQL (postgresql+psycopg2://knobflow@HOST:PORT/DB)"
                                "; unset it to keep them as files in the home")
        if scheme == "postgresql":
            url = "postgresql+psycopg2" + url[len("postgresql"):]
        self.url, self.secret_file = url, secret_file
        self._host = socket.gethostname()

    @property
    def where(self) -> str:
        return shown_url(self.url)

    @contextlib.contextmanager
    def _connect(self, autocommit: bool = False) -> Iterator[Any]:
        from sqlalchemy.exc import OperationalError

        engine = _engine(self.url, self.secret_file)
        try:
            conn = engine.connect()
        except OperationalError as exc:
            raise self._unavailable(exc) from None
        try:
            if self.url not in _CREATED:
                self._create_table(conn)
            if autocommit:
                conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            yield conn
        finally:
            conn.close()

    def _unavailable(self, exc: Any) -> RecordsUnavailable:
        first = str(exc.orig).strip().splitlines()[0] if exc.orig else type(exc).__name__
        return RecordsUnavailable(
            f"the records database {self.where} does not answer ({first}); start the shared "
            "stack (infra/stack start), or unset KNOBFLOW_RECORDS_URL (records_url) to keep the "
            "records as files in the home")

    @contextlib.contextmanager
    def _query(self) -> Iterator[Any]:
        """A connection for one read or write; a database lost on the way is unavailable."""
        from sqlalchemy.exc import OperationalError

        try:
            with self._connect() as conn:
                yield conn
        except OperationalError as exc:
            raise self._unavailable(exc) from None

    def _create_table(self, conn: Any) -> None:
        """The table, created if missing (hosts creating it at once take turns)."""
        from sqlalchemy import text

        with conn.begin():
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _CREATE_LOCK})
            conn.execute(text(
                f"CREATE TABLE IF NOT EXISTS {TABLE} (key text PRIMARY KEY, body bytea NOT NULL, "
                "host text NOT NULL, updated_at timestamptz NOT NULL DEFAULT now())"))
        _CREATED.add(self.url)

    def read(self, key: str) -> bytes | None:
        from sqlalchemy import text

        with self._query() as conn:
            row = conn.execute(text(f"SELECT body FROM {TABLE} WHERE key = :k"),
                               {"k": check_key(key)}).first()
            conn.rollback()
        return None if row is None else bytes(row[0])

    def write(self, key: str, data: bytes) -> None:
        from sqlalchemy import text

        with self._query() as conn, conn.begin():
            conn.execute(text(
                f"INSERT INTO {TABLE} (key, body, host, updated_at) "
                "VALUES (:k, :b, :h, now()) ON CONFLICT (key) DO UPDATE SET "
                "body = excluded.body, host = excluded.host, updated_at = excluded.updated_at"),
                {"k": check_key(key), "b": bytes(data), "h": self._host})

    def keys(self, prefix: str = "") -> list[str]:
        from sqlalchemy import text

        with self._query() as conn:
            rows = conn.execute(text(
                f"SELECT key FROM {TABLE} WHERE starts_with(key, :p) ORDER BY key"),
                {"p": prefix}).all()
            conn.rollback()
        return [r[0] for r in rows]

    @contextlib.contextmanager
    def lock(self, name: str, timeout: float = -1) -> Iterator[None]:
        """``pg_advisory_lock`` on a connection of its own for the block: one holder at a time
        on every host; waits ``timeout`` seconds (-1: for ever), then ``TimeoutError``."""
        import time

        from sqlalchemy import text

        key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
        with self._connect(autocommit=True) as conn:
            if timeout < 0:
                conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key})
            else:
                deadline = time.monotonic() + timeout
                while not conn.execute(text("SELECT pg_try_advisory_lock(:k)"),
                                       {"k": key}).scalar():
                    if time.monotonic() >= deadline:
                        raise TimeoutError(f"the records lock {name!r} at {self.where} is held "
                                           "by another process")
                    time.sleep(0.1)
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})


def records(settings: _Settings | None = None, *, home: Path | str | None = None) -> Records:
    """The records store ``settings`` point at (default: the settings in force, for ``home``):
    PostgreSQL when ``records_url`` is set, else files in the home (``home`` when given).
    Without any setting beyond the defaults no settings object is loaded."""
    from targets.common import settings as config

    if settings is None:
        if not config.configured():  # the embedded default: no settings object to load
            return FileRecords(config.knobflow_home(home))
        settings = config.current_settings(home)
    if settings.records_url:
        return PgRecords(settings.records_url, settings.secret_file)
    return FileRecords(Path(home if home is not None else settings.home).expanduser().resolve())
