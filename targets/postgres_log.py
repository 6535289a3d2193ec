"""The PostgreSQL server's own log lines, sorted into failure classes: out of memory, an I/O
error (a full disk among them), a refused setting, a crash; and the lines a failure shows,
without their time stamps and pids."""

from __future__ import annotations

import re
from collections.abc import Callable

from targets.base import ConfigRefused, FailureClass, TrialFailed
from targets.process import ServerExited, last_lines

_LINE_PREFIX = re.compile(r"^\d{4}-\d\d-\d\d [\d:.]+ \S+ \[\d+\] ")  # log_line_prefix '%m [%p] '

OOM_SIGNS = (
    "out of memory",
    "could not map anonymous shared memory",
    "could not create shared memory segment",
    "Cannot allocate memory",
)
IO_SIGNS = (
    "No space left on device",
    "could not write",
    "could not extend file",
    "could not fsync",
    "Input/output error",
    "Disk quota exceeded",
    "Read-only file system",
)
#: Words of a start-up FATAL line that is about a setting (the config is refused).
CONFIG_SIGNS = (
    "parameter",
    "must be",
    "cannot be",
    "invalid value",
    "requires",
    "not supported",
)


def classify(text: str) -> FailureClass | None:
    """Out of memory or an I/O error, from PostgreSQL's own lines; None when neither shows."""
    if any(sign in text for sign in OOM_SIGNS):
        return FailureClass.OUT_OF_MEMORY
    if any(sign in text for sign in IO_SIGNS):
        return FailureClass.IO_ERROR
    return None


def message(line: str) -> str:
    """A server log line without its time stamp and pid: ``FATAL:  ...`` as PostgreSQL said it."""
    return _LINE_PREFIX.sub("", line.strip())


def refusal(log: str) -> str | None:
    """The start-up line saying a setting is refused (with its HINT), or None if none is."""
    lines = [message(line) for line in log.splitlines()]
    for i in range(len(lines) - 1, -1, -1):
        text = lines[i]
        if "must be less than max_connections" in text:  # printed without FATAL
            return text
        if "FATAL:" in text and any(sign in text for sign in CONFIG_SIGNS):
            hint = lines[i + 1] if i + 1 < len(lines) and "HINT:" in lines[i + 1] else ""
            return f"{text} {hint}".strip()
    return None


def run_failure(log: str, client_text: str, gone: bool) -> TrialFailed | None:
    """Why a run failed, from the server's log since the run began (or the client's output):
    None when neither shows a failure and the server (``gone``: it has exited) did not crash."""
    failure = classify(log) or classify(client_text)
    signalled = [ln for ln in log.splitlines() if "terminated by signal" in ln]
    if failure is None and signalled:
        killed = any("signal 9" in ln for ln in signalled)
        failure = FailureClass.OUT_OF_MEMORY if killed else FailureClass.CRASH
    if failure is None and (gone or "PANIC:" in log):
        failure = FailureClass.CRASH
    if failure is None:
        return None
    note = " (SIGKILL: most likely the kernel's OOM killer)" if signalled and any(
        "signal 9" in ln for ln in signalled) else ""
    lines = server_tail(log, lambda ln: any(
        tag in ln for tag in ("FATAL", "PANIC", "ERROR", "terminated", "LOG:  server"))
    ) or server_tail(log) or last_lines(client_text)
    state = "the server exited" if gone else "the server failed"
    return TrialFailed(failure, f"{state}{note}: {lines}")


def startup_failure(exc: ServerExited) -> Exception:
    """A start-up that ended before ready: refused config, out of memory, I/O error, or crash."""
    failure = classify(exc.log)
    tail = server_tail(exc.log, lambda ln: "FATAL" in ln or "HINT" in ln, n=2) or server_tail(
        exc.log, n=3)
    if failure is not None:
        return TrialFailed(failure, tail)
    refused = refusal(exc.log)
    if refused is not None:
        return ConfigRefused(refused)
    if exc.returncode is None:
        return TrialFailed(FailureClass.CRASH, f"the server did not become ready: {tail}")
    return TrialFailed(FailureClass.CRASH, f"the server exited with code {exc.returncode}: {tail}")


def server_tail(log: str, pattern: Callable[[str], bool] | None = None, n: int = 5) -> str:
    """The last ``n`` server log lines (matching ``pattern``), without time stamps and pids."""
    return last_lines("\n".join(message(ln) for ln in log.splitlines()), pattern, n)
