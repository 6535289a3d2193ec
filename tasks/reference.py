"""An instance's reference and its drift log: what the watch compares with, and what it saw.

The *reference* of a live instance is how it looked when its config last became settled: the
windows after an actuation that was kept (source ``"actuation ID kept"``), the windows before one
that was rolled back (the config it is back on: ``"actuation ID rolled back"``), or, when nothing
was actuated yet, the first watch (``"first watch"``) or a ``knobflow watch NAME --reset``
(``"reset"``). It is kept in ``instances/<name>/reference.json`` (written atomically)::

    {"recorded": "2025-01-01T03:00:00.000000+00:00",   # ISO, UTC
     "source": "actuation 20250101-030000.000000-ab12cd kept",
     "config": {knob: value},                           # the config the windows ran on
     "host": {"cpu_count": 2.0, "memory_mb": 7940.0},   # {} for an instance on another host
     "windows": [targets.live.Window.to_dict(), ...]}

The *drift log* ``instances/<name>/drift.jsonl`` is append-only, one JSON line per watch of the
instance (``tasks.drift`` and ``flows.watch`` say what a line holds); ``read_drift`` skips a line
a crash tore. ``reference_from_actuation`` makes the reference an actuation leaves from its lines
in the actuation log (``tasks.actlog``), so an actuation finished by recovery updates it too.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from targets.common.errors import KnobflowError
from targets.common.files import display_path, write_all_synced, write_text_atomic
from targets.live import Window
from tasks.actlog import Actuation, Outcome, Phase
from tasks.instances import Instance, InstanceStore

__all__ = [
    "DRIFT_LOG", "REFERENCE", "Reference", "append_drift", "host_facts", "instance_host",
    "load_reference",
    "read_drift", "reference_from_actuation", "reference_path", "save_reference", "utc_now",
]

#: Host names of this host (and None: a Unix socket, a PostgreSQL URL without a host).
LOCAL_HOSTS = (None, "", "localhost", "127.0.0.1", "::1")
REFERENCE = "reference.json"
DRIFT_LOG = "drift.jsonl"


def utc_now() -> str:
    """Now, as ISO text in UTC (to the microsecond)."""
    return datetime.now(UTC).isoformat(timespec="microseconds")


def host_facts() -> dict[str, float]:
    """This host's scale: its cores and its memory (MiB)."""
    facts = {"cpu_count": float(os.cpu_count() or 1)}
    with contextlib.suppress(ValueError, OSError):
        facts["memory_mb"] = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20
    return facts


@dataclass
class Reference:
    """The windows an instance is compared with, the config they ran on, when and why."""

    windows: list[Window]
    config: dict[str, Any]
    recorded: str = field(default_factory=utc_now)
    source: str = "first watch"
    host: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"recorded": self.recorded, "source": self.source, "config": dict(self.config),
                "host": dict(self.host), "windows": [w.to_dict() for w in self.windows]}

    @classmethod
    def from_dict(cls, data: Any) -> Reference:
        """A reference from its JSON form; a ValueError (or KeyError, TypeError) when it is
        not one."""
        if not isinstance(data, Mapping) or not isinstance(data.get("windows"), list):
            raise ValueError("not a JSON object with a list of windows")
        return cls(windows=[Window.from_dict(w) for w in data["windows"]],
                   config=dict(data.get("config") or {}), recorded=str(data["recorded"]),
                   source=str(data.get("source", "")),
                   host={str(k): float(v) for k, v in (data.get("host") or {}).items()})


def reference_path(home: str | os.PathLike[str], name: str) -> Path:
    """Where instance ``name``'s reference is kept."""
    return InstanceStore(home).dir(name) / REFERENCE


def save_reference(home: str | os.PathLike[str], name: str, reference: Reference) -> Path:
    """Make ``reference`` instance ``name``'s reference (atomically); its path."""
    return write_text_atomic(reference_path(home, name),
                             json.dumps(reference.to_dict(), indent=1) + "\n")


def load_reference(home: str | os.PathLike[str], name: str) -> Reference | None:
    """Instance ``name``'s reference; None when it has none yet. A file that cannot be read is a
    KnobflowError naming it and the fix."""
    path = reference_path(home, name)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise KnobflowError(f"{display_path(path)}: cannot be read ({exc}); record a new "
                            f"reference with `knobflow watch {name} --reset`") from None
    try:
        return Reference.from_dict(json.loads(text))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise KnobflowError(f"{display_path(path)}: not a reference ({exc}); record a new one "
                            f"with `knobflow watch {name} --reset`") from None


def instance_host(instance: Instance) -> dict[str, float]:
    """``host_facts()`` for an instance on this host (a socket, localhost); {} for one on
    another host (this host's cores say nothing about it)."""
    parts = urlsplit(instance.url)
    local = parts.scheme in ("unix", "synthetic") or parts.hostname in LOCAL_HOSTS
    return host_facts() if local else {}


def reference_from_actuation(actuation: Actuation,
                             host: Mapping[str, float] | None = None) -> Reference | None:
    """The reference a finished actuation leaves: kept, the windows after the change (all of
    them, when the observation was extended); rolled back, the windows before it. None for
    another outcome, or when the log holds no windows."""
    outcome = actuation.outcome
    if outcome == Outcome.KEPT:
        phase, words = Phase.OBSERVED_AFTER, "kept"
    elif outcome == Outcome.ROLLED_BACK:
        phase, words = Phase.OBSERVED_BEFORE, "rolled back"
    else:
        return None
    seen = [e["observation"] for e in actuation.entries
            if e["phase"] == phase and isinstance(e.get("observation"), Mapping)]
    if phase == Phase.OBSERVED_BEFORE:
        seen = seen[-1:]
    windows = [Window.from_dict(w) for s in seen for w in s.get("windows", [])]
    if not windows:
        return None
    return Reference(windows=windows, config=dict(seen[-1].get("config") or {}),
                     source=f"actuation {actuation.id} {words}", host=dict(host or {}))


def _drift_path(home: str | os.PathLike[str], name: str) -> Path:
    return InstanceStore(home).dir(name) / DRIFT_LOG


def append_drift(home: str | os.PathLike[str], name: str, line: Mapping[str, Any]) -> None:
    """Append one line to instance ``name``'s drift log; returns once it is on disk."""
    data = (json.dumps(dict(line), default=str, ensure_ascii=False) + "\n").encode("utf-8")
    fd = os.open(_drift_path(home, name), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        write_all_synced(fd, data)
    finally:
        os.close(fd)


def read_drift(home: str | os.PathLike[str], name: str) -> list[dict[str, Any]]:
    """Instance ``name``'s drift log, oldest first ([] before its first watch); a line that is
    not a JSON object (torn by a crash) is skipped."""
    try:
        raw = _drift_path(home, name).read_bytes()
    except FileNotFoundError:
        return []
    lines = []
    for text in raw.split(b"\n"):
        try:
            line = json.loads(text)
        except (UnicodeDecodeError, json.JSONDecodeError):
            continue
        if isinstance(line, dict):
            lines.append(line)
    return lines
