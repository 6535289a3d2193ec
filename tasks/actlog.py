"""The actuation log of one live instance: append-only, one JSON line per step, crash-safe.

``instances/<name>/actuations.jsonl`` holds, for every actuation (an id from ``new_id``, sortable
by time), a line per phase it went through (``Phase``), each with its time (ISO, UTC), the pid of
the command that wrote it and the phase's fields. ``append`` returns only once the line is on
disk (``O_APPEND``, ``fsync``): a SIGKILL right after it keeps the line. A crash in the middle of
a write leaves at most a torn last line, which ``entries`` skips and reports in ``problems``, and
the next ``append`` cuts off (it was never acknowledged); any other bad line is an error naming
the file and line. ``unfinished`` is the actuation a crashed command left without ``done``: the
next command on the instance finishes or rolls it back (``recovered``, then ``done``).

The fields each phase carries (the actuation task writes them; ``history_table`` reads them):

=================  ==================================================================
begin              ``source`` (what proposed the config), ``changes`` {knob: value},
                   ``before_config`` {knob: value} (the effective config, read back),
                   ``provenance`` (a recommendation's; ``approval``: the operator's answer)
observed_before    ``values`` (the windows' metric), ``metric``, ``direction``
applied            ``applied`` {knob: value} (read back after the change)
observed_after     ``values``
decided            ``keep`` (bool), ``reasons`` [text], ``test`` (``ChangeTest.to_dict()``)
rolled_back        ``restored`` {knob: value} (read back)
learned            ``rule`` (the learned rule's id)
recovered          ``action`` ("completed" | "rolled_back"), ``crashed_pid``
done               ``outcome`` (``Outcome``), ``note`` (why it ended so, for refused/failed;
                   for rejected: by whom, when, the reason)
=================  ==================================================================
"""

from __future__ import annotations

import enum
import fcntl
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from targets.common.errors import KnobflowError
from targets.common.files import display_path, write_all_synced

__all__ = ["Actuation", "ActuationLog", "Outcome", "Phase", "history_table"]


class Phase(enum.StrEnum):
    BEGIN = "begin"
    OBSERVED_BEFORE = "observed_before"
    APPLYING = "applying"
    APPLIED = "applied"
    OBSERVED_AFTER = "observed_after"
    DECIDED = "decided"
    ROLLING_BACK = "rolling_back"
    ROLLED_BACK = "rolled_back"
    LEARNED = "learned"
    DONE = "done"
    RECOVERED = "recovered"


class Outcome(enum.StrEnum):
    KEPT = "kept"
    ROLLED_BACK = "rolled_back"
    REFUSED = "refused"
    FAILED = "failed"
    DRY_RUN = "dry_run"
    REJECTED = "rejected"  # an operator (or the approval's timeout) said no: nothing changed


#: Keys every line has; a phase's fields may not use them.
RESERVED = ("id", "phase", "time", "pid")
#: How far back ``append`` looks for the end of the last whole line after a torn write.
_TAIL = 1 << 20
_last_id_time = datetime.min.replace(tzinfo=UTC)


def _jsonable(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):  # a numpy scalar
        return value.item()
    if hasattr(value, "to_dict"):
        return value.to_dict()
    raise TypeError(f"an actuation log field cannot hold {type(value).__name__}")


@dataclass
class Actuation:
    """The lines of one actuation, in order; ``fields`` merges them (a later phase wins)."""

    id: str
    entries: list[dict[str, Any]] = field(default_factory=list)

    @property
    def phases(self) -> list[Phase]:
        return [Phase(e["phase"]) for e in self.entries]

    @property
    def fields(self) -> dict[str, Any]:
        merged: dict[str, Any] = {}
        for entry in self.entries:
            merged.update({k: v for k, v in entry.items() if k not in RESERVED})
        return merged

    def by_phase(self) -> dict[str, dict[str, Any]]:
        """Its lines by phase (the last line of each phase)."""
        return {entry["phase"]: entry for entry in self.entries}

    @property
    def phase(self) -> Phase:
        """The last phase it reached."""
        return self.phases[-1]

    @property
    def started(self) -> str:
        return str(self.entries[0]["time"])

    @property
    def finished(self) -> bool:
        return Phase.DONE in self.phases

    @property
    def outcome(self) -> Outcome | None:
        done = [e for e in self.entries if e["phase"] == Phase.DONE]
        return Outcome(done[-1]["outcome"]) if done and "outcome" in done[-1] else None


class ActuationLog:
    """The append-only actuation log at ``path`` (``instances/<name>/actuations.jsonl``)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.problems: list[str] = []

    @classmethod
    def of(cls, instance_dir: str | os.PathLike[str]) -> ActuationLog:
        """The log of the instance kept in ``instance_dir`` (``InstanceStore.dir(name)``)."""
        return cls(Path(instance_dir) / "actuations.jsonl")

    @staticmethod
    def new_id() -> str:
        """A new actuation id: its start time (UTC, to the microsecond: ids sort by time) and a
        random suffix; within a process each id's time is later than the one before."""
        global _last_id_time
        now = max(datetime.now(UTC), _last_id_time + timedelta(microseconds=1))
        _last_id_time = now
        return f"{now:%Y%m%d-%H%M%S.%f}-{os.urandom(3).hex()}"

    def append(self, actuation_id: str, phase: Phase | str, **fields: Any) -> dict[str, Any]:
        """Write one line for ``phase`` of the actuation; returns once it is on disk."""
        taken = sorted(set(fields) & set(RESERVED))
        if taken:
            raise ValueError(f"actuation log fields may not be named {', '.join(taken)}")
        entry = {"id": actuation_id, "phase": Phase(phase).value,
                 "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
                 "pid": os.getpid(), **fields}
        line = (json.dumps(entry, default=_jsonable, ensure_ascii=False) + "\n").encode("utf-8")
        existed = self.path.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # writers of one log take turns
            self._cut_torn_tail(fd)
            write_all_synced(fd, line)
        finally:
            os.close(fd)
        if not existed:  # the new file's name is on disk too
            dir_fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        return entry

    def _cut_torn_tail(self, fd: int) -> None:
        """Cut off a last line a crash left half-written (no newline): it was never
        acknowledged, and a line appended after it would otherwise join it."""
        size = os.fstat(fd).st_size
        if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
            return
        start = max(0, size - _TAIL)
        tail = os.pread(fd, size - start, start)
        os.ftruncate(fd, start + tail.rfind(b"\n") + 1)

    def entries(self) -> list[dict[str, Any]]:
        """Every whole line, in order. A torn last line is skipped and reported in
        ``problems``; any other bad line is a KnobflowError naming the file and line."""
        self.problems = []
        if not self.path.exists():
            return []
        shown = display_path(self.path)
        data = self.path.read_bytes()
        lines = data.split(b"\n")
        torn = lines.pop()  # b"" when the file ends with a newline
        if torn:
            self.problems.append(f"{shown}: line {len(lines) + 1} was torn by a crash while it "
                                 f"was written ({len(torn)} bytes); skipped")
        found = []
        for number, raw in enumerate(lines, start=1):
            if raw.strip():
                found.append(_parse_line(raw, shown, number))
        return found

    def actuations(self) -> list[Actuation]:
        """The actuations in the order they started, each with its lines."""
        by_id: dict[str, Actuation] = {}
        for entry in self.entries():
            by_id.setdefault(entry["id"], Actuation(entry["id"])).entries.append(entry)
        return list(by_id.values())

    def actuation(self, actuation_id: str) -> Actuation:
        """The actuation ``actuation_id`` (no lines: an empty one)."""
        return next((a for a in self.actuations() if a.id == actuation_id),
                    Actuation(actuation_id))

    def unfinished(self) -> Actuation | None:
        """The latest actuation without ``done`` (a command died during it), or None."""
        left = [a for a in self.actuations() if not a.finished]
        return left[-1] if left else None


def _parse_line(raw: bytes, shown: str, number: int) -> dict[str, Any]:
    fix = "the log is append-only: move the file aside to start a new one"
    try:
        entry = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise KnobflowError(f"{shown}: line {number} is not a JSON record ({exc}); {fix}") from None
    if not isinstance(entry, dict):
        raise KnobflowError(f"{shown}: line {number} is not a JSON object; {fix}")
    for key in ("id", "phase", "time"):
        if not isinstance(entry.get(key), str):
            raise KnobflowError(f"{shown}: line {number}: field '{key}' is missing; {fix}")
    if entry["phase"] not in Phase.__members__.values():
        known = ", ".join(p.value for p in Phase)
        raise KnobflowError(f"{shown}: line {number}: field 'phase' is {entry['phase']!r}, "
                            f"not one of {known}; {fix}")
    if entry["phase"] == Phase.DONE and entry.get("outcome") not in (*Outcome, None):
        known = ", ".join(o.value for o in Outcome)
        raise KnobflowError(f"{shown}: line {number}: field 'outcome' is "
                            f"{entry['outcome']!r}, not one of {known}; {fix}")
    return entry


def _ended(actuation: Actuation) -> str:
    """How an actuation ended, in words."""
    fields = actuation.fields
    if not actuation.finished:
        pid = actuation.entries[-1].get("pid", "?")
        return f"unfinished: stopped after {actuation.phase.value} (pid {pid})"
    outcome = actuation.outcome
    words = {Outcome.KEPT: "kept", Outcome.ROLLED_BACK: "rolled back",
             Outcome.REFUSED: "refused", Outcome.FAILED: "failed",
             Outcome.DRY_RUN: "dry run: nothing applied",
             Outcome.REJECTED: "rejected, nothing changed", None: "done"}[outcome]
    if Phase.RECOVERED in actuation.phases:
        return f"{words} by recovery after a crash (pid {fields.get('crashed_pid', '?')})"
    if outcome in (Outcome.KEPT, Outcome.ROLLED_BACK):
        words += " after verification"
        if Phase.LEARNED in actuation.phases:
            words += f"; learned {fields.get('rule', 'a rule')}"
    note = fields.get("note")
    return f"{words}: {note}" if note else words


def _decision(fields: Mapping[str, Any]) -> str:
    if "keep" not in fields:
        return ""
    reasons = [str(r) for r in fields.get("reasons") or []]
    head = "keep" if fields["keep"] else "roll back"
    return f"{head}: {reasons[0]}" if reasons else head


def history_table(log: ActuationLog) -> list[dict[str, Any]]:
    """One row per actuation, oldest first, for ``knobflow history``: id, started, source,
    knobs (count and names), decision, ratio, p_value, outcome, ended (how it ended)."""
    rows = []
    for actuation in log.actuations():
        fields = actuation.fields
        changes = fields.get("changes") or {}
        test = fields.get("test") or {}
        outcome = actuation.outcome
        rows.append({
            "id": actuation.id,
            "started": actuation.started,
            "source": fields.get("source", ""),
            "knobs": f"{len(changes)}: {', '.join(sorted(changes))}" if changes else "0",
            "decision": _decision(fields),
            "ratio": test.get("ratio"),
            "p_value": test.get("p_value"),
            "outcome": outcome.value if outcome else "unfinished",
            "ended": _ended(actuation),
        })
    return rows
