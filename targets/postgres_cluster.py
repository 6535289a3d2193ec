"""The private PostgreSQL cluster of one postgres instance: where it lives, initdb, and clean-up.

Owns finding the PostgreSQL binaries, placing one cluster per instance data directory (inside it,
or under ``/var/tmp/knobflow-postgres`` when the ``postgres`` user cannot reach the data
directory or the socket path would be too long; the location is recorded in the data directory,
so clean-up and the next trial find it), ``initdb``, and removing clusters no instance wants.
What a killed server leaves behind is ended by ``postgres_leftovers.py``; the server's own log
lines are sorted into failure classes by ``postgres_log.py``.

As root, ``initdb`` and ``postgres`` refuse to run: they run as the ``postgres`` user (Popen's
user switch) and own the cluster directory. Otherwise everything runs as the current user.

It also owns who may connect: the cluster admits only knobflow. Every connection, over the socket
or 127.0.0.1, must give the superuser's password (``scram-sha-256`` for every line of
``pg_hba.conf``, no ``trust``), and the socket directory is 0700 besides. The password is random
per instance, made at initdb, and kept in the instance data directory as a 0600 pgpass file
(``postgres.pgpass``) owned by the user running knobflow, the only one whose programs (psql,
pgbench) need it: they find it through ``PGPASSFILE`` (``client_env``). The server never sees
the password itself, only its SCRAM verifier, which is handed to initdb in a file and, to lock a
cluster made before passwords (``trust``), to a single-user backend on its standard input:
never a command line, a log line or a Measurement.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import os
import pwd
import shutil
import stat
import subprocess
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from targets.base import FailureClass, TrialFailed
from targets.common.files import write_text_atomic
from targets.postgres_leftovers import end_leftovers
from targets.postgres_log import classify
from targets.process import (
    last_lines,
    new_secret,
    run_client,
    run_with_input,
    write_private,
)

#: Bootstrap superuser of every cluster (the same whoever runs knobflow).
SUPERUSER = "knobflow"
RELOCATED_BASE = Path("/var/tmp/knobflow-postgres")
#: File in the instance data directory naming the cluster directory.
LOCATION_FILE = "postgres.cluster"
#: File in the instance data directory holding the superuser's password (pgpass format, 0600).
PASSWORD_FILE = "postgres.pgpass"
#: The whole pg_hba.conf of a cluster: the password for every connection, nothing trusted.
HBA = """# written by knobflow: every connection gives the instance's password (postgres.pgpass)
local   all   all                  scram-sha-256
host    all   all   127.0.0.1/32   scram-sha-256
host    all   all   ::1/128        scram-sha-256
"""
_SCRAM_ITERATIONS = 4096  # PostgreSQL 15's (scram_iterations is only settable from 16 on)
_SOCKET_MAX = 107  # sun_path bytes, terminating NUL excluded
_ORPHAN_AGE_S = 3600.0

@lru_cache(maxsize=1)
def find_bindir() -> Path | None:
    """PostgreSQL's program directory: $KNOBFLOW_PG_BINDIR, the newest Debian one, or PATH."""
    env = os.environ.get("KNOBFLOW_PG_BINDIR")
    candidates = [Path(env)] if env else []
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        reverse=True,
    )
    candidates += versions
    on_path = shutil.which("postgres")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    for bindir in candidates:
        if all((bindir / prog).is_file() for prog in ("postgres", "initdb", "pgbench", "psql")):
            return bindir
    return None


def server_user() -> str | None:
    """The user initdb and postgres run as: ``postgres`` when we are root, else ourselves."""
    return "postgres" if os.geteuid() == 0 else None


def _owner_ids(user: str | None) -> tuple[int, int] | None:
    if user is None:
        return None
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise TrialFailed(
            FailureClass.CRASH,
            f"running as root, but there is no '{user}' user to run PostgreSQL as "
            "(PostgreSQL refuses root): install the postgresql package or create the user",
        ) from None
    return entry.pw_uid, entry.pw_gid


def _own(path: Path, user: str | None) -> None:
    ids = _owner_ids(user)
    if ids is not None:
        os.chown(path, *ids, follow_symlinks=False)


def _ours(path: Path) -> bool:
    """A real directory owned by us or by the server's user (not one planted by someone else).

    The relocated base is writable by everyone, like /tmp: a directory or symlink put there in
    advance must not be chowned, initialised or cleaned up as if it were a cluster.
    """
    try:
        st = os.lstat(path)
    except OSError:
        return False
    ids = _owner_ids(server_user())
    allowed = {os.geteuid(), *(ids[:1] if ids else ())}
    return stat.S_ISDIR(st.st_mode) and st.st_uid in allowed


@dataclass(frozen=True)
class Cluster:
    """The directory of one instance's cluster: data, socket directory and bookkeeping files."""

    root: Path
    data_dir: Path  # the instance data directory the cluster belongs to

    @property
    def pgdata(self) -> Path:
        return self.root / "data"

    @property
    def sockdir(self) -> Path:
        return self.root / "sock"

    @property
    def scale_file(self) -> Path:
        """The pgbench scale the database holds (absent while it is being initialised)."""
        return self.root / "pgbench_scale"

    @property
    def initdb_done(self) -> Path:
        return self.root / "initdb.done"

    @property
    def password_file(self) -> Path:
        """The superuser's password, as a pgpass line (0600, in the instance data directory)."""
        return self.data_dir / PASSWORD_FILE

    @property
    def hba_file(self) -> Path:
        return self.pgdata / "pg_hba.conf"

    @property
    def relocated(self) -> bool:
        return self.root.parent == RELOCATED_BASE

    def name(self) -> str:
        """The cluster_name: the data directory when it is plain ASCII, so `ps` shows it."""
        text = str(self.data_dir)
        if text.isascii() and text.isprintable() and len(text) <= 200:
            return text
        return "knobflow-" + _digest(self.data_dir)


def _digest(data_dir: Path) -> str:
    return hashlib.sha256(str(data_dir).encode()).hexdigest()[:16]


def _reachable(path: Path, user: str | None) -> bool:
    """Whether ``user`` can enter ``path`` (every directory above it must let it through)."""
    ids = _owner_ids(user)
    if ids is None:
        return True
    # the user's own group and no other: the strictest of the ways the server may run
    done = subprocess.run(["test", "-x", str(path)], user=ids[0], group=ids[1], extra_groups=[],
                          check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return done.returncode == 0


def locate(data_dir: Path, create: bool = False) -> Cluster | None:
    """The cluster of ``data_dir``, from its record; with ``create``, choose and record one.

    The record is written whole (``write_text_atomic``): a sweep in another process, or a
    ``locate`` of the same instance, reads the old record or the new one, never a part. A record
    that is not an absolute path (cut short by a crash) counts as none."""
    data_dir = Path(os.path.realpath(data_dir))
    record = data_dir / LOCATION_FILE
    with contextlib.suppress(OSError, UnicodeError):
        root = Path(record.read_text(encoding="utf-8").strip())
        if root.is_absolute():
            return Cluster(root, data_dir)
    if not create:
        return None
    local = data_dir / "pg"
    socket_path = local / "sock" / ".s.PGSQL.65535"
    if len(str(socket_path).encode()) <= _SOCKET_MAX and _reachable(data_dir, server_user()):
        root = local
    else:
        root = RELOCATED_BASE / _digest(data_dir)
    write_text_atomic(record, f"{root}\n")
    return Cluster(root, data_dir)


def prepare(cluster: Cluster, bindir: Path, log_dir: Path) -> float:
    """Create the cluster's directories and run initdb if it never finished, or lock a cluster made
    before passwords (``lock``); return the seconds either took."""
    user = server_user()
    if cluster.relocated and not cluster.root.exists():
        try:
            RELOCATED_BASE.mkdir(mode=0o700, parents=True)
        except FileExistsError:
            pass
        else:
            RELOCATED_BASE.chmod(0o1777)  # any user may keep clusters here, like /tmp
        sweep_orphans()
    cluster.root.mkdir(parents=True, exist_ok=True)
    if cluster.root.parent.is_symlink() or not _ours(cluster.root):
        raise TrialFailed(FailureClass.IO_ERROR, f"refusing to keep a cluster in {cluster.root}: "
                          "it is (below) a symlink or another user's directory")
    # written once, whole: a sweep elsewhere may read it at any moment
    if cluster.relocated and _origin(cluster.root) != cluster.data_dir:
        write_text_atomic(cluster.root / "origin", f"{cluster.data_dir}\n")
    for path in (cluster.root, cluster.sockdir):
        path.mkdir(exist_ok=True)
        path.chmod(0o700)
        _own(path, user)
    if cluster.initdb_done.exists():
        return 0.0 if locked(cluster) else lock(cluster, bindir)
    return _initdb(cluster, bindir, log_dir)


def _initdb(cluster: Cluster, bindir: Path, log_dir: Path) -> float:
    """Run initdb in an empty data directory, the superuser's password set from the start (no
    moment with ``trust``); return its seconds."""
    user = server_user()
    end_leftovers(cluster)
    shutil.rmtree(cluster.pgdata, ignore_errors=True)
    cluster.scale_file.unlink(missing_ok=True)
    cluster.pgdata.mkdir(mode=0o700)
    _own(cluster.pgdata, user)
    # initdb (the server's user) reads the verifier, not the password, from a 0600 file of its own
    verifier = cluster.root / "superuser.scram"
    write_private(verifier, scram_verifier(_new_password(cluster)) + "\n")
    _own(verifier, user)
    cmd = [
        str(bindir / "initdb"), "-D", str(cluster.pgdata), "--no-sync",
        "--auth-local=scram-sha-256", "--auth-host=scram-sha-256", f"--pwfile={verifier}",
        "-E", "UTF8", "--locale=C", "-U", SUPERUSER, "--no-instructions",
    ]
    started = time.monotonic()
    try:
        done = run_client(cmd, timeout=300, log_dir=log_dir, name="initdb", cwd=cluster.root,
                          user=user, env=clean_env())
    finally:
        verifier.unlink(missing_ok=True)
    if done.returncode != 0:
        text = done.stdout + done.stderr
        failure = classify(text) or FailureClass.CRASH
        raise TrialFailed(failure, f"initdb failed ({done.returncode}): {last_lines(text, n=4)}")
    _write_hba(cluster, user)
    cluster.initdb_done.write_text("ok\n", encoding="utf-8")
    return time.monotonic() - started


# -- the superuser's password ----------------------------------------------------------------
def scram_verifier(password: str, salt: bytes | None = None) -> str:
    """The SCRAM-SHA-256 secret PostgreSQL keeps for ``password`` (``ALTER ROLE ... PASSWORD``
    stores one as it is): what the server is given, so it never sees the password."""
    salt = salt or os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, _SCRAM_ITERATIONS)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()
    salt64, stored64, server64 = (base64.b64encode(part).decode() for part in (
        salt, hashlib.sha256(client_key).digest(), server_key))
    return f"SCRAM-SHA-256${_SCRAM_ITERATIONS}:{salt64}${stored64}:{server64}"


def _new_password(cluster: Cluster) -> str:
    """A new random password for the instance, written to its pgpass file (0600) first."""
    password = new_secret()
    write_private(cluster.password_file, f"*:*:*:{SUPERUSER}:{password}\n")
    return password


def read_password(cluster: Cluster) -> str | None:
    """The instance's password from its pgpass file; None if there is none (or not 0600)."""
    try:
        if stat.S_IMODE(os.stat(cluster.password_file).st_mode) & 0o077:
            return None  # libpq would ignore it: a file others may read is no secret any more
        fields = cluster.password_file.read_text(encoding="utf-8").strip().split(":")
    except (OSError, UnicodeError):
        return None
    ok = len(fields) == 5 and fields[3] == SUPERUSER and fields[4]
    return fields[4] if ok else None


def locked(cluster: Cluster) -> bool:
    """Whether the cluster admits only knobflow: a password file and knobflow's pg_hba.conf."""
    try:
        hba = cluster.hba_file.read_text(encoding="utf-8")
    except (OSError, UnicodeError):
        return False
    return hba == HBA and read_password(cluster) is not None


def lock(cluster: Cluster, bindir: Path) -> float:
    """Lock a cluster made before passwords (``trust`` for every connection), or whose password
    file was lost: set the superuser's password in a single-user backend (the verifier on its
    standard input), then write knobflow's pg_hba.conf; return its seconds. Data are kept."""
    started, user = time.monotonic(), server_user()
    password = read_password(cluster) or _new_password(cluster)
    end_leftovers(cluster)  # a single-user backend needs the cluster to itself
    cmd = [str(bindir / "postgres"), "--single", "-D", str(cluster.pgdata), "-c",
           "exit_on_error=on", "-c", "log_min_error_statement=panic", "postgres"]
    sql = f"ALTER ROLE {SUPERUSER} PASSWORD '{scram_verifier(password)}';\n"
    try:
        done = run_with_input(cmd, sql, timeout=300, env=clean_env(), cwd=cluster.root, user=user)
    except subprocess.TimeoutExpired:
        raise TrialFailed(FailureClass.CRASH, "setting the instance's password timed out") from None
    text = done.stdout + done.stderr
    if done.returncode != 0 or "ERROR:" in text or "FATAL:" in text:
        raise TrialFailed(classify(text) or FailureClass.CRASH,
                          f"setting the instance's password failed ({done.returncode}): "
                          f"{last_lines(text, lambda ln: 'STATEMENT' not in ln, n=4)}")
    _write_hba(cluster, user)
    return time.monotonic() - started


def _write_hba(cluster: Cluster, user: str | None) -> None:
    write_private(cluster.hba_file, HBA)
    _own(cluster.hba_file, user)


def client_env(cluster: Cluster) -> dict[str, str]:
    """The environment of psql and pgbench: ``clean_env`` and the instance's pgpass file, so the
    password reaches them without a command line (libpq reads it only if it is 0600)."""
    return {**clean_env(), "PGPASSFILE": str(cluster.password_file)}


def clean_env() -> dict[str, str]:
    """The environment of PostgreSQL programs: no PG* settings of the caller, C messages."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    return env


def sweep_orphans() -> None:
    """Remove relocated clusters whose instance data directory no longer points to them.

    Any process preparing a relocated cluster sweeps, while others may be creating theirs: a
    root without an ``origin``, or whose ``origin`` is empty, cut short or not an absolute path,
    is left alone until it is ``_ORPHAN_AGE_S`` old. A root is removed only when the record in
    its data directory is missing or names another root; a file that cannot be read (other than
    a missing one) keeps it.
    """
    with contextlib.suppress(OSError):
        for root in RELOCATED_BASE.iterdir():
            if not _ours(root):
                continue
            with contextlib.suppress(OSError):
                if _orphaned(root):
                    remove_cluster(Cluster(root, Path(os.devnull)))


def _orphaned(root: Path) -> bool:
    """Whether the relocated cluster ``root`` belongs to no instance (OSError: cannot tell)."""
    data_dir = _origin(root)
    if data_dir is None:  # being created right now, unless that began _ORPHAN_AGE_S ago
        return time.time() - root.stat().st_mtime >= _ORPHAN_AGE_S
    try:
        recorded = (data_dir / LOCATION_FILE).read_text(encoding="utf-8").strip()
    except (FileNotFoundError, NotADirectoryError):
        return True  # the instance, or its record, is gone
    except UnicodeError:
        return False  # cannot tell (records are written whole, in UTF-8): keep it
    return recorded != str(root)


def _origin(root: Path) -> Path | None:
    """The instance data directory ``root/origin`` names; None while there is none, or it is
    not whole (``prepare`` ends it with a newline) or not an absolute path (OSError: it cannot
    be read)."""
    try:
        text = (root / "origin").read_text(encoding="utf-8")
    except (FileNotFoundError, UnicodeError):
        return None
    data_dir = Path(text.strip())
    return data_dir if text.endswith("\n") and data_dir.is_absolute() else None


def remove_cluster(cluster: Cluster) -> None:
    """End the cluster's processes and delete its directory."""
    end_leftovers(cluster)
    shutil.rmtree(cluster.root, ignore_errors=True)


def forget_instance(data_dir: Path) -> None:
    """Delete the cluster of an instance that is no longer wanted (and its record)."""
    cluster = locate(data_dir)
    if cluster is not None:
        remove_cluster(cluster)
        (cluster.data_dir / LOCATION_FILE).unlink(missing_ok=True)
        cluster.password_file.unlink(missing_ok=True)  # the password of a cluster now gone
