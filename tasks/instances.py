"""Live instances: named systems knobflow observes and acts on, kept in the knobflow home.

An instance is a record (``Instance``) in ``<home>/instances/<name>/instance.json`` (directory
0700, file 0600, written atomically): its service, target, connection URL *without* a password,
the file holding the password (``secret``, 0600, beside it), an optional restart command, and,
for an instance knobflow launched (``knobflow instance start``), its data directory and workload.
A password given in a URL is split off (``split_secret``) before anything is stored, logged or
shown. ``InstanceStore`` adds, reads, lists, updates and removes records; ``of_service`` gives
the canary order (creation order, then name).

One command at a time acts on an instance: ``instance_lock`` takes an exclusive, non-blocking
lock (``fcntl.flock`` on ``<name>/lock``: released by the kernel when its holder dies, even by
SIGKILL) and writes the holder's pid and command into the lock file itself; another command is
refused with the holder named.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import re
import shlex
import shutil
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from targets.common.errors import KnobflowError, check_fields, did_you_mean
from targets.common.files import atomic_path, display_path, file_lock

if TYPE_CHECKING:
    from targets.live import Connection

__all__ = [
    "ACTUATION_POLICY", "DEFAULT_POLICY", "DRIFT_POLICY", "DRIFT_TESTS", "NAME_RULE", "SCHEMES",
    "Instance", "InstanceStore", "instance_lock",
    "lock_holder", "redact", "split_secret",
]

NAME_RULE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
NAME_TEXT = ("an instance name is 1-63 characters: lower-case letters, digits, '.', '_' or '-', "
             "starting with a letter or digit")
#: The URL schemes an instance may be reached by (``unix``: a Redis socket, no password).
SCHEMES = ("postgresql", "postgres", "redis", "rediss", "unix", "synthetic")
#: What an actuation may do unless the instance's policy says otherwise.
ACTUATION_POLICY: dict[str, Any] = {"max_knobs": 3, "windows": 5, "window_s": 5.0, "alpha": 0.01,
                                    "min_effect": 0.05}
#: When the watch calls a change drift (``tasks.drift``): the test per feature (``ks`` or
#: ``psi``), its level or PSI threshold, the smallest relative change of a fingerprint feature's
#: mean, of the objective and of a scale value, and the seconds between two drift events.
DRIFT_POLICY: dict[str, Any] = {"drift_test": "ks", "drift_alpha": 0.01, "drift_psi": 0.2,
                                "drift_rel": 0.25, "drift_perf_rel": 0.3, "drift_scale_rel": 0.2,
                                "drift_cooldown_s": 1800.0}
DEFAULT_POLICY: dict[str, Any] = {**ACTUATION_POLICY, **DRIFT_POLICY}
#: Numeric policy keys and their open ranges (cooldown: from 0 inclusive).
_RANGES: tuple[tuple[str, float, float], ...] = (
    ("window_s", 0.0, float("inf")), ("alpha", 0.0, 0.5), ("min_effect", 0.0, 1.0),
    ("drift_alpha", 0.0, 0.5), ("drift_psi", 0.0, float("inf")), ("drift_rel", 0.0, 100.0),
    ("drift_perf_rel", 0.0, 100.0), ("drift_scale_rel", 0.0, 100.0))
DRIFT_TESTS = ("ks", "psi")
FIELDS = ("name", "service", "target", "url", "secret_file", "restart_command", "launched",
          "data_dir", "workload", "created", "policy")


def check_name(name: str) -> str:
    """``name`` if it is a valid instance name; a KnobflowError stating the rule otherwise."""
    if not isinstance(name, str) or not NAME_RULE.match(name):
        raise KnobflowError(f"bad instance name {name!r}: {NAME_TEXT}")
    return name


def split_secret(url: str) -> tuple[str, str | None]:
    """``url`` without its password, and the password (percent-decoded), or None.

    ``postgresql://user:pw@host:5432/db`` gives ``("postgresql://user@host:5432/db", "pw")``;
    ``redis://:pw@host:6379/0`` gives ``("redis://host:6379/0", "pw")``; a ``password=`` query
    parameter is split off too. An unknown scheme is refused, naming the known ones; the error
    never quotes the URL (it may hold a password)."""
    parts = urlsplit(url.strip())
    if parts.scheme not in SCHEMES:
        shown = parts.scheme or "none"
        raise KnobflowError(f"connection URL: unknown scheme '{shown}'"
                            f"{did_you_mean(parts.scheme, SCHEMES)}; known: {', '.join(SCHEMES)}")
    password = None
    userinfo, at, hostport = parts.netloc.rpartition("@")
    netloc = parts.netloc
    if at:
        user, colon, secret = userinfo.partition(":")
        if colon:
            password = unquote(secret)
        netloc = f"{user}@{hostport}" if user else hostport
    query = parse_qsl(parts.query, keep_blank_values=True)
    kept = [(k, v) for k, v in query if k != "password"]
    if len(kept) != len(query):
        password = password or next(v for k, v in query if k == "password")
    clean = urlunsplit((parts.scheme, netloc, parts.path, urlencode(kept), parts.fragment))
    if parts.scheme == "unix" and not parts.netloc and clean.startswith("unix:/"):
        clean = "unix://" + clean.removeprefix("unix:")  # urlunsplit drops the empty netloc
    return clean, password or None


_URL_PASSWORD = re.compile(r"(://[^:/@\s]*:)[^@\s/]*@")
_QUERY_PASSWORD = re.compile(r"([?&]password=)[^&\s]*")


def redact(text: str) -> str:
    """``text`` with any URL password in it replaced by ``***`` (for commands shown or logged)."""
    return _QUERY_PASSWORD.sub(r"\1***", _URL_PASSWORD.sub(r"\1***@", text))


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


@dataclass(frozen=True)
class Instance:
    """A live instance of a service: how to reach it, and what an actuation may do to it."""

    name: str
    service: str
    target: str
    url: str
    secret_file: Path | None = None
    restart_command: str | None = None
    launched: bool = False
    data_dir: Path | None = None
    workload: dict[str, Any] = field(default_factory=dict)
    created: str = field(default_factory=_now)
    policy: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_name(self.name)
        if split_secret(self.url)[1] is not None:
            raise KnobflowError(f"instance {self.name}: the URL holds a password; it is kept "
                                "in the instance's secret file, never in its record")
        object.__setattr__(self, "policy", check_policy(self.policy, f"instance {self.name}"))

    def to_dict(self) -> dict[str, Any]:
        """The record as stored in ``instance.json`` (paths as text; no secret)."""
        doc = dataclasses.asdict(self)
        for key in ("secret_file", "data_dir"):
            doc[key] = None if doc[key] is None else str(doc[key])
        return doc

    @classmethod
    def from_dict(cls, doc: Any, where: str) -> Instance:
        """A record read from ``where``; a missing or mistyped field is a KnobflowError naming
        the file and field."""
        if not isinstance(doc, Mapping):
            raise KnobflowError(f"{where}: an instance record is a JSON object")
        check_fields(doc, FIELDS, where, KnobflowError)
        values: dict[str, Any] = {}
        for name, types, required in _FIELD_TYPES:
            value = doc.get(name)
            if value is None and not required:
                continue
            if not isinstance(value, types):
                wanted = " or ".join(t.__name__ for t in
                                     (types if isinstance(types, tuple) else (types,)))
                raise KnobflowError(f"{where}: field '{name}' must be {wanted}; remove the "
                                    "instance (`knobflow instance remove NAME`) and add it again")
            values[name] = Path(value) if name in ("secret_file", "data_dir") else value
        try:
            return cls(**values)
        except KnobflowError as exc:
            raise KnobflowError(f"{where}: {exc}") from None

    def connection(self) -> Connection:
        """How a live-system driver reaches the instance (``targets.live.Connection``)."""
        from targets.live import Connection

        return Connection(target=self.target, url=self.url, secret_file=self.secret_file,
                          restart_command=self.restart_command)


_FIELD_TYPES: tuple[tuple[str, Any, bool], ...] = (
    ("name", str, True), ("service", str, True), ("target", str, True), ("url", str, True),
    ("secret_file", str, False), ("restart_command", str, False), ("launched", bool, False),
    ("data_dir", str, False), ("workload", dict, False), ("created", str, False),
    ("policy", dict, False),
)


def check_policy(policy: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The policy with defaults filled in; an unknown key or a bad value is a KnobflowError."""
    check_fields(policy, list(DEFAULT_POLICY), f"{where}: policy", KnobflowError, "key")
    full = {**DEFAULT_POLICY, **policy}
    ints = {"max_knobs": 1, "windows": 2}
    for key, least in ints.items():
        value = full[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise KnobflowError(f"{where}: policy '{key}' must be an integer >= {least}")
    for key, low, high in _RANGES:
        value = full[key]
        if isinstance(value, bool) or not isinstance(value, int | float) or not low < value < high:
            raise KnobflowError(f"{where}: policy '{key}' must be a number in ({low}, {high})")
        full[key] = float(value)
    cooldown = full["drift_cooldown_s"]
    if isinstance(cooldown, bool) or not isinstance(cooldown, int | float) or not (
            0 <= cooldown < float("inf")):
        raise KnobflowError(f"{where}: policy 'drift_cooldown_s' must be a number of seconds "
                            ">= 0")
    full["drift_cooldown_s"] = float(cooldown)
    if full["drift_test"] not in DRIFT_TESTS:
        raise KnobflowError(f"{where}: policy 'drift_test' must be one of "
                            f"{', '.join(DRIFT_TESTS)} (got {full['drift_test']!r})")
    return full


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically through a temporary file created 0600 (the content
    is never readable by others, not even for a moment)."""
    with atomic_path(path) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())


class InstanceStore:
    """The instances of a knobflow home (``<home>/instances/``)."""

    def __init__(self, home: str | os.PathLike[str]) -> None:
        self.root = Path(home) / "instances"

    def dir(self, name: str) -> Path:
        return self.root / check_name(name)

    def _record(self, name: str) -> Path:
        return self.dir(name) / "instance.json"

    def _names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.parent.name for p in self.root.glob("*/instance.json")
                      if NAME_RULE.match(p.parent.name))

    def _locked(self) -> contextlib.AbstractContextManager[None]:
        return file_lock(self.root / ".store.lock")

    def add(self, instance: Instance, password: str | None = None) -> Instance:
        """Store a new instance (and its password, 0600, in ``secret``); returns it as stored.
        An existing name is refused."""
        with self._locked():
            directory = self.dir(instance.name)
            if self._record(instance.name).exists():
                raise KnobflowError(f"instance {instance.name} exists already; remove it first "
                                    f"(`knobflow instance remove {instance.name}`) or pick "
                                    "another name")
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            directory.mkdir(mode=0o700, exist_ok=True)
            os.chmod(directory, 0o700)
            if password is not None:
                secret = directory / "secret"
                _write_private(secret, password)
                instance = dataclasses.replace(instance, secret_file=secret)
            self._write(instance)
        return instance

    def _write(self, instance: Instance) -> None:
        _write_private(self._record(instance.name),
                       json.dumps(instance.to_dict(), indent=2) + "\n")

    def get(self, name: str) -> Instance:
        path = self._record(name)
        if not path.exists():
            known = self._names()
            raise KnobflowError(f"no instance '{name}'{did_you_mean(name, known)}; see "
                                "`knobflow instance list`")
        shown = display_path(path)
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise KnobflowError(f"{shown}: not a readable instance record ({exc}); remove the "
                                f"instance (`knobflow instance remove {name}`) and add it "
                                "again") from None
        instance = Instance.from_dict(doc, shown)
        if instance.name != name:
            raise KnobflowError(f"{shown}: field 'name' is {instance.name!r}, not the "
                                f"directory's {name!r}")
        return instance

    def list(self) -> list[Instance]:
        """Every instance, sorted by name."""
        return [self.get(name) for name in self._names()]

    def update(self, instance: Instance) -> Instance:
        """Rewrite the record of an existing instance."""
        with self._locked():
            self.get(instance.name)
            self._write(instance)
        return instance

    def remove(self, name: str) -> Instance:
        """Forget an instance (its record, secret and log); stopping a launched one is the
        caller's job, as is holding ``instance_lock`` while it does."""
        with self._locked():
            instance = self.get(name)
            shutil.rmtree(self.dir(name))
        return instance

    def of_service(self, service: str) -> list[Instance]:
        """The instances of ``service`` in canary order: creation order, then name."""
        return sorted((i for i in self.list() if i.service == service),
                      key=lambda i: (i.created, i.name))


def _holder_text(holder: Mapping[str, Any] | None) -> str:
    if not holder:
        return "another process"
    return f"knobflow (pid {holder.get('pid', '?')}, `{holder.get('command', '?')}`)"


def lock_holder(store: InstanceStore, name: str) -> dict[str, Any] | None:
    """Who holds ``name``'s lock now (``{"pid", "command", "since"}``), or None when free."""
    path = store.dir(name) / "lock"
    if not path.exists():
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_holder(fd) or {}
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _read_holder(fd: int) -> dict[str, Any] | None:
    try:
        holder = json.loads(os.pread(fd, 4096, 0).decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None  # written this very moment, or by something else
    return holder if isinstance(holder, dict) else None


@contextlib.contextmanager
def instance_lock(store: InstanceStore, name: str, command: str | None = None) -> Iterator[None]:
    """Hold ``name``'s lock for the block, or refuse at once when another process holds it.

    The lock is ``fcntl.flock`` on ``instances/<name>/lock``: the kernel drops it when its holder
    exits, however it ends, so a SIGKILLed command never blocks the next one. The holder's pid
    and command (``command``, default this process's arguments, passwords redacted) are written
    into the lock file for the refusal to name. The descriptor is not inherited by child
    processes (Python opens files close-on-exec), so a server a command starts does not keep
    the lock."""
    store.get(name)
    path = store.dir(name) / "lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise KnobflowError(
                f"instance {name} is busy: {_holder_text(_read_holder(fd))} is acting on it; "
                "wait for it or end it") from None
        shown = redact(command or shlex.join(["knobflow", *sys.argv[1:]]))
        holder = json.dumps({"pid": os.getpid(), "command": shown, "since": _now()})
        os.ftruncate(fd, 0)
        os.pwrite(fd, holder.encode("utf-8"), 0)
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # closing the descriptor releases the lock
