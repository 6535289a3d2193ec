"""Files: paths as a user reads them, writes that a crash never leaves half done, and locks.

* ``display_path``: a path relative to the working directory or the repository when it can be;
* ``atomic_path``, ``write_text_atomic``: a crash never leaves half a file behind;
* ``file_lock``: processes sharing a home take turns (``filelock``).

Only the standard library is imported here: the trial process writes its result with it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_path", "display_path", "file_lock", "write_text_atomic"]

_REPO_ROOT = Path(__file__).resolve().parents[2]


def display_path(path: str | os.PathLike[str]) -> str:
    """A path as a user reads it: relative to the working directory or the repo if possible."""
    p = Path(path).resolve()
    for base in (Path.cwd(), _REPO_ROOT):
        try:
            return str(p.relative_to(base))
        except ValueError:
            continue
    return str(p)


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
