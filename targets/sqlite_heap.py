"""SQLite's own memory accounting for the sqlite target's ``heap_peak_kb``: the most memory
SQLite allocated since a reset (``sqlite3_memory_highwater``), read through ctypes from the
libsqlite3 that Python's sqlite3 module links. Where the library does not export the calls the
meter is unavailable and the target does not declare the metric. Standard library only: it runs
in every trial.
"""

from __future__ import annotations

import ctypes

__all__ = ["HEAP", "HeapMeter"]


class HeapMeter:
    """SQLite's own memory accounting (process-wide: a trial process runs one connection)."""

    def __init__(self) -> None:
        self._lib: ctypes.CDLL | None = None
        self._base = 0
        try:
            import _sqlite3

            lib = ctypes.CDLL(_sqlite3.__file__)  # resolves to the library it links
            for name in ("sqlite3_memory_used", "sqlite3_memory_highwater"):
                getattr(lib, name).restype = ctypes.c_int64
            lib.sqlite3_memory_highwater.argtypes = [ctypes.c_int]
            self._lib = lib
        except (ImportError, OSError, AttributeError):
            pass

    @property
    def available(self) -> bool:
        """Whether the library exports SQLite's memory accounting (it does on Linux builds)."""
        return self._lib is not None

    def reset(self) -> None:
        """Start a new peak from the memory SQLite holds now."""
        if self._lib is not None:
            self._base = int(self._lib.sqlite3_memory_used())
            self._lib.sqlite3_memory_highwater(1)

    def peak_kb(self) -> float | None:
        """KiB SQLite allocated at most since ``reset``, beyond what it held then."""
        if self._lib is None:
            return None
        return max(0, int(self._lib.sqlite3_memory_highwater(0)) - self._base) / 1024.0


#: The process's meter (SQLite's accounting is process-wide).
HEAP = HeapMeter()
