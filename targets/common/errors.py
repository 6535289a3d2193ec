"""The one error hierarchy of knobflow: what was wrong, where, and what to do about it.

Every error a user can cause (a bad spec, override, workload, CLI value) is a ``KnobflowError``;
the CLI turns one into a single line on stderr and exit code 2. A fault of the machine a job runs
on (a full disk) is an ``EnvironmentFault``: one line, exit code 1, the job resumable. Anything
else is a failure (exit code 1).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any


class KnobflowError(Exception):
    """Bad input: the message names the file or option, the field, and the fix."""


class SpecError(KnobflowError):
    """A knob spec or a search-space override is invalid."""


class ConfigError(KnobflowError):
    """A configuration (knob -> value mapping) does not fit its knob spec."""


class WorkloadError(KnobflowError):
    """A workload parameter is unknown or has a bad value."""


class TargetNotFoundError(KnobflowError):
    """No target of that name is registered under the ``knobflow.targets`` entry points."""


class JobError(KnobflowError):
    """A tuning job cannot start or resume as asked (e.g. nothing to resume)."""


class EnvironmentFault(Exception):
    """The machine, not the input, stops a job (a full disk); the message says what to do."""


class DiskFull(EnvironmentFault):
    """The disk a job writes to is full: its trials would fail for a reason of no config's."""


class HarnessBroken(EnvironmentFault):
    """Trial after trial failed before the target ran its config (the target's installation,
    knobflow's, or the host's set-up): the rest of the budget would fail the same way."""


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """Return ' (did you mean 'x'?)' for the closest choice, or '' when none is close."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.7)
    return f" (did you mean '{close[0]}'?)" if close else ""


def check_fields(
    mapping: Mapping[Any, Any],
    allowed: Sequence[str],
    where: str,
    error: type[KnobflowError],
    label: str = "field",
) -> None:
    """Refuse a key of ``mapping`` not in ``allowed``, suggesting the closest allowed one."""
    for key in mapping:
        if key not in allowed:
            raise error(
                f"{where}: unknown {label} '{key}'{did_you_mean(str(key), allowed)}; "
                f"fields are {', '.join(allowed)}"
            )


def fmt_quantity(value: Any, unit: str | None) -> str:
    """A knob's value with its unit, sizes in bytes in binary units (``64 MiB``)."""
    if unit == "bytes" and isinstance(value, int | float) and not isinstance(value, bool):
        for size, name in ((2**40, "TiB"), (2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
            if abs(value) >= size:
                return f"{value / size:.4g} {name}"
    return f"{fmt_value(value)} {unit}" if unit else fmt_value(value)


#: A value longer than this is shown in a message as its start and its length: a message never
#: echoes a file's content beyond a short excerpt.
SHOWN_CHARS = 80


def fmt_value(value: Any) -> str:
    """A value as a user wrote it in YAML (strings quoted, bools lower-case), shortened to an
    excerpt when it is long."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    text = repr(value) if isinstance(value, str | float) else str(value)
    if len(text) <= SHOWN_CHARS:
        return text
    return f"{text[:SHOWN_CHARS - 20]}... ({len(text)} characters)"
