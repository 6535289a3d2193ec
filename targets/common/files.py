"""Files: paths as a user reads them, the files users name, writes that a crash never leaves
half done, and locks.

* ``display_path``: a path relative to the working directory or the repository when it can be;
* ``read_user_file``: a file the user names (a search space, workload, config, rule file, import),
  bounded: at most its kind's bytes (``UserFile``; each limit is raised with its environment
  variable), checked with ``stat`` before it is opened and again while it is read, so a device
  (``/dev/zero``) stops at the limit; a FIFO or a socket is refused, never waited on;
  ``excerpt`` quotes a bit of a file's content in a message;
* ``atomic_path``, ``write_text_atomic``: a crash never leaves half a file behind;
* ``file_lock``: processes sharing a home take turns (``filelock``).

The kinds of user files and their bounds (bytes; overrides in the environment):

====================  =======  ====================================
search space          64 KiB   ``KNOBFLOW_MAX_SPACE_FILE_BYTES``
workload              64 KiB   ``KNOBFLOW_MAX_WORKLOAD_FILE_BYTES``
config (validate)     64 KiB   ``KNOBFLOW_MAX_CONFIG_FILE_BYTES``
expert import (CSV)   4 MiB    ``KNOBFLOW_MAX_IMPORT_FILE_BYTES``
knob spec             1 MiB    ``KNOBFLOW_MAX_SPEC_FILE_BYTES``
rule file             1 MiB    ``KNOBFLOW_MAX_RULE_FILE_BYTES`` (``rules.parse``'s own)
====================  =======  ====================================

Only the standard library (and ``errors``, which needs nothing else) is imported here: the trial
process writes its result with it.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from targets.common.errors import KnobflowError, fmt_value

__all__ = [
    "CONFIG_FILE", "IMPORT_FILE", "SPACE_FILE", "SPEC_FILE", "WORKLOAD_FILE", "GrowingFile",
    "UserFile", "atomic_path", "display_path", "env_limit", "excerpt", "file_lock",
    "read_user_file", "write_all_synced", "write_text_atomic",
]

_REPO_ROOT = Path(__file__).resolve().parents[2]


def write_all_synced(fd: int, data: bytes) -> None:
    """Write all of ``data`` to ``fd`` (short writes continued) and fsync it: on disk when this
    returns (append-only logs: the actuation log, the drift log)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    os.fsync(fd)


def display_path(path: str | os.PathLike[str]) -> str:
    """A path as a user reads it: relative to the working directory or the repo if possible."""
    p = Path(path).resolve()
    for base in (Path.cwd(), _REPO_ROOT):
        try:
            return str(p.relative_to(base))
        except ValueError:
            continue
    return str(p)


def user_cache_dir() -> Path:
    """knobflow's folder in the user's cache (``$XDG_CACHE_HOME/knobflow``, else
    ``~/.cache/knobflow``): what a process may keep for the next one (never needed: each entry
    is made again when missing)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "knobflow"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; it replaces ``path`` when the block ends
    without an error, and is removed when it raises (``path`` is then untouched). Concurrent
    writers each get their own temporary file: the last to finish wins, whole."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{os.urandom(3).hex()}.tmp")
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


@contextlib.contextmanager
def file_lock(path: str | os.PathLike[str], timeout: float = -1) -> Iterator[None]:
    """Hold an exclusive lock on the file ``path`` (created if missing) for the block; waits
    for another holder (``timeout`` seconds, -1 = for ever; 0 = not at all), then raises
    ``TimeoutError``. A process that dies holding it releases it."""
    from filelock import FileLock, Timeout  # 60 ms to import: only where a lock is taken

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path), timeout=timeout)
    try:
        lock.acquire()
    except Timeout:
        raise TimeoutError(f"{path} is locked by another process") from None
    try:
        yield
    finally:
        lock.release()


class GrowingFile:
    """A file another process appends lines to (a progress log): ``new_lines`` gives the whole
    lines added since the last call; a line still being written waits for the next one."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset = path, 0

    def new_lines(self) -> bytes:
        """The whole lines appended since the last call (b"" while the file does not exist)."""
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self.offset)
                chunk = fh.read()
        except FileNotFoundError:
            return b""
        end = chunk.rfind(b"\n") + 1
        self.offset += end
        return chunk[:end]


# -- files the user names ------------------------------------------------------------------------
@dataclass(frozen=True)
class UserFile:
    """A kind of file users name, and its bounds: ``max_bytes`` (raised with the environment
    variable ``variable``), the longest value (a YAML scalar, key or value) it may hold, and what
    to do when it is too big (``shrink``)."""

    what: str
    variable: str
    max_bytes: int
    shrink: str
    max_value_chars: int = 256


SPACE_FILE = UserFile("search space file", "KNOBFLOW_MAX_SPACE_FILE_BYTES", 64 << 10,
                      "list only the knobs you tune")
WORKLOAD_FILE = UserFile("workload file", "KNOBFLOW_MAX_WORKLOAD_FILE_BYTES", 64 << 10,
                         "keep only the workload's parameters")
CONFIG_FILE = UserFile("config file", "KNOBFLOW_MAX_CONFIG_FILE_BYTES", 64 << 10,
                       "keep only the knobs and their values")
IMPORT_FILE = UserFile("CSV to import", "KNOBFLOW_MAX_IMPORT_FILE_BYTES", 4 << 20,
                       "split it into several files")
SPEC_FILE = UserFile("knob spec", "KNOBFLOW_MAX_SPEC_FILE_BYTES", 1 << 20,
                     "shorten it", max_value_chars=4096)

#: files never opened: reading a FIFO waits for a writer; a socket cannot be read as a file
_NOT_READ = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"))


def env_limit(variable: str, default: int, error: type[KnobflowError] = KnobflowError) -> int:
    """A limit from the environment variable ``variable`` (a whole number above 0), else
    ``default``; anything else there is an ``error``."""
    text = os.environ.get(variable, "").strip()
    if not text:
        return default
    if not (text.isascii() and text.isdigit()) or int(text) <= 0:
        raise error(f"{variable}={text!r}: must be a whole number above 0 (default {default})")
    return int(text)


def excerpt(value: Any, limit: int = 40) -> str:
    """``value`` for a message, as written in YAML (``fmt_value``: text quoted), cut to about
    ``limit`` characters: a file's content is never echoed beyond a short excerpt."""
    if isinstance(value, str):
        return repr(value) if len(value) <= limit else f"{value[:limit]!r}..."
    text = fmt_value(value)
    return text if len(text) <= limit + 20 else f"{text[:limit]}..."


def read_user_file(
    path: str | os.PathLike[str],
    kind: UserFile,
    error: type[KnobflowError] = KnobflowError,
    encoding: str = "utf-8",
) -> str:
    """The text of a file the user named, bounded before it is read: a missing file, a
    directory, a FIFO or socket, a file over ``kind``'s byte limit, or text that is not
    ``encoding`` is an ``error`` naming the file and the fix. The size is checked with ``stat``
    before the file is opened; the read stops one byte past the limit whatever ``stat`` said (a
    device such as ``/dev/zero``, a file that grows, ``/proc``), and never waits (a FIFO is not
    opened, a terminal with nothing to read is an error)."""
    shown = display_path(path)
    limit = env_limit(kind.variable, kind.max_bytes, error)
    try:
        _check_kind(os.stat(path), shown, kind, limit, error)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # a FIFO swapped in: no wait
        try:
            _check_kind(os.fstat(fd), shown, kind, limit, error)
            data = _read_at_most(fd, limit + 1)
        finally:
            os.close(fd)
    except FileNotFoundError:
        raise error(f"{shown}: file not found") from None
    except IsADirectoryError:
        raise error(f"{shown}: cannot read: it is a directory; name a file") from None
    except BlockingIOError:
        raise error(f"{shown}: cannot read: it has nothing to read yet (a terminal or a device); "
                    f"save the {kind.what} as a regular file and name that") from None
    except OSError as exc:
        raise error(f"{shown}: cannot read: {exc.strerror or exc}") from None
    if len(data) > limit:
        raise _too_big(shown, None, kind, limit, error)
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        raise error(f"{shown}: cannot read: {exc}") from None


def _read_at_most(fd: int, count: int) -> bytes:
    """Up to ``count`` bytes of ``fd``: fewer only at its end."""
    chunks: list[bytes] = []
    left = count
    while left > 0:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _check_kind(
    status: os.stat_result, shown: str, kind: UserFile, limit: int,
    error: type[KnobflowError],
) -> None:
    """A regular file within the limit, or a device (read up to the limit), passes; a
    directory, a FIFO or a socket is an ``error``."""
    if stat.S_ISDIR(status.st_mode):
        raise IsADirectoryError
    for test, name in _NOT_READ:
        if test(status.st_mode):
            raise error(
                f"{shown}: cannot read: it is {name}, not a regular file; save the {kind.what} "
                "as a regular file and name that"
            )
    if status.st_size > limit:
        raise _too_big(shown, status.st_size, kind, limit, error)


def _too_big(
    shown: str, size: int | None, kind: UserFile, limit: int, error: type[KnobflowError]
) -> KnobflowError:
    """The file is over the byte limit (``size`` from stat, None if only reading showed it)."""
    over = f"{size} bytes, more than" if size is not None else "more than"
    return error(
        f"{shown}: the file is {over} the {limit} bytes a {kind.what} may hold; {kind.shrink}, "
        f"or raise the limit with the environment variable {kind.variable}"
    )
